//! PostgreSQL write-ahead-log concepts, pure and free of I/O: positions, timelines, segment
//! numbers, the names of the files PostgreSQL archives, long page headers, timeline history
//! files, the system identifier in `pg_control`, and the commits, aborts and restore points
//! recorded in a segment.

mod control;
mod history;
mod lsn;
mod name;
pub(crate) mod page;
pub mod page_stream;
mod records;
#[cfg(test)]
pub(crate) mod sample;
mod validate;
pub mod version;

pub use control::{CONTROL_FILE_PATH, parse_control_file, system_id_from_control_file};
pub use history::{HistoryEntry, parse_history, switch_point_in};
pub use lsn::Lsn;
pub(crate) use name::upper_hex;
pub use name::{SegmentName, WalFileName};
pub use page::{HeadCapture, LONG_HEADER_BYTES, LongPageHeader, OwnPageAfter, PageHeaderError};
pub use records::{
    Crossing, InvalidWal, PgTimestamp, RecordError, RestorePoint, ScanEnd, SegmentRecords, XactEnd,
    XactKind, scan_segment, scan_segment_sequentially,
};
pub use validate::{FileFacts, ValidationError, validate_file, validate_segment_head};

use std::fmt;

/// A timeline identifier (PostgreSQL's `TimeLineID`); valid timelines start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A cluster's system identifier, set by initdb and shared by every server that replays the
/// cluster's WAL: the namespace of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SystemId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u64>() {
            Ok(id) if id != 0 => Ok(SystemId(id)),
            _ => Err(format!(
                "invalid system identifier {s:?}: expected a non-zero decimal number as printed by pg_controldata"
            )),
        }
    }
}

/// The size of a WAL segment in bytes: a power of two from 1 MiB to 1 GiB (initdb `--wal-segsize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize(u32);

impl SegmentSize {
    /// The smallest segment size PostgreSQL accepts.
    pub const MIN_BYTES: u32 = 1 << 20;
    /// The largest segment size PostgreSQL accepts.
    pub const MAX_BYTES: u32 = 1 << 30;
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    /// Accepts `bytes` when it is a valid segment size.
    pub fn new(bytes: u32) -> Option<Self> {
        (bytes.is_power_of_two() && (Self::MIN_BYTES..=Self::MAX_BYTES).contains(&bytes))
            .then_some(SegmentSize(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// How many segments one "xlogid" (4 GiB of WAL, the middle part of a segment name) holds.
    #[doc(alias = "XLogSegmentsPerXLogId")]
    pub fn segments_per_xlog_id(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }

    /// Every valid segment size, smallest first.
    pub fn all() -> impl Iterator<Item = SegmentSize> {
        (20..=30).map(|shift| SegmentSize(1 << shift))
    }
}

impl fmt::Display for SegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.0 >> 20)
    }
}

/// A segment number: the WAL position divided by the segment size (PostgreSQL's `XLogSegNo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegNo(pub u64);

impl SegNo {
    /// The segment holding `lsn`.
    pub fn containing(lsn: Lsn, size: SegmentSize) -> SegNo {
        SegNo(lsn.0 / u64::from(size.bytes()))
    }

    /// The position of the segment's first byte.
    pub fn start_lsn(self, size: SegmentSize) -> Lsn {
        Lsn(self.0 * u64::from(size.bytes()))
    }
}
