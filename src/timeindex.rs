//! What a WAL segment says about time, pure: the per-segment index walhalla stores beside each
//! complete segment it archives. It holds the earliest and latest commit or abort times in the
//! segment, with their positions, and every restore point, so that a time or a restore point
//! name maps to a position without restoring anything.
//!
//! The index is made from [`scan_segment`]'s reading of the segment's bytes and stored as JSON
//! (see docs/ARCHIVE-FORMAT.md, "Time index"); [`SegmentIndex::parse`] refuses formats newer
//! than this walhalla reads.

use serde::{Deserialize, Serialize};

use crate::wal::{
    Crossing, LongPageHeader, Lsn, PgTimestamp, RecordError, ScanEnd, SegmentName, SegmentRecords,
    scan_segment_sequentially,
};

/// The newest index format; readers refuse newer ones.
pub const INDEX_FORMAT: u32 = 1;

/// The index of one complete segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The segment's name.
    #[serde(with = "segment_text")]
    pub segment: SegmentName,
    /// Valid records that start and end in the segment.
    pub records: usize,
    /// Commit records (direct or of a prepared transaction).
    pub commits: usize,
    /// Abort records (direct or of a prepared transaction).
    pub aborts: usize,
    /// The commit or abort with the earliest time; commit times are not strictly in WAL
    /// order, so this is not always the first record.
    pub earliest_xact: Option<XactMark>,
    /// The commit or abort with the latest time.
    pub latest_xact: Option<XactMark>,
    /// Every restore point, in WAL order.
    pub restore_points: Vec<RestorePointMark>,
    /// Just past the last valid record: where the next one starts.
    #[serde(with = "lsn_text")]
    pub valid_end: Lsn,
    /// Why the scan stopped.
    pub end: IndexEnd,
}

/// A commit or abort record: where it starts (recovery to a time stops before it) and its
/// time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XactMark {
    /// Where the record starts.
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
    /// The commit or abort time.
    #[serde(with = "time_text")]
    pub time: PgTimestamp,
}

/// A restore point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointMark {
    /// Its name.
    pub name: String,
    /// Where its record ends: what `pg_create_restore_point` returned, and where recovery to
    /// it stops.
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
    /// When it was created.
    #[serde(with = "time_text")]
    pub time: PgTimestamp,
}

/// Why the scan of the segment stopped ([`ScanEnd`], as stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexEnd {
    /// The last record ended at the segment's end.
    SegmentEnd,
    /// A WAL switch record: the rest is unused.
    Switch,
    /// The rest was never written.
    EndOfWal {
        /// Where the next record would have started.
        #[serde(with = "lsn_text")]
        at: Lsn,
    },
    /// The last record continues in the next segment; neither segment's index lists it.
    Continues {
        /// Where it starts.
        #[serde(with = "lsn_text")]
        at: Lsn,
        /// Its length.
        length: u32,
        /// What it is, from its header.
        record: CrossingRecord,
    },
    /// The bytes ended before the segment did.
    Truncated {
        /// The first missing byte.
        #[serde(with = "lsn_text")]
        at: Lsn,
    },
    /// A record PostgreSQL wrote (its CRC checks) that this walhalla cannot read: the index
    /// ends there, without saying the WAL is damaged.
    Uninterpreted {
        /// Where it starts.
        #[serde(with = "lsn_text")]
        at: Lsn,
        /// What could not be read.
        problem: String,
    },
    /// A page or record PostgreSQL would refuse.
    Invalid {
        /// Where it starts.
        #[serde(with = "lsn_text")]
        at: Lsn,
        /// What is wrong with it.
        problem: String,
    },
}

/// The shortest record that can be a restore point: the record header (24 bytes), a short
/// data header (2) and `xl_restore_point` (its time, 8, and a name of `MAXFNAMELEN`, 64).
const MIN_RESTORE_POINT_RECORD: u32 = 24 + 2 + 8 + 64;
/// The shortest commit or abort record: the record header, a short data header and the
/// transaction's end time (`MinSizeOfXactCommit`, `MinSizeOfXactAbort`).
const MIN_XACT_END_RECORD: u32 = 24 + 2 + 8;

/// What the record continuing into the next segment is ([`Crossing`], as stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossingRecord {
    /// Its header is not wholly in the segment: it may be anything.
    Unknown,
    /// A commit or abort.
    XactEnd,
    /// A restore point.
    RestorePoint,
    /// Something else.
    Other,
}

impl From<Crossing> for CrossingRecord {
    fn from(crossing: Crossing) -> Self {
        match crossing {
            Crossing::Unknown => CrossingRecord::Unknown,
            Crossing::XactEnd => CrossingRecord::XactEnd,
            Crossing::RestorePoint => CrossingRecord::RestorePoint,
            Crossing::Other => CrossingRecord::Other,
        }
    }
}

impl IndexEnd {
    /// Where valid WAL ends, when the scan ended before the segment did (not at a switch, and
    /// not with a record continuing into the next segment).
    pub fn valid_end(&self) -> Option<Lsn> {
        match self {
            IndexEnd::EndOfWal { at }
            | IndexEnd::Truncated { at }
            | IndexEnd::Invalid { at, .. } => Some(*at),
            IndexEnd::SegmentEnd
            | IndexEnd::Switch
            | IndexEnd::Continues { .. }
            | IndexEnd::Uninterpreted { .. } => None,
        }
    }

    /// Where the scan of a complete segment found that valid WAL ends before the segment does,
    /// and why: a record that fails its checks (its CRC-32C, say), or no record where one must
    /// start. PostgreSQL writes a segment whole before the next, so in a complete segment
    /// either means its bytes are not what PostgreSQL wrote. `None` when the WAL runs to the
    /// segment's end or to a switch.
    pub fn damage(&self) -> Option<String> {
        match self {
            IndexEnd::Invalid { at, problem } => Some(format!("invalid WAL at {at}: {problem}")),
            IndexEnd::EndOfWal { at } => Some(format!("no record at {at}, inside the segment")),
            IndexEnd::Truncated { at } => Some(format!("it ends at {at}, inside the segment")),
            IndexEnd::SegmentEnd
            | IndexEnd::Switch
            | IndexEnd::Continues { .. }
            | IndexEnd::Uninterpreted { .. } => None,
        }
    }
}

impl From<&ScanEnd> for IndexEnd {
    fn from(end: &ScanEnd) -> Self {
        match end {
            ScanEnd::SegmentEnd => IndexEnd::SegmentEnd,
            ScanEnd::Switch => IndexEnd::Switch,
            ScanEnd::EndOfWal { at } => IndexEnd::EndOfWal { at: *at },
            ScanEnd::Continues {
                start,
                total_len,
                record,
            } => IndexEnd::Continues {
                at: *start,
                length: *total_len,
                record: CrossingRecord::from(*record),
            },
            ScanEnd::Truncated { at } => IndexEnd::Truncated { at: *at },
            ScanEnd::Uninterpreted { at, problem } => IndexEnd::Uninterpreted {
                at: *at,
                problem: problem.to_string(),
            },
            ScanEnd::Invalid { at, problem } => IndexEnd::Invalid {
                at: *at,
                problem: problem.to_string(),
            },
        }
    }
}

impl SegmentIndex {
    /// The index of `segment` from what its scan found.
    pub fn from_records(segment: SegmentName, found: &SegmentRecords) -> SegmentIndex {
        let mark = |t: &crate::wal::XactEnd| XactMark {
            lsn: t.lsn,
            time: t.time,
        };
        // The first record of the earliest time, the last of the latest.
        let earliest = found.transactions.iter().rev().min_by_key(|t| t.time);
        let latest = found.transactions.iter().max_by_key(|t| t.time);
        let commits = found
            .transactions
            .iter()
            .filter(|t| t.kind.is_commit())
            .count();
        SegmentIndex {
            format: INDEX_FORMAT,
            segment,
            records: found.records,
            commits,
            aborts: found.transactions.len() - commits,
            earliest_xact: earliest.map(mark),
            latest_xact: latest.map(mark),
            restore_points: found
                .restore_points
                .iter()
                .map(|p| RestorePointMark {
                    name: p.name.clone(),
                    lsn: p.end,
                    time: p.time,
                })
                .collect(),
            valid_end: found.valid_end,
            end: IndexEnd::from(&found.end),
        }
    }

    /// Scans the bytes of complete segment `segment` and indexes them.
    pub fn of_segment(segment: SegmentName, bytes: &[u8]) -> Result<SegmentIndex, String> {
        Self::of_segment_sequentially(segment, bytes, &mut |_| {})
    }

    /// [`Self::of_segment`], telling `done_before` how far the scan has passed
    /// ([`crate::wal::scan_segment_sequentially`]).
    pub fn of_segment_sequentially(
        segment: SegmentName,
        bytes: &[u8],
        done_before: &mut dyn FnMut(usize),
    ) -> Result<SegmentIndex, String> {
        let size = LongPageHeader::parse(bytes)
            .and_then(|header| header.segment_size())
            .map_err(|e| RecordError::from(e).to_string())?;
        let start = segment
            .start_lsn(size)
            .ok_or_else(|| format!("{segment} is not a segment name for {size} segments"))?;
        let found =
            scan_segment_sequentially(bytes, start, done_before).map_err(|e| e.to_string())?;
        Ok(SegmentIndex::from_records(segment, &found))
    }

    /// The index as stored: JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec_pretty(self).map_err(|e| format!("index of {}: {e}", self.segment))
    }

    /// Parses a stored index of `segment`, refusing newer formats and another segment's.
    pub fn parse(segment: SegmentName, bytes: &[u8]) -> Result<SegmentIndex, String> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| format!("index of {segment}: {e}"))?;
        if version.format > INDEX_FORMAT {
            return Err(format!(
                "index of {segment} has format {}, newer than this walhalla reads ({INDEX_FORMAT})",
                version.format
            ));
        }
        let index: SegmentIndex =
            serde_json::from_slice(bytes).map_err(|e| format!("index of {segment}: {e}"))?;
        if index.segment != segment {
            return Err(format!(
                "index of {segment} describes {} instead",
                index.segment
            ));
        }
        Ok(index)
    }

    /// Where the segment's WAL switch record ends (rounded up to 8 bytes), when the segment
    /// ends in one: PostgreSQL (11 and later) writes nothing but zeros from there to the
    /// segment's end, its page headers included (xlog.c `CopyXLogRecordToWAL`).
    pub fn switch_end(&self) -> Option<Lsn> {
        (self.end == IndexEnd::Switch).then_some(self.valid_end)
    }

    /// Whether the scan read the whole segment, so the index lists everything in it but a
    /// record continuing into the next segment ([`Self::crossing`]). A scan that stopped at
    /// an invalid record or short of the end may have missed what follows (what recovery
    /// would replay from another copy), so such an index answers nothing.
    pub fn covers_segment(&self) -> bool {
        matches!(
            self.end,
            IndexEnd::SegmentEnd | IndexEnd::Switch | IndexEnd::Continues { .. }
        )
    }

    /// Whether the record that continues into the next segment, which neither segment's index
    /// lists, may be a restore point: its header says so, or is cut at the segment's end and
    /// the record is long enough for one.
    pub fn crossing_may_be_restore_point(&self) -> bool {
        self.crossing_may_be(CrossingRecord::RestorePoint, MIN_RESTORE_POINT_RECORD)
    }

    /// Whether the record that continues into the next segment may be a commit or abort, as
    /// [`Self::crossing_may_be_restore_point`] says for a restore point.
    pub fn crossing_may_end_a_transaction(&self) -> bool {
        self.crossing_may_be(CrossingRecord::XactEnd, MIN_XACT_END_RECORD)
    }

    fn crossing_may_be(&self, kind: CrossingRecord, min_length: u32) -> bool {
        match self.end {
            IndexEnd::Continues { record, length, .. } => {
                record == kind || (record == CrossingRecord::Unknown && length >= min_length)
            }
            _ => false,
        }
    }
}

/// A time as stored: RFC 3339 in UTC with microseconds.
pub fn format_time(time: PgTimestamp) -> Option<String> {
    Some(
        time.to_timestamp()?
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
    )
}

/// Reads a time as stored (any RFC 3339 time), to microseconds.
pub fn parse_time(text: &str) -> Option<PgTimestamp> {
    let at: jiff::Timestamp = text.parse().ok()?;
    PgTimestamp::from_unix_micros(at.as_microsecond())
}

mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::wal::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

mod time_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser};

    use crate::wal::PgTimestamp;

    pub fn serialize<S: Serializer>(time: &PgTimestamp, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_time(*time).ok_or_else(|| {
            <S::Error as ser::Error>::custom(format!("time {} is out of range", time.0))
        })?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PgTimestamp, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_time(&text).ok_or_else(|| D::Error::custom(format!("invalid time {text:?}")))
    }
}

mod segment_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::wal::{SegmentName, WalFileName};

    pub fn serialize<S: Serializer>(segment: &SegmentName, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(segment)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SegmentName, D::Error> {
        let text = String::deserialize(d)?;
        match text.parse() {
            Ok(WalFileName::Segment(segment)) => Ok(segment),
            _ => Err(D::Error::custom(format!("invalid segment name {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::sample::{name, segment_7, segment_8};

    fn time(text: &str) -> PgTimestamp {
        parse_time(text).unwrap()
    }

    #[test]
    fn a_segment_is_indexed_as_pg_waldump_reads_it() {
        let bytes = segment_7();
        let index = SegmentIndex::of_segment(name(7), &bytes).unwrap();
        assert_eq!(index.records, 209);
        assert_eq!((index.commits, index.aborts), (7, 2));
        assert_eq!(
            index.earliest_xact,
            Some(XactMark {
                lsn: Lsn(0x71E128),
                time: time("2026-12-02T13:39:27.543700Z")
            })
        );
        assert_eq!(
            index.latest_xact,
            Some(XactMark {
                lsn: Lsn(0x73AD30),
                time: time("2026-12-02T13:39:27.966981Z")
            })
        );
        assert_eq!(index.restore_points.len(), 1);
        assert_eq!(index.restore_points[0].name, "before_b");
        // What pg_create_restore_point returned.
        assert_eq!(index.restore_points[0].lsn, Lsn(0x735DE8));
        assert_eq!(
            index.end,
            IndexEnd::Continues {
                at: Lsn(0x7FF588),
                length: 20062,
                record: CrossingRecord::Other
            }
        );
        assert!(index.covers_segment());

        let json = index.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains(r#""time": "2026-12-02T13:39:27.543700Z""#),
            "{text}"
        );
        assert!(text.contains(r#""lsn": "0/735DE8""#), "{text}");
        assert!(text.contains(r#""kind": "continues""#), "{text}");
        assert!(text.contains(r#""record": "other""#), "{text}");
        assert_eq!(SegmentIndex::parse(name(7), &json), Ok(index));
        assert!(SegmentIndex::parse(name(8), &json).is_err());
    }

    #[test]
    fn a_switched_segment_and_damaged_ones() {
        let mut bytes = segment_8();
        let index = SegmentIndex::of_segment(name(8), &bytes).unwrap();
        assert_eq!(index.end, IndexEnd::Switch);
        assert_eq!(index.restore_points[0].name, "after_b");
        assert_eq!(index.restore_points[0].lsn, Lsn(0x8094E8));
        assert_eq!(index.valid_end, Lsn(0x809568));
        assert!(index.covers_segment());

        // Zeroed from the middle: what follows is unknown, the index covers nothing.
        bytes[0x9480..].fill(0);
        let cut = SegmentIndex::of_segment(name(8), &bytes).unwrap();
        assert!(matches!(cut.end, IndexEnd::EndOfWal { .. }), "{cut:?}");
        assert!(!cut.covers_segment());
        // Not a segment, or not the one named.
        assert!(SegmentIndex::of_segment(name(8), b"garbage").is_err());
        assert!(SegmentIndex::of_segment(name(9), &bytes).is_err());
    }

    #[test]
    fn stored_indexes_are_read_strictly() {
        let bytes = segment_8();
        let index = SegmentIndex::of_segment(name(8), &bytes).unwrap();
        let mut value: serde_json::Value =
            serde_json::from_slice(&index.to_json().unwrap()).unwrap();
        value["format"] = 2.into();
        let newer = serde_json::to_vec(&value).unwrap();
        let refused = SegmentIndex::parse(name(8), &newer).unwrap_err();
        assert!(refused.contains("newer"), "{refused}");
        for broken in [&b"{"[..], b"[]", b"{\"format\": 1}", b"\xff"] {
            assert!(SegmentIndex::parse(name(8), broken).is_err());
        }
        value["format"] = 1.into();
        value["restore_points"][0]["time"] = "yesterday".into();
        assert!(SegmentIndex::parse(name(8), &serde_json::to_vec(&value).unwrap()).is_err());
        // Out of jiff's range: not stored, and an error, not a panic.
        assert_eq!(format_time(PgTimestamp(i64::MAX)), None);
        let mut far = index.clone();
        far.restore_points[0].time = PgTimestamp(i64::MAX);
        assert!(far.to_json().is_err());
    }
}
