//! One upload attempt of a spool file ([`upload`]): read back and checked, compressed,
//! stored; and what a damaged copy means ([`archived_already`], [`say_refused`]).

use std::sync::Mutex;

use tokio::sync::Semaphore;

use super::outstanding::{Job, Outstanding};
use super::readback::{Expect, SpoolFile, corrupt, read_back};
use super::upload::{UploadSettings, lock};
use crate::archive::{self, ClusterArchive, PreparedIndex, PutOutcome};
use crate::blocking;
use crate::daemon::Shared;
use crate::failpoint;
use crate::metrics::ErrorKind;
use crate::spool;
use crate::wal::{SegmentName, WalFileName};

/// Whether the archive holds `segment`, whose spool copy is damaged (`why`): then it was
/// archived before, checked then, and only the copy is damaged, which the caller removes.
pub(super) async fn archived_already(
    archive: &ClusterArchive,
    segment: SegmentName,
    why: &str,
) -> archive::Result<bool> {
    let held = archive.holds(&WalFileName::Segment(segment)).await?;
    if held {
        tracing::warn!(
            file = %segment,
            "the spool's copy is damaged ({why}), but the archive holds the segment already: \
             removing the copy"
        );
    }
    Ok(held)
}

/// Says that spool file `what` is refused: it did not give back what was received (`why`).
pub(super) fn say_refused(
    shared: &Shared,
    what: &dyn std::fmt::Display,
    why: &dyn std::fmt::Display,
) {
    shared.metrics.error(ErrorKind::Spool);
    tracing::error!(
        file = %what,
        "the spool did not give back what was received ({why}): not archived; receiving it \
         again from the server, if the server still has it (the spool's filesystem may be \
         failing)"
    );
}

/// How one upload attempt ended.
pub(super) enum Uploaded {
    /// Stored now.
    Stored(Stored),
    /// No longer in the spool: archived before.
    Gone,
    /// The file does not hold what was received (why): never archived. For a segment, which
    /// file that was ([`spool::file_identity`]), so that only that one is set aside.
    Corrupt(String, Option<(u64, u64)>),
    /// The segment was received again while the file, damaged, was checked: the path names
    /// the new copy.
    Replaced,
}

/// What one upload stored.
pub(super) struct Stored {
    /// The file's bytes.
    pub(super) original_bytes: u64,
    /// The archived object's bytes (compressed).
    pub(super) stored_bytes: u64,
    /// Whether the archive held the object already, with the same bytes (the file was
    /// queued twice, or an earlier run stopped between its upload and its removal).
    pub(super) already: bool,
    /// For a complete segment: its time index, made while the segment was stored, for the
    /// caller to store once the segment is archived.
    pub(super) index: Option<(SegmentName, Result<PreparedIndex, String>)>,
}

/// Archives one job's file, once [`read_back`] found it holds what was received.
///
/// Memory: at most [`ENCODING_AT_ONCE`](super::upload::ENCODING_AT_ONCE) files (`encoding`) are compressed and, for a segment,
/// then indexed, each a pass over its mapping that hands the pages behind it back
/// ([`SequentialMap`](crate::mapped::SequentialMap)), so a segment costs a few windows of
/// memory (2 MiB at the default level), not 16 MiB; the upload, which may wait long on a slow
/// archive, keeps a mapping of the file that is read only if the archive already holds the
/// object (to compare), so while uploads wait the files take no memory.
pub(super) async fn upload(
    archive: &ClusterArchive,
    settings: &UploadSettings,
    encoding: &Semaphore,
    job: Job,
    outstanding: &Mutex<Outstanding>,
) -> archive::Result<Uploaded> {
    failpoint::hit(failpoint::UPLOAD_START);
    let failed = |e: std::io::Error| archive::Error::Open {
        location: archive.location().clone(),
        reason: format!("read {job:?} from the spool: {e}"),
    };
    let size = settings.segment_size;
    let file = match job {
        Job::Segment(segment, handed) => SpoolFile {
            path: spool::complete_path(&settings.spool, segment),
            segment,
            len: size.bytes() as usize,
            complete: true,
            expect: lock(outstanding).expectation(segment, handed),
        },
        Job::Tail(segment, end) => match spool::tail_len(segment, end, size) {
            Ok(len) => SpoolFile {
                path: spool::tail_path(&settings.spool, segment, end),
                segment,
                len,
                complete: false,
                expect: Expect::Pages,
            },
            Err(e) => return Err(failed(e)),
        },
    };
    let path = file.path.clone();
    let (checked, encoded) = {
        // Never closed: it lives as long as the uploader.
        let _turn = encoding.acquire().await.ok();
        let (level, system_id) = (settings.compression_level, settings.system_id);
        blocking::run(move || {
            let checked = spool::file_identity(&file.path);
            // A bug the checks meet in a damaged file refuses the file, not the process.
            let read = blocking::catching_panic(|| read_back(&file, level, size, system_id))
                .unwrap_or_else(|panic| Err(corrupt(format!("the check failed: {panic}"))));
            (checked, read)
        })
        .await
    };
    let encoded = match encoded {
        Ok(encoded) => encoded,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Queued again after its upload, or refused meanwhile: only the archive can say.
            return match job {
                Job::Segment(segment, _)
                    if !archive.holds(&WalFileName::Segment(segment)).await? =>
                {
                    Ok(Uploaded::Corrupt(
                        "it left the spool, and the archive lacks it".into(),
                        None,
                    ))
                }
                _ => Ok(Uploaded::Gone),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            if let Job::Segment(segment, _) = job
                && archived_already(archive, segment, &e.to_string()).await?
            {
                return Ok(Uploaded::Gone);
            }
            // A segment received again meanwhile replaced the file this attempt read: the
            // caller must not remove the new one, but check it.
            if checked.is_some()
                && blocking::run(move || spool::file_identity(&path)).await != checked
            {
                return Ok(Uploaded::Replaced);
            }
            let only = if matches!(job, Job::Segment(..)) {
                checked
            } else {
                None
            };
            return Ok(Uploaded::Corrupt(e.to_string(), only));
        }
        Err(e) => return Err(failed(e)),
    };
    if let Job::Segment(segment, _) = job {
        lock(outstanding).read_back(segment, encoded.crc);
    }
    let (original_bytes, stored_bytes) =
        (encoded.content.len() as u64, encoded.envelope.len() as u64);
    let mut index = encoded.index;
    let outcome = match job {
        Job::Segment(segment, _) => {
            let name = WalFileName::Segment(segment);
            archive
                .put(&name, encoded.content, encoded.envelope)
                .await?
        }
        Job::Tail(segment, end) => {
            archive
                .put_partial_snapshot(segment, end, encoded.content, encoded.envelope)
                .await?
        }
    };
    // The archive's copy at a fork is not this one: no index from this one's content.
    if outcome == PutOutcome::AtFork {
        index = None;
    }
    Ok(Uploaded::Stored(Stored {
        original_bytes,
        stored_bytes,
        already: outcome == PutOutcome::AlreadyArchived,
        index,
    }))
}
