//! The uploader: archives complete spool segments, several at a time, compressing on the
//! blocking pool, and publishes the archived position: everything before the oldest segment
//! still outstanding (or, with none outstanding, through the newest one handed over) is in
//! the archive. Transient failures are retried with backoff forever; only a conflict or a
//! corrupt object stops it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};

use super::spool;
use crate::archive::{self, ClusterArchive};
use crate::blocking;
use crate::daemon::Shared;
use crate::envelope::Encoder;
use crate::metrics::ErrorKind;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, WalFileName};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the uploader reports back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Everything before this position is in the archive (`None` until a segment is handed over).
    pub archived: Option<Lsn>,
    /// Set when the uploader stopped for good.
    pub fatal: Option<String>,
}

/// Handle to a running uploader.
pub struct Uploader {
    /// Unbounded on purpose: it holds only names of spool files, and the spool limit
    /// (`--spool-max-bytes`) is the backpressure. A bounded queue would block the stream
    /// while the archive is down, starving the status updates the server needs.
    queue: mpsc::UnboundedSender<SegmentName>,
    progress: watch::Receiver<Progress>,
    /// Segments handed over and not yet archived, and the newest handed over.
    queued: Arc<Mutex<Outstanding>>,
    shared: Arc<Shared>,
}

/// The segments an uploader is responsible for, with when each was handed over.
#[derive(Default)]
struct Outstanding {
    segments: BTreeMap<SegmentName, SystemTime>,
    newest: Option<SegmentName>,
}

impl Outstanding {
    /// Everything before this position is archived.
    fn archived(&self, size: SegmentSize) -> Option<Lsn> {
        let (segment, past) = match self.segments.first_key_value() {
            Some((oldest, _)) => (*oldest, 0),
            None => (self.newest?, 1),
        };
        segment
            .segno(size)
            .map(|n| SegNo(n.0 + past).start_lsn(size))
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
        let (queue, mut incoming) = mpsc::unbounded_channel::<SegmentName>();
        let size = settings.segment_size;
        let (progress_tx, progress) = watch::channel(Progress {
            archived: None,
            fatal: None,
        });
        let settings = Arc::new(settings);
        let queued = Arc::new(Mutex::new(Outstanding::default()));
        let in_flight = queued.clone();
        let uploader_shared = shared.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(settings.parallelism.max(1)));
            let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
            let mut open = true;
            loop {
                tokio::select! {
                    segment = incoming.recv(), if open => {
                        let Some(segment) = segment else { open = false; continue };
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let (archive, settings, done_tx) = (archive.clone(), settings.clone(), done_tx.clone());
                        let (in_flight, shared) = (in_flight.clone(), shared.clone());
                        tokio::spawn(async move {
                            let result = upload_until_stored(&archive, &settings, segment, &shared).await;
                            drop(permit);
                            if result.is_ok() {
                                let mut in_flight = lock(&in_flight);
                                in_flight.segments.remove(&segment);
                                in_flight.publish(&shared);
                            }
                            let _ = done_tx.send(result);
                        });
                    }
                    Some(result) = done_rx.recv() => {
                        match result {
                            Ok(()) => {
                                let archived = lock(&in_flight).archived(size);
                                if let Some(lsn) = archived {
                                    shared.metrics.set_archived(lsn.0);
                                }
                                progress_tx.send_replace(Progress { archived, fatal: None });
                            }
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
            queued,
            shared: uploader_shared,
        }
    }

    /// Queues a complete spool segment, unless it is queued already. Never waits.
    pub fn enqueue(&self, segment: SegmentName) -> Result<(), String> {
        {
            let mut queued = lock(&self.queued);
            if queued.segments.contains_key(&segment) {
                return Ok(());
            }
            queued.segments.insert(segment, SystemTime::now());
            queued.newest = queued.newest.max(Some(segment));
            queued.publish(&self.shared);
        }
        self.queue
            .send(segment)
            .map_err(|_| self.fatal_or("uploader stopped"))
    }

    /// Starts a new stream: what is archived is measured from its segments from now on, not
    /// from the newest segment of an earlier stream (which, after a failover, may lie past the
    /// new timeline's fork).
    pub fn new_stream(&self) {
        lock(&self.queued).newest = None;
    }

    /// How many segments are queued or being uploaded.
    pub fn pending(&self) -> usize {
        lock(&self.queued).segments.len()
    }

    /// Whether every segment handed over is archived.
    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    /// Watches the uploader's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
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

/// Archives one spool segment, retrying transient failures until it is stored; then removes
/// it from the spool. Returns an error only for what retrying cannot fix.
async fn upload_until_stored(
    archive: &ClusterArchive,
    settings: &UploadSettings,
    segment: SegmentName,
    shared: &Shared,
) -> Result<(), String> {
    let mut pause = FIRST_RETRY;
    loop {
        match upload(archive, settings, segment).await {
            Ok(()) => break,
            Err(e @ (archive::Error::Conflict { .. } | archive::Error::Corrupt { .. })) => {
                shared.metrics.error(ErrorKind::Archive);
                tracing::error!(%segment, "cannot archive: {e}");
                return Err(format!("archive {segment}: {e}"));
            }
            Err(e) => {
                shared.metrics.error(ErrorKind::Archive);
                tracing::warn!(%segment, retry_in_s = pause.as_secs(), "upload failed: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY);
            }
        }
    }
    let dir = settings.spool.clone();
    blocking::run(move || spool::remove_complete(&dir, segment))
        .await
        .map_err(|e| format!("remove {segment} from the spool: {e}"))?;
    shared
        .metrics
        .segment_archived(u64::from(settings.segment_size.bytes()));
    tracing::debug!(%segment, "archived");
    Ok(())
}

async fn upload(
    archive: &ClusterArchive,
    settings: &UploadSettings,
    segment: SegmentName,
) -> archive::Result<()> {
    let path = spool::complete_path(&settings.spool, segment);
    let level = settings.compression_level;
    let encoded = blocking::run(move || -> Result<Option<(Bytes, Vec<u8>)>, String> {
        // SAFETY: a complete spool segment is never written again; it is only removed, after
        // its upload.
        let content = match unsafe { crate::fsutil::map_immutable_file(&path) } {
            Ok(bytes) => bytes,
            // Files leave the spool only once archived: this one was queued again after that.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let envelope = Encoder::new(level, 1)
            .and_then(|mut e| e.encode(&content))
            .map_err(|e| e.to_string())?;
        Ok(Some((content, envelope)))
    })
    .await;
    let encoded = encoded.map_err(|reason| archive::Error::Open {
        location: archive.location().clone(),
        reason,
    })?;
    let Some((content, envelope)) = encoded else {
        return Ok(());
    };
    archive
        .put(&WalFileName::Segment(segment), content, envelope)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_is_before_the_oldest_outstanding_segment() {
        let size = SegmentSize::new(1 << 20).unwrap();
        let name = |n: u64| SegmentName::new(crate::wal::TimelineId(1), SegNo(n), size);
        let mut o = Outstanding::default();
        assert_eq!(o.archived(size), None, "nothing handed over yet");
        for n in [5, 6, 7] {
            o.segments.insert(name(n), SystemTime::now());
            o.newest = o.newest.max(Some(name(n)));
        }
        o.segments.remove(&name(6));
        assert_eq!(
            o.archived(size),
            Some(SegNo(5).start_lsn(size)),
            "5 is still outstanding"
        );
        o.segments.remove(&name(5));
        assert_eq!(o.archived(size), Some(SegNo(7).start_lsn(size)));
        o.segments.remove(&name(7));
        assert_eq!(
            o.archived(size),
            Some(SegNo(8).start_lsn(size)),
            "all done: through the newest"
        );
    }
}
