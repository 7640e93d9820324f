//! The uploader: archives complete spool segments and kept tails, several at a time,
//! compressing on the blocking pool, then each complete segment's time index
//! ([`crate::timeindex`], made while the segment is stored; best effort, never a reason to
//! retry or stop). It says which segments are still outstanding, so the stream never reports
//! a flush position past WAL that is not in the archive, whatever order parallel uploads
//! finish in.
//!
//! Each archived segment is logged at info level (name, bytes, compression ratio, time).
//! Failures are retried with backoff for as long as the receiver runs, transient and permanent
//! ones alike (permission denied, no such bucket: an operator can fix those while the slot
//! keeps the WAL); the archive's [`health`](crate::archive::Health) logs when they start and
//! end and shows them in `/status`. Only a contradiction (the archive holds other bytes under
//! the name, or a corrupt object) stops the uploader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::archive::{self, ClusterArchive, PreparedIndex};
use crate::backoff::{Backoff, GaveUp, Transient, retry};
use crate::blocking;
use crate::daemon::Shared;
use crate::envelope;
use crate::failpoint;
use crate::fsutil::SequentialMap;
use crate::metrics::ErrorKind;
use crate::spool;
use crate::wal::{Lsn, SegmentName, SegmentSize, WalFileName};

const UPLOAD_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Segments compressed and indexed at once: each is mapped whole meanwhile, so this bounds
/// the memory segments take (one core compresses faster than a primary writes WAL).
const ENCODING_AT_ONCE: usize = 1;

/// What the uploader reports back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Uploads finished so far (a change means the outstanding set shrank).
    pub finished: u64,
    /// Set when the uploader stopped for good.
    pub fatal: Option<String>,
}

/// One piece of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Job {
    /// A complete spool segment.
    Segment(SegmentName),
    /// A kept tail: the segment's bytes up to `end`, archived as a receiver snapshot.
    Tail(SegmentName, Lsn),
}

/// Handle to a running uploader.
pub struct Uploader {
    /// Unbounded on purpose: it holds only names of spool files, and the spool limit
    /// (`--spool-max-bytes`) is the backpressure. A bounded queue would block the stream
    /// while the archive is down, starving the status updates the server needs.
    queue: mpsc::UnboundedSender<Job>,
    progress: watch::Receiver<Progress>,
    outstanding: Arc<Mutex<Outstanding>>,
    size: SegmentSize,
    shared: Arc<Shared>,
}

/// The work an uploader is responsible for, with when each segment was handed over.
#[derive(Default)]
struct Outstanding {
    segments: BTreeMap<SegmentName, SystemTime>,
    tails: BTreeSet<(SegmentName, Lsn)>,
}

impl Outstanding {
    fn contains(&self, job: Job) -> bool {
        match job {
            Job::Segment(s) => self.segments.contains_key(&s),
            Job::Tail(s, end) => self.tails.contains(&(s, end)),
        }
    }

    fn insert(&mut self, job: Job) {
        match job {
            Job::Segment(s) => {
                self.segments.insert(s, SystemTime::now());
            }
            Job::Tail(s, end) => {
                self.tails.insert((s, end));
            }
        }
    }

    fn remove(&mut self, job: Job) {
        match job {
            Job::Segment(s) => {
                self.segments.remove(&s);
            }
            Job::Tail(s, end) => {
                self.tails.remove(&(s, end));
            }
        }
    }

    /// The start of the oldest outstanding segment, by position (timelines do not matter:
    /// positions run on across a switch).
    fn oldest_segment_start(&self, size: SegmentSize) -> Option<Lsn> {
        self.segments.keys().filter_map(|s| s.start_lsn(size)).min()
    }

    /// Bytes of WAL these files hold in the spool.
    fn bytes(&self, size: SegmentSize) -> u64 {
        let tails: u64 = self
            .tails
            .iter()
            .map(|(s, end)| {
                end.0
                    .saturating_sub(s.start_lsn(size).map_or(end.0, |l| l.0))
            })
            .sum();
        self.segments.len() as u64 * u64::from(size.bytes()) + tails
    }

    /// Publishes the queue's depth and age.
    fn publish(&self, shared: &Shared) {
        let oldest = self.segments.values().min().copied();
        shared.metrics.set_upload_queue(self.segments.len(), oldest);
    }
}

/// Settings of an uploader.
pub struct UploadSettings {
    /// The spool directory the segments are in.
    pub spool: PathBuf,
    /// The segment size.
    pub segment_size: SegmentSize,
    /// zstd level.
    pub compression_level: i32,
    /// Uploads in flight at most.
    pub parallelism: usize,
}

impl Uploader {
    /// Starts an uploader.
    pub fn start(
        archive: ClusterArchive,
        settings: UploadSettings,
        shared: Arc<Shared>,
    ) -> Uploader {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Job>();
        let size = settings.segment_size;
        let (progress_tx, progress) = watch::channel(Progress::default());
        let settings = Arc::new(settings);
        let outstanding = Arc::new(Mutex::new(Outstanding::default()));
        let in_flight = outstanding.clone();
        let uploader_shared = shared.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(settings.parallelism.max(1)));
            let encoding = Arc::new(Semaphore::new(ENCODING_AT_ONCE));
            let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
            let mut open = true;
            loop {
                tokio::select! {
                    job = incoming.recv(), if open => {
                        let Some(job) = job else { open = false; continue };
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let (archive, settings, done_tx) = (archive.clone(), settings.clone(), done_tx.clone());
                        let (in_flight, shared, encoding) = (in_flight.clone(), shared.clone(), encoding.clone());
                        tokio::spawn(async move {
                            let result = upload_until_stored(&archive, &settings, &encoding, job, &shared).await;
                            drop(permit);
                            if result.is_ok() {
                                let mut in_flight = lock(&in_flight);
                                in_flight.remove(job);
                                in_flight.publish(&shared);
                            }
                            let _ = done_tx.send(result);
                        });
                    }
                    Some(result) = done_rx.recv() => {
                        match result {
                            Ok(()) => progress_tx.send_modify(|p| p.finished += 1),
                            Err(fatal) => {
                                progress_tx.send_modify(|p| p.fatal = Some(fatal));
                                return;
                            }
                        }
                    }
                    else => return,
                }
            }
        });
        Uploader {
            queue,
            progress,
            outstanding,
            size,
            shared: uploader_shared,
        }
    }

    /// Queues a complete spool segment, unless it is queued already. Never waits.
    pub fn enqueue(&self, segment: SegmentName) -> Result<(), String> {
        self.submit(Job::Segment(segment))
    }

    /// Queues a kept tail (see [`spool::keep_tail`]), unless it is queued already.
    pub fn enqueue_tail(&self, segment: SegmentName, end: Lsn) -> Result<(), String> {
        self.submit(Job::Tail(segment, end))
    }

    fn submit(&self, job: Job) -> Result<(), String> {
        {
            let mut outstanding = lock(&self.outstanding);
            if outstanding.contains(job) {
                return Ok(());
            }
            outstanding.insert(job);
            outstanding.publish(&self.shared);
        }
        self.queue
            .send(job)
            .map_err(|_| self.fatal_or("uploader stopped"))
    }

    /// The start of the oldest complete segment not yet archived: nothing from there on may
    /// be reported as archived.
    pub fn oldest_outstanding(&self) -> Option<Lsn> {
        lock(&self.outstanding).oldest_segment_start(self.size)
    }

    /// Bytes of WAL in the spool waiting for upload.
    pub fn pending_bytes(&self) -> u64 {
        lock(&self.outstanding).bytes(self.size)
    }

    /// How many segments and kept tails are queued or being uploaded.
    pub fn pending(&self) -> usize {
        let outstanding = lock(&self.outstanding);
        outstanding.segments.len() + outstanding.tails.len()
    }

    /// Watches the uploader's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until everything handed over is archived (`Ok(true)`), or `deadline` passes
    /// (`Ok(false)`: the rest stays in the spool for the next start). An error when the
    /// uploader stopped for good.
    pub async fn wait_idle(&self, deadline: Option<Instant>) -> Result<bool, String> {
        let mut progress = self.progress();
        loop {
            if let Some(fatal) = progress.borrow_and_update().fatal.clone() {
                return Err(fatal);
            }
            if self.pending() == 0 {
                return Ok(true);
            }
            let changed = progress.changed();
            match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, changed).await {
                    Ok(result) => result.map_err(|_| "the uploader stopped".to_string())?,
                    Err(_elapsed) => return Ok(false),
                },
                None => changed
                    .await
                    .map_err(|_| "the uploader stopped".to_string())?,
            }
        }
    }

    fn fatal_or(&self, default: &str) -> String {
        self.progress
            .borrow()
            .fatal
            .clone()
            .unwrap_or_else(|| default.into())
    }
}

fn lock(outstanding: &Mutex<Outstanding>) -> std::sync::MutexGuard<'_, Outstanding> {
    outstanding
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An upload failure, as the uploader's retries see it: everything but a contradiction is
/// worth another attempt, even a permanent error an operator must fix.
struct UploadError(archive::Error);

impl Transient for UploadError {
    fn is_transient(&self) -> bool {
        !self.0.is_contradiction()
    }
}

/// Archives one job, retrying until it is stored; then removes its file from the spool.
/// Returns an error only for a contradiction, which retrying cannot fix. The archive's
/// health logs when uploads start failing and when they work again; each retry is counted
/// and logged at debug level.
async fn upload_until_stored(
    archive: &ClusterArchive,
    settings: &UploadSettings,
    encoding: &Semaphore,
    job: Job,
    shared: &Shared,
) -> Result<(), String> {
    let what = match job {
        Job::Segment(segment) => segment.to_string(),
        Job::Tail(segment, end) => format!("{segment} up to {end}"),
    };
    let started = Instant::now();
    let stored = retry(
        UPLOAD_BACKOFF,
        None,
        || async {
            upload(archive, settings, encoding, job)
                .await
                .map_err(UploadError)
        },
        |UploadError(e), pause| {
            shared.metrics.error(ErrorKind::Archive);
            tracing::debug!(file = %what, retry_in_s = pause.as_secs(), "upload failed: {e}");
        },
    )
    .await;
    let stored = match stored {
        Ok(stored) => stored,
        Err(GaveUp::Error(UploadError(e)) | GaveUp::Deadline(Some(UploadError(e)))) => {
            shared.metrics.error(ErrorKind::Archive);
            tracing::error!(file = %what, "cannot archive: {e}");
            return Err(format!("archive {what}: {e}"));
        }
        Err(GaveUp::Deadline(None)) => None,
    };
    failpoint::hit(failpoint::UPLOAD_STORED);
    // Logged and indexed before the spool file goes: a crash in between then leaves the file,
    // archived again (the same bytes) and indexed at the next start; after its removal
    // nothing would make the index any more.
    if let Some(stored) = stored {
        report_and_index(archive, &what, started, stored).await;
    } else {
        tracing::debug!(file = %what, "archived before");
    }
    remove_from_spool(&settings.spool, job, &what).await;
    if let Job::Segment(segment) = job {
        shared.metrics.segment_archived(
            segment.to_string(),
            u64::from(settings.segment_size.bytes()),
        );
    }
    failpoint::hit(failpoint::UPLOAD_REMOVED);
    Ok(())
}

/// Logs what one upload stored and stores a complete segment's time index.
async fn report_and_index(archive: &ClusterArchive, what: &str, started: Instant, stored: Stored) {
    let ms = started.elapsed().as_millis() as u64;
    let ratio = stored.original_bytes as f64 / stored.stored_bytes.max(1) as f64;
    let ratio = (ratio * 10.0).round() / 10.0;
    match stored.index {
        // One line per segment at info level: at 25 segments a second (400 MB/s of WAL) that
        // is 25 short lines a second, well under what journald or a log collector takes.
        Some((segment, index)) => {
            tracing::info!(
                segment = %segment,
                bytes = stored.original_bytes,
                stored_bytes = stored.stored_bytes,
                ratio,
                ms,
                "archived"
            );
            archive.store_index(segment, index).await;
        }
        None => tracing::debug!(
            file = %what,
            bytes = stored.original_bytes,
            stored_bytes = stored.stored_bytes,
            ms,
            "archived a snapshot"
        ),
    }
}

/// Removes an archived job's file from the spool, retrying until that works: a spool turned
/// read-only (a filesystem error) must not stop the receiver over WAL that is safe in the
/// archive. The job stays outstanding meanwhile, its file taking room in the spool.
async fn remove_from_spool(dir: &Path, job: Job, what: &str) {
    let mut failing = false;
    let removed = retry(
        UPLOAD_BACKOFF,
        None,
        || {
            let dir = dir.to_path_buf();
            async move {
                blocking::run(move || match job {
                    Job::Segment(segment) => spool::remove_complete(&dir, segment),
                    Job::Tail(segment, end) => spool::remove_tail(&dir, segment, end),
                })
                .await
                .map_err(SpoolError)
            }
        },
        |SpoolError(e), pause| {
            if failing {
                tracing::debug!(file = %what, retry_in_s = pause.as_secs(), "cannot remove from the spool: {e}");
            } else {
                tracing::warn!(
                    file = %what,
                    "archived, but cannot remove it from the spool: {e}; retrying (it takes room \
                     in the spool until then)"
                );
                failing = true;
            }
        },
    )
    .await;
    if removed.is_ok() && failing {
        tracing::info!(file = %what, "removed from the spool at last");
    }
}

/// A spool file that could not be removed: always retried.
struct SpoolError(std::io::Error);

impl Transient for SpoolError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// What one upload stored.
struct Stored {
    /// The file's bytes.
    original_bytes: u64,
    /// The archived object's bytes (compressed).
    stored_bytes: u64,
    /// For a complete segment: its time index, made while the segment was stored, for the
    /// caller to store once the segment is archived.
    index: Option<(SegmentName, Result<PreparedIndex, String>)>,
}

/// Archives one job's file; `None` when it is no longer in the spool (archived before).
///
/// Memory: one file at a time (`encoding`) is compressed and, for a segment, then indexed,
/// each a pass over its mapping that hands the pages behind it back ([`SequentialMap`]), so a
/// segment costs a few windows of memory (2 MiB at the default level), not 16 MiB; the upload, which may wait long on a slow
/// archive, keeps a mapping of the file that is read only if the archive already holds the
/// object (to compare), so while uploads wait the files take no memory.
async fn upload(
    archive: &ClusterArchive,
    settings: &UploadSettings,
    encoding: &Semaphore,
    job: Job,
) -> archive::Result<Option<Stored>> {
    failpoint::hit(failpoint::UPLOAD_START);
    let failed = |e: std::io::Error| archive::Error::Open {
        location: archive.location().clone(),
        reason: format!("read {job:?} from the spool: {e}"),
    };
    let (path, len) = match job {
        Job::Segment(segment) => (spool::complete_path(&settings.spool, segment), None),
        Job::Tail(segment, end) => match spool::tail_len(segment, end, settings.segment_size) {
            Ok(len) => (spool::tail_path(&settings.spool, segment, end), Some(len)),
            Err(e) => return Err(failed(e)),
        },
    };
    let encoded = {
        // Never closed: it lives as long as the uploader.
        let _turn = encoding.acquire().await.ok();
        let level = settings.compression_level;
        let index = match job {
            Job::Segment(segment) => Some(segment),
            Job::Tail(..) => None,
        };
        blocking::run(move || {
            // SAFETY: a complete segment or a kept tail is never written again; it is only
            // removed, after its upload.
            let map = unsafe { SequentialMap::open(&path)? };
            encode_map(map, len, level, index)
        })
        .await
    };
    let encoded = match encoded {
        Ok(encoded) => encoded,
        // Files leave the spool only once archived: this one was queued again after.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let (original_bytes, stored_bytes) =
        (encoded.content.len() as u64, encoded.envelope.len() as u64);
    match job {
        Job::Segment(segment) => {
            let name = WalFileName::Segment(segment);
            archive
                .put(&name, encoded.content, encoded.envelope)
                .await?;
        }
        Job::Tail(segment, end) => {
            archive
                .put_partial_snapshot(segment, end, encoded.content, encoded.envelope)
                .await?;
        }
    }
    let index = encoded.index;
    Ok(Some(Stored {
        original_bytes,
        stored_bytes,
        index,
    }))
}

/// Compresses the first `len` bytes of a spool file (all of it when `None`) and, given its
/// segment, indexes it: two passes over `map`, which hand back the pages behind them. The
/// content that comes back keeps the mapping, for the upload to compare with an object found
/// already archived.
pub(super) fn encode_map(
    map: SequentialMap,
    len: Option<usize>,
    level: i32,
    index: Option<SegmentName>,
) -> std::io::Result<Encoded> {
    let len = len.unwrap_or(map.bytes().len());
    let content = map.bytes().get(..len).ok_or_else(|| {
        std::io::Error::other(format!(
            "the spool file holds {} bytes, {len} expected",
            map.bytes().len()
        ))
    })?;
    let envelope =
        envelope::encode_sequentially(level, content, SequentialMap::WINDOW, &mut |end| {
            map.done_before(end)
        })
        .map_err(std::io::Error::other)?;
    let index = index.map(|segment| {
        map.rewind();
        let index = archive::index_now(segment, content, &mut |pos| map.done_before(pos));
        (segment, index)
    });
    // A scan that stopped early (at a switch, say) left its last window behind.
    map.done_before(usize::MAX);
    Ok(Encoded {
        content: map.into_bytes().slice(..len),
        envelope,
        index,
    })
}

/// A spool file compressed (and indexed), ready to upload.
pub(super) struct Encoded {
    /// The file's bytes that were compressed: a mapping whose pages were handed back.
    pub(super) content: Bytes,
    pub(super) envelope: Vec<u8>,
    /// A complete segment's time index.
    index: Option<(SegmentName, Result<PreparedIndex, String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SegNo, TimelineId};

    #[test]
    fn the_oldest_outstanding_segment_bounds_what_is_archived() {
        let size = SegmentSize::new(1 << 20).unwrap();
        let name = |t: u32, n: u64| SegmentName::new(TimelineId(t), SegNo(n), size);
        let mut o = Outstanding::default();
        assert_eq!(
            o.oldest_segment_start(size),
            None,
            "nothing handed over yet"
        );
        for n in [5, 6, 7] {
            o.insert(Job::Segment(name(1, n)));
        }
        o.insert(Job::Tail(name(1, 4), Lsn(4 * (1 << 20) + 100)));
        // 6 finishes before 5: 5 still bounds the archived position.
        o.remove(Job::Segment(name(1, 6)));
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(5).start_lsn(size)));
        o.remove(Job::Segment(name(1, 5)));
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(7).start_lsn(size)));
        // A later timeline's segment is compared by position.
        o.insert(Job::Segment(name(2, 3)));
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(3).start_lsn(size)));
        assert_eq!(o.bytes(size), 2 * (1 << 20) + 100);
    }

    #[test]
    fn encoding_a_spool_file_leaves_none_of_it_resident_whatever_the_match_window() {
        // Random bytes repeated 1.5 MiB apart: zstd matches each repeat against the copy
        // before it, further back than one window, which it may read only while the pass has
        // not handed that copy back (pages handed back and read again would stay resident).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let period: Vec<u8> = (0..3 << 19)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let content: Vec<u8> = period.iter().cycle().take(6 << 20).copied().collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        std::fs::write(&path, &content).unwrap();
        for level in [3, 9] {
            // SAFETY: nothing else touches the file.
            let map = unsafe { SequentialMap::open(&path).unwrap() };
            let encoded = encode_map(map, None, level, None).unwrap();
            assert!(
                encoded.envelope.len() < content.len() / 2,
                "level {level}: the repeats were found"
            );
            assert_eq!(
                crate::fsutil::resident_kb(encoded.content.as_ptr()),
                0,
                "level {level}: the mapping is handed back whole"
            );
            assert_eq!(envelope::decode(&encoded.envelope).unwrap(), content);
        }
    }
}
