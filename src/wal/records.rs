//! The records of one WAL segment, read from its bytes alone: every transaction commit and
//! abort (with its time), every restore point, and where the valid records end. This is what
//! a per-segment index needs to answer "which segments does recovery to time T or to restore
//! point N read".
//!
//! The reader follows PostgreSQL's own (xlogreader.c): each page header is checked (magic,
//! flags, address, timeline), records are reassembled across pages, and each record's length,
//! resource manager, link to the previous record, CRC-32C and block headers are checked. The
//! first record that fails is where valid WAL ends, as it is for PostgreSQL's recovery: that
//! is reported in [`ScanEnd`], not as an error.
//!
//! Page header layout (xlog_internal.h `XLogPageHeaderData`; 24 bytes, or the 40-byte long
//! form on a segment's first page, see [`LongPageHeader`]):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | `xlp_magic` |
//! | 2 | 2 | `xlp_info`: `XLP_FIRST_IS_CONTRECORD` 0x1, `XLP_LONG_HEADER` 0x2, … (0xF in all) |
//! | 4 | 4 | `xlp_tli` |
//! | 8 | 8 | `xlp_pageaddr` |
//! | 16 | 4 | `xlp_rem_len`: bytes of a record begun on an earlier page that this page continues |
//!
//! Records start at 8-byte (MAXALIGN) boundaries and never inside a page header. All layouts
//! and constants used here are the same in PostgreSQL 13 to 18 except two, decided by the
//! version the page magic names: the compression bits of full-page images (changed in 15) and
//! the size of a dropped-statistics entry in transaction records (new in 15, grown in 18).

mod decode;
mod scan;
#[cfg(test)]
mod tests;

use thiserror::Error;

use super::{LongPageHeader, Lsn, PageHeaderError, SegmentSize, version};

/// PostgreSQL's `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// PostgreSQL's epoch, 2000-01-01, in microseconds since the Unix epoch.
    const EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

    /// Microseconds since 1970-01-01 00:00:00 UTC, unless that overflows (PostgreSQL's
    /// `infinity` and `-infinity` are `i64::MAX` and `i64::MIN`).
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(Self::EPOCH_UNIX_MICROS)
    }

    /// The instant `micros` microseconds since 1970-01-01 00:00:00 UTC, unless that overflows.
    pub fn from_unix_micros(micros: i64) -> Option<PgTimestamp> {
        micros.checked_sub(Self::EPOCH_UNIX_MICROS).map(PgTimestamp)
    }

    /// The same instant as a [`jiff::Timestamp`], when jiff can represent it.
    pub fn to_timestamp(self) -> Option<jiff::Timestamp> {
        jiff::Timestamp::from_microsecond(self.unix_micros()?).ok()
    }
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XactKind {
    /// `XLOG_XACT_COMMIT`.
    Commit,
    /// `XLOG_XACT_ABORT`.
    Abort,
    /// `XLOG_XACT_COMMIT_PREPARED`: `COMMIT PREPARED` of a two-phase transaction.
    CommitPrepared,
    /// `XLOG_XACT_ABORT_PREPARED`: `ROLLBACK PREPARED` of a two-phase transaction.
    AbortPrepared,
}

impl XactKind {
    /// Whether the transaction committed.
    pub fn is_commit(self) -> bool {
        matches!(self, XactKind::Commit | XactKind::CommitPrepared)
    }
}

/// A transaction's commit or abort record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XactEnd {
    /// Commit or abort, direct or of a prepared transaction.
    pub kind: XactKind,
    /// The transaction's id; for a prepared transaction, the id it was prepared with.
    pub xid: u32,
    /// Where the record starts (what pg_waldump prints as `lsn`).
    pub lsn: Lsn,
    /// Where the next record may start: the record's end, rounded up to 8 bytes.
    pub end: Lsn,
    /// `xact_time`: the commit or abort time (what `pg_xact_commit_timestamp` returns, and
    /// what `recovery_target_time` is compared with).
    pub time: PgTimestamp,
}

/// A named restore point (`pg_create_restore_point`), a possible `recovery_target_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePoint {
    /// The name, up to 63 bytes; bytes that are not UTF-8 are replaced.
    pub name: String,
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the record ends, rounded up to 8 bytes: what `pg_create_restore_point` returned.
    pub end: Lsn,
    /// When it was created.
    pub time: PgTimestamp,
}

/// Why the scan of a segment stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// The last record ended at the segment's end: the next one starts in the next segment.
    SegmentEnd,
    /// An `XLOG_SWITCH` record (`pg_switch_wal`, `archive_timeout`): the rest of the segment
    /// is unused.
    Switch,
    /// Zero where the next record's length should be: the rest was never written (a partial
    /// segment). This is how PostgreSQL usually finds the end of WAL.
    EndOfWal {
        /// Where the next record would have started.
        at: Lsn,
    },
    /// A record starts in this segment and continues in the next one; its header, when
    /// wholly in this segment, passed the checks. Neither segment's scan reads it whole.
    Continues {
        /// Where the record starts.
        start: Lsn,
        /// Its length (`xl_tot_len`).
        total_len: u32,
        /// What it is, as far as its header tells.
        record: Crossing,
    },
    /// The bytes given end before the segment does (the header's segment size).
    Truncated {
        /// The position of the first missing byte.
        at: Lsn,
    },
    /// A record whose CRC checks, so PostgreSQL wrote it, but whose content this scanner
    /// cannot read (a layout it does not know): the scan stops here, and what follows is not
    /// known, but nothing says the WAL is damaged.
    Uninterpreted {
        /// Where the record starts.
        at: Lsn,
        /// What could not be read.
        problem: InvalidWal,
    },
    /// A page header or record that PostgreSQL's reader would refuse: valid WAL ends here.
    Invalid {
        /// Where the refused record (or page) starts.
        at: Lsn,
        /// What is wrong with it.
        problem: InvalidWal,
    },
}

/// What a record that continues into the next segment is, from its header alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Crossing {
    /// Its header is not wholly in the segment: it may be anything.
    Unknown,
    /// A transaction's commit or abort.
    XactEnd,
    /// A restore point.
    RestorePoint,
    /// Something else.
    Other,
}

/// What makes a page or record invalid (and so ends the valid WAL in a segment).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidWal {
    /// A page's magic differs from the segment's first page.
    #[error("page magic 0x{found:04X} differs from the segment's 0x{expected:04X}")]
    PageMagic {
        /// The first page's magic.
        expected: u16,
        /// This page's.
        found: u16,
    },
    /// Unknown `xlp_info` bits.
    #[error("invalid page info bits 0x{0:04X}")]
    PageInfo(u16),
    /// A long page header inside the segment disagrees with the first page's.
    #[error("long page header disagrees with the segment's first page")]
    LongHeaderMismatch,
    /// `xlp_pageaddr` is not the page's position (often: a recycled segment's old content).
    #[error("page claims to be at {found}")]
    PageAddress {
        /// What the page header says.
        found: Lsn,
    },
    /// A page's timeline is older than the previous page's.
    #[error("page timeline {found} is older than the previous page's {previous}")]
    TimelineBack {
        /// This page's timeline.
        found: u32,
        /// The previous page's.
        previous: u32,
    },
    /// A page where a record should continue lacks `XLP_FIRST_IS_CONTRECORD`.
    #[error("page should continue the previous record but is not marked as a continuation")]
    MissingContinuation,
    /// A page marked as continuing a record where a new record should start.
    #[error("page continues a record where a new record should start")]
    UnexpectedContinuation,
    /// A continuation page's `xlp_rem_len` is not what the record still needs.
    #[error("page continues {found} bytes of a record that needs {expected} more")]
    ContinuationLength {
        /// Bytes the record still needs.
        expected: u32,
        /// `xlp_rem_len`.
        found: u32,
    },
    /// `xl_tot_len` shorter than a record header.
    #[error("record length {0} is shorter than a record header")]
    RecordLength(u32),
    /// `xl_rmid` names no resource manager.
    #[error("invalid resource manager id {0}")]
    ResourceManager(u8),
    /// `xl_prev` is not the previous record.
    #[error("record's link {found} is not the previous record {expected}")]
    PrevLink {
        /// `xl_prev`.
        found: Lsn,
        /// Where the previous record starts.
        expected: Lsn,
    },
    /// The first record's `xl_prev` is not before it.
    #[error("record's link {0} does not point backwards")]
    PrevNotBefore(Lsn),
    /// The CRC does not match.
    #[error("CRC-32C 0x{computed:08X} differs from the record's 0x{stored:08X}")]
    Crc {
        /// `xl_crc`.
        stored: u32,
        /// What the bytes give.
        computed: u32,
    },
    /// The record ends inside one of its parts.
    #[error("record ends inside its {0}")]
    Truncated(&'static str),
    /// The record's parts are inconsistent.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Why a segment's bytes cannot be scanned at all.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The first page header is not a supported long page header.
    #[error("not a WAL segment: {0}")]
    Header(#[from] PageHeaderError),
    /// `xlp_xlog_blcksz` is not a power of two from 1 kB to 64 kB.
    #[error("WAL page size {0} in the first page header is not a power of two from 1 kB to 64 kB")]
    PageSize(u32),
    /// More bytes than the header's segment size.
    #[error("{actual} bytes are more than one segment of {size}")]
    TooLong {
        /// The bytes given.
        actual: usize,
        /// The header's segment size.
        size: SegmentSize,
    },
    /// The segment does not start where the caller said.
    #[error("segment starts at {found}, expected {expected}")]
    WrongStart {
        /// What the caller said.
        expected: Lsn,
        /// `xlp_pageaddr` of the first page.
        found: Lsn,
    },
    /// The start is not a multiple of the segment size.
    #[error("{start} is not the start of a {size} segment")]
    Unaligned {
        /// What the caller said.
        start: Lsn,
        /// The header's segment size.
        size: SegmentSize,
    },
}

/// Everything found in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRecords {
    /// Valid records that start and end in the segment.
    pub records: usize,
    /// Commits and aborts, in WAL order.
    pub transactions: Vec<XactEnd>,
    /// Restore points, in WAL order.
    pub restore_points: Vec<RestorePoint>,
    /// Just past the last valid record (rounded up to 8 bytes, as PostgreSQL's `EndRecPtr`):
    /// where the next record starts. Without any valid record, where the first would start.
    pub valid_end: Lsn,
    /// Why the scan stopped.
    pub end: ScanEnd,
}

impl SegmentRecords {
    /// The earliest and latest commit or abort times. Commit times are taken just before
    /// the record is inserted, so they are not strictly in WAL order: this is the minimum and
    /// maximum, not the first and last record's.
    pub fn xact_time_range(&self) -> Option<(PgTimestamp, PgTimestamp)> {
        let times = self.transactions.iter().map(|t| t.time);
        Some((times.clone().min()?, times.max()?))
    }
}

/// Reads the records of the segment starting at `segment_start` from its bytes.
///
/// The segment and page sizes are the first page header's. `bytes` may be shorter than the
/// segment (the scan then ends with [`ScanEnd::Truncated`] or earlier); it may not be longer.
/// Never panics; memory use is bounded by the length of `bytes`.
pub fn scan_segment(bytes: &[u8], segment_start: Lsn) -> Result<SegmentRecords, RecordError> {
    scan_segment_sequentially(bytes, segment_start, &mut |_| {})
}

/// [`scan_segment`], calling `done_before(offset)` as the walk passes `offset`: no byte before
/// it is read again, so a caller reading a mapped file can hand those pages back.
pub fn scan_segment_sequentially(
    bytes: &[u8],
    segment_start: Lsn,
    done_before: &mut dyn FnMut(usize),
) -> Result<SegmentRecords, RecordError> {
    let first = LongPageHeader::parse(bytes)?;
    let size = first.segment_size()?;
    let page_size = first.block_size_bytes;
    if !page_size.is_power_of_two() || !(1024..=65536).contains(&page_size) {
        return Err(RecordError::PageSize(page_size));
    }
    if bytes.len() > size.bytes() as usize {
        return Err(RecordError::TooLong {
            actual: bytes.len(),
            size,
        });
    }
    if segment_start.0 % u64::from(size.bytes()) != 0 {
        return Err(RecordError::Unaligned {
            start: segment_start,
            size,
        });
    }
    if first.page_address != segment_start {
        return Err(RecordError::WrongStart {
            expected: segment_start,
            found: first.page_address,
        });
    }
    let major = version::by_page_magic(first.magic).map_or(0, |m| m.number);
    Ok(scan::Scanner::new(bytes, first, size, major).run(done_before))
}
