//! Object keys: every object lives under the cluster's system identifier, so one bucket can
//! hold many clusters and a node can never mix two clusters' WAL.
//!
//! ```text
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.zst           WAL segment
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.partial.zst   partial segment
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.<off>.backup.zst  backup history file
//! <prefix>/<system-id>/timelines/<TTTTTTTT>.history.zst               timeline history file
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.partial.<END>.zst  receiver's snapshot
//! <prefix>/<system-id>/backups/<ID>/backup.json.zst                   base backup: metadata
//! <prefix>/<system-id>/backups/<ID>/backup_manifest.zst               the server's manifest
//! <prefix>/<system-id>/backups/<ID>/reserved.zst                      the backup's claim to its ID
//! <prefix>/<system-id>/backups/<ID>/<ARCHIVE>/<NNNNNNNN>.zst          piece N of a tar stream
//! <prefix>/<system-id>/index/<TTTTTTTTXXXXXXXX>/<segment>.json.zst    a segment's time index
//! ```
//!
//! A backup's `<ID>` is its start time in UTC, `YYYYMMDDTHHMMSSZ`, with `-N` appended when
//! another backup of the cluster started in the same second. `<ARCHIVE>` is `base` for the data
//! directory's tar stream and the tablespace's OID for a tablespace's; the stream is cut into
//! pieces of at most a few MiB, numbered from 0 in 8 decimal digits, that concatenate back to
//! it. The metadata is written last: a backup folder without it is an interrupted backup.
//!
//! A receiver's snapshot holds a segment from its start to `END` (16 hex digits, the LSN
//! just past its last byte); later snapshots of the same segment have larger `END`s.
//!
//! A segment's time index ([`crate::timeindex`]) is stored in a tree of its own, grouped like
//! `wal/`, so that listings of segments never meet indexes and the other way round.
//!
//! Segments are grouped by timeline and "xlogid" (the first 16 digits of their names: 4 GiB of
//! WAL), which bounds directory sizes and makes "newest segment of a timeline" a short listing.
//!
//! # Reading listings
//!
//! An archive may hold names walhalla did not write: a file an operator dropped, a folder of
//! another tool, a half-uploaded object of an older version, a name in another encoding. Every
//! name a listing returns is parsed here, in one place and without I/O, by the parser for the
//! level it was found at:
//!
//! | level | parser |
//! |---|---|
//! | `<prefix>/` (cluster folders) | [`parse_cluster_folder`] |
//! | `<prefix>/<system-id>/wal/` (groups) | [`WalGroup::parse`] |
//! | `<prefix>/<system-id>/wal/<group>/` (objects) | [`parse_group_object`] |
//! | `<prefix>/<system-id>/timelines/` (history files) | [`parse_timeline_object`] |
//! | `<prefix>/<system-id>/index/` (groups) | [`WalGroup::parse`] |
//! | `<prefix>/<system-id>/index/<group>/` (indexes) | [`parse_index_object`] |
//!
//! A name a parser refuses (`None`) is not walhalla's: listings skip it (with a debug log
//! line) and never fail or panic because of it. A name is accepted only exactly as walhalla
//! writes it (upper-case hex of the right length, decimal without sign or leading zeros), so
//! what a parser accepts prints back to the same text.

use std::fmt;

use object_store::path::Path;

use crate::wal::{
    Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName, upper_hex,
};

/// The suffix every archived object carries: each is a zstd stream (`zstd -d` restores it).
pub const OBJECT_SUFFIX: &str = ".zst";

/// The folder under a cluster's folder that holds the groups of segment-related objects.
const WAL_FOLDER: &str = "wal";
/// The folder under a cluster's folder that holds timeline history files.
const TIMELINES_FOLDER: &str = "timelines";
/// The folder under a cluster's folder that holds base backups.
const BACKUPS_FOLDER: &str = "backups";
/// The folder under a cluster's folder that holds the groups of segments' time indexes.
const INDEX_FOLDER: &str = "index";
/// What follows a segment's name in its index's file name.
const INDEX_SUFFIX: &str = ".json.zst";

/// A group folder under `wal/`, named `TTTTTTTTXXXXXXXX`: the timeline and "xlogid" (the high
/// 32 bits of the segment number, 4 GiB of WAL) shared by every object in it. Groups sort by
/// timeline, then position, as their names do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalGroup {
    /// The timeline (the first 8 digits); never 0.
    pub timeline: TimelineId,
    /// The "xlogid" (the last 8 digits).
    pub log: u32,
}

impl WalGroup {
    /// The group `segment` is stored in.
    pub fn of(segment: SegmentName) -> WalGroup {
        WalGroup {
            timeline: segment.timeline,
            log: segment.log,
        }
    }

    /// Parses a folder name found under `wal/`: exactly 16 upper-case hex digits, timeline not
    /// 0. Anything else (another length, lower case, non-ASCII) is `None`.
    pub fn parse(name: &str) -> Option<WalGroup> {
        let both = upper_hex(name, 16)?;
        let timeline = TimelineId((both >> 32) as u32);
        (timeline.0 != 0).then_some(WalGroup {
            timeline,
            log: both as u32,
        })
    }

    /// The groups holding segments `from..to` of `timeline`, in order.
    pub fn spanning(
        timeline: TimelineId,
        from: SegNo,
        to: SegNo,
        size: SegmentSize,
    ) -> impl Iterator<Item = WalGroup> {
        let per_group = size.segments_per_xlog_id();
        let logs = (from < to).then(|| from.0 / per_group..=(to.0 - 1) / per_group);
        logs.into_iter().flatten().map_while(move |log| {
            Some(WalGroup {
                timeline,
                log: u32::try_from(log).ok()?,
            })
        })
    }

    /// Whether `segment` belongs in this group.
    pub fn holds(self, segment: SegmentName) -> bool {
        WalGroup::of(segment) == self
    }
}

impl fmt::Display for WalGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}", self.timeline.0, self.log)
    }
}

/// What an archived object is, from its file name (`.zst` included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectName {
    /// A file PostgreSQL archives, stored by `push` or the receiver under its own name:
    /// a segment, a `.partial` segment, a `.backup` file (all in a `wal/` group) or a
    /// `.history` file (in `timelines/`).
    File(WalFileName),
    /// A receiver's snapshot of `segment`, holding its bytes from its start up to `end`.
    Snapshot {
        /// The segment.
        segment: SegmentName,
        /// The WAL position just past the snapshot's last byte.
        end: Lsn,
    },
}

impl ObjectName {
    /// Parses an object's file name as walhalla writes it (see the module's table).
    /// A snapshot's `END` is 16 upper-case hex digits and lies past the start of the
    /// segment's "xlogid" and no further than its end (the segment size is not needed).
    pub fn parse(file_name: &str) -> Option<ObjectName> {
        let stem = file_name.strip_suffix(OBJECT_SUFFIX)?;
        let Some((segment, end)) = stem.split_once(".partial.") else {
            return stem.parse().ok().map(ObjectName::File);
        };
        let segment = match segment.parse().ok()? {
            WalFileName::Segment(segment) => segment,
            _ => return None,
        };
        let end = upper_hex(end, 16)?;
        let xlogid_start = u64::from(segment.log) << 32;
        let within = end > xlogid_start && end - xlogid_start <= 1 << 32;
        within.then_some(ObjectName::Snapshot {
            segment,
            end: Lsn(end),
        })
    }

    /// The segment the object belongs to; `None` for a timeline history file.
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            ObjectName::File(name) => name.segment(),
            ObjectName::Snapshot { segment, .. } => Some(*segment),
        }
    }
}

impl fmt::Display for ObjectName {
    /// The object's file name, `.zst` included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectName::File(name) => write!(f, "{name}{OBJECT_SUFFIX}"),
            ObjectName::Snapshot { segment, end } => {
                write!(f, "{segment}.partial.{:016X}{OBJECT_SUFFIX}", end.0)
            }
        }
    }
}

/// Parses a folder name found at the archive's root (under its prefix): a cluster's system
/// identifier, in decimal as walhalla writes it (no sign, no leading zero, not 0).
pub fn parse_cluster_folder(name: &str) -> Option<SystemId> {
    let id: SystemId = name.parse().ok()?;
    (id.to_string() == name).then_some(id)
}

/// Parses a file name found in the `wal/` group `group`: an object of a segment of that group
/// (a segment, `.partial`, `.backup` or receiver snapshot). A history file, or an object of a
/// segment of another group, is not where walhalla puts it: `None`.
pub fn parse_group_object(group: WalGroup, file_name: &str) -> Option<ObjectName> {
    let object = ObjectName::parse(file_name)?;
    object
        .segment()
        .is_some_and(|segment| group.holds(segment))
        .then_some(object)
}

/// Parses a file name found in a cluster's `timelines/` folder: a timeline history file.
pub fn parse_timeline_object(file_name: &str) -> Option<TimelineId> {
    match ObjectName::parse(file_name)? {
        ObjectName::File(WalFileName::History(timeline)) => Some(timeline),
        _ => None,
    }
}

/// Parses a file name found in the `index/` group `group`: the index of a segment of that
/// group, `<segment>.json.zst`.
pub fn parse_index_object(group: WalGroup, file_name: &str) -> Option<SegmentName> {
    match file_name.strip_suffix(INDEX_SUFFIX)?.parse().ok()? {
        WalFileName::Segment(segment) if group.holds(segment) => Some(segment),
        _ => None,
    }
}

/// The folder holding cluster `system_id`'s index groups (`<prefix>/<system-id>/index`).
pub fn index_prefix(root: &Path, system_id: SystemId) -> Path {
    cluster_prefix(root, system_id).join(INDEX_FOLDER)
}

/// The folder of index group `group` of cluster `system_id`.
pub fn index_group_prefix(root: &Path, system_id: SystemId, group: WalGroup) -> Path {
    index_prefix(root, system_id).join(group.to_string())
}

/// The key of the time index of `segment`.
pub fn index_key(root: &Path, system_id: SystemId, segment: SegmentName) -> Path {
    index_group_prefix(root, system_id, WalGroup::of(segment))
        .join(format!("{segment}{INDEX_SUFFIX}"))
}

/// The folder holding one cluster's objects.
pub fn cluster_prefix(root: &Path, system_id: SystemId) -> Path {
    root.clone().join(system_id.to_string())
}

/// The folder holding cluster `system_id`'s groups (`<prefix>/<system-id>/wal`).
pub fn wal_prefix(root: &Path, system_id: SystemId) -> Path {
    cluster_prefix(root, system_id).join(WAL_FOLDER)
}

/// The folder holding cluster `system_id`'s timeline history files.
pub fn timelines_prefix(root: &Path, system_id: SystemId) -> Path {
    cluster_prefix(root, system_id).join(TIMELINES_FOLDER)
}

/// The folder of group `group` of cluster `system_id`.
pub fn group_prefix(root: &Path, system_id: SystemId, group: WalGroup) -> Path {
    wal_prefix(root, system_id).join(group.to_string())
}

/// The key of the object holding `name` for cluster `system_id`.
pub fn object_key(root: &Path, system_id: SystemId, name: &WalFileName) -> Path {
    let file = ObjectName::File(*name).to_string();
    match name.segment() {
        Some(segment) => group_prefix(root, system_id, WalGroup::of(segment)).join(file),
        None => cluster_prefix(root, system_id)
            .join(TIMELINES_FOLDER)
            .join(file),
    }
}

/// A base backup's identifier and folder name: its start time in UTC, `YYYYMMDDTHHMMSSZ`,
/// then `-N` (N ≥ 2, no leading zero) for a later backup started in the same second.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

impl BackupId {
    /// The identifier for a backup started at `utc` (`YYYYMMDDTHHMMSSZ`, as formatted by the
    /// caller), the `n`th of that second (1 for the first).
    pub fn new(utc: &str, n: u32) -> Option<BackupId> {
        let text = if n > 1 {
            format!("{utc}-{n}")
        } else {
            utc.to_string()
        };
        BackupId::parse(&text)
    }

    /// Parses a folder name; `None` for anything walhalla does not write.
    pub fn parse(name: &str) -> Option<BackupId> {
        let (time, n) = match name.split_once('-') {
            Some((time, n)) => (time, Some(n)),
            None => (name, None),
        };
        let b = time.as_bytes();
        let time_ok = b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
        let n_ok = n.is_none_or(|n| {
            !n.starts_with('0')
                && n.parse::<u32>().is_ok_and(|n| n >= 2)
                && n.bytes().all(|c| c.is_ascii_digit())
        });
        (time_ok && n_ok).then(|| BackupId(name.to_string()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One object of a base backup, relative to its folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupObject {
    /// `backup.json.zst`: the metadata, written last.
    Meta,
    /// `backup_manifest.zst`: the server's manifest, verbatim.
    Manifest,
    /// `reserved.zst`: written first, create-only, with content of this backup's own, so
    /// that two backups started in the same second never take the same identifier.
    Reservation,
    /// `<ARCHIVE>/<NNNNNNNN>.zst`: piece `index` of tar stream `archive` (`base` or an OID).
    Piece {
        /// `base` or the tablespace's OID.
        archive: String,
        /// The piece's position in the stream, from 0.
        index: u32,
    },
}

impl fmt::Display for BackupObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupObject::Meta => write!(f, "backup.json{OBJECT_SUFFIX}"),
            BackupObject::Manifest => write!(f, "backup_manifest{OBJECT_SUFFIX}"),
            BackupObject::Reservation => write!(f, "reserved{OBJECT_SUFFIX}"),
            BackupObject::Piece { archive, index } => {
                write!(f, "{archive}/{index:08}{OBJECT_SUFFIX}")
            }
        }
    }
}

/// The folder holding cluster `system_id`'s base backups.
pub fn backups_prefix(root: &Path, system_id: SystemId) -> Path {
    cluster_prefix(root, system_id).join(BACKUPS_FOLDER)
}

/// The key of `object` of backup `id`.
pub fn backup_object_key(
    root: &Path,
    system_id: SystemId,
    id: &BackupId,
    object: &BackupObject,
) -> Path {
    let folder = backups_prefix(root, system_id).join(id.as_str());
    match object {
        BackupObject::Piece { archive, .. } => {
            let file = object.to_string();
            let name = file.rsplit('/').next().unwrap_or_default().to_string();
            folder.join(archive.as_str()).join(name)
        }
        _ => folder.join(object.to_string()),
    }
}

/// The key of a receiver's snapshot of `segment` holding the WAL up to `end`.
pub fn partial_snapshot_key(
    root: &Path,
    system_id: SystemId,
    segment: SegmentName,
    end: Lsn,
) -> Path {
    let file = ObjectName::Snapshot { segment, end }.to_string();
    group_prefix(root, system_id, WalGroup::of(segment)).join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_folders_parse_only_as_written() {
        for ok in [
            "20261202T082513Z",
            "20261202T082513Z-2",
            "20261202T082513Z-17",
        ] {
            assert_eq!(
                BackupId::parse(ok).map(|id| id.to_string()),
                Some(ok.to_string())
            );
        }
        for foreign in [
            "",
            "latest",
            "20261202T082513",
            "20261202 082513Z",
            "20261202T082513Z-1",
            "20261202T082513Z-02",
            "20261202T082513Z-",
            "20261202T082513Z-x",
            "2026120T0825139Z",
            "20261202t082513z",
        ] {
            assert_eq!(BackupId::parse(foreign), None, "{foreign:?} accepted");
        }
        assert_eq!(
            BackupId::new("20261202T082513Z", 1).unwrap().as_str(),
            "20261202T082513Z"
        );
        assert_eq!(
            BackupId::new("20261202T082513Z", 3).unwrap().as_str(),
            "20261202T082513Z-3"
        );
        let id = BackupId::parse("20261202T082513Z").unwrap();
        let piece = BackupObject::Piece {
            archive: "16385".into(),
            index: 7,
        };
        assert_eq!(
            backup_object_key(&Path::from("pre"), SystemId(7), &id, &piece).to_string(),
            "pre/7/backups/20261202T082513Z/16385/00000007.zst"
        );
        assert_eq!(
            backup_object_key(&Path::from("pre"), SystemId(7), &id, &BackupObject::Meta)
                .to_string(),
            "pre/7/backups/20261202T082513Z/backup.json.zst"
        );
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let root = Path::from("team/pg1");
        let id = SystemId(7_300_000_000_000_000_001);
        let key = |n: &str| object_key(&root, id, &n.parse().unwrap()).to_string();
        assert_eq!(
            key("00000002000000010000003F"),
            "team/pg1/7300000000000000001/wal/0000000200000001/00000002000000010000003F.zst"
        );
        assert_eq!(
            key("00000002000000010000003F.00000028.backup"),
            "team/pg1/7300000000000000001/wal/0000000200000001/00000002000000010000003F.00000028.backup.zst"
        );
        assert_eq!(
            key("00000002.history"),
            "team/pg1/7300000000000000001/timelines/00000002.history.zst"
        );
        assert_eq!(
            object_key(
                &Path::default(),
                id,
                &"00000001000000000000000A.partial".parse().unwrap()
            )
            .to_string(),
            "7300000000000000001/wal/0000000100000000/00000001000000000000000A.partial.zst"
        );
        let segment = crate::wal::SegmentName {
            timeline: crate::wal::TimelineId(2),
            log: 1,
            seg: 0x3F,
        };
        assert_eq!(
            partial_snapshot_key(&root, id, segment, Lsn(0x1_3F12_3456)).to_string(),
            "team/pg1/7300000000000000001/wal/0000000200000001/00000002000000010000003F.partial.000000013F123456.zst"
        );
    }

    fn segment(timeline: u32, log: u32, seg: u32) -> SegmentName {
        SegmentName {
            timeline: TimelineId(timeline),
            log,
            seg,
        }
    }

    #[test]
    fn group_names_parse_only_as_written() {
        let group = WalGroup::parse("0000000200000001").unwrap();
        assert_eq!(
            group,
            WalGroup {
                timeline: TimelineId(2),
                log: 1
            }
        );
        assert_eq!(group.to_string(), "0000000200000001");
        assert!(group.holds(segment(2, 1, 0x3F)));
        assert!(!group.holds(segment(2, 2, 0x3F)));
        assert!(!group.holds(segment(1, 1, 0x3F)));
        for foreign in [
            "",
            "000000020000000",
            "00000002000000010",
            "000000020000000a",
            "0000000000000001",
            "+000000200000001",
            " 000000200000001",
            // 16 bytes, not ASCII; byte 8 falls inside a character.
            "0\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}1",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
            "lost+found",
        ] {
            assert_eq!(WalGroup::parse(foreign), None, "{foreign:?}");
        }
        assert!(WalGroup::parse("0000000100000000") < WalGroup::parse("00000001000000FF"));
        assert!(WalGroup::parse("00000001FFFFFFFF") < WalGroup::parse("0000000200000000"));
    }

    #[test]
    fn object_names_say_what_they_are() {
        let s = segment(1, 0, 0x2A);
        let cases = [
            (
                "00000001000000000000002A.zst",
                ObjectName::File(WalFileName::Segment(s)),
            ),
            (
                "00000001000000000000002A.partial.zst",
                ObjectName::File(WalFileName::Partial(s)),
            ),
            (
                "00000001000000000000002A.00000028.backup.zst",
                ObjectName::File(WalFileName::Backup {
                    segment: s,
                    offset: 0x28,
                }),
            ),
            (
                "00000003.history.zst",
                ObjectName::File(WalFileName::History(TimelineId(3))),
            ),
            (
                "00000001000000000000002A.partial.000000002A123456.zst",
                ObjectName::Snapshot {
                    segment: s,
                    end: Lsn(0x2A12_3456),
                },
            ),
        ];
        for (text, object) in cases {
            assert_eq!(ObjectName::parse(text), Some(object), "{text}");
            assert_eq!(object.to_string(), text);
        }
        assert_eq!(ObjectName::parse(&cases[4].0.replace(".zst", "")), None);
    }

    #[test]
    fn foreign_object_names_are_refused() {
        for foreign in [
            "",
            ".zst",
            "00000001000000000000002A",
            "00000001000000000000002A.zst#1",
            "00000001000000000000002A.zst.tmp",
            "00000001000000000000002a.zst",
            "README.zst",
            "00000001000000000000002A.partial.2A123456.zst",
            "00000001000000000000002A.partial.000000002a123456.zst",
            "00000001000000000000002A.partial.+00000002A12345.zst",
            "00000001000000000000002A.partial.partial.zst",
            "00000001000000000000002A.00000028.backup.partial.0000000000000001.zst",
            // END outside the segment's xlogid.
            "00000001000000000000002A.partial.0000000000000000.zst",
            "00000001000000010000002A.partial.0000000000000001.zst",
            "00000001000000000000002A.partial.0000000100000001.zst",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}.zst",
        ] {
            assert_eq!(ObjectName::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn objects_count_only_where_walhalla_puts_them() {
        let group = WalGroup::parse("0000000100000000").unwrap();
        let segment_name = "00000001000000000000002A.zst";
        assert!(parse_group_object(group, segment_name).is_some());
        // Another group's segment, a history file in a group, a segment in timelines/.
        assert_eq!(
            parse_group_object(group, "00000002000000000000002A.zst"),
            None
        );
        assert_eq!(
            parse_group_object(group, "00000001000000010000002A.zst"),
            None
        );
        assert_eq!(parse_group_object(group, "00000002.history.zst"), None);
        assert_eq!(
            parse_timeline_object("00000002.history.zst"),
            Some(TimelineId(2))
        );
        assert_eq!(parse_timeline_object(segment_name), None);
        assert_eq!(parse_timeline_object("00000002.history"), None);
    }

    #[test]
    fn index_names_parse_only_as_written() {
        let group = WalGroup::parse("0000000200000001").unwrap();
        let s = segment(2, 1, 0x3F);
        assert_eq!(
            index_key(&Path::from("pre"), SystemId(7), s).to_string(),
            "pre/7/index/0000000200000001/00000002000000010000003F.json.zst"
        );
        assert_eq!(
            parse_index_object(group, "00000002000000010000003F.json.zst"),
            Some(s)
        );
        for foreign in [
            "00000002000000010000003F.zst",
            "00000002000000010000003F.json",
            "00000002000000010000003f.json.zst",
            "00000002000000020000003F.json.zst",
            "00000001000000010000003F.json.zst",
            "00000002000000010000003F.partial.json.zst",
            "00000002.history.json.zst",
            ".json.zst",
            "00000002000000010000003F.json.zst.tmp",
        ] {
            assert_eq!(parse_index_object(group, foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn cluster_folders_are_canonical_decimal() {
        assert_eq!(
            parse_cluster_folder("7300000000000000001"),
            Some(SystemId(7_300_000_000_000_000_001))
        );
        for foreign in [
            "",
            "0",
            "007",
            "+7",
            "-7",
            "7 ",
            "18446744073709551616",
            "lost+found",
            "\u{e9}",
        ] {
            assert_eq!(parse_cluster_folder(foreign), None, "{foreign:?}");
        }
    }
}
