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
//! earlier run left must pass the page-header checks ([`read_back`](super::readback::read_back)). A file that fails
//! (its filesystem lost writes) is refused, kept aside as a damaged copy
//! ([`DamagedCopies`]), never archived: it stays outstanding, so the flush
//! position never passes it and the slot keeps it on the server, and the stream ends its
//! session so that the next one streams it again ([`Uploader::refused_before`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::attempt::say_refused;
use super::damaged::{self, DamagedCopies};
use super::outstanding::{Job, Outstanding};
use super::readback::Expect;
use super::uploading::Uploading;
use crate::archive::ClusterArchive;
use crate::backoff::Backoff;
use crate::blocking;
use crate::daemon::Shared;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId};

pub(super) const UPLOAD_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Segments compressed and indexed at once, each on a blocking thread. Each pass holds a few
/// windows of its file (see [`upload`](super::attempt::upload)), so this bounds the memory segments take. One at a
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
pub(super) enum Done {
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

    /// Queues a kept tail (see [`crate::spool::keep_tail`]), unless it is queued already.
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
    /// turn ([`ENCODING_AT_ONCE`]); once a process, unless it fails.
    pub(super) fn archive_valid_prefix(
        &self,
        archive: ClusterArchive,
        segment: SegmentName,
        copies: Vec<PathBuf>,
    ) {
        if !self.damaged.begin_prefix(segment) {
            return;
        }
        let (queue, encoding) = (self.queue(), self.encoding.clone());
        let (dir, size, copies_kept) =
            (self.settings.spool.clone(), self.size, self.damaged.clone());
        tokio::spawn(async move {
            // Never closed: it lives as long as the uploader.
            let _turn = encoding.acquire().await.ok();
            if !damaged::archive_valid_prefix(&archive, &queue, &dir, size, segment, copies).await {
                copies_kept.prefix_failed(segment);
            }
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
