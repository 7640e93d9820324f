//! The daemon's look at its archive (`receive`, `serve`): every few minutes it surveys the
//! cluster it serves (one listing, [`crate::list::survey`]) and publishes the holes that break
//! the restorable window and the window itself as metrics and in `/status`, so a dashboard
//! shows "how far back can I restore, right now" without anyone running `walhalla list`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::archive::ClusterArchive;
use crate::coverage;
use crate::daemon::Shared;
use crate::list::{add_end_times, listing_of, survey};
use crate::metrics::Coverage;

/// How often the archive is surveyed by default.
pub const SURVEY_INTERVAL: Duration = Duration::from_secs(300);

/// Surveys the served cluster every `interval` until shutdown; the first survey runs as soon
/// as the cluster is known. A failed survey is logged and tried again at the next interval.
pub async fn run(shared: Arc<Shared>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval.min(Duration::from_secs(10)));
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let due = last.is_none_or(|at| at.elapsed() >= interval);
        let Some(served) = shared.served().filter(|_| due) else {
            continue;
        };
        last = Some(tokio::time::Instant::now());
        match coverage_of(&served.archive).await {
            Ok(found) => shared.metrics.set_coverage(found),
            Err(e) => tracing::warn!("surveying the archive: {e:#}"),
        }
    }
}

/// What a survey of `cluster` finds: the holes that matter and the window along the newest
/// timeline's path.
pub async fn coverage_of(cluster: &ClusterArchive) -> anyhow::Result<Coverage> {
    let checked_at = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let mut listing = listing_of(cluster.system_id(), survey(cluster).await?);
    add_end_times(cluster, &mut listing).await?;
    let has_backups = listing.backups.iter().any(|b| b.is_restorable());
    let gap_segments = coverage::breaking_gaps(&listing.timelines, &listing.windows, has_backups)
        .iter()
        .map(|(gap, _)| gap.segments)
        .sum();
    let newest = listing.windows.iter().max_by_key(|w| w.timeline);
    let first = newest.and_then(|w| w.spans.first());
    let last = newest.and_then(|w| w.spans.last());
    let seconds = |time: &str| {
        time.parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond() as f64 / 1000.0)
    };
    Ok(Coverage {
        checked_at,
        gap_segments,
        window_start: first.and_then(|s| seconds(&s.from_time)),
        window_end: last.and_then(|s| s.to_time.as_deref()).and_then(seconds),
        window_end_lsn: last.map(|s| s.to_lsn.clone()),
    })
}
