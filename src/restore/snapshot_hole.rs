//! A hole in the WAL a recovery to the end needs, which a snapshot of the missing segment
//! fills up to a point: the receiver stores one when the server no longer had a segment whose
//! spool copy was damaged (its WAL up to the damage), or when a stream ended in it. With
//! `--partial` (the last-resort recovery) the restore goes on, recovery ending where that
//! snapshot ends; the archive's WAL after the hole is not replayed, which is said. Without
//! `--partial`, or with a recovery target (which would not be reached), or for a standby
//! (which never ends recovery), a hole is refused, and the refusal names the snapshot and
//! what `--partial` would do with it.

use crate::archive::ClusterArchive;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// Whether a recovery to the end could stop in `missing`, the first segment of `ranges` the
/// archive lacks, from its newest snapshot: when `missing` is on the last timeline recovery
/// follows, past the backup's end (`backup_end`, its last byte's segment), and the archive
/// holds a snapshot of it. Returns that snapshot's end. Whether the restore may (`--partial`,
/// no target, not `--standby`) is the caller's to say; a refusal names the snapshot.
pub(super) async fn snapshot_in_reach(
    cluster: &ClusterArchive,
    ranges: &[(TimelineId, SegNo, SegNo)],
    missing: SegmentName,
    backup_end: SegNo,
    size: SegmentSize,
) -> anyhow::Result<Option<Lsn>> {
    let Some(segno) = missing.segno(size) else {
        return Ok(None);
    };
    let last_timeline = ranges.last().map(|r| r.0);
    if last_timeline != Some(missing.timeline) || segno <= backup_end {
        return Ok(None);
    }
    Ok(cluster.newest_snapshot_end(missing).await?)
}

/// `ranges` cut before `missing`, a segment [`snapshot_in_reach`] found a snapshot of (past
/// the backup's end, so not the first segment of all).
pub(super) fn cut_before(
    ranges: &mut Vec<(TimelineId, SegNo, SegNo)>,
    missing: SegmentName,
    size: SegmentSize,
) {
    let before = missing.segno(size).and_then(|n| n.0.checked_sub(1));
    super::plan::clip_to(ranges, (missing.timeline, before.map(SegNo)));
}
