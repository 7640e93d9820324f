//! A hole in the WAL a recovery to the end needs, which a snapshot of the missing segment
//! fills up to a point: the receiver stores one when the server no longer had a segment whose
//! spool copy was damaged (its WAL up to the damage), or when a stream ended in it. With
//! `--partial` (the last-resort recovery) the restore goes on, recovery ending where that
//! snapshot ends; the archive's WAL after the hole is not replayed, which is said. Without
//! `--partial`, or with a recovery target (which would not be reached), or for a standby
//! (which never ends recovery), a hole is refused as before.

use crate::archive::ClusterArchive;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// Whether a recovery to the end may stop in `missing`, the first segment of `ranges` the
/// archive lacks, from its newest snapshot (`--partial`): when `missing` is on the last
/// timeline recovery follows, past the backup's end (`backup_end`, its last byte's segment),
/// and the archive holds a snapshot of it. Then `ranges` are cut before `missing` and the
/// snapshot's end is returned.
pub(super) async fn stop_in_snapshot(
    cluster: &ClusterArchive,
    ranges: &mut Vec<(TimelineId, SegNo, SegNo)>,
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
    let Some(end) = cluster.newest_snapshot_end(missing).await? else {
        return Ok(None);
    };
    super::plan::clip_to(ranges, (missing.timeline, Some(SegNo(segno.0 - 1))));
    Ok(Some(end))
}
