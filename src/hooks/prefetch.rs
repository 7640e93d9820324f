//! Readahead that outlives one restore_command: a cache directory beside `%p`
//! (`pg_wal/walhalla-prefetch`) and a background worker that fills it.
//!
//! Each `walhalla fetch` of segment N first tries to move `N` out of the cache (a rename: the
//! file was verified and fsynced by the worker before it got its name), then records N as
//! `wanted` and starts the worker unless it runs. The worker keeps the next `--prefetch`
//! segments in the cache, fetching a few at a time, following the newest timeline's history
//! across switches; a segment nobody has is not asked for again for a moment (a short
//! negative cache), so the end of the archive costs a request every few seconds, not a storm.
//! It removes what falls behind the window, and empties the cache and exits once no fetch
//! came for a while.
//!
//! Files in the cache directory: `SEGMENT` (verified, durable), `.SEGMENT.walhalla-tmp`
//! (being written), `wanted` (`SEGMENT SIZE`, the newest segment asked for),
//! `worker.lock` (held by the live worker) and `worker.log` (the last worker's warnings).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fetch::{FetchOptions, FetchOutcome, Sources, check_segment_file};
use crate::blocking;
use crate::client::ClientSettings;
use crate::config::Config;
use crate::fsutil::fsync_dir;
use crate::wal::{
    Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName, parse_history,
};

const CACHE_DIR: &str = "walhalla-prefetch";
const WANTED: &str = "wanted";
const LOCK: &str = "worker.lock";
/// The worker's log (its warnings; the fetch that needs a file reports its own errors).
const LOG: &str = "worker.log";
/// Segments fetched at once by the worker.
const PARALLEL: usize = 2;
/// How often the worker looks for a new request.
const POLL: Duration = Duration::from_millis(10);
/// The worker empties the cache and exits after this long without a request.
const IDLE: Duration = Duration::from_secs(30);
/// A segment found missing is not asked for again before this long.
const MISS_EXPIRY: Duration = Duration::from_secs(2);
/// At the end of the archive, newer timelines' histories are looked for this often at most.
const HISTORY_RECHECK: Duration = Duration::from_secs(10);
/// Timelines probed past the current one, at most, when following histories.
const MAX_TIMELINE_PROBES: u32 = 64;

/// The prefetch cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache beside `dest` (in the same directory, so taking a file is a rename).
    pub fn beside(dest: &Path) -> anyhow::Result<Cache> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(Cache {
            dir: parent.join(CACHE_DIR),
        })
    }

    /// The cache at `dir`.
    pub fn at(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, segment: SegmentName) -> PathBuf {
        self.dir.join(segment.to_string())
    }

    /// Moves `segment` from the cache to `dest` if the worker fetched it; returns its size.
    /// A file that does not check out is removed and the caller fetches it as usual.
    pub fn take(
        &self,
        segment: SegmentName,
        dest: &Path,
        system_id: Option<SystemId>,
    ) -> anyhow::Result<Option<SegmentSize>> {
        match std::fs::rename(self.path(segment), dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                tracing::warn!("prefetch cache {}: {e}", self.dir.display());
                return Ok(None);
            }
        }
        match check_segment_file(dest, segment, system_id) {
            Ok(size) => {
                let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
                fsync_dir(dir.unwrap_or(Path::new(".")))
                    .with_context(|| format!("fsync the directory of {}", dest.display()))?;
                Ok(Some(size))
            }
            Err(e) => {
                tracing::warn!("prefetched {segment} discarded: {e:#}");
                std::fs::remove_file(dest).with_context(|| format!("remove {}", dest.display()))?;
                Ok(None)
            }
        }
    }

    /// Records `segment` as the newest one asked for.
    fn write_wanted(&self, segment: SegmentName, size: SegmentSize) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let temp = self.dir.join(format!(".{WANTED}.tmp"));
        std::fs::write(&temp, format!("{segment} {}\n", size.bytes()))?;
        std::fs::rename(&temp, self.dir.join(WANTED))
    }

    /// The newest segment asked for, its size, and when it was asked for.
    fn read_wanted(&self) -> Option<(SegmentName, SegmentSize, SystemTime)> {
        let path = self.dir.join(WANTED);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let (name, size) = text.trim().split_once(' ')?;
        let size = SegmentSize::new(size.parse().ok()?)?;
        match name.parse().ok()? {
            WalFileName::Segment(segment) => Some((segment, size, modified)),
            _ => None,
        }
    }

    /// Takes the worker lock without waiting: `None` when a worker holds it.
    fn try_lock(&self) -> io::Result<Option<File>> {
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))?;
        // SAFETY: flock on a descriptor that stays open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        }
    }

    fn holds(&self, segment: SegmentName) -> bool {
        self.path(segment).exists()
    }

    /// Removes the complete segments not in `keep`.
    fn prune(&self, keep: &HashSet<SegmentName>) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(Ok(WalFileName::Segment(segment))) =
                entry.file_name().to_str().map(str::parse::<WalFileName>)
            else {
                continue;
            };
            if !keep.contains(&segment) {
                match std::fs::remove_file(entry.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// After a fetch of `segment`: records it as wanted and starts the worker unless it runs.
/// Failures are logged, never returned: readahead only makes fetches faster.
pub async fn request(
    cache: &Cache,
    segment: SegmentName,
    size: SegmentSize,
    config: &Config,
    options: &FetchOptions,
) {
    let cache = cache.clone();
    let (config, options) = (config.clone(), options.clone());
    let started = blocking::run(move || -> anyhow::Result<()> {
        cache.write_wanted(segment, size)?;
        if cache.try_lock()?.is_some() {
            spawn_worker(&cache, &config, &options)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = started {
        tracing::warn!("prefetch not started: {e:#}");
    }
}

/// Starts `walhalla prefetch-worker` in the background with the settings of this fetch.
fn spawn_worker(cache: &Cache, config: &Config, options: &FetchOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locate the walhalla binary")?;
    let mut command = std::process::Command::new(exe);
    if let Some(archive) = &config.archive {
        command.arg("--archive").arg(archive.to_string());
    }
    if let Some(id) = config.system_id {
        command.arg("--system-id").arg(id.to_string());
    }
    command
        .arg("--timeout")
        .arg(config.timeout.as_secs().to_string())
        .arg("prefetch-worker")
        .arg(&cache.dir)
        .arg("--prefetch")
        .arg(options.prefetch.to_string());
    let client = &options.client;
    for (flag, value) in [
        ("--server", client.server.as_ref().map(PathBuf::from)),
        ("--token-file", client.token_file.clone()),
        ("--server-ca", client.server_ca.clone()),
        ("--client-cert", client.client_cert.clone()),
        ("--client-key", client.client_key.clone()),
    ] {
        if let Some(value) = value {
            command.arg(flag).arg(value);
        }
    }
    // Not the hook's stderr: whoever runs the hook may wait for that pipe to close.
    let log = File::create(cache.dir.join(LOG))
        .with_context(|| format!("create {}", cache.dir.join(LOG).display()))?;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("start the prefetch worker")?;
    Ok(())
}

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
/// in the cache at `dir`, until no fetch came for a while. Exits at once when another worker
/// holds the cache.
pub async fn run_worker(
    config: &Config,
    dir: &Path,
    client: &ClientSettings,
    depth: usize,
) -> anyhow::Result<()> {
    let cache = Cache::at(dir);
    let locker = cache.clone();
    let Some(_lock) = blocking::run(move || locker.try_lock()).await? else {
        return Ok(());
    };
    let sources = Arc::new(Sources::new(config, client)?);
    let mut timelines = Timelines::default();
    let mut wanted: Option<(SegmentName, SegmentSize)> = None;
    let mut seen: Option<SystemTime> = None;
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
    loop {
        if !cache.dir.is_dir() {
            // The data directory went away (a test cluster removed, a restore redone).
            return Ok(());
        }
        if let Some((segment, size, modified)) = cache.read_wanted() {
            if seen != Some(modified) {
                seen = Some(modified);
                active = Instant::now();
                wanted = Some((segment, size));
            }
        }
        if active.elapsed() > IDLE && tasks.is_empty() {
            empty(&cache).await;
            return Ok(());
        }
        if let Some((segment, size)) = wanted {
            timelines
                .refresh(&sources, &cache, segment.timeline, missed)
                .await;
            missed = false;
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
            for next in window {
                if running.len() >= PARALLEL || misses.contains_key(&next) {
                    // Past a missing segment the archive most likely ends.
                    break;
                }
                if running.contains(&next) || fetched.contains(&next) || cache.holds(next) {
                    continue;
                }
                running.insert(next);
                let (sources, path) = (sources.clone(), cache.path(next));
                tasks.spawn(async move {
                    let name = WalFileName::Segment(next);
                    let outcome = sources.restore(&name, &path, false).await;
                    (next, outcome.map(|(outcome, _)| outcome))
                });
            }
        }
        tokio::select! {
            Some(done) = tasks.join_next() => {
                let (segment, outcome) = done.context("prefetch task")?;
                running.remove(&segment);
                match outcome {
                    Ok(FetchOutcome::Restored) => {
                        fetched.insert(segment);
                        tracing::debug!(%segment, "prefetched");
                    }
                    Ok(FetchOutcome::NotFound) => {
                        misses.insert(segment, Instant::now());
                        missed = true;
                    }
                    Err(e) => {
                        tracing::warn!(%segment, "prefetch failed: {e:#}");
                        misses.insert(segment, Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep(POLL) => {}
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

/// Removes every cached segment and the request, leaving the lock and the log.
async fn empty(cache: &Cache) {
    let cache = cache.clone();
    let emptied = blocking::run(move || {
        match std::fs::remove_file(cache.dir.join(WANTED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
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

    #[test]
    fn taking_moves_a_checked_file_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::beside(&dir.path().join("RECOVERYXLOG")).unwrap();
        std::fs::create_dir_all(&cache.dir).unwrap();
        let size = SegmentSize::new(1 << 20).unwrap();
        let segment = SegmentName::new(TimelineId(1), SegNo(3), size);
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(cache.take(segment, &dest, None).unwrap(), None, "empty");
        std::fs::write(cache.path(segment), vec![0u8; 1 << 20]).unwrap();
        assert_eq!(cache.take(segment, &dest, None).unwrap(), None, "not WAL");
        assert!(!dest.exists(), "a bad file is never left for PostgreSQL");
    }
}
