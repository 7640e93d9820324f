//! The archived-object byte format: a zstd skippable frame carrying a small header, followed by
//! the zstd-compressed content. Stock `zstd -d` skips the header frame and restores the original
//! bytes, so an archive stays readable in an emergency without walhalla.
//!
//! Byte layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | skippable frame magic `0x184D2A57` |
//! | 4 | 4 | skippable frame length: 36 |
//! | 8 | 8 | `WALHALLA` |
//! | 16 | 2 | format version: 1 |
//! | 18 | 2 | flags: 0 (reserved) |
//! | 20 | 4 | CRC-32 (IEEE) of the original content |
//! | 24 | 8 | length of the original content |
//! | 32 | 8 | length of the zstd payload that follows the header |
//! | 40 | 4 | CRC-32 (IEEE) of bytes 8..40 |
//! | 44 | … | the payload: zstd frames holding the original content |
//!
//! Reading verifies the header checksum, the total length, the content length and the content
//! checksum; any mismatch is an error and no partial content is trusted.

use std::io::{Read, Write};

use thiserror::Error;

mod in_place;

/// Length of the header that precedes the zstd payload.
pub const HEADER_BYTES: usize = 44;
/// Largest content an envelope may hold: a WAL segment of the largest size PostgreSQL allows.
pub const MAX_CONTENT_BYTES: u64 = 1 << 30;
/// The compression level used when none is configured, chosen by measurement (benches/README.md):
/// with [`WAL_MIN_MATCH`] level 1 compresses WAL nearly as well as level 3, at 1.6 to 1.7
/// times its speed.
pub const DEFAULT_LEVEL: i32 = 1;

/// The shortest match zstd looks for at the fast levels (1 and 2), whose own choice for large
/// inputs is 6: WAL repeats short runs (record headers, tuple headers, small keys), and
/// matches of 5 bytes gave 15% more ratio on pgbench WAL and 9% on mixed WAL for 5% less
/// speed (benches/README.md). The frames are ordinary zstd frames.
const WAL_MIN_MATCH: u32 = 5;

/// The minimum match WAL sets at `level` beyond zstd's own choice: at the fast levels.
fn wal_min_match(level: i32) -> Option<u32> {
    (1..=2).contains(&level).then_some(WAL_MIN_MATCH)
}

/// The parameter WAL sets at `level` beyond zstd's own.
fn wal_parameter(level: i32) -> Option<zstd::stream::raw::CParameter> {
    wal_min_match(level).map(zstd::stream::raw::CParameter::MinMatch)
}

/// A zstd compressor at `level`, with WAL's parameter.
fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    let mut compressor = zstd::bulk::Compressor::new(level).map_err(Error::Compress)?;
    if let Some(parameter) = wal_parameter(level) {
        compressor
            .set_parameter(parameter)
            .map_err(Error::Compress)?;
    }
    Ok(compressor)
}

const SKIPPABLE_MAGIC: u32 = 0x184D_2A57;
const FRAME_BYTES: u32 = (HEADER_BYTES - 8) as u32;
const MAGIC: &[u8; 8] = b"WALHALLA";
const VERSION: u16 = 1;
const DECODE_CHUNK_BYTES: usize = 256 * 1024;

/// Why an envelope could not be written or read back.
#[derive(Debug, Error)]
pub enum Error {
    /// The bytes are not an envelope of a version we read, or its header is damaged.
    #[error("not a valid walhalla object: {0}")]
    Malformed(String),
    /// The header is intact but the content does not decode to what it records.
    #[error("corrupt content: {0}")]
    Corrupt(String),
    /// The content is larger than an envelope may hold.
    #[error("content of {0} bytes is larger than the 1 GiB an object may hold")]
    TooLarge(u64),
    /// The decoded content could not be written to its destination.
    #[error("could not write the decoded content")]
    Write(#[source] std::io::Error),
    /// The compressor failed (bad parameters or out of memory).
    #[error("zstd compression failed")]
    Compress(#[source] std::io::Error),
}

/// Result of envelope operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an envelope's header records about its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// CRC-32 (IEEE) of the original content.
    pub content_crc: u32,
    /// Length of the original content.
    pub content_len: u64,
    /// Length of the zstd payload after the header.
    pub payload_len: u64,
}

impl Header {
    /// Reads and checks the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let header: &[u8; HEADER_BYTES] = bytes
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                Error::Malformed(format!("{} bytes is shorter than the header", bytes.len()))
            })?;
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(0) != SKIPPABLE_MAGIC || u32_at(4) != FRAME_BYTES || &header[8..16] != MAGIC {
            return Err(Error::Malformed("missing the walhalla header frame".into()));
        }
        if crc32fast::hash(&header[8..40]) != u32_at(40) {
            return Err(Error::Malformed("header checksum mismatch".into()));
        }
        let (version, flags) = (u16_at(16), u16_at(18));
        if version != VERSION || flags != 0 {
            return Err(Error::Malformed(format!(
                "format version {version} flags {flags:#x}; this walhalla reads version {VERSION}"
            )));
        }
        let header = Header {
            content_crc: u32_at(20),
            content_len: u64_at(24),
            payload_len: u64_at(32),
        };
        if header.content_len > MAX_CONTENT_BYTES {
            return Err(Error::Malformed(format!(
                "content length {} is too large",
                header.content_len
            )));
        }
        Ok(header)
    }

    fn to_bytes(self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&FRAME_BYTES.to_le_bytes());
        h[8..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&VERSION.to_le_bytes());
        h[20..24].copy_from_slice(&self.content_crc.to_le_bytes());
        h[24..32].copy_from_slice(&self.content_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        let crc = crc32fast::hash(&h[8..40]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Content at least this large is split across the encoder's threads.
pub const MIN_SPLIT_BYTES: usize = 2 << 20;

/// Compresses content into envelopes; reuse one for many objects to keep its zstd contexts.
///
/// Large content is cut into as many parts as the encoder has threads, each compressed into
/// its own zstd frame on its own thread straight from the caller's buffer (zstd's built-in
/// multithreading first copies the input into job buffers, which costs more than it saves on
/// a 16 MiB segment). Concatenated frames are a valid zstd stream.
pub struct Encoder {
    compressors: Vec<zstd::bulk::Compressor<'static>>,
}

impl Encoder {
    /// An encoder at zstd `level` that compresses large content on `threads` threads (at
    /// least one: the caller's).
    pub fn new(level: i32, threads: usize) -> Result<Self> {
        let compressors = (0..threads.max(1))
            .map(|_| compressor(level))
            .collect::<Result<_>>()?;
        Ok(Encoder { compressors })
    }

    /// Wraps `content` in an envelope.
    pub fn encode(&mut self, content: &[u8]) -> Result<Vec<u8>> {
        if content.len() as u64 > MAX_CONTENT_BYTES {
            return Err(Error::TooLarge(content.len() as u64));
        }
        let parts = if content.len() >= MIN_SPLIT_BYTES {
            self.compressors.len()
        } else {
            1
        };
        let chunk_len = content.len().div_ceil(parts).max(1);
        let compress = |(compressor, chunk): (&mut zstd::bulk::Compressor<'static>, &[u8])| {
            let mut crc = crc32fast::Hasher::new();
            crc.update(chunk);
            compressor
                .compress(chunk)
                .map(|frame| (frame, crc))
                .map_err(Error::Compress)
        };
        let mut work = self.compressors.iter_mut().zip(content.chunks(chunk_len));
        let first = work.next();
        let frames: Vec<(Vec<u8>, crc32fast::Hasher)> = std::thread::scope(|scope| {
            let others: Vec<_> = work.map(|job| scope.spawn(move || compress(job))).collect();
            let mut frames = match first {
                Some(job) => vec![compress(job)?],
                None => Vec::new(),
            };
            for handle in others {
                frames.push(
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
                );
            }
            Ok::<_, Error>(frames)
        })?;
        let mut crc = crc32fast::Hasher::new();
        let payload_len: usize = frames.iter().map(|(frame, _)| frame.len()).sum();
        let mut out = Vec::with_capacity(HEADER_BYTES + payload_len);
        out.resize(HEADER_BYTES, 0);
        for (frame, part_crc) in frames {
            crc.combine(&part_crc);
            out.extend_from_slice(&frame);
        }
        let empty_frame;
        if content.is_empty() {
            empty_frame = self.compressors[0].compress(&[]).map_err(Error::Compress)?;
            out.extend_from_slice(&empty_frame);
        }
        Ok(seal(out, crc.finalize(), content.len()))
    }
}

/// Writes the header into the first [`HEADER_BYTES`] of `out`, which hold the payload after.
fn seal(mut out: Vec<u8>, content_crc: u32, content_len: usize) -> Vec<u8> {
    let header = Header {
        content_crc,
        content_len: content_len as u64,
        payload_len: (out.len() - HEADER_BYTES) as u64,
    };
    out[..HEADER_BYTES].copy_from_slice(&header.to_bytes());
    out
}

/// Wraps `content` in an envelope of one zstd frame at `level`, reading it once from start to
/// end in windows of `window` bytes, and calling `done_before(offset)` as the bytes before
/// `offset` fall behind zstd's match window, never to be read again. With
/// [`crate::mapped::SequentialMap`], which hands back whole 1 MiB windows, this compresses a
/// mapped segment in a few windows of memory (2 MiB at the default level, 3 at level 3);
/// [`Encoder::encode`],
/// which reads the whole content at once, is for content already in memory. zstd reads the
/// content in place (see `in_place`).
pub fn encode_sequentially(
    level: i32,
    content: &[u8],
    window: usize,
    done_before: &mut dyn FnMut(usize),
) -> Result<Vec<u8>> {
    if content.len() as u64 > MAX_CONTENT_BYTES {
        return Err(Error::TooLarge(content.len() as u64));
    }
    let mut out = vec![0; HEADER_BYTES];
    let mut crc = crc32fast::Hasher::new();
    let mut checked = 0;
    let mut passed = |offset: usize| {
        // The checksum reads the bytes zstd is done with, before they are handed back.
        if offset > checked {
            crc.update(&content[checked..offset]);
            checked = offset;
        }
        done_before(offset);
    };
    in_place::FrameCompressor::new(level, wal_min_match(level))
        .and_then(|frame| frame.compress(content, window, &mut out, &mut passed))
        .map_err(Error::Compress)?;
    Ok(seal(out, crc.finalize(), content.len()))
}

/// Decodes `envelope` into `out`, verifying lengths and checksum, and returns its header.
/// On error `out` may hold part of the content: the caller must discard it.
pub fn decode_into(envelope: &[u8], out: &mut impl Write) -> Result<Header> {
    let header = Header::parse(envelope)?;
    let payload = &envelope[HEADER_BYTES..];
    if payload.len() as u64 != header.payload_len {
        return Err(Error::Corrupt(format!(
            "payload has {} bytes, header records {}",
            payload.len(),
            header.payload_len
        )));
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(|e| Error::Corrupt(format!("zstd: {e}")))?;
    let mut buf = vec![0u8; DECODE_CHUNK_BYTES];
    let mut hasher = crc32fast::Hasher::new();
    let mut written = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Corrupt(format!("zstd: {e}"))),
        };
        written += n as u64;
        if written > header.content_len {
            return Err(Error::Corrupt(format!(
                "content is longer than the {} bytes recorded",
                header.content_len
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(Error::Write)?;
    }
    if written != header.content_len {
        return Err(Error::Corrupt(format!(
            "content has {written} bytes, header records {}",
            header.content_len
        )));
    }
    let crc = hasher.finalize();
    if crc != header.content_crc {
        return Err(Error::Corrupt(format!(
            "content CRC-32 is {crc:08x}, header records {:08x}",
            header.content_crc
        )));
    }
    Ok(header)
}

/// Decodes `envelope` into memory, verifying lengths and checksum.
pub fn decode(envelope: &[u8]) -> Result<Vec<u8>> {
    let capacity = Header::parse(envelope)?.content_len.min(64 << 20) as usize;
    let mut out = Vec::with_capacity(capacity);
    decode_into(envelope, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compressible content large enough to be split into several frames.
    fn sample() -> Vec<u8> {
        (0..(MIN_SPLIT_BYTES as u32))
            .flat_map(|i| (i % 251).to_le_bytes())
            .take(2 * MIN_SPLIT_BYTES + 12_345)
            .collect()
    }

    /// How many zstd frames the payload of `envelope` holds.
    fn frames(envelope: &[u8]) -> usize {
        let mut payload = &envelope[HEADER_BYTES..];
        let mut count = 0;
        while !payload.is_empty() {
            let len = zstd::zstd_safe::find_frame_compressed_size(payload).expect("a frame");
            payload = &payload[len..];
            count += 1;
        }
        count
    }

    fn encode(content: &[u8]) -> Vec<u8> {
        Encoder::new(DEFAULT_LEVEL, 2)
            .unwrap()
            .encode(content)
            .unwrap()
    }

    /// Content whose repeats are exactly 5 bytes long, as short runs in WAL are: 4096 random
    /// words of 5 bytes, in random order.
    fn five_byte_repeats() -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let words: Vec<[u8; 5]> = (0..4096)
            .map(|_| {
                let w = next().to_le_bytes();
                [w[0], w[1], w[2], w[3], w[4]]
            })
            .collect();
        (0..(1 << 20) / 5)
            .flat_map(|_| words[(next() % 4096) as usize])
            .collect()
    }

    #[test]
    fn the_fast_levels_find_matches_of_five_bytes() {
        let content = five_byte_repeats();
        for level in [1, 2] {
            let ours = Encoder::new(level, 1).unwrap().encode(&content).unwrap();
            let stock = zstd::bulk::compress(&content, level).unwrap();
            assert!(
                ours.len() - HEADER_BYTES < stock.len() * 9 / 10,
                "level {level}: {} bytes with a minimum match of {WAL_MIN_MATCH}, {} with zstd's own",
                ours.len() - HEADER_BYTES,
                stock.len()
            );
            assert_eq!(zstd::decode_all(&ours[HEADER_BYTES..]).unwrap(), content);
        }
    }

    #[test]
    fn sequential_encoding_hands_back_what_lies_behind_the_match_window() {
        let content = sample();
        let window = 1 << 20;
        let mut ends = Vec::new();
        let envelope =
            encode_sequentially(DEFAULT_LEVEL, &content, window, &mut |end| ends.push(end))
                .unwrap();
        // Level 1 matches 512 KiB back from the block it compresses next, which may lie a
        // 128 KiB block behind what zstd has taken; the last offer ends the frame.
        let reach = (512 + 128) << 10;
        let mut expected: Vec<usize> = (1..content.len().div_ceil(window))
            .map(|i| i * window - reach)
            .collect();
        expected.push(content.len());
        assert_eq!(ends, expected);
        assert_eq!(frames(&envelope), 1);
        assert_eq!(decode(&envelope).unwrap(), content);
        let empty = encode_sequentially(DEFAULT_LEVEL, &[], window, &mut |_| {}).unwrap();
        assert_eq!(decode(&empty).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn sequential_encoding_compresses_as_one_shot_does() {
        // zstd reads the windows in place, as a one-shot compression of the whole content
        // does, rather than through a buffer of its own (whose wrapped half it matches as an
        // external dictionary): at the fast levels the frame is the one-shot frame, WAL's
        // minimum match too.
        let mut content = five_byte_repeats();
        content.extend(sample());
        // A length of whole windows too, as a segment's: its last block is still the last.
        let whole = &content[..2 << 20];
        for content in [&content[..], whole] {
            for level in [1, 2] {
                let one_shot = compressor(level).unwrap().compress(content).unwrap();
                let sequential = encode_sequentially(level, content, 1 << 20, &mut |_| {}).unwrap();
                assert!(
                    sequential[HEADER_BYTES..] == one_shot[..],
                    "level {level}, {} bytes: {} bytes sequentially, {} at once",
                    content.len(),
                    sequential.len() - HEADER_BYTES,
                    one_shot.len()
                );
            }
        }
    }

    #[test]
    fn round_trips_with_and_without_worker_threads() {
        let content = sample();
        for threads in [1, 2, 3] {
            let env = Encoder::new(1, threads).unwrap().encode(&content).unwrap();
            assert_eq!(frames(&env), threads, "one frame per thread");
            assert!(
                env.len() < content.len() / 4,
                "compressible content should shrink"
            );
            assert_eq!(decode(&env).unwrap(), content);
            // Concatenated frames are one zstd stream, as the zstd tool reads them.
            assert_eq!(zstd::decode_all(&env[HEADER_BYTES..]).unwrap(), content);
        }
        let small = Encoder::new(1, 2).unwrap().encode(b"small").unwrap();
        assert_eq!(frames(&small), 1, "small content is not split");
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
    }

    #[test]
    fn golden_header_bytes() {
        let env = encode(b"hello");
        assert_eq!(&env[..8], &[0x57, 0x2A, 0x4D, 0x18, 36, 0, 0, 0]);
        assert_eq!(&env[8..16], b"WALHALLA");
        assert_eq!(&env[16..20], &[1, 0, 0, 0]);
        assert_eq!(&env[20..24], &crc32fast::hash(b"hello").to_le_bytes());
        assert_eq!(&env[24..32], &5u64.to_le_bytes());
        assert_eq!(
            u64::from_le_bytes(env[32..40].try_into().unwrap()),
            (env.len() - HEADER_BYTES) as u64
        );
        // The payload is a plain zstd frame.
        assert_eq!(zstd::decode_all(&env[HEADER_BYTES..]).unwrap(), b"hello");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let content = sample();
        let env = encode(&content);
        assert_eq!(frames(&env), 2);
        // Every byte of the header, a spread of payload bytes, and both sides of the boundary
        // between the two frames.
        let boundary = HEADER_BYTES
            + zstd::zstd_safe::find_frame_compressed_size(&env[HEADER_BYTES..]).unwrap();
        let positions = (0..HEADER_BYTES)
            .chain((HEADER_BYTES..env.len()).step_by(97))
            .chain(boundary - 4..boundary + 4);
        for pos in positions {
            for bit in [0x01, 0x80] {
                let mut bad = env.clone();
                bad[pos] ^= bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit:#x} at byte {pos} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_detected() {
        let env = encode(&sample());
        for len in [0, 10, HEADER_BYTES, HEADER_BYTES + 1, env.len() - 1] {
            assert!(
                decode(&env[..len]).is_err(),
                "truncation to {len} went unnoticed"
            );
        }
        let mut longer = env.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn a_consistent_forgery_with_wrong_content_is_refused() {
        // A header whose checksums are internally valid but record different content.
        let env = encode(b"hello");
        let mut header = Header::parse(&env).unwrap();
        header.content_crc ^= 1;
        let mut forged = header.to_bytes().to_vec();
        forged.extend_from_slice(&env[HEADER_BYTES..]);
        assert!(matches!(decode(&forged), Err(Error::Corrupt(_))));
    }
}
