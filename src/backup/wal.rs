//! The backup's WAL: a backup is usable only once every segment from its start to its stop
//! is in the archive. [`wait_for_wal`] waits for them, whoever archives them; with
//! `backup --wal stream` a [`WalStream`] streams them itself, for clusters whose WAL nothing
//! else archives.
//!
//! The stream works like `pg_basebackup -X stream`, but with the slot made before the backup begins: the
//! receiver creates a temporary slot (which keeps WAL from the server's latest checkpoint,
//! so from before any start the backup can have), then `BASE_BACKUP` runs, and once it has
//! said where it starts the receiver streams from that segment. Segments go to the archive
//! as the receiver's always do (spool, create-only upload). The backup then waits
//! for them like for WAL archived by anyone else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::archive::{Archive, BackupId, ClusterArchive};
use crate::daemon::Shared;
use crate::protocol::conninfo::ConnParams;
use crate::receiver::{self, BackupWal, Mode, ReceiveOptions};
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId};

/// How long stopping waits for the receiver's last uploads.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until every segment from the one holding `start` to the one holding the byte before
/// `stop` is in the archive, on either of `timelines` (a standby's upstream may be promoted
/// during the backup). Returns the first one still missing at `deadline`.
pub async fn wait_for_wal(
    cluster: &ClusterArchive,
    timelines: [TimelineId; 2],
    start: Lsn,
    stop: Lsn,
    size: SegmentSize,
    deadline: Instant,
    stream: Option<&WalStream>,
) -> anyhow::Result<Option<SegmentName>> {
    let mut logged = Instant::now();
    loop {
        let Some(name) = first_missing(cluster, timelines, start, stop, size).await? else {
            return Ok(None);
        };
        if stream.is_some_and(WalStream::has_stopped) {
            return Ok(Some(name));
        }
        if Instant::now() >= deadline {
            tracing::error!(segment = %name, "the backup's WAL did not reach the archive in time; the backup is marked incomplete");
            return Ok(Some(name));
        }
        if logged.elapsed() >= Duration::from_secs(30) {
            tracing::info!(segment = %name, "waiting for the backup's WAL to be archived (archive_command or walhalla receive)");
            logged = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first segment from the one holding `start` to the one holding the byte before `stop`
/// that the archive holds on neither of `timelines`, named on the second.
pub async fn first_missing(
    cluster: &ClusterArchive,
    timelines: [TimelineId; 2],
    start: Lsn,
    stop: Lsn,
    size: SegmentSize,
) -> anyhow::Result<Option<SegmentName>> {
    let first = SegNo::containing(start, size);
    let last = SegNo::containing(Lsn(stop.0.saturating_sub(1).max(start.0)), size);
    let mut held = std::collections::BTreeSet::new();
    for timeline in timelines {
        held.extend(
            cluster
                .segments_between(timeline, first, SegNo(last.0 + 1), size)
                .await?,
        );
    }
    let missing = (first.0..=last.0).map(SegNo).find(|n| !held.contains(n));
    Ok(missing.map(|n| SegmentName::new(timelines[1], n, size)))
}

/// A receiver streaming one backup's WAL.
pub struct WalStream {
    task: Option<JoinHandle<anyhow::Result<()>>>,
    shutdown: watch::Sender<bool>,
    start: watch::Sender<Option<(Lsn, TimelineId)>>,
    spool: PathBuf,
}

impl WalStream {
    /// Starts the receiver and returns once its temporary slot exists.
    pub async fn start(
        conn: &ConnParams,
        archive: &Archive,
        system_id: SystemId,
        segment_size: SegmentSize,
        compression_level: i32,
        name: &str,
    ) -> anyhow::Result<WalStream> {
        let root = receiver::spool_root();
        let own = spool_name(system_id, name);
        let spool = root.join(&own);
        let removing = crate::blocking::run(move || remove_leftover_spools(&root, &own));
        if let Err(e) = removing.await {
            tracing::warn!("{e:#}");
        }
        let (ready_tx, mut ready) = watch::channel(false);
        let (start, start_rx) = watch::channel(None);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let options = ReceiveOptions {
            conn: conn.clone(),
            slot: Some(format!("walhalla_backup_{}", std::process::id())),
            create_slot: true,
            start_lsn: None,
            endpos: None,
            spool: Some(spool.clone()),
            // 1 GiB, or the receiver's least when segments are larger.
            spool_max_bytes: (1 << 30).max(receiver::least_spool_bytes(segment_size)),
            partial_interval: None,
            status_interval: Duration::from_secs(10),
            receive_timeout: Some(Duration::from_secs(60)),
            shutdown_timeout: STOP_TIMEOUT,
            mode: Mode::Archived,
            upload_parallelism: 2,
            compression_level,
            system_id: Some(system_id),
            for_backup: Some(BackupWal {
                slot_ready: Arc::new(ready_tx),
                start: start_rx,
            }),
        };
        let shared = Arc::new(Shared::new(archive.clone()));
        let archive = archive.clone();
        let task = tokio::spawn(receiver::run(options, archive, shutdown_rx, shared));
        let mut stream = WalStream {
            task: Some(task),
            shutdown,
            start,
            spool,
        };
        let task = stream.task.as_mut().expect("just set");
        tokio::select! {
            ready = ready.wait_for(|r| *r) => {
                ready.map_err(|_| anyhow!("the WAL stream ended before its slot existed"))?;
            }
            ended = task => {
                stream.task = None;
                let error = ended
                    .context("the WAL stream panicked")?
                    .err()
                    .unwrap_or_else(|| anyhow!("it ended"));
                return Err(error.context("could not stream the backup's WAL"));
            }
        }
        Ok(stream)
    }

    /// Tells the receiver where the backup starts: streaming begins there.
    pub fn begin_at(&self, lsn: Lsn, timeline: TimelineId) {
        self.start.send_replace(Some((lsn, timeline)));
    }

    /// Whether the receiver stopped (with an error: it runs until told to stop).
    pub fn has_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the receiver, once what it received is archived; its error if it failed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        let outcome = match self.task.take() {
            Some(task) => task.await.context("the WAL stream panicked")?,
            None => Ok(()),
        };
        outcome.context("streaming the backup's WAL")
    }
}

/// The spool directory's name of backup `name`'s WAL stream.
fn spool_name(system_id: SystemId, name: &str) -> String {
    format!("{SPOOL_PREFIX}{system_id}-{name}")
}

/// What every backup's spool name starts with.
const SPOOL_PREFIX: &str = "backup-";

/// How long a backup's spool, and everything in it, must have been left unchanged before
/// another backup removes it (when no process here holds it): a backup starting at this moment
/// creates its spool a moment before it holds it, and a backup in another network namespace
/// (a container sharing the state directory) holds it where this one cannot see.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Removes the spools that backups killed before their end left in `root` (the stream's
/// spool goes with the backup otherwise), but `own`, those a running backup holds, and those
/// changed within [`LEFTOVER_AGE`]. What they hold belonged to backups that never completed:
/// the WAL a later backup needs, it streams itself.
fn remove_leftover_spools(root: &Path, own: &str) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("list {}", root.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", root.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| *n != own) else {
            continue;
        };
        let dir = entry.path();
        if !is_backup_spool(name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if !unchanged_for(&dir, LEFTOVER_AGE) {
            continue;
        }
        match crate::spool::remove_unless_held(&dir) {
            Ok(true) => {
                tracing::info!(spool = %dir.display(), "removed the WAL spool of a backup that was killed");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "could not remove the spool {} a killed backup left: {e}",
                dir.display()
            ),
        }
    }
    Ok(())
}

/// Whether neither directory `dir` nor anything in it changed within `age` (a file that
/// cannot be looked at counts as changed).
fn unchanged_for(dir: &Path, age: Duration) -> bool {
    let old = |metadata: std::io::Result<std::fs::Metadata>| {
        metadata
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|elapsed| elapsed >= age))
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    old(std::fs::metadata(dir))
        && entries
            .into_iter()
            .all(|entry| entry.is_ok_and(|entry| old(entry.metadata())))
}

/// Whether `name` is a backup's spool name: `backup-SYSTEMID-BACKUPID`.
fn is_backup_spool(name: &str) -> bool {
    name.strip_prefix(SPOOL_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(system_id, id)| {
            system_id.parse::<u64>().is_ok() && BackupId::parse(id).is_some()
        })
}

impl Drop for WalStream {
    /// Ends the receiver (its temporary slot goes with its connection) and removes its spool:
    /// what mattered was archived, or the backup failed.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.spool) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(spool = %self.spool.display(), "could not remove the backup's WAL spool: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_backups_spool_is_removed_by_the_next_backup() {
        let root = tempfile::tempdir().unwrap();
        let age = |path: &Path, age: Duration| {
            let when = std::time::SystemTime::now() - age;
            std::fs::File::open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        let make = |name: &str, dir_age: Duration, file_age: Duration| {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let file = dir.join("000000010000000000000003.partial");
            std::fs::write(&file, b"wal").unwrap();
            age(&file, file_age);
            age(&dir, dir_age);
            dir
        };
        let (old, now) = (Duration::from_secs(7200), Duration::ZERO);
        let killed = make("backup-7-20261201T000000Z", old, old);
        let killed_too = make("backup-8-20261201T000000Z-2", old, old);
        let own = make("backup-7-20261202T000000Z", old, old);
        let starting = make("backup-7-20261202T000001Z", now, now);
        // Another container's backup, streaming into a segment it already has.
        let writing = make("backup-7-20261202T000002Z", old, now);
        let receivers = make("7", old, old);
        let not_a_backups = make("backup-7-latest", old, old);
        remove_leftover_spools(root.path(), "backup-7-20261202T000000Z").unwrap();
        assert!(!killed.exists() && !killed_too.exists());
        for kept in [own, starting, writing, receivers, not_a_backups] {
            assert!(kept.exists(), "{}", kept.display());
        }
        // No state directory yet: nothing to do.
        remove_leftover_spools(&root.path().join("none"), "x").unwrap();
    }
}
