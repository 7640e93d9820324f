//! Reading a spool file back for the archive: checked against what was received, compressed
//! and, for a complete segment, indexed ([`read_back`]). Blocking: run it off the reactor.
//!
//! A spool file may not give back what the stream wrote into it: its filesystem lost writes
//! (an error that turned it read-only, a crash of the host under unsynced pages), or a
//! stale page was read. Such a file is [`corrupt`], and never archived.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::archive::{self, PreparedIndex};
use crate::envelope;
use crate::mapped::SequentialMap;
use crate::timeindex::SegmentIndex;
use crate::wal::page_stream::check_stored;
use crate::wal::{Lsn, SegmentName, SegmentSize, SystemId};

/// How the uploader knows a spool file holds what was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expect {
    /// The CRC-32 of the bytes the stream wrote
    /// ([`content_crc`](crate::spool::SegmentWriter::content_crc)): segments of this run,
    /// and an earlier run's once its file read back well.
    Crc(u32),
    /// What the page headers say ([`check_stored`]), and for a complete segment its records
    /// read to its end: files an earlier run left, and kept tails (fsynced before they get
    /// their name).
    Pages,
}

/// A spool file to read back.
pub(super) struct SpoolFile {
    /// Where it is.
    pub(super) path: PathBuf,
    /// The segment it holds.
    pub(super) segment: SegmentName,
    /// The bytes received of it, from the segment's start.
    pub(super) len: usize,
    /// Whether that is the whole segment (it is then indexed too).
    pub(super) complete: bool,
    /// How to know it holds what was received.
    pub(super) expect: Expect,
}

/// Reads `file` back: fails with [`corrupt`] when it does not hold what was received,
/// else compresses it at `level` and indexes a complete segment. `size` and `system_id` are
/// the cluster's, for the page checks.
pub(super) fn read_back(
    file: &SpoolFile,
    level: i32,
    size: SegmentSize,
    system_id: SystemId,
) -> std::io::Result<Encoded> {
    if file.expect == Expect::Pages {
        // A file an earlier run left may sit on a failing disk: read once first, so that an
        // error reading it comes back as one instead of a SIGBUS in the mapped passes (see
        // `check_back`).
        crc_by_reading(&file.path, file.len)?;
    }
    let map = open_checked(file, size, system_id)?;
    let encoded = encode_map(
        map,
        Some(file.len),
        level,
        file.complete.then_some(file.segment),
    )?;
    match file.expect {
        Expect::Crc(received) => check_crc(encoded.crc, received)?,
        // Page headers say nothing of the bytes between them: a complete segment an earlier
        // run left must also read as WAL to its end, every record with its CRC-32C, as the
        // scan for its time index reads it (a filesystem repaired after an error can leave a
        // block of other bytes inside a page).
        Expect::Pages => {
            if let Some((_, scanned)) = &encoded.index {
                let scanned = scanned.as_ref().map(|i| (i.damage(), i.switch_end()));
                if let Some(from) = check_records(file, size, scanned.map_err(Clone::clone))? {
                    // Read again once repaired: what was compressed is not what is archived.
                    drop(encoded);
                    zero_after_switch(file, from)?;
                    return read_back(file, level, size, system_id);
                }
            }
        }
    }
    Ok(encoded)
}

/// Checks `file` as [`read_back`] does, without compressing or indexing it: returns the CRC-32
/// of what it holds. For a file whose content is only to be known, not archived yet. A read
/// pass comes first, for the CRC: an error reading the file (EIO from a failing disk) comes
/// back from it as an error, where touching a mapping would raise SIGBUS, which ends the
/// process ([`crate::mapped`]). A file checked by its pages then takes the mapped passes of
/// [`read_back`]'s check (two for a complete segment), each handing its pages back.
pub(super) fn check_back(
    file: &SpoolFile,
    size: SegmentSize,
    system_id: SystemId,
) -> std::io::Result<u32> {
    let crc = crc_by_reading(&file.path, file.len)?;
    match file.expect {
        Expect::Crc(received) => check_crc(crc, received)?,
        // Read as WAL to its end, as `read_back` reads it.
        Expect::Pages if file.complete => {
            let scanned = {
                let map = open_checked(file, size, system_id)?;
                let content = received_part(&map, file.len)?;
                let scanned =
                    SegmentIndex::of_segment_sequentially(file.segment, content, &mut |pos| {
                        map.done_before(pos)
                    });
                map.done_before(usize::MAX);
                scanned.map(|i| (i.end.damage(), i.switch_end()))
            };
            if let Some(from) = check_records(file, size, scanned)? {
                zero_after_switch(file, from)?;
                return check_back(file, size, system_id);
            }
        }
        Expect::Pages => {
            open_checked(file, size, system_id)?;
        }
    }
    Ok(crc)
}

/// The verdict on the records of a complete segment an earlier run left, from their scan
/// (`scanned`: where valid WAL ends early and why, and where a switch record ends): it must
/// read as WAL to its end or to a switch, or it is [`corrupt`]. A scan that failed is too:
/// the page check passed, so only bytes PostgreSQL did not write fail it. After a switch
/// PostgreSQL writes nothing but zeros ([`SegmentIndex::switch_end`]): other bytes there are
/// damage too, but every record before them checked, so the file is repaired rather than
/// refused (in `--synchronous` mode the server may no longer have the segment): returns the
/// offset of the switch record's end, from which [`zero_after_switch`] zeroes it.
fn check_records(
    file: &SpoolFile,
    size: SegmentSize,
    scanned: Result<(Option<String>, Option<Lsn>), String>,
) -> std::io::Result<Option<usize>> {
    let (damage, switch_end) = scanned.map_err(corrupt)?;
    if let Some(damage) = damage {
        return Err(corrupt(damage));
    }
    let (Some(end), Some(start)) = (switch_end, file.segment.start_lsn(size)) else {
        return Ok(None);
    };
    let from = end.0.saturating_sub(start.0) as usize;
    let mut other = None;
    let mut at = from;
    read_through(&file.path, from, file.len, &mut |bytes| {
        if let Some(found) = bytes.iter().position(|&b| b != 0) {
            other = Some(Lsn(start.0 + (at + found) as u64));
            return ControlFlow::Break(());
        }
        at += bytes.len();
        ControlFlow::Continue(())
    })?;
    let Some(other) = other else {
        return Ok(None);
    };
    tracing::warn!(
        file = %file.segment,
        "the spool's copy holds other bytes than zeros at {other}, after the WAL switch record \
         that ends at {end}, where PostgreSQL writes zeros: zeroing them (the records before \
         all check)"
    );
    Ok(Some(from))
}

/// Writes zeros into `file` from offset `from` (a switch record's end) to what it holds, and
/// fsyncs it: what PostgreSQL wrote there ([`check_records`]).
fn zero_after_switch(file: &SpoolFile, from: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let out = std::fs::OpenOptions::new().write(true).open(&file.path)?;
    let zeros = vec![0; SequentialMap::WINDOW.min(file.len.saturating_sub(from).max(1))];
    let mut at = from;
    while at < file.len {
        let n = (file.len - at).min(zeros.len());
        out.write_all_at(&zeros[..n], at as u64)?;
        at += n;
    }
    out.sync_all()
}

/// The CRC-32 of the first `len` bytes of the file at `path`, read with `read(2)`
/// ([`read_through`]); [`corrupt`] when it holds fewer.
fn crc_by_reading(path: &Path, len: usize) -> std::io::Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    read_through(path, 0, len, &mut |bytes| {
        hasher.update(bytes);
        ControlFlow::Continue(())
    })?;
    Ok(hasher.finalize())
}

/// Reads bytes `from..until` of the file at `path` with `read(2)`, through one buffer of
/// [`SequentialMap::WINDOW`] bytes, handing each piece to `each` until it breaks; [`corrupt`]
/// when the file ends before `until`. An error reading it (EIO) comes back as one, where a mapping would
/// raise SIGBUS.
fn read_through(
    path: &Path,
    from: usize,
    until: usize,
    each: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = std::fs::File::open(path)?;
    reader.seek(SeekFrom::Start(from as u64))?;
    let mut buffer = vec![0; SequentialMap::WINDOW.min(until.saturating_sub(from).max(1))];
    let mut read = from;
    while read < until {
        let want = (until - read).min(buffer.len());
        match reader.read(&mut buffer[..want]) {
            Ok(0) => return Err(corrupt(format!("it holds {read} of its {until} bytes"))),
            Ok(n) => {
                if each(&buffer[..n]).is_break() {
                    return Ok(());
                }
                read += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Maps `file` once it is long enough to hold what was received and, for a file checked by its
/// pages, once they pass [`check_stored`]: the mapping comes back rewound, none of it resident.
fn open_checked(
    file: &SpoolFile,
    size: SegmentSize,
    system_id: SystemId,
) -> std::io::Result<SequentialMap> {
    let len = file.len;
    let found = std::fs::metadata(&file.path)?.len();
    if found < len as u64 {
        return Err(corrupt(format!("it holds {found} of its {len} bytes")));
    }
    // SAFETY: a complete segment or a kept tail is never written again while mapped (only
    // `zero_after_switch` writes one, once its reader dropped the mapping); it is only removed,
    // after its upload.
    let map = unsafe { SequentialMap::open(&file.path)? };
    if file.expect == Expect::Pages {
        // A pass of its own, before the next one's, handing its pages back as it goes.
        check_stored(
            file.segment,
            received_part(&map, len)?,
            size,
            system_id,
            file.complete,
            &mut |end| map.done_before(end),
        )
        .map_err(|e| corrupt(e.to_string()))?;
        map.done_before(usize::MAX);
        map.rewind();
    }
    Ok(map)
}

/// Where the WAL in damaged copy `path` of complete segment `segment` stops being what
/// PostgreSQL wrote, at a record's start: that of the first record that fails PostgreSQL's
/// checks, that crosses into a page whose header does, or that a copy cut short cuts. `None`
/// when no record ends before that (or the first page does not read as WAL), or when the
/// whole segment reads as WAL (the damage is where no check covers it).
pub(super) fn valid_end(
    path: &Path,
    segment: SegmentName,
    size: SegmentSize,
) -> std::io::Result<Option<Lsn>> {
    let len = std::fs::metadata(path)?.len().min(u64::from(size.bytes())) as usize;
    // read(2) first: a disk error is an error then, not a SIGBUS in the mapped pass.
    crc_by_reading(path, len)?;
    // SAFETY: a damaged copy is never written; it is only renamed or removed.
    let map = unsafe { SequentialMap::open(path)? };
    let content = received_part(&map, len)?;
    let scanned =
        SegmentIndex::of_segment_sequentially(segment, content, &mut |pos| map.done_before(pos));
    map.done_before(usize::MAX);
    let first_record = segment
        .start_lsn(size)
        .map(|start| Lsn(start.0 + crate::wal::LONG_HEADER_BYTES as u64));
    Ok(scanned
        .ok()
        .filter(|index| index.end.valid_end().is_some())
        .map(|index| index.valid_end)
        .filter(|&end| Some(end) > first_record))
}

/// Fails with [`corrupt`] unless `found`, the CRC-32 of a file's bytes, is `received`.
pub(super) fn check_crc(found: u32, received: u32) -> std::io::Result<()> {
    if found == received {
        return Ok(());
    }
    Err(corrupt(format!(
        "its CRC-32 is {found:08x}, {received:08x} was received"
    )))
}

/// A spool file that does not hold what was received: `InvalidData`, which nothing else
/// reading the spool returns.
pub(super) fn corrupt(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Compresses the first `len` bytes of a spool file (all of it when `None`) and, given its
/// segment, indexes it: two passes over `map`, which hand back the pages behind them. The
/// content that comes back keeps the mapping, for the upload to compare with an object found
/// already archived. A file shorter than `len` is [`corrupt`].
pub(super) fn encode_map(
    map: SequentialMap,
    len: Option<usize>,
    level: i32,
    index: Option<SegmentName>,
) -> std::io::Result<Encoded> {
    let len = len.unwrap_or(map.bytes().len());
    let content = received_part(&map, len)?;
    let envelope =
        envelope::encode_sequentially(level, content, SequentialMap::WINDOW, &mut |end| {
            map.done_before(end)
        })
        .map_err(std::io::Error::other)?;
    let crc = envelope::Header::parse(&envelope)
        .map_err(std::io::Error::other)?
        .content_crc;
    let index = index.map(|segment| {
        map.rewind();
        // A bug the scan meets fails the index (archived without one), not the process.
        let index = crate::blocking::catching_panic(|| {
            archive::index_now(segment, content, &mut |pos| map.done_before(pos))
        })
        .unwrap_or_else(|panic| Err(format!("the scan of {segment} failed: {panic}")));
        (segment, index)
    });
    // A scan that stopped early (at a switch, say) left its last window behind.
    map.done_before(usize::MAX);
    Ok(Encoded {
        content: map.into_bytes().slice(..len),
        envelope,
        crc,
        index,
    })
}

/// The first `len` bytes of `map`, those received; [`corrupt`] when the file is shorter.
fn received_part(map: &SequentialMap, len: usize) -> std::io::Result<&[u8]> {
    map.bytes()
        .get(..len)
        .ok_or_else(|| corrupt(format!("it holds {} of its {len} bytes", map.bytes().len())))
}

/// A spool file compressed (and indexed), ready to upload.
pub(super) struct Encoded {
    /// The file's bytes that were compressed: a mapping whose pages were handed back.
    pub(super) content: Bytes,
    pub(super) envelope: Vec<u8>,
    /// The CRC-32 of the content, as the envelope records it.
    pub(super) crc: u32,
    /// A complete segment's time index.
    pub(super) index: Option<(SegmentName, Result<PreparedIndex, String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_a_spool_file_leaves_none_of_it_resident_whatever_the_match_window() {
        // Random bytes repeated 1.5 MiB apart: zstd matches each repeat against the copy
        // before it, further back than one window, which it may read only while the pass has
        // not handed that copy back (pages handed back and read again would stay resident).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let period: Vec<u8> = (0..3 << 19)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let content: Vec<u8> = period.iter().cycle().take(6 << 20).copied().collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        std::fs::write(&path, &content).unwrap();
        for level in [3, 9] {
            // SAFETY: nothing else touches the file.
            let map = unsafe { SequentialMap::open(&path).unwrap() };
            let encoded = encode_map(map, None, level, None).unwrap();
            assert!(
                encoded.envelope.len() < content.len() / 2,
                "level {level}: the repeats were found"
            );
            assert_eq!(
                crate::mapped::resident_kb(encoded.content.as_ptr()),
                0,
                "level {level}: the mapping is handed back whole"
            );
            assert_eq!(envelope::decode(&encoded.envelope).unwrap(), content);
        }
    }

    /// PostgreSQL 15 sample segment `n` (`good`) written to a spool file of a fresh directory,
    /// as an earlier run would leave it: checked by its pages.
    fn left_sample(
        n: u64,
        good: Vec<u8>,
    ) -> (
        tempfile::TempDir,
        SpoolFile,
        Vec<u8>,
        SegmentSize,
        crate::wal::LongPageHeader,
    ) {
        let head = crate::wal::LongPageHeader::parse(&good).unwrap();
        let size = head.segment_size().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let segment = crate::wal::sample::name(n);
        let file = SpoolFile {
            path: dir.path().join(segment.to_string()),
            segment,
            len: good.len(),
            complete: true,
            expect: Expect::Pages,
        };
        std::fs::write(&file.path, &good).unwrap();
        (dir, file, good, size, head)
    }

    #[test]
    fn a_damaged_copy_keeps_the_wal_before_its_damage() {
        let (dir, file, good, size, _) = left_sample(7, crate::wal::sample::segment_7());
        let segment = file.segment;
        let valid_end = |bytes: &[u8]| {
            std::fs::write(&file.path, bytes).unwrap();
            valid_end(&file.path, segment, size).unwrap()
        };
        assert_eq!(valid_end(&good), None, "a good copy has no damage");
        let mut bad = good.clone();
        bad[0x35140 + 30] ^= 0x10;
        let end = valid_end(&bad).unwrap();
        assert_eq!(end, Lsn(0x735140), "the damaged record's start");
        // Cut short, or a page header out of place: at the start of the record it cuts, or
        // that crosses into that page.
        let cut = valid_end(&good[..0x50000]).unwrap();
        assert!(cut > Lsn(0x740000) && cut <= Lsn(0x750000), "{cut}");
        let at_record = (cut.0 - 0x700000) as usize;
        assert_eq!(
            valid_end(&good[..at_record]),
            Some(cut),
            "{cut} is a record's start"
        );
        let mut bad_page = good.clone();
        bad_page[0x40000 + 8..0x40000 + 16].fill(0);
        let before_page = valid_end(&bad_page).unwrap();
        assert!(
            before_page < Lsn(0x740000) && before_page > Lsn(0x73e000),
            "{before_page}"
        );
        assert_eq!(
            valid_end(&good[..(before_page.0 - 0x700000) as usize]),
            Some(before_page)
        );
        // Kept as a tail holding those bytes, which the spool lists.
        std::fs::write(&file.path, &bad).unwrap();
        crate::spool::keep_valid_prefix(dir.path(), &file.path, segment, end, size).unwrap();
        let tail = crate::spool::tail_path(dir.path(), segment, end);
        assert_eq!(std::fs::read(&tail).unwrap(), &good[..0x35140]);
        assert_eq!(
            crate::spool::scan(dir.path()).unwrap().tails,
            [(segment, end)]
        );
        // A page header out of place in the first page: nothing before it is WAL.
        let mut bad = good.clone();
        bad[8..16].fill(0);
        assert_eq!(valid_end(&bad), None);
    }

    #[test]
    fn a_segment_an_earlier_run_left_damaged_inside_a_page_is_corrupt() {
        let (_dir, file, good, size, head) = left_sample(7, crate::wal::sample::segment_7());
        let encoded = read_back(&file, 1, size, head.system_id).unwrap();
        assert_eq!(envelope::decode(&encoded.envelope).unwrap(), good);
        let crc = check_back(&file, size, head.system_id).unwrap();
        assert_eq!(
            crc,
            crc32fast::hash(&good),
            "the check gives the content's CRC"
        );
        // Both readings refuse the same damage, and say it the same way.
        let refused = |file: &SpoolFile| {
            let e = read_back(file, 1, size, head.system_id).err().unwrap();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
            let checked = check_back(file, size, head.system_id).err().unwrap();
            assert_eq!(checked.kind(), std::io::ErrorKind::InvalidData, "{checked}");
            assert_eq!(checked.to_string(), e.to_string());
            e.to_string()
        };
        // One byte inside a commit record, far from any page header: the page check passes
        // it, the record's CRC-32C does not.
        let mut bad = good.clone();
        bad[0x35140 + 30] ^= 0x10;
        std::fs::write(&file.path, &bad).unwrap();
        let e = refused(&file);
        assert!(e.contains("invalid WAL at 0/735140"), "{e}");
        // The 4 kB after a page's first half zeroed, as a filesystem that lost a block leaves
        // it: no record where one must be, or one that fails its CRC.
        let mut bad = good.clone();
        bad[0x40000 + 4096..0x40000 + 8192].fill(0);
        std::fs::write(&file.path, &bad).unwrap();
        refused(&file);
        // Short, and a page header out of place.
        std::fs::write(&file.path, &good[..good.len() - 1]).unwrap();
        assert!(refused(&file).contains("holds"));
        let mut bad = good.clone();
        bad[0x40000 + 8..0x40000 + 16].fill(0);
        std::fs::write(&file.path, &bad).unwrap();
        refused(&file);
        // A segment this run wrote is checked against the CRC-32 it was received with instead.
        let file = SpoolFile {
            expect: Expect::Crc(crc32fast::hash(&bad)),
            ..file
        };
        assert!(read_back(&file, 1, size, head.system_id).is_ok());
        assert_eq!(
            check_back(&file, size, head.system_id).unwrap(),
            crc32fast::hash(&bad)
        );
        std::fs::write(&file.path, &good).unwrap();
        refused(&file);
    }

    #[test]
    fn a_segment_an_earlier_run_left_with_bytes_after_its_switch_is_repaired() {
        // helper-79 A4: such a file was archived, and PostgreSQL's own copy, pushed later,
        // was then refused as different content; refused instead, its segment was lost in
        // --synchronous mode where the server no longer had it (helper-84).
        let (_dir, file, good, size, head) = left_sample(8, crate::wal::sample::segment_8());
        // The switch record ends at 0/809568 (what pg_switch_wal returned): a byte in its
        // page after it, inside a later page, or the segment's last.
        for offset in [0x9568 + 7, 0x80000 + 100, 0xF_FFFF] {
            let mut bad = good.clone();
            bad[offset] = 0x5a;
            std::fs::write(&file.path, &bad).unwrap();
            assert_eq!(
                check_back(&file, size, head.system_id).unwrap(),
                crc32fast::hash(&good)
            );
            assert_eq!(
                std::fs::read(&file.path).unwrap(),
                good,
                "zeroed in the file"
            );
            std::fs::write(&file.path, &bad).unwrap();
            let encoded = read_back(&file, 1, size, head.system_id).unwrap();
            assert_eq!(envelope::decode(&encoded.envelope).unwrap(), good);
            assert_eq!(encoded.crc, crc32fast::hash(&good));
        }
        // A byte before the switch record's end is damage the records show: refused.
        let mut bad = good.clone();
        bad[0x9568 - 3] ^= 0x10;
        std::fs::write(&file.path, &bad).unwrap();
        let e = check_back(&file, size, head.system_id).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn a_kept_tail_is_checked_and_compressed_with_none_of_it_left_resident() {
        use crate::wal::page::tests::header_bytes;
        use crate::wal::{SegNo, TimelineId};
        const SEGMENT_BYTES: usize = 4 << 20;
        const BLOCK: usize = 8192;
        let size = SegmentSize::new(SEGMENT_BYTES as u32).unwrap();
        let segment = SegmentName::new(TimelineId(1), SegNo(3), size);
        let start = 3 * SEGMENT_BYTES as u64;
        // Every page with its header, the rest of each page not quite zeros.
        let mut wal = vec![0u8; SEGMENT_BYTES];
        for (n, page) in wal.chunks_mut(BLOCK).enumerate() {
            let mut header = header_bytes(1, start + (n * BLOCK) as u64, 42, SEGMENT_BYTES as u32);
            if n > 0 {
                header[2] = 0; // a short header
            }
            page[..header.len()].copy_from_slice(&header);
            page[BLOCK - 1] = n as u8;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = SpoolFile {
            path: dir.path().join("tail"),
            segment,
            len: SEGMENT_BYTES - 5000,
            complete: false,
            expect: Expect::Pages,
        };
        std::fs::write(&file.path, &wal).unwrap();
        let encoded = read_back(&file, 1, size, SystemId(42)).unwrap();
        // The page check is a pass of its own that hands its pages back: run over the
        // compressed content instead, it left every page it touched resident.
        assert_eq!(crate::mapped::resident_kb(encoded.content.as_ptr()), 0);
        assert_eq!(
            envelope::decode(&encoded.envelope).unwrap(),
            &wal[..file.len]
        );
        // And the check still refuses a page out of place.
        wal[5 * BLOCK + 8..5 * BLOCK + 16].copy_from_slice(&0u64.to_le_bytes());
        std::fs::write(&file.path, &wal).unwrap();
        let e = read_back(&file, 1, size, SystemId(42)).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }
}
