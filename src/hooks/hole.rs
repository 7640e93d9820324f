//! A hole in the archive told from its end, for `fetch --to-end`: a recovery that replays the
//! archive to its end (no recovery target, not a standby) ends at the first segment
//! restore_command does not deliver, and promotes. A segment missing while the archive holds a
//! later one of its timeline would end it early, silently, without the WAL after the hole:
//! fetch fails instead, and PostgreSQL stops.
//!
//! Only where "not found" can mean nothing else: a copy in `pg_wal` (PostgreSQL reads it
//! after the archive's miss) or a segment before its timeline began (PostgreSQL 13 asks the
//! newest timeline's name for every segment) is a plain miss, and a segment whose upload is
//! still in flight (the receiver uploads in parallel) is waited for.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::in_standby_mode;
use super::sources::{FetchOutcome, Sources};
use crate::wal::{SegmentName, WalFileName};

/// How long a hole is asked again before it is one: uploads in flight, retried through a
/// short outage of the store, land within it.
const LATE_UPLOAD_WAIT: Duration = Duration::from_secs(60);
/// The pause between two asks.
const ASK_AGAIN_EVERY: Duration = Duration::from_secs(2);
/// Kept for the answer, out of the call's deadline: past the deadline fetch fails anyway.
const MARGIN: Duration = Duration::from_secs(1);

/// The outcome of a miss of `segment` (a restore to `dest` that found nothing): still a miss
/// when the archive ends there, the segment when it arrives late, an error naming the hole
/// when the archive goes on past it. A standby (`standby.signal`) only waits and streams, so
/// for it a miss stays a miss.
pub(super) async fn settle_miss(
    sources: &Sources,
    segment: SegmentName,
    dest: &Path,
    partial: bool,
    deadline: Instant,
) -> anyhow::Result<FetchOutcome> {
    if in_standby_mode() || in_pg_wal(segment) {
        return Ok(FetchOutcome::NotFound);
    }
    let Some(later) = sources.later_segment(segment).await? else {
        return Ok(FetchOutcome::NotFound);
    };
    let until = (Instant::now() + LATE_UPLOAD_WAIT).min(deadline - MARGIN);
    tracing::warn!(
        "{segment} is not in the archive, but {later}, later on its timeline, is: asking again \
         for {}s in case its upload is still under way",
        until.saturating_duration_since(Instant::now()).as_secs()
    );
    let name = WalFileName::Segment(segment);
    while Instant::now() + ASK_AGAIN_EVERY < until {
        tokio::time::sleep(ASK_AGAIN_EVERY).await;
        if let (FetchOutcome::Restored, _) = sources.restore(&name, dest, partial).await? {
            tracing::info!("{segment} arrived");
            return Ok(FetchOutcome::Restored);
        }
    }
    anyhow::bail!(
        "{segment} is not in the archive, but {later}, later on its timeline, is: a hole \
         (deleted, or never archived), and ending recovery here would lose the WAL after it. \
         Put {segment} back into the archive (a replica's or the old primary's pg_wal may have \
         it) and start the server again, or restore again with a recovery target before it"
    )
}

/// Whether `pg_wal` (under the data directory, the current directory) holds `segment`:
/// PostgreSQL reads it there after the archive's miss.
fn in_pg_wal(segment: SegmentName) -> bool {
    Path::new("pg_wal")
        .join(segment.to_string())
        .metadata()
        .is_ok_and(|m| m.is_file())
}
