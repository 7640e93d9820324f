//! Object keys: every object lives under the cluster's system identifier, so one bucket can
//! hold many clusters and a node can never mix two clusters' WAL.
//!
//! ```text
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.zst           WAL segment
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.partial.zst   partial segment
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.<off>.backup.zst  backup history file
//! <prefix>/<system-id>/timelines/<TTTTTTTT>.history.zst               timeline history file
//! <prefix>/<system-id>/wal/<TTTTTTTTXXXXXXXX>/<segment>.partial.<END>.zst  receiver's snapshot
//! ```
//!
//! A receiver's snapshot holds a segment from its start to `END` (16 hex digits, the LSN
//! just past its last byte); later snapshots of the same segment have larger `END`s.
//!
//! Segments are grouped by timeline and "xlogid" (the first 16 digits of their names: 4 GiB of
//! WAL), which bounds directory sizes and makes "newest segment of a timeline" a short listing.

use object_store::path::Path;

use crate::wal::{Lsn, SegmentName, SystemId, WalFileName};

/// The suffix every archived object carries: each is a zstd stream (`zstd -d` restores it).
pub const OBJECT_SUFFIX: &str = ".zst";

/// The folder holding one cluster's objects.
pub fn cluster_prefix(root: &Path, system_id: SystemId) -> Path {
    root.clone().join(system_id.to_string())
}

/// The key of the object holding `name` for cluster `system_id`.
pub fn object_key(root: &Path, system_id: SystemId, name: &WalFileName) -> Path {
    let cluster = cluster_prefix(root, system_id);
    let file = format!("{name}{OBJECT_SUFFIX}");
    match name.segment() {
        Some(segment) => {
            let group = format!("{:08X}{:08X}", segment.timeline.0, segment.log);
            cluster.join("wal").join(group).join(file)
        }
        None => cluster.join("timelines").join(file),
    }
}

/// The key of a receiver's snapshot of `segment` holding the WAL up to `end`.
pub fn partial_snapshot_key(
    root: &Path,
    system_id: SystemId,
    segment: SegmentName,
    end: Lsn,
) -> Path {
    let group = format!("{:08X}{:08X}", segment.timeline.0, segment.log);
    let file = format!("{segment}.partial.{:016X}{OBJECT_SUFFIX}", end.0);
    cluster_prefix(root, system_id)
        .join("wal")
        .join(group)
        .join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
