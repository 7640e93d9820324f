//! The readahead worker (`walhalla prefetch-worker`): keeps the segments after the newest one
//! asked for in the cache, fetching a few at a time along the newest timeline.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Cache, SETTINGS, WANTED};
use crate::blocking;
use crate::client::{ClientSettings, ServerError};
use crate::config::Config;
use crate::hooks::in_standby_mode;
use crate::hooks::sources::{FetchOutcome, Sources};
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId, WalFileName, parse_history};

/// Segments' worth of space readahead leaves free on pg_wal's filesystem, beyond the segments
/// it is fetching: for the segment recovery asks for next, and PostgreSQL's own files.
const SPARE_SEGMENTS: usize = 4;
/// Requests in flight at once from an object store or a fetch server, at most: each waits a
/// round trip, so as many as the window holds, up to this (objects are at most a little over
/// a segment: this bounds the memory they take while they wait to be decoded).
const MAX_REMOTE_REQUESTS: usize = 8;
/// Requests in flight from a local archive: reading a file waits for no round trip.
const LOCAL_REQUESTS: usize = 2;
/// Segments decoded (decompressed, verified, written) at once.
const DECODES: usize = 2;
/// How often the worker looks for a new request.
const POLL: Duration = Duration::from_millis(25);
/// The cache holds this many bytes of segments at most, whatever `--prefetch` says.
const MAX_CACHE_BYTES: u64 = 1 << 30;
/// The worker empties the cache and exits after this long without a request.
const IDLE: Duration = Duration::from_secs(30);
/// A segment found missing is not asked for again before this long.
const MISS_EXPIRY: Duration = Duration::from_secs(2);
/// At the end of the archive, newer timelines' histories are looked for this often at most.
const HISTORY_RECHECK: Duration = Duration::from_secs(10);
/// Timelines probed past the current one, at most, when following histories.
const MAX_TIMELINE_PROBES: u32 = 64;

/// Which timeline holds each segment ahead, from the newest history file in the archive.
#[derive(Default)]
struct Timelines {
    /// The timeline the plan was made from.
    base: Option<TimelineId>,
    /// Timelines from `base` on, with the position each begins at, oldest first.
    chain: Vec<(TimelineId, Lsn)>,
    checked: Option<Instant>,
}

impl Timelines {
    /// The `depth` segments after `segment`, each on the timeline recovery will ask for it on
    /// (following the newest timeline, as `recovery_target_timeline = 'latest'` does).
    fn window(&self, segment: SegmentName, size: SegmentSize, depth: usize) -> Vec<SegmentName> {
        let Some(first) = segment.segno(size) else {
            return Vec::new();
        };
        (1..=depth as u64)
            .map(|i| {
                let segno = SegNo(first.0 + i);
                let timeline = self
                    .chain
                    .iter()
                    .rev()
                    .find(|(_, begin)| SegNo::containing(*begin, size) <= segno)
                    .map_or(segment.timeline, |(t, _)| *t)
                    .max(segment.timeline);
                SegmentName::new(timeline, segno, size)
            })
            .collect()
    }

    /// Looks for newer timelines' history files when the timeline asked for changed, or when
    /// segments were missing and the last look is a while ago.
    async fn refresh(&mut self, sources: &Sources, cache: &Cache, base: TimelineId, missed: bool) {
        let stale = self
            .checked
            .is_none_or(|at| missed && at.elapsed() > HISTORY_RECHECK);
        if self.base == Some(base) && !stale {
            return;
        }
        self.base = Some(base);
        self.checked = Some(Instant::now());
        let mut newest = None;
        for timeline in (base.0 + 1..).take(MAX_TIMELINE_PROBES as usize) {
            let name = WalFileName::History(TimelineId(timeline));
            let path = cache.dir.join(name.to_string());
            match sources.restore(&name, &path, false).await {
                Ok((FetchOutcome::Restored, _)) => {
                    let content = std::fs::read(&path);
                    let _ = std::fs::remove_file(&path);
                    match content.map(|c| parse_history(TimelineId(timeline), &c)) {
                        Ok(Ok(entries)) => newest = Some((TimelineId(timeline), entries)),
                        Ok(Err(e)) => tracing::warn!("{name}: {e}"),
                        Err(e) => tracing::warn!("{name}: {e}"),
                    }
                }
                Ok((FetchOutcome::NotFound, _)) => break,
                Err(e) => {
                    tracing::warn!("prefetch: {name}: {e:#}");
                    break;
                }
            }
        }
        self.chain = match newest {
            None => Vec::new(),
            Some((timeline, entries)) => {
                let mut chain = Vec::with_capacity(entries.len() + 1);
                let mut begin = Lsn(0);
                for entry in &entries {
                    chain.push((entry.timeline, begin));
                    begin = entry.switch_point;
                }
                chain.push((timeline, begin));
                chain
            }
        };
    }
}

/// `walhalla prefetch-worker`: keeps the next `depth` segments after the newest one asked for
/// in the cache at `dir`, until no fetch came for a while or one came with other settings.
/// Exits at once when another worker holds the cache.
pub async fn run_worker(
    config: &Config,
    dir: &Path,
    client: &ClientSettings,
    depth: usize,
) -> anyhow::Result<()> {
    let cache = Cache::at(dir, config, client);
    let starting = cache.clone();
    let lock = blocking::run(move || -> anyhow::Result<Option<File>> {
        let Some(lock) = starting.try_lock()? else {
            return Ok(None);
        };
        // Whatever an earlier worker left is not vouched for by this one.
        starting
            .prune(&HashSet::new())
            .with_context(|| format!("empty {}", starting.dir.display()))?;
        let settings = starting.dir.join(SETTINGS);
        std::fs::write(&settings, &starting.settings)
            .with_context(|| format!("write {}", settings.display()))?;
        Ok(Some(lock))
    })
    .await?;
    let Some(_lock) = lock else {
        return Ok(());
    };
    let requests = match (&config.archive, &client.server) {
        (Some(crate::archive::Location::Local(_)), None) => LOCAL_REQUESTS,
        _ => MAX_REMOTE_REQUESTS,
    }
    .min(depth.max(1));
    let sources = Arc::new(Sources::new(config, client, None)?.for_readahead(DECODES));
    let mut timelines = Timelines::default();
    let mut wanted: Option<(SegmentName, SegmentSize)> = None;
    let mut seen: Option<(String, SystemTime)> = None;
    let mut active = Instant::now();
    let mut tasks: JoinSet<(SegmentName, anyhow::Result<FetchOutcome>)> = JoinSet::new();
    let mut running: HashSet<SegmentName> = HashSet::new();
    // Fetched into the cache and still in the window: gone from the cache means taken, not
    // to be fetched again.
    let mut fetched: HashSet<SegmentName> = HashSet::new();
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let mut misses: HashMap<SegmentName, Instant> = HashMap::new();
    let mut missed = false;
    // The last request found nothing: the archive ends about here, so one request at a time
    // probes it until a segment is found again (no burst of misses every MISS_EXPIRY).
    let mut at_end = false;
    // The segment last found not archived, and the last one asked for that was fetched again
    // because the archive ends right after it (see below).
    let mut not_archived: Option<SegmentName> = None;
    let mut fetched_again: Option<SegmentName> = None;
    let mut changed = true;
    loop {
        if !cache.dir.is_dir() {
            // The data directory went away (a test cluster removed, a restore redone).
            return Ok(());
        }
        if let Some(request) = cache.read_wanted() {
            if seen.as_ref() != Some(&request) {
                match cache.parse_wanted(&request.0) {
                    // Asked for under other settings: this worker's files are not wanted.
                    Some(Err(())) => break,
                    Some(Ok(asked)) => {
                        changed |= wanted != Some(asked);
                        wanted = Some(asked);
                    }
                    None => {}
                }
                seen = Some(request);
                active = Instant::now();
            }
        }
        if active.elapsed() > IDLE && tasks.is_empty() {
            break;
        }
        if let (Some((segment, size)), true) = (wanted, changed) {
            changed = false;
            timelines
                .refresh(&sources, &cache, segment.timeline, missed)
                .await;
            missed = false;
            let depth = depth.min((MAX_CACHE_BYTES / u64::from(size.bytes())).max(1) as usize);
            let window = timelines.window(segment, size, depth);
            let mut keep: HashSet<SegmentName> = window.iter().copied().collect();
            keep.insert(segment);
            keep.extend(running.iter().copied());
            fetched.retain(|s| keep.contains(s));
            let pruner = cache.clone();
            if let Err(e) = blocking::run(move || pruner.prune(&keep)).await {
                tracing::warn!("prefetch cache {}: {e}", cache.dir.display());
            }
            misses.retain(|_, at| at.elapsed() < MISS_EXPIRY);
            // Archive recovery that finds the archive's end reads its last record again
            // (FinishWalRecovery in xlogrecovery.c), asking for the last segment once more:
            // have it ready. Not in standby mode, which waits at the end for more WAL.
            let ends_after = window
                .first()
                .is_some_and(|&first| not_archived == Some(first));
            if ends_after
                && fetched_again != Some(segment)
                && !running.contains(&segment)
                && !cache.holds(segment)
                && !in_standby_mode()
            {
                fetched_again = Some(segment);
                running.insert(segment);
                tasks.spawn(fetch_into(sources.clone(), &cache, segment));
            }
            let limit = if at_end { 1 } else { requests };
            // Readahead never takes the room the segment recovery asks for next needs: pg_wal's
            // filesystem keeps free space for a few segments beyond what is in flight.
            let dir = cache.dir.clone();
            let room = blocking::run(move || free_bytes(&dir)).await / u64::from(size.bytes());
            let limit = limit.min((room as usize).saturating_sub(SPARE_SEGMENTS));
            for next in window {
                if running.len() >= limit || misses.contains_key(&next) {
                    // Past a missing segment the archive most likely ends.
                    break;
                }
                if running.contains(&next) || fetched.contains(&next) || cache.holds(next) {
                    continue;
                }
                running.insert(next);
                tasks.spawn(fetch_into(sources.clone(), &cache, next));
            }
        }
        tokio::select! {
            Some(done) = tasks.join_next() => {
                let (segment, outcome) = done.context("prefetch task")?;
                running.remove(&segment);
                changed = true;
                match outcome {
                    Ok(FetchOutcome::Restored) => {
                        fetched.insert(segment);
                        at_end = false;
                        tracing::debug!(%segment, "prefetched");
                    }
                    Ok(FetchOutcome::NotFound) => {
                        tracing::debug!(%segment, "not archived");
                        not_archived = Some(segment);
                        misses.insert(segment, Instant::now());
                        missed = true;
                        at_end = true;
                    }
                    Err(e) if ServerError::refused_token(&e) => {
                        // Read at this worker's start, the token was rotated away since: a
                        // worker the next fetch starts reads the file as it is now.
                        tracing::warn!(%segment, "prefetch failed: {e:#}; this worker stops");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%segment, "prefetch failed: {e:#}");
                        misses.insert(segment, Instant::now());
                        at_end = true;
                    }
                }
            }
            // A missing segment is asked for again once its entry expires.
            _ = tokio::time::sleep(POLL) => changed |= !misses.is_empty(),
            // PostgreSQL stopping signals the startup process's group, this worker included.
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    crate::fsutil::remove_live_temp_files();
    empty(&cache).await;
    Ok(())
}

/// The bytes free for this user on the filesystem holding `dir`; as good as unbounded when
/// that cannot be told.
fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// A task that fetches `segment` into the cache.
fn fetch_into(
    sources: Arc<Sources>,
    cache: &Cache,
    segment: SegmentName,
) -> impl Future<Output = (SegmentName, anyhow::Result<FetchOutcome>)> + use<> {
    let path = cache.path(segment);
    async move {
        let name = WalFileName::Segment(segment);
        let outcome = sources.restore(&name, &path, false).await;
        (segment, outcome.map(|(outcome, _)| outcome))
    }
}

/// Removes every cached segment, the request and the settings, leaving the lock and the log.
async fn empty(cache: &Cache) {
    let cache = cache.clone();
    let emptied = blocking::run(move || {
        for file in [WANTED, SETTINGS] {
            match std::fs::remove_file(cache.dir.join(file)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        cache.prune(&HashSet::new())
    })
    .await;
    if let Err(e) = emptied {
        tracing::warn!("prefetch cache not emptied: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_newest_timeline() {
        let size = SegmentSize::new(16 << 20).unwrap();
        let name = |tli: u32, n: u64| SegmentName::new(TimelineId(tli), SegNo(n), size);
        let mut plan = Timelines::default();
        assert_eq!(
            plan.window(name(1, 10), size, 3),
            vec![name(1, 11), name(1, 12), name(1, 13)]
        );
        // Timeline 2 branched off inside segment 12: recovery reads 12 on timeline 2.
        plan.chain = vec![
            (TimelineId(1), Lsn(0)),
            (TimelineId(2), Lsn(SegNo(12).start_lsn(size).0 + 100)),
        ];
        assert_eq!(
            plan.window(name(1, 10), size, 3),
            vec![name(1, 11), name(2, 12), name(2, 13)]
        );
        // Never back to an older timeline than the one asked for.
        assert_eq!(plan.window(name(3, 10), size, 1), vec![name(3, 11)]);
    }
}
