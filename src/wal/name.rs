//! The names of the files PostgreSQL archives: WAL segments (`%08X%08X%08X`), their `.partial`
//! versions, backup history files (`SEGMENT.%08X.backup`) and timeline history files
//! (`%08X.history`). Only upper-case hexadecimal is accepted, as in PostgreSQL's `IsXLogFileName`.

use std::fmt;
use std::str::FromStr;

use super::{Lsn, SegNo, SegmentSize, TimelineId};

/// The name of a WAL segment: timeline, then the segment number split into the "xlogid" (4 GiB
/// of WAL) and the segment within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[doc(alias = "XLogFileName")]
pub struct SegmentName {
    /// The timeline in the name (the first 8 digits).
    pub timeline: TimelineId,
    /// The high part of the segment number (the middle 8 digits).
    pub log: u32,
    /// The low part of the segment number (the last 8 digits).
    pub seg: u32,
}

impl SegmentName {
    /// The name of segment `segno` on `timeline`.
    pub fn new(timeline: TimelineId, segno: SegNo, size: SegmentSize) -> Self {
        let per_id = size.segments_per_xlog_id();
        SegmentName {
            timeline,
            log: (segno.0 / per_id) as u32,
            seg: (segno.0 % per_id) as u32,
        }
    }

    /// The segment number, or `None` when the last 8 digits are out of range for `size`
    /// (PostgreSQL's `XLogFromFileName` would misread such a name).
    pub fn segno(&self, size: SegmentSize) -> Option<SegNo> {
        let per_id = size.segments_per_xlog_id();
        (u64::from(self.seg) < per_id)
            .then(|| SegNo(u64::from(self.log) * per_id + u64::from(self.seg)))
    }

    /// The position of the segment's first byte, when the name is valid for `size`.
    pub fn start_lsn(&self, size: SegmentSize) -> Option<Lsn> {
        self.segno(size).map(|segno| segno.start_lsn(size))
    }

    fn parse(s: &str) -> Option<Self> {
        if s.len() != 24 || !s.is_ascii() {
            return None;
        }
        let timeline = TimelineId(hex8(&s[0..8])?);
        (timeline.0 != 0).then_some(SegmentName {
            timeline,
            log: hex8(&s[8..16])?,
            seg: hex8(&s[16..24])?,
        })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
    }
}

/// A file name that PostgreSQL archives and asks back for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileName {
    /// `000000010000000000000003`
    Segment(SegmentName),
    /// `000000010000000000000003.partial`
    Partial(SegmentName),
    /// `000000010000000000000003.00000028.backup`: the backup started at that offset.
    Backup {
        /// The segment in which the backup started.
        segment: SegmentName,
        /// The backup's start offset inside that segment.
        offset: u32,
    },
    /// `00000002.history`
    History(TimelineId),
}

impl WalFileName {
    /// The segment the file belongs to; `None` for history files.
    pub fn segment(&self) -> Option<SegmentName> {
        match *self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(s),
            WalFileName::Backup { segment, .. } => Some(segment),
            WalFileName::History(_) => None,
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::Backup { segment, offset } => write!(f, "{segment}.{offset:08X}.backup"),
            WalFileName::History(tli) => write!(f, "{:08X}.history", tli.0),
        }
    }
}

impl FromStr for WalFileName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name(s).ok_or_else(|| {
            format!(
                "{s:?} is not the name of a WAL segment (24 upper-case hex digits), a .partial \
                 segment, a .backup file or a timeline .history file"
            )
        })
    }
}

fn parse_name(s: &str) -> Option<WalFileName> {
    if let Some(tli) = s.strip_suffix(".history") {
        let tli = TimelineId(hex8(tli)?);
        // Timeline 1 has no history file, but PostgreSQL asks for one at a promotion from
        // timeline 1 (it copies the parent's history, if any): a valid name, never found.
        return (tli.0 > 0).then_some(WalFileName::History(tli));
    }
    if let Some(segment) = s.strip_suffix(".partial") {
        return SegmentName::parse(segment).map(WalFileName::Partial);
    }
    if let Some(rest) = s.strip_suffix(".backup") {
        let (segment, offset) = rest.split_once('.')?;
        return Some(WalFileName::Backup {
            segment: SegmentName::parse(segment)?,
            offset: hex8(offset)?,
        });
    }
    SegmentName::parse(s).map(WalFileName::Segment)
}

/// Exactly 8 upper-case hexadecimal digits.
fn hex8(s: &str) -> Option<u32> {
    upper_hex(s, 8).map(|n| n as u32)
}

/// Exactly `digits` (at most 16) upper-case hexadecimal digits, as PostgreSQL and walhalla
/// print numbers in file names: no sign, no lower case, no other length.
pub(crate) fn upper_hex(s: &str, digits: usize) -> Option<u64> {
    let ok = digits <= 16
        && s.len() == digits
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
    ok.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        let seg = SegmentName {
            timeline: TimelineId(1),
            log: 0,
            seg: 0x2A,
        };
        let cases = [
            ("00000001000000000000002A", WalFileName::Segment(seg)),
            (
                "00000001000000000000002A.partial",
                WalFileName::Partial(seg),
            ),
            (
                "00000001000000000000002A.00000028.backup",
                WalFileName::Backup {
                    segment: seg,
                    offset: 0x28,
                },
            ),
            ("0000000A.history", WalFileName::History(TimelineId(10))),
        ];
        for (text, name) in cases {
            assert_eq!(text.parse::<WalFileName>(), Ok(name));
            assert_eq!(name.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_postgres_would_not_write() {
        for bad in [
            "",
            "../x",
            "RECOVERYXLOG",
            "pg_wal/000000010000000000000001",
            "00000001000000000000002a",
            "00000001000000000000002",
            "0000000100000000000000020",
            "000000000000000000000001",
            "00000000.history",
            "0000000a.history",
            "00000001000000000000002A.backup",
            "00000001000000000000002A.0000028.backup",
            "00000001000000000000002A.partial.partial",
            "00000001000000000000002A.tmp",
            " 00000001000000000000002A",
            // 24 bytes, but not 24 characters (found by the wal_file_name fuzzer).
            "lF\0\0\0\0F\u{47B}FF/FF=/FFFFF/FF",
            "000000\u{e9}0000000000000002A",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_numbers_depend_on_the_segment_size() {
        let name: SegmentName = match "0000000100000001000000FF".parse() {
            Ok(WalFileName::Segment(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(name.segno(SegmentSize::DEFAULT), Some(SegNo(0x1FF)));
        assert_eq!(
            name.start_lsn(SegmentSize::DEFAULT),
            Some(Lsn(0x1_FF00_0000))
        );
        // With 1 GiB segments an xlogid holds only 4 of them.
        assert_eq!(name.segno(SegmentSize::new(1 << 30).unwrap()), None);
        let size = SegmentSize::new(1 << 20).unwrap();
        assert_eq!(
            SegmentName::new(TimelineId(1), SegNo(0x1FF), SegmentSize::DEFAULT),
            name
        );
        let round = SegmentName::new(TimelineId(3), SegNo(12_345), size);
        assert_eq!(round.segno(size), Some(SegNo(12_345)));
    }
}
