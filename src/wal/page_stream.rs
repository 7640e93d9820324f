//! Checks the page headers of WAL as it streams in, before any of it is stored: pure and free
//! of I/O, fed the bytes of each message in order, whatever their boundaries.
//!
//! Every WAL page (`XLOG_BLCKSZ` bytes) starts with a header (`XLogPageHeaderData`): the
//! magic of the server's major version, flags, the timeline of the page's first record and
//! the page's own position (`xlp_pageaddr`). The first page of each segment carries the long
//! header too: the cluster's system identifier, the segment size and the page size. A page
//! whose header says anything else is not the WAL of this cluster at this position. Pages
//! after a WAL switch are zeros up to the segment's end, headers included: those pass, but
//! a page with a header after such a page in the same segment does not (what a write lost
//! in the middle of a file looks like).
//!
//! [`check_stored`] applies the same checks to WAL read back from storage.

use thiserror::Error;

use super::{LongPageHeader, Lsn, PageHeaderError, SegmentName, SegmentSize, SystemId, TimelineId};

/// Bytes of the page header fields checked on every page (magic, info, timeline, address).
const SHORT_CHECKED_BYTES: usize = 16;
/// Bytes of the long header (`SizeOfXLogLongPHD`), checked on each segment's first page.
const LONG_CHECKED_BYTES: usize = super::LONG_HEADER_BYTES;
/// `XLP_LONG_HEADER` in `xlp_info`.
const XLP_LONG_HEADER: u16 = 0x0002;

/// What the pages of the stream must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// `XLOG_PAGE_MAGIC` of the server's major version.
    pub magic: u16,
    /// The cluster's system identifier.
    pub system_id: SystemId,
    /// The segment size.
    pub segment_size: SegmentSize,
    /// The WAL page size (`wal_block_size`).
    pub block_size: u32,
    /// The timeline streamed: no page may carry a newer one.
    pub timeline: TimelineId,
}

/// A page header that does not belong at its place in the stream.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PageError {
    /// The magic is not the server's version's.
    #[error(
        "the page at {at} has magic 0x{found:04X}, not 0x{expected:04X} of the server's version"
    )]
    Magic {
        /// The page's position.
        at: Lsn,
        /// The magic expected.
        expected: u16,
        /// The magic found.
        found: u16,
    },
    /// `xlp_pageaddr` is not the page's position.
    #[error("the page at {at} says it is at {found}")]
    Address {
        /// The page's position.
        at: Lsn,
        /// The address in its header.
        found: Lsn,
    },
    /// The timeline is 0 or newer than the one streamed.
    #[error("the page at {at} is on timeline {found}, but timeline {streamed} is streamed")]
    Timeline {
        /// The page's position.
        at: Lsn,
        /// The timeline in its header.
        found: u32,
        /// The timeline streamed.
        streamed: TimelineId,
    },
    /// A segment's first page without the long header, or another page with it.
    #[error(
        "the page at {at} has xlp_info 0x{info:04X}: the long-header flag belongs on segment starts only"
    )]
    LongFlag {
        /// The page's position.
        at: Lsn,
        /// Its `xlp_info`.
        info: u16,
    },
    /// The long header names another cluster.
    #[error("the segment at {at} belongs to cluster {found}, not to cluster {expected}")]
    SystemId {
        /// The segment's position.
        at: Lsn,
        /// The cluster streamed.
        expected: SystemId,
        /// The cluster in the header.
        found: SystemId,
    },
    /// The long header's segment or page size differs from the server's.
    #[error(
        "the segment at {at} says segments of {segment_size} bytes and pages of {block_size}, not {expected_segment} and {expected_block}"
    )]
    Sizes {
        /// The segment's position.
        at: Lsn,
        /// `xlp_seg_size`.
        segment_size: u32,
        /// `xlp_xlog_blcksz`.
        block_size: u32,
        /// The server's segment size.
        expected_segment: u32,
        /// The server's page size.
        expected_block: u32,
    },
    /// A page with a header after a page of zeros in the same segment: WAL goes on after a
    /// switch only at the next segment's start.
    #[error("the page at {at} follows a page of zeros at {zeros} in the same segment")]
    AfterZeros {
        /// The page's position.
        at: Lsn,
        /// The first page of zeros before it.
        zeros: Lsn,
    },
}

impl PageError {
    /// Whether the page comes from another cluster or another kind of server altogether,
    /// which reconnecting to the same server cannot cure.
    pub fn is_foreign(&self) -> bool {
        matches!(
            self,
            PageError::Magic { .. } | PageError::SystemId { .. } | PageError::Sizes { .. }
        )
    }
}

/// Checks page headers of a stream that begins at a page boundary.
#[derive(Debug)]
pub struct PageChecker {
    expected: Expected,
    /// The position of the next byte fed.
    position: Lsn,
    /// The start of the current page's header, while it is incomplete.
    header: Vec<u8>,
    /// The first page of zeros in the current segment, once one was seen.
    zeros: Option<Lsn>,
}

impl PageChecker {
    /// A checker for a stream starting at `start`, which must be a page boundary (streams
    /// start at segment starts).
    pub fn new(expected: Expected, start: Lsn) -> PageChecker {
        PageChecker {
            expected,
            position: start,
            header: Vec::with_capacity(LONG_CHECKED_BYTES),
            zeros: None,
        }
    }

    /// Where the next byte fed belongs.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// Checks the next bytes of the stream. After an error the checker stays where it was:
    /// nothing of `data` counts as checked.
    pub fn check(&mut self, data: &[u8]) -> Result<(), PageError> {
        let (mut position, mut header, mut zeros) =
            (self.position, self.header.clone(), self.zeros);
        let mut rest = data;
        while !rest.is_empty() {
            let block = u64::from(self.expected.block_size);
            let in_page = position.0 % block;
            let page = Lsn(position.0 - in_page);
            let wanted = self.header_len(page);
            if (in_page as usize) < wanted {
                let take = (wanted - in_page as usize).min(rest.len());
                header.extend_from_slice(&rest[..take]);
                if header.len() == wanted {
                    if self.is_segment_start(page) {
                        zeros = None;
                    }
                    let zeroed = self.check_header(page, &header, zeros)?;
                    if zeroed && zeros.is_none() {
                        zeros = Some(page);
                    }
                    header.clear();
                }
            }
            let take = (block - in_page).min(rest.len() as u64);
            position = Lsn(position.0 + take);
            rest = &rest[take as usize..];
        }
        (self.position, self.header, self.zeros) = (position, header, zeros);
        Ok(())
    }

    /// How many header bytes of the page at `page` are checked.
    fn header_len(&self, page: Lsn) -> usize {
        if self.is_segment_start(page) {
            LONG_CHECKED_BYTES
        } else {
            SHORT_CHECKED_BYTES
        }
    }

    fn is_segment_start(&self, page: Lsn) -> bool {
        page.0 % u64::from(self.expected.segment_size.bytes()) == 0
    }

    /// Checks the header of the page at `at`; says whether it is zeros (after a switch).
    /// `zeros` is the first page of zeros seen earlier in the segment.
    fn check_header(&self, at: Lsn, h: &[u8], zeros: Option<Lsn>) -> Result<bool, PageError> {
        let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let expected = &self.expected;
        let segment_start = self.is_segment_start(at);
        if !segment_start && h.iter().all(|&b| b == 0) {
            // The rest of a segment after a WAL switch is zeros (PostgreSQL 11 and later),
            // and the server sends it as it is; WAL always goes on with a segment start.
            return Ok(true);
        }
        if let Some(zeros) = zeros {
            return Err(PageError::AfterZeros { at, zeros });
        }
        let magic = u16_at(0);
        if magic != expected.magic {
            return Err(PageError::Magic {
                at,
                expected: expected.magic,
                found: magic,
            });
        }
        let info = u16_at(2);
        if (info & XLP_LONG_HEADER != 0) != segment_start {
            return Err(PageError::LongFlag { at, info });
        }
        if segment_start {
            // Another cluster's segment is named as such, whatever its page addresses say.
            self.check_long_header(at, h)?;
        }
        let found = Lsn(u64_at(8));
        if found != at {
            return Err(PageError::Address { at, found });
        }
        let timeline = u32_at(4);
        if timeline == 0 || timeline > expected.timeline.0 {
            return Err(PageError::Timeline {
                at,
                found: timeline,
                streamed: expected.timeline,
            });
        }
        Ok(false)
    }

    /// The long header's cluster and sizes.
    fn check_long_header(&self, at: Lsn, h: &[u8]) -> Result<(), PageError> {
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let expected = &self.expected;
        let system_id = SystemId(u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")));
        if system_id != expected.system_id {
            return Err(PageError::SystemId {
                at,
                expected: expected.system_id,
                found: system_id,
            });
        }
        let (segment_size, block_size) = (u32_at(32), u32_at(36));
        if segment_size != expected.segment_size.bytes() || block_size != expected.block_size {
            return Err(PageError::Sizes {
                at,
                segment_size,
                block_size,
                expected_segment: expected.segment_size.bytes(),
                expected_block: expected.block_size,
            });
        }
        Ok(())
    }
}

/// Why WAL read back from storage is not what was stored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoredError {
    /// The first page is not the start of the segment.
    #[error(transparent)]
    Head(#[from] PageHeaderError),
    /// A later page does not follow.
    #[error(transparent)]
    Page(#[from] PageError),
    /// More bytes than a segment holds.
    #[error("{found} bytes, more than a segment of {size} holds")]
    TooLong {
        /// The bytes read.
        found: u64,
        /// The segment size.
        size: SegmentSize,
    },
}

/// Checks the page headers of WAL read back from storage: `content` is segment `segment`
/// of cluster `system_id` from its start, all of it when `complete`, else what was received
/// of it. Its first page must be the segment's start, and every page after it must follow
/// as [`PageChecker`] says, with the first page's magic and page size. This finds a file
/// that is empty or cut short, zeros over its first page, or a page of zeros with WAL after
/// it; not zeros to the segment's end (they look like the rest of a segment after a switch),
/// nor zeros or a wrong byte inside a page: that takes the CRC of what was written.
///
/// The pages are checked in order, [`CHECK_CHUNK_BYTES`] at a time; after each chunk,
/// `done_before` is told the offset the check has passed, so a caller reading a mapping can
/// hand back what lies behind it.
pub fn check_stored(
    segment: SegmentName,
    content: &[u8],
    size: SegmentSize,
    system_id: SystemId,
    complete: bool,
    done_before: &mut dyn FnMut(usize),
) -> Result<(), StoredError> {
    let found = content.len() as u64;
    if found > u64::from(size.bytes()) {
        return Err(StoredError::TooLong { found, size });
    }
    let head = LongPageHeader::parse(content)?;
    let length = if complete {
        found
    } else {
        u64::from(size.bytes())
    };
    head.check_segment(segment, length)?;
    let start = segment
        .start_lsn(size)
        .ok_or(PageHeaderError::NameOutOfRange {
            name: segment,
            size,
        })?;
    let expected = Expected {
        magic: head.magic,
        system_id,
        segment_size: size,
        block_size: head.block_size_bytes,
        timeline: segment.timeline,
    };
    let mut checker = PageChecker::new(expected, start);
    let mut passed = 0;
    for chunk in content.chunks(CHECK_CHUNK_BYTES) {
        checker.check(chunk)?;
        passed += chunk.len();
        done_before(passed);
    }
    Ok(())
}

/// How much of a stored file [`check_stored`] checks between two calls of its `done_before`.
pub const CHECK_CHUNK_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::tests::header_bytes;

    const MIB: u32 = 1 << 20;
    const BLOCK: usize = 8192;

    fn expected() -> Expected {
        Expected {
            magic: 0xD110,
            system_id: SystemId(42),
            segment_size: SegmentSize::new(MIB).unwrap(),
            block_size: BLOCK as u32,
            timeline: TimelineId(2),
        }
    }

    /// Three pages from the start of segment 5: a long header, then two short ones.
    fn pages(sysid: u64) -> Vec<u8> {
        let start = 5 * u64::from(MIB);
        let mut wal = vec![0u8; 3 * BLOCK];
        wal[..40].copy_from_slice(&header_bytes(1, start, sysid, MIB));
        for page in 1..3 {
            let mut short = header_bytes(2, start + (page * BLOCK) as u64, sysid, MIB);
            short[2] = 0; // no long header
            wal[page * BLOCK..page * BLOCK + 24].copy_from_slice(&short[..24]);
        }
        wal
    }

    fn start() -> Lsn {
        Lsn(5 * u64::from(MIB))
    }

    #[test]
    fn accepts_real_looking_pages_whatever_the_message_boundaries() {
        let wal = pages(42);
        for cut in [1, 7, 16, 39, 40, 41, 8191, 8192, 8200, 20000] {
            let mut checker = PageChecker::new(expected(), start());
            checker.check(&wal[..cut]).unwrap();
            checker.check(&wal[cut..]).unwrap();
            assert_eq!(checker.position(), Lsn(start().0 + wal.len() as u64));
        }
        let mut bytewise = PageChecker::new(expected(), start());
        for b in &wal {
            bytewise.check(std::slice::from_ref(b)).unwrap();
        }
    }

    #[test]
    fn zeroed_pages_after_a_switch_pass_but_not_at_a_segment_start() {
        let mut wal = pages(42);
        wal[BLOCK..].fill(0);
        PageChecker::new(expected(), start()).check(&wal).unwrap();
        let e = PageChecker::new(expected(), start())
            .check(&vec![0; BLOCK])
            .unwrap_err();
        assert!(matches!(e, PageError::Magic { found: 0, .. }), "{e}");
    }

    #[test]
    fn a_page_with_a_header_after_zeros_is_refused_until_the_next_segment() {
        let mut wal = pages(42);
        wal[BLOCK..2 * BLOCK].fill(0);
        let e = PageChecker::new(expected(), start())
            .check(&wal)
            .unwrap_err();
        assert_eq!(
            e,
            PageError::AfterZeros {
                at: Lsn(start().0 + 2 * BLOCK as u64),
                zeros: Lsn(start().0 + BLOCK as u64)
            }
        );
        // Zeros to a segment's end, then the next segment: WAL after a switch.
        let mut checker = PageChecker::new(expected(), start());
        let mut segment = pages(42);
        segment.resize(MIB as usize, 0);
        checker.check(&segment).unwrap();
        let mut next = vec![0u8; BLOCK];
        next[..40].copy_from_slice(&header_bytes(1, 6 * u64::from(MIB), 42, MIB));
        checker.check(&next).unwrap();
    }

    #[test]
    fn stored_wal_must_be_the_segment_it_is_named_for_with_every_page_in_place() {
        let size = SegmentSize::new(MIB).unwrap();
        let name = SegmentName::new(TimelineId(2), crate::wal::SegNo(5), size);
        let mut segment = pages(42);
        segment.resize(MIB as usize, 0);
        check_stored(name, &segment, size, SystemId(42), true, &mut |_| {}).unwrap();
        // What was received of it, a kept tail: any length, even a partial header.
        for cut in [40, 8200, 3 * BLOCK] {
            check_stored(
                name,
                &segment[..cut],
                size,
                SystemId(42),
                false,
                &mut |_| {},
            )
            .unwrap();
        }
        // Lost writes: empty, cut short, zeros, a hole.
        let e = check_stored(name, &[], size, SystemId(42), true, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, StoredError::Head(PageHeaderError::TooShort(0))),
            "{e}"
        );
        let e = check_stored(
            name,
            &segment[..3 * BLOCK],
            size,
            SystemId(42),
            true,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, StoredError::Head(PageHeaderError::WrongLength { .. })),
            "{e}"
        );
        let e = check_stored(
            name,
            &vec![0; MIB as usize],
            size,
            SystemId(42),
            true,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, StoredError::Head(PageHeaderError::BadMagic(0, _))),
            "{e}"
        );
        let mut hole = segment.clone();
        hole[BLOCK..2 * BLOCK].fill(0);
        let e = check_stored(name, &hole, size, SystemId(42), true, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, StoredError::Page(PageError::AfterZeros { .. })),
            "{e}"
        );
        // Another segment's bytes, or another cluster's.
        let other = SegmentName::new(TimelineId(2), crate::wal::SegNo(6), size);
        assert!(check_stored(other, &segment, size, SystemId(42), true, &mut |_| {}).is_err());
        let e = check_stored(name, &segment, size, SystemId(7), true, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, StoredError::Page(PageError::SystemId { .. })),
            "{e}"
        );
    }

    #[test]
    fn refuses_another_cluster_at_a_segment_start() {
        let mut checker = PageChecker::new(expected(), start());
        let refused = checker
            .check(&pages(43)[..30])
            .and(checker.check(&pages(43)[30..]));
        let error = refused.unwrap_err();
        assert!(error.is_foreign());
        assert!(matches!(error, PageError::SystemId { .. }), "{error}");
        // Nothing of the refused bytes counts.
        assert_eq!(checker.position(), Lsn(start().0 + 30));
    }

    #[test]
    fn refuses_misplaced_or_mislabelled_pages() {
        let mut wal = pages(42);
        wal[BLOCK + 8] ^= 0x20; // address of page 1
        let e = PageChecker::new(expected(), start())
            .check(&wal)
            .unwrap_err();
        assert!(
            matches!(e, PageError::Address { .. }) && !e.is_foreign(),
            "{e}"
        );

        let mut wal = pages(42);
        wal[2 * BLOCK + 4] = 3; // timeline 3 on a stream of timeline 2
        let e = PageChecker::new(expected(), start())
            .check(&wal)
            .unwrap_err();
        assert!(matches!(e, PageError::Timeline { found: 3, .. }), "{e}");

        let mut wal = pages(42);
        wal[BLOCK] = 0x0D; // another version's magic
        let e = PageChecker::new(expected(), start())
            .check(&wal)
            .unwrap_err();
        assert!(
            matches!(e, PageError::Magic { .. }) && e.is_foreign(),
            "{e}"
        );

        let mut wal = pages(42);
        wal[2] = 0; // a segment start without the long header
        let e = PageChecker::new(expected(), start())
            .check(&wal)
            .unwrap_err();
        assert!(matches!(e, PageError::LongFlag { .. }), "{e}");

        let mut wal = pages(42);
        wal[32..36].copy_from_slice(&(2 * MIB).to_le_bytes());
        let e = PageChecker::new(expected(), start())
            .check(&wal)
            .unwrap_err();
        assert!(matches!(e, PageError::Sizes { .. }), "{e}");
    }
}
