//! A hole in the archive, for `fetch --to-end LAST`: `restore` checked that the archive held
//! every segment the recovery needs through LAST, its newest, and wrote the flag. A recovery
//! to the end (no recovery target, not a standby) ends at the first segment restore_command
//! does not deliver, and promotes: a segment through LAST missing now was deleted since, and
//! ending there would lose the WAL after it, silently. fetch fails instead, and PostgreSQL
//! stops.
//!
//! A miss past LAST is the archive's end (or WAL that arrived after `restore`, maybe with gaps
//! between backups' own WAL): a plain miss, as without the flag; so is a miss on a timeline
//! newer than LAST's, which restore did not check. So are a valid copy in
//! `pg_wal` (PostgreSQL reads it after the archive's miss), a segment before its timeline began
//! (PostgreSQL 13 before 13.3 asks the newest timeline's name for every segment) and standby
//! mode (a standby only waits, and streams).

use std::path::Path;

use super::in_standby_mode;
use super::sources::{Sources, check_segment_file};
use crate::blocking;
use crate::wal::SegmentName;

/// Whether `restore` may have found `segment` archived, checking through `last`: not past it,
/// nor on a newer timeline (one begun after it, by a server promoted into this archive
/// meanwhile).
pub(super) fn was_checked(segment: SegmentName, last: SegmentName) -> bool {
    segment.timeline <= last.timeline && (segment.log, segment.seg) <= (last.log, last.seg)
}

/// Fails when the miss of `segment` is a hole in what `restore` checked, through `last`.
pub(super) async fn refuse(
    sources: &Sources,
    segment: SegmentName,
    last: SegmentName,
) -> anyhow::Result<()> {
    if !was_checked(segment, last) || in_standby_mode() {
        return Ok(());
    }
    let declared = sources.declared_system_id()?;
    let copy = Path::new("pg_wal").join(segment.to_string());
    let valid_copy = blocking::run(move || check_segment_file(&copy, segment, declared).is_ok());
    if valid_copy.await {
        return Ok(());
    }
    match sources.timeline_begun_by(segment, last).await? {
        Some(false) => return Ok(()),
        Some(true) => {}
        // Without the timeline's history (or an archive to read it from), PostgreSQL 13.3 and
        // later ask only for segments of the timeline that holds them.
        None => tracing::debug!(
            "{segment}: where timeline {} began is unknown; taken as on it",
            segment.timeline.0
        ),
    }
    anyhow::bail!(
        "{segment} is not in the archive, though it was when walhalla restore checked the WAL \
         through {last}: a hole (deleted since), and ending recovery here would lose the WAL \
         after it. Put {segment} back into the archive (a replica's or the old primary's \
         pg_wal may have it) and run recovery again; or, to end recovery at the hole, remove \
         --to-end from restore_command in postgresql.auto.conf"
    )
}
