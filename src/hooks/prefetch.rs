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
//! came for a while, when PostgreSQL stops it, or when a fetch comes with other settings.
//!
//! Trust: a fetch takes a cached file only while a live worker holds the lock and that worker
//! runs with the fetch's archive, server and cluster settings; a new worker starts from an
//! empty cache. Files nobody vouches for are removed, never handed to PostgreSQL.
//!
//! Files in the cache directory: `SEGMENT` (verified, durable), `.SEGMENT.walhalla-tmp`
//! (being written), `wanted` (`SEGMENT SIZE` and the settings it was asked under),
//! `worker.lock` (held by the live worker), `worker.settings` (that worker's settings) and
//! `worker.log` (the last worker's warnings).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::in_standby_mode;
use super::sources::{FetchOutcome, Sources, check_segment_file};
use crate::blocking;
use crate::client::ClientSettings;
use crate::config::Config;
use crate::fsutil::{parent_dir, try_lock_exclusive};
use crate::wal::{
    Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName, parse_history,
};

const CACHE_DIR: &str = "walhalla-prefetch";
const WANTED: &str = "wanted";
const LOCK: &str = "worker.lock";
/// The settings of the worker that holds the lock.
const SETTINGS: &str = "worker.settings";
/// The worker's log (its warnings; the fetch that needs a file reports its own errors).
const LOG: &str = "worker.log";
/// Requests in flight at once from an object store or a fetch server, at most: each waits a
/// round trip, so as many as the window holds, up to this (objects are at most a little over
/// a segment: this bounds the memory they take while they wait to be decoded).
const MAX_REMOTE_REQUESTS: usize = 8;
/// Requests in flight from a local archive: reading a file waits for no round trip.
const LOCAL_REQUESTS: usize = 2;
/// Segments decoded (decompressed, verified, written) at once.
const DECODES: usize = 2;
/// The worker's niceness: recovery's startup process, which waits for the segments, comes
/// first for the CPU.
const WORKER_NICENESS: libc::c_int = 10;
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

/// The prefetch cache directory, as seen by a fetch or a worker with given settings.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    /// Where files come from (archive, server, cluster): a cache filled under other settings
    /// is never used.
    settings: String,
}

impl std::fmt::Display for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "readahead cache {}", self.dir.display())
    }
}

impl Cache {
    /// The cache beside `dest` (in the same directory, so taking a file is a rename), for a
    /// fetch with `config` and `client`.
    pub fn beside(dest: &Path, config: &Config, client: &ClientSettings) -> Cache {
        Self::at(&parent_dir(dest).join(CACHE_DIR), config, client)
    }

    /// The cache at `dir`, for `config` and `client`.
    pub fn at(dir: &Path, config: &Config, client: &ClientSettings) -> Cache {
        let archive = config.archive.as_ref().map(ToString::to_string);
        let system_id = config.system_id.map(|id| id.to_string());
        Cache {
            dir: dir.to_path_buf(),
            settings: format!(
                "archive={}\nserver={}\nsystem_id={}\n",
                archive.as_deref().unwrap_or("-"),
                client.server.as_deref().unwrap_or("-"),
                system_id.as_deref().unwrap_or("-"),
            ),
        }
    }

    fn path(&self, segment: SegmentName) -> PathBuf {
        self.dir.join(segment.to_string())
    }

    /// Moves `segment` from the cache to `dest` if a live worker with the same settings
    /// fetched it; returns its size. A file that does not check out is removed and the
    /// caller fetches it as usual. Files no live worker vouches for (one killed, or from
    /// before a restore) are removed, never used. An error is a problem of the cache (it
    /// cannot be read or written): the caller fetches the file directly.
    pub fn take(
        &self,
        segment: SegmentName,
        dest: &Path,
        system_id: Option<SystemId>,
    ) -> anyhow::Result<Option<SegmentSize>> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        if self.try_lock()?.is_some() {
            // No worker runs: what is here is left over.
            self.prune(&HashSet::new())
                .with_context(|| format!("remove the files left in {}", self.dir.display()))?;
            return Ok(None);
        }
        let worker_settings = std::fs::read_to_string(self.dir.join(SETTINGS)).unwrap_or_default();
        if worker_settings != self.settings {
            return Ok(None);
        }
        match std::fs::rename(self.path(segment), dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                tracing::warn!("prefetch cache {}: {e}", self.dir.display());
                return Ok(None);
            }
        }
        // The rename is not made durable here: PostgreSQL moves the file on at once with a
        // durable rename of its own (fsync of the file and of pg_wal), which commits this one.
        match check_segment_file(dest, segment, system_id) {
            Ok(size) => Ok(Some(size)),
            Err(e) => {
                tracing::warn!("prefetched {segment} discarded: {e:#}");
                std::fs::remove_file(dest).with_context(|| format!("remove {}", dest.display()))?;
                Ok(None)
            }
        }
    }

    /// Records `segment` as the newest one asked for, with the settings it is asked under.
    fn write_wanted(&self, segment: SegmentName, size: SegmentSize) -> anyhow::Result<()> {
        self.create_dir()
            .with_context(|| format!("create {}", self.dir.display()))?;
        let temp = self.dir.join(format!(".{WANTED}.tmp"));
        std::fs::write(
            &temp,
            format!("{segment} {}\n{}", size.bytes(), self.settings),
        )
        .and_then(|()| std::fs::rename(&temp, self.dir.join(WANTED)))
        .with_context(|| format!("record {segment} in {}", self.dir.join(WANTED).display()))
    }

    /// The request as written (compared whole, so a repeated request with the same content
    /// is noticed through the modification time, a new one even on coarse timestamps).
    fn read_wanted(&self) -> Option<(String, SystemTime)> {
        let path = self.dir.join(WANTED);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        Some((std::fs::read_to_string(&path).ok()?, modified))
    }

    /// Parses a request: the segment and its size, if it was made under these settings.
    fn parse_wanted(&self, text: &str) -> Option<Result<(SegmentName, SegmentSize), ()>> {
        let (first, settings) = text.split_once('\n')?;
        if settings != self.settings {
            return Some(Err(()));
        }
        let (name, size) = first.split_once(' ')?;
        let size = SegmentSize::new(size.parse().ok()?)?;
        match name.parse().ok()? {
            WalFileName::Segment(segment) => Some(Ok((segment, size))),
            _ => None,
        }
    }

    /// Takes the worker lock without waiting: `None` when a worker holds it.
    fn try_lock(&self) -> anyhow::Result<Option<File>> {
        let path = self.dir.join(LOCK);
        self.create_dir()
            .with_context(|| format!("create {}", self.dir.display()))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let locked =
            try_lock_exclusive(&file).with_context(|| format!("lock {}", path.display()))?;
        Ok(locked.then_some(file))
    }

    /// Creates the cache directory, private (see `fsutil::restrict_umask`); one an older
    /// version left accessible to other users loses that access: walhalla owns it whole.
    fn create_dir(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        crate::fsutil::remove_access_for_others(&self.dir)
    }

    /// Whether a live worker with these settings holds the cache. Such a worker started after
    /// a fetch under the same settings restored a file, so the archive holds this cluster.
    pub fn vouches(&self) -> bool {
        if !self.dir.is_dir() {
            return false;
        }
        // Taking the lock means no worker runs; it is released at once.
        if !matches!(self.try_lock(), Ok(None)) {
            return false;
        }
        std::fs::read_to_string(self.dir.join(SETTINGS)).is_ok_and(|s| s == self.settings)
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
    client: &ClientSettings,
    depth: usize,
) {
    let cache = cache.clone();
    let (config, client) = (config.clone(), client.clone());
    let started = blocking::run(move || -> anyhow::Result<()> {
        cache.write_wanted(segment, size)?;
        // Released before the worker starts, which takes it for its whole life.
        if cache.try_lock()?.is_some() {
            spawn_worker(&cache, &config, &client, depth)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = started {
        tracing::warn!("readahead not started: {e:#}");
    }
}

/// Starts `walhalla prefetch-worker` in the background with the settings of this fetch.
fn spawn_worker(
    cache: &Cache,
    config: &Config,
    client: &ClientSettings,
    depth: usize,
) -> anyhow::Result<()> {
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
        .arg(depth.to_string());
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
        .stderr(log);
    close_inherited_descriptors(&mut command);
    lower_priority(&mut command);
    command.spawn().context("start the prefetch worker")?;
    Ok(())
}

/// The worker outlives the fetch: it must not keep open what PostgreSQL left inheritable
/// (files, sockets, pipes) in the process that ran the fetch.
fn close_inherited_descriptors(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec and only makes system calls, which are
    // async-signal-safe; descriptors 0-2 are the ones set up above.
    unsafe {
        command.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let all = libc::c_uint::MAX;
            if libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                all,
                CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                // Older kernels: mark them one by one, as far as the limit goes.
                let limit = libc::sysconf(libc::_SC_OPEN_MAX).clamp(256, 65_536) as libc::c_int;
                for fd in 3..limit {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Recovery's startup process, which waits for the segments, comes first for the CPU: the
/// worker runs niced, every thread of it (set before exec, so all inherit it).
fn lower_priority(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec and only makes a system call; a failure
    // leaves the priority as it was, which is harmless.
    unsafe {
        command.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICENESS);
            Ok(())
        });
    }
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

    #[test]
    fn only_files_a_live_worker_with_the_same_settings_vouches_for_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let config = Config::resolve(crate::config::Overrides {
            archive: Some("/archive/a".into()),
            ..Default::default()
        })
        .unwrap();
        let cache = Cache::beside(&dest, &config, &ClientSettings::default());
        let size = SegmentSize::new(1 << 20).unwrap();
        let segment = SegmentName::new(TimelineId(1), SegNo(3), size);
        let mut good = crate::wal::page::tests::header_bytes(1, 3 << 20, 42, 1 << 20);
        good.resize(1 << 20, 0);
        let place = |bytes: &[u8]| std::fs::write(cache.path(segment), bytes).unwrap();
        assert_eq!(
            cache.take(segment, &dest, None).unwrap(),
            None,
            "no cache yet"
        );

        // Left over, no worker holding the lock: removed, not taken.
        std::fs::create_dir_all(&cache.dir).unwrap();
        place(&good);
        assert_eq!(cache.take(segment, &dest, None).unwrap(), None);
        assert!(!cache.holds(segment), "a left-over file stays");
        std::fs::write(cache.dir.join(SETTINGS), &cache.settings).unwrap();
        assert!(!cache.vouches(), "settings left behind vouch for nothing");

        // A live worker, with these settings.
        let _worker = cache.try_lock().unwrap().expect("free");
        assert!(cache.vouches());
        place(&good);
        assert_eq!(
            cache.take(segment, &dest, Some(SystemId(7))).unwrap(),
            None,
            "other cluster"
        );
        assert!(
            !dest.exists(),
            "a refused file is never left for PostgreSQL"
        );
        place(&good);
        assert_eq!(
            cache.take(segment, &dest, Some(SystemId(42))).unwrap(),
            Some(size)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), good);

        // A worker started with another archive: its files are not used.
        let other = Config::resolve(crate::config::Overrides {
            archive: Some("/archive/b".into()),
            ..Default::default()
        })
        .unwrap();
        let elsewhere = Cache::beside(&dest, &other, &ClientSettings::default());
        assert!(!elsewhere.vouches(), "a worker for another archive");
        place(&good);
        assert_eq!(elsewhere.take(segment, &dest, None).unwrap(), None);
        assert!(cache.holds(segment));
    }
}
