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

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::sources::check_segment_file;
use crate::blocking;
use crate::client::ClientSettings;
use crate::config::Config;
use crate::fsutil::{parent_dir, try_lock_exclusive};
use crate::wal::{SegmentName, SegmentSize, SystemId, WalFileName};

mod worker;

pub use worker::run_worker;

const CACHE_DIR: &str = "walhalla-prefetch";
const WANTED: &str = "wanted";
const LOCK: &str = "worker.lock";
/// The settings of the worker that holds the lock.
const SETTINGS: &str = "worker.settings";
/// The worker's log (its warnings; the fetch that needs a file reports its own errors).
const LOG: &str = "worker.log";
/// The worker's niceness: recovery's startup process, which waits for the segments, comes
/// first for the CPU.
const WORKER_NICENESS: libc::c_int = 10;

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

    /// Removes every segment the cache holds, for the room a fetch needs.
    pub fn release(&self) -> io::Result<usize> {
        self.prune(&HashSet::new())
    }

    /// Removes the complete segments not in `keep`; returns how many went. No cache directory
    /// holds none.
    fn prune(&self, keep: &HashSet<SegmentName>) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let Some(Ok(WalFileName::Segment(segment))) =
                entry.file_name().to_str().map(str::parse::<WalFileName>)
            else {
                continue;
            };
            if !keep.contains(&segment) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    Err(_) => {}
                }
            }
        }
        Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SegNo, TimelineId};

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
