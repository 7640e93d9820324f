//! One upload task ([`Uploading::until_stored`]): a job's file archived, retrying until it is
//! stored, then removed from the spool; or, refused, kept aside as a damaged copy
//! ([`Uploading::leave`]).

use std::path::Path;
use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::attempt::{Stored, Uploaded, say_refused, upload};
use super::damaged::DamagedCopies;
use super::outstanding::{Job, Outstanding};
use super::upload::{Done, UPLOAD_BACKOFF, UploadSettings};
use crate::archive::{self, ClusterArchive};
use crate::backoff::{GaveUp, Transient, retry};
use crate::blocking;
use crate::daemon::Shared;
use crate::failpoint;
use crate::metrics::ErrorKind;
use crate::spool;

/// An upload failure, as the uploader's retries see it: everything but a contradiction is
/// worth another attempt, even a permanent error an operator must fix.
struct UploadError(archive::Error);

impl Transient for UploadError {
    fn is_transient(&self) -> bool {
        !self.0.is_contradiction()
    }
}

/// What one upload task works with.
pub(super) struct Uploading<'a> {
    pub(super) archive: &'a ClusterArchive,
    pub(super) settings: &'a UploadSettings,
    pub(super) encoding: &'a Semaphore,
    pub(super) shared: &'a Shared,
    pub(super) outstanding: &'a Mutex<Outstanding>,
    pub(super) damaged: &'a DamagedCopies,
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
    pub(super) async fn until_stored(&self, job: Job) -> Result<Done, String> {
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
    /// outstanding meanwhile, its file taking room in the spool. Returns `false` when the
    /// refused file turned out to be replaced by a copy received again (left to be checked),
    /// `true` otherwise.
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
                self.damaged.note_set_aside(segment, &what, path);
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
    // Stored already (queued twice, an attempt whose answer was lost, or an earlier run that
    // stopped between the upload and the removal): said, so that a second line for a file is
    // explained.
    let already = match stored.already {
        true => " (the archive held the same bytes already)",
        false => "",
    };
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
                "archived{already}"
            );
            archive.store_index(segment, index).await;
        }
        // A kept tail: the end of a stream (a lost server, a timeline's end, a shutdown) or a
        // lost segment's WAL up to its damage, so rare, and what a last-resort recovery
        // reaches: at info level.
        None => tracing::info!(
            file = %what,
            bytes = stored.original_bytes,
            stored_bytes = stored.stored_bytes,
            ms,
            "archived a snapshot, which a last-resort recovery (fetch --partial) serves while the \
             segment is not archived whole{already}"
        ),
    }
}

/// What [`Uploading::leave`] does to a job's file, on the blocking pool: `Gone` for a file
/// removed, or none to set aside.
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
