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
//!
//! Nothing is archived before it is checked against what was received: a segment written in
//! this run must read back with the CRC-32 the stream computed as it wrote it, a file an
//! earlier run left must pass the page-header checks ([`read_back`]). A file that fails
//! (its filesystem lost writes) is refused, kept aside as a damaged copy
//! ([`DamagedCopies`]), never archived: it stays outstanding, so the flush
//! position never passes it and the slot keeps it on the server, and the stream ends its
//! session so that the next one streams it again ([`Uploader::refused_before`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::attempt::{Stored, Uploaded, say_refused, upload};
use super::damaged::{self, DamagedCopies};
use super::outstanding::{Job, Outstanding};
use super::readback::Expect;
use crate::archive::{self, ClusterArchive};
use crate::backoff::{Backoff, GaveUp, Transient, retry};
use crate::blocking;
use crate::daemon::Shared;
use crate::failpoint;
use crate::metrics::ErrorKind;
use crate::spool;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId};

const UPLOAD_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Segments compressed and indexed at once, each on a blocking thread. Each pass holds a few
/// windows of its file (see [`upload`]), so this bounds the memory segments take. One at a
/// time was slower than the stream on two cores: compressing and indexing a segment takes
/// longer than receiving it (the pgbench corpus was received in 4.0 s one at a time, in 3.2 s
/// two at a time, for 4 MiB more peak RSS; benches/README.md).
pub(super) const ENCODING_AT_ONCE: usize = 2;

/// What the uploader reports back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Uploads finished so far (a change means the outstanding set shrank).
    pub finished: u64,
    /// Set when the uploader stopped for good.
    pub fatal: Option<String>,
    /// Spool files refused so far because they did not read back as received.
    pub refused: u64,
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
    settings: Arc<UploadSettings>,
    /// Turns to read a spool file back ([`ENCODING_AT_ONCE`]), for the uploads and the
    /// take-over's checks alike.
    encoding: Arc<Semaphore>,
    /// The spool's damaged copies.
    damaged: Arc<DamagedCopies>,
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
    /// The cluster the spool's WAL belongs to (checked in files an earlier run left).
    pub system_id: SystemId,
}

/// How one job ended, short of a contradiction.
enum Done {
    /// Archived (or found archived before), and removed from the spool.
    Stored,
    /// Its file did not read back as received: kept aside as a damaged copy, not archived.
    Refused,
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
        let kept_settings = settings.clone();
        let outstanding = Arc::new(Mutex::new(Outstanding::default()));
        let in_flight = outstanding.clone();
        let uploader_shared = shared.clone();
        let encoding = Arc::new(Semaphore::new(ENCODING_AT_ONCE));
        let uploads_encoding = encoding.clone();
        let damaged = Arc::new(DamagedCopies::default());
        let uploads_damaged = damaged.clone();
        tokio::spawn(async move {
            let (encoding, damaged) = (uploads_encoding, uploads_damaged);
            let permits = Arc::new(Semaphore::new(settings.parallelism.max(1)));
            let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Done, String>>();
            let mut open = true;
            loop {
                tokio::select! {
                    job = incoming.recv(), if open => {
                        let Some(job) = job else { open = false; continue };
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let (archive, settings, done_tx) = (archive.clone(), settings.clone(), done_tx.clone());
                        let (in_flight, shared, encoding) = (in_flight.clone(), shared.clone(), encoding.clone());
                        let damaged = damaged.clone();
                        tokio::spawn(async move {
                            let uploading = Uploading { archive: &archive, settings: &settings, encoding: &encoding, shared: &shared, outstanding: &in_flight, damaged: &damaged };
                            let result = uploading.until_stored(job).await;
                            drop(permit);
                            if let Ok(done) = &result {
                                let mut in_flight = lock(&in_flight);
                                match done {
                                    Done::Stored => in_flight.remove(job),
                                    Done::Refused => in_flight.refuse(job),
                                }
                                in_flight.publish(&shared);
                            }
                            let _ = done_tx.send(result);
                        });
                    }
                    Some(result) = done_rx.recv() => {
                        match result {
                            Ok(Done::Stored) => progress_tx.send_modify(|p| p.finished += 1),
                            Ok(Done::Refused) => progress_tx.send_modify(|p| p.refused += 1),
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
            settings: kept_settings,
            encoding,
            damaged,
        }
    }

    /// Its settings.
    pub(super) fn settings(&self) -> &UploadSettings {
        &self.settings
    }

    /// Runs `check` on the blocking pool in one of the turns the uploads read files back in
    /// ([`ENCODING_AT_ONCE`]), so that checks and uploads together read that many at most.
    pub(super) async fn in_reading_turn<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        // Never closed: it lives as long as the uploader.
        let _turn = self.encoding.acquire().await.ok();
        blocking::run(check).await
    }

    /// The spool's damaged copies.
    pub(super) fn damaged(&self) -> &DamagedCopies {
        &self.damaged
    }

    /// How `segment` is checked: see [`Outstanding::known`].
    pub(super) fn known(&self, segment: SegmentName) -> (Option<Expect>, Expect) {
        lock(&self.outstanding).known(segment)
    }

    /// Whether `segment` is outstanding with a file an earlier run left that has not read
    /// back (checked by its pages only): no stream received it, and no check vouched for it.
    pub(super) fn is_unchecked(&self, segment: SegmentName) -> bool {
        self.known(segment).0 == Some(Expect::Pages)
    }

    /// Takes note that `segment`'s file, found in the spool at a start and checked by
    /// `expect`, did not read back (`why`): refused like a job's file
    /// ([`Self::refused_before`]), to be streamed again.
    pub(super) fn refuse_left(
        &self,
        segment: SegmentName,
        expect: Expect,
        why: &dyn std::fmt::Display,
    ) {
        say_refused(&self.shared, &segment, why);
        let mut outstanding = lock(&self.outstanding);
        outstanding.refuse(Job::Segment(segment, expect));
        outstanding.publish(&self.shared);
    }

    /// Queues a complete spool segment, unless it is queued already, with how to check that
    /// its file holds what was received. Never waits.
    pub fn enqueue(&self, segment: SegmentName, expect: Expect) -> Result<(), String> {
        self.submit(Job::Segment(segment, expect))
    }

    /// Queues a kept tail (see [`spool::keep_tail`]), unless it is queued already.
    pub fn enqueue_tail(&self, segment: SegmentName, end: Lsn) -> Result<(), String> {
        self.submit(Job::Tail(segment, end))
    }

    fn submit(&self, job: Job) -> Result<(), String> {
        self.queue()
            .submit(job)
            .map_err(|()| self.fatal_or("uploader stopped"))
    }

    /// A handle that queues jobs, for a task of its own.
    fn queue(&self) -> Queue {
        Queue {
            queue: self.queue.clone(),
            outstanding: self.outstanding.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Archives the WAL of lost segment `segment` up to the damage in its damaged `copies`
    /// as a snapshot ([`damaged::archive_valid_prefix`]), in a task of its own, in a reading
    /// turn ([`ENCODING_AT_ONCE`]).
    pub(super) fn archive_valid_prefix(
        &self,
        archive: ClusterArchive,
        segment: SegmentName,
        copies: Vec<PathBuf>,
    ) {
        let (queue, encoding) = (self.queue(), self.encoding.clone());
        let (dir, size) = (self.settings.spool.clone(), self.size);
        tokio::spawn(async move {
            // Never closed: it lives as long as the uploader.
            let _turn = encoding.acquire().await.ok();
            damaged::archive_valid_prefix(&archive, &queue, &dir, size, segment, copies).await;
        });
    }

    /// The start of the oldest complete segment not yet archived: nothing from there on may
    /// be reported as archived.
    pub fn oldest_outstanding(&self) -> Option<Lsn> {
        lock(&self.outstanding).oldest_segment_start(self.size)
    }

    /// The start of the oldest segment an earlier run left in the spool that has not read back
    /// (the take-over could not read it, or could not ask the archive whether it holds a
    /// damaged one), or was refused: `--synchronous` may not report anything from there on as
    /// flushed. The take-over leaves such a segment out of what the start counts as held, but
    /// a start may still begin past it (on a later timeline, or past where it looks back), and
    /// only this bound then keeps the slot from letting the server recycle it.
    pub fn oldest_unverified(&self) -> Option<Lsn> {
        lock(&self.outstanding).oldest_unverified_start(self.size)
    }

    /// A segment refused since it was last handed over that starts before `position`: a
    /// stream that began at `position` will not receive it again, so its session must end
    /// (see the module's documentation).
    pub fn refused_before(&self, position: Lsn) -> Option<SegmentName> {
        lock(&self.outstanding).refused_before(position, self.size)
    }

    /// The segments refused since they were last handed over, oldest first.
    pub fn refused_segments(&self) -> Vec<SegmentName> {
        lock(&self.outstanding).refused_segments().collect()
    }

    /// Gives up refused segments of `timeline` from `first` to before `until`: the server no
    /// longer has them, and they are reported lost instead.
    pub fn forget_refused(&self, timeline: TimelineId, first: SegNo, until: SegNo) {
        lock(&self.outstanding).forget_refused(timeline, first, until, self.size);
    }

    /// Bytes of WAL in the spool waiting for upload.
    pub fn pending_bytes(&self) -> u64 {
        lock(&self.outstanding).bytes(self.size)
    }

    /// How many segments and kept tails are queued or being uploaded.
    pub fn pending(&self) -> usize {
        lock(&self.outstanding).pending()
    }

    /// Watches the uploader's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until everything handed over is archived (`Ok(true)`), or `deadline` passes
    /// (`Ok(false)`: the rest stays in the spool for the next start). An error when the
    /// uploader stopped for good, or refused a segment that was not streamed again since.
    pub async fn wait_idle(&self, deadline: Option<Instant>) -> Result<bool, String> {
        let mut progress = self.progress();
        loop {
            if let Some(fatal) = progress.borrow_and_update().fatal.clone() {
                return Err(fatal);
            }
            if self.pending() == 0 {
                return match lock(&self.outstanding).refused_segments().next() {
                    None => Ok(true),
                    Some(segment) => Err(format!(
                        "{segment} did not read back from the spool as it was received, so it \
                         was not archived; the next run streams it again from the server, whose \
                         slot keeps it in the default mode but, in --synchronous mode (where it \
                         was confirmed), only until a checkpoint recycles it: start the receiver \
                         again soon"
                    )),
                };
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

/// Queues jobs for the uploader ([`Uploader::queue`]).
pub(super) struct Queue {
    queue: mpsc::UnboundedSender<Job>,
    outstanding: Arc<Mutex<Outstanding>>,
    shared: Arc<Shared>,
}

impl Queue {
    /// Queues `job` unless it is queued already; `Err` once the uploader stopped.
    pub(super) fn submit(&self, job: Job) -> Result<(), ()> {
        {
            let mut outstanding = lock(&self.outstanding);
            if !outstanding.hand_over(job) {
                return Ok(());
            }
            outstanding.publish(&self.shared);
        }
        self.queue.send(job).map_err(|_| ())
    }
}

pub(super) fn lock(outstanding: &Mutex<Outstanding>) -> std::sync::MutexGuard<'_, Outstanding> {
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

/// What one upload task works with.
struct Uploading<'a> {
    archive: &'a ClusterArchive,
    settings: &'a UploadSettings,
    encoding: &'a Semaphore,
    shared: &'a Shared,
    outstanding: &'a Mutex<Outstanding>,
    damaged: &'a DamagedCopies,
}

/// What becomes of a job's file in the spool.
#[derive(Clone, Copy)]
enum Leaving {
    /// Archived: removed, with the segment's damaged copies.
    Archived,
    /// Refused: kept aside as a damaged copy; for a segment, only if it is still the file the
    /// attempt read (its identity; none when the attempt found no file).
    Refused(Option<(u64, u64)>),
}

impl Uploading<'_> {
    /// Archives one job, retrying until it is stored; then removes its file from the spool. A
    /// file that does not read back as received is kept aside, unarchived ([`Done::Refused`]).
    /// Returns an error only for a contradiction, which retrying cannot fix. The archive's
    /// health logs when uploads start failing and when they work again; each retry is counted
    /// and logged at debug level.
    async fn until_stored(&self, job: Job) -> Result<Done, String> {
        let (archive, settings, shared) = (self.archive, self.settings, self.shared);
        let what = match job {
            Job::Segment(segment, _) => segment.to_string(),
            Job::Tail(segment, end) => format!("{segment} up to {end}"),
        };
        let started = Instant::now();
        let stored = loop {
            let stored = retry(
                UPLOAD_BACKOFF,
                None,
                || async {
                    upload(archive, settings, self.encoding, job, self.outstanding)
                        .await
                        .map_err(UploadError)
                },
                |UploadError(e), pause| {
                    shared.metrics.error(ErrorKind::Archive);
                    tracing::debug!(file = %what, retry_in_s = pause.as_secs(), "upload failed: {e}");
                },
            )
            .await;
            let uploaded = match stored {
                Ok(uploaded) => uploaded,
                Err(GaveUp::Error(UploadError(e)) | GaveUp::Deadline(Some(UploadError(e)))) => {
                    shared.metrics.error(ErrorKind::Archive);
                    tracing::error!(file = %what, "cannot archive: {e}");
                    return Err(format!("archive {what}: {e}"));
                }
                Err(GaveUp::Deadline(None)) => Uploaded::Gone,
            };
            match uploaded {
                Uploaded::Corrupt(why, checked) => {
                    say_refused(shared, &what, &why);
                    if self.leave(job, Leaving::Refused(checked), &what).await {
                        return Ok(Done::Refused);
                    }
                }
                Uploaded::Stored(stored) => break Some(stored),
                Uploaded::Gone => break None,
                Uploaded::Replaced => {}
            }
            // The segment was received again while its damaged copy was checked: the new copy
            // is checked now, and kept.
            tracing::info!(file = %what, "received again meanwhile: checking the new copy");
        };
        failpoint::hit(failpoint::UPLOAD_STORED);
        // Logged and indexed before the spool file goes: a crash in between then leaves the
        // file, archived again (the same bytes) and indexed at the next start; after its
        // removal nothing would make the index any more.
        if let Some(stored) = stored {
            report_and_index(archive, &what, started, stored).await;
        } else {
            tracing::debug!(file = %what, "archived before");
        }
        self.leave(job, Leaving::Archived, &what).await;
        if let Job::Segment(segment, _) = job {
            shared.metrics.segment_archived(
                segment.to_string(),
                u64::from(settings.segment_size.bytes()),
            );
        }
        failpoint::hit(failpoint::UPLOAD_REMOVED);
        Ok(Done::Stored)
    }

    /// Removes a job's archived file from the spool, or keeps a refused one aside as a
    /// damaged copy, retrying until that works: a spool turned read-only (a filesystem error)
    /// must not stop the receiver over WAL that is safe in the archive. The job stays
    /// outstanding meanwhile, its file taking room in the spool. Returns whether the file is
    /// gone from its name; `false` when a refused segment's name holds a copy received again.
    async fn leave(&self, job: Job, leaving: Leaving, what: &str) -> bool {
        let dir = &self.settings.spool;
        let (done, doing) = match leaving {
            Leaving::Archived => ("archived", "remove it from the spool"),
            Leaving::Refused(_) => ("refused", "set it aside in the spool"),
        };
        let mut failing = false;
        let left = retry(
            UPLOAD_BACKOFF,
            None,
            || {
                let dir = dir.to_path_buf();
                async move {
                    blocking::run(move || leave_file(&dir, job, leaving))
                        .await
                        .map_err(SpoolError)
                }
            },
            |SpoolError(e), pause| {
                if failing {
                    tracing::debug!(file = %what, retry_in_s = pause.as_secs(), "cannot {doing}: {e}");
                } else {
                    tracing::warn!(
                        file = %what,
                        "{done}, but cannot {doing}: {e}; retrying (it takes room in the spool \
                         until then)"
                    );
                    failing = true;
                }
            },
        )
        .await;
        if left.is_ok() && failing {
            tracing::info!(file = %what, "done at last: {doing}");
        }
        let segment = match job {
            Job::Segment(segment, _) | Job::Tail(segment, _) => segment,
        };
        // Retried until it works (no deadline).
        match (left.unwrap_or(spool::SetAside::Gone), leaving) {
            (spool::SetAside::Replaced, _) => false,
            (spool::SetAside::Kept(path), _) => {
                self.damaged.set_aside(segment, &what, path);
                true
            }
            (spool::SetAside::Gone, Leaving::Archived) => {
                if let Job::Segment(segment, _) = job {
                    self.damaged.remove_archived(segment).await;
                }
                true
            }
            (spool::SetAside::Gone, Leaving::Refused(_)) => true,
        }
    }
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
        // A kept tail: the end of a stream (a lost server, a timeline's end, a shutdown), so
        // rare, and what a last-resort recovery reaches: at info level.
        None => tracing::info!(
            file = %what,
            bytes = stored.original_bytes,
            stored_bytes = stored.stored_bytes,
            ms,
            "archived a snapshot of the end of the stream"
        ),
    }
}

/// What [`Uploading::leave`] does to a job's file, on the blocking pool.
fn leave_file(dir: &Path, job: Job, leaving: Leaving) -> std::io::Result<spool::SetAside> {
    match (leaving, job) {
        (Leaving::Archived, Job::Segment(segment, _)) => {
            spool::remove_complete(dir, segment).map(|()| spool::SetAside::Gone)
        }
        (Leaving::Archived, Job::Tail(segment, end)) => {
            spool::remove_tail(dir, segment, end).map(|()| spool::SetAside::Gone)
        }
        (Leaving::Refused(Some(identity)), Job::Segment(segment, _)) => {
            spool::set_aside_damaged_if(dir, segment, identity)
        }
        // The attempt found no file: whatever the path names now is a copy received again.
        (Leaving::Refused(None), Job::Segment(..)) => Ok(spool::SetAside::Gone),
        (Leaving::Refused(_), Job::Tail(segment, end)) => {
            match spool::set_aside_damaged(&spool::tail_path(dir, segment, end)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(spool::SetAside::Gone),
                kept => kept.map(spool::SetAside::Kept),
            }
        }
    }
}

/// A spool file that could not be removed: always retried.
struct SpoolError(std::io::Error);

impl Transient for SpoolError {
    fn is_transient(&self) -> bool {
        true
    }
}
