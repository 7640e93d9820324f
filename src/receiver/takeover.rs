//! What an earlier run left in the spool, taken over at a start: each complete segment is read
//! back before the start plans where to stream from, so that no plan counts a file that does
//! not hold what was received (a filesystem repaired after an error can leave one empty, or
//! with other bytes inside its pages). A good file is handed to the uploader with its CRC; a
//! damaged one is kept aside as a damaged copy ([`super::damaged`]) and streamed again from
//! the server, whose slot keeps it in the default mode; one that cannot be read is streamed
//! again too, its upload tried again meanwhile.
//!
//! The check only reads ([`check_back`]): the upload compresses the file later. Checks run
//! in the uploader's reading turns, as many at once as its uploads compress.

use std::io::ErrorKind;

use std::time::Instant;

use anyhow::{Context as _, anyhow};
use futures_util::{StreamExt, stream};

use super::attempt::archived_already;
use super::readback::{Expect, SpoolFile, check_back, corrupt};
use super::session::{Context, SessionError};
use super::upload::Uploader;
use crate::archive::ClusterArchive;
use crate::blocking;
use crate::spool;
use crate::wal::{Lsn, SegmentName};

/// Files taken over at once. Their checks wait for the uploader's reading turns, so this
/// bounds only the archive lookups for damaged files and the names in hand.
const TAKEN_OVER_AT_ONCE: usize = 8;

impl Context {
    /// Takes over what an earlier run left in the spool: complete segments that read back
    /// (see the module's documentation) and kept tails are queued for upload, and a `.partial`
    /// is kept as a tail (it may hold WAL whose flush was confirmed) before any new stream
    /// could truncate it. The listing returned holds the complete segments that read back.
    pub async fn take_over_spool(&self) -> Result<spool::SpoolContents, SessionError> {
        self.keep_tail(Lsn(0)).await?;
        let dir = self.spool.clone();
        let mut spooled = blocking::run(move || spool::scan(&dir))
            .await
            .context("scan the spool")?;
        let damaged = std::mem::take(&mut spooled.damaged);
        self.uploader
            .damaged()
            .take_over(&self.cluster, damaged)
            .await;
        let started = Instant::now();
        let left: Vec<Result<LeftSegment, String>> = stream::iter(spooled.complete.clone())
            .map(|segment| self.uploader.take_over_segment(&self.cluster, segment))
            .buffered(TAKEN_OVER_AT_ONCE)
            .collect()
            .await;
        let mut held = Vec::with_capacity(spooled.complete.len());
        let mut found = std::collections::BTreeMap::<LeftSegment, usize>::new();
        for (&segment, left) in spooled.complete.iter().zip(left) {
            let left = left.map_err(|e| SessionError::fatal(anyhow!(e)))?;
            if left.held() {
                held.push(segment);
            }
            *found.entry(left).or_default() += 1;
        }
        let count = |kind| found.get(&kind).copied().unwrap_or(0);
        let checked = count(LeftSegment::Good)
            + count(LeftSegment::Refused)
            + count(LeftSegment::ArchivedAlready)
            + count(LeftSegment::Unchecked);
        if checked > 0 {
            tracing::info!(
                checked,
                good = count(LeftSegment::Good),
                refused = count(LeftSegment::Refused),
                damaged_but_archived = count(LeftSegment::ArchivedAlready),
                unchecked = count(LeftSegment::Unchecked),
                seconds = started.elapsed().as_secs_f64(),
                "read back the complete segments an earlier run left in the spool"
            );
        }
        spooled.complete = held;
        for &(segment, end) in &spooled.tails {
            self.uploader
                .enqueue_tail(segment, end)
                .map_err(|e| SessionError::fatal(anyhow!(e)))?;
        }
        Ok(spooled)
    }
}

/// What the take-over found of one complete segment in the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LeftSegment {
    /// Handed over before, known by its CRC: held, not read again.
    Known,
    /// Handed over before without being checked: received again.
    KnownUnchecked,
    /// No longer in the spool (archived meanwhile).
    Gone,
    /// Read back now as this cluster's WAL: held.
    Good,
    /// Damaged, and the archive lacks it: kept aside as a damaged copy, refused, received
    /// again.
    Refused,
    /// Damaged, but the archive holds it: the copy removed.
    ArchivedAlready,
    /// Unreadable, or damaged while the archive cannot say whether it holds it: received
    /// again, its upload tried meanwhile.
    Unchecked,
}

impl LeftSegment {
    /// Whether the spool holds the segment for the start's plan.
    fn held(self) -> bool {
        matches!(self, LeftSegment::Known | LeftSegment::Good)
    }
}

impl Uploader {
    /// Takes over `segment`, a complete file an earlier run left in the spool, once read back
    /// (see the module's documentation); `archive` says whether a damaged one is archived
    /// already.
    pub(super) async fn take_over_segment(
        &self,
        archive: &ClusterArchive,
        segment: SegmentName,
    ) -> Result<LeftSegment, String> {
        // Handed over before (at the process's start, or streamed by this run): held if known
        // by its CRC; one that could not be checked then is streamed again.
        let expect = match self.known(segment) {
            (Some(Expect::Crc(_)), _) => return Ok(LeftSegment::Known),
            (Some(Expect::Pages), _) => return Ok(LeftSegment::KnownUnchecked),
            // A segment this run refused keeps the CRC it was received with.
            (None, expect) => expect,
        };
        let settings = self.settings();
        let size = settings.segment_size;
        let file = SpoolFile {
            path: spool::complete_path(&settings.spool, segment),
            segment,
            len: size.bytes() as usize,
            complete: true,
            expect,
        };
        let system_id = settings.system_id;
        let checked = self
            .in_reading_turn(move || {
                // A panic in the WAL checks over bytes no one wrote ends this check, not the
                // start (which would meet it again at every restart).
                blocking::catching_panic(|| {
                    crate::failpoint::hit(crate::failpoint::TAKEOVER_CHECK);
                    check_back(&file, size, system_id)
                })
                // Only bytes no one wrote make the check meet such a bug: the file is damaged,
                // and taken so (kept aside, received again), not uploaded to meet it again.
                .unwrap_or_else(|panic| Err(corrupt(format!("the check failed: {panic}"))))
            })
            .await;
        let why = match checked {
            Ok(crc) => {
                // Checked by the received CRC if there was one, so `crc` is that one.
                self.enqueue(segment, Expect::Crc(crc))?;
                return Ok(LeftSegment::Good);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(LeftSegment::Gone),
            Err(e) if e.kind() == ErrorKind::InvalidData => e,
            Err(e) => {
                tracing::warn!(
                    file = %segment,
                    "cannot read what an earlier run left in the spool ({e}): it is received \
                     again from the server, and its upload is tried again meanwhile"
                );
                self.enqueue(segment, expect)?;
                return Ok(LeftSegment::Unchecked);
            }
        };
        let left = match archived_already(archive, segment, &why.to_string()).await {
            Ok(true) => LeftSegment::ArchivedAlready,
            Ok(false) => {
                self.refuse_left(segment, expect, &why);
                LeftSegment::Refused
            }
            Err(e) => {
                tracing::warn!(
                    file = %segment,
                    "the spool's copy is damaged ({why}) and the archive cannot say whether it \
                     holds the segment ({e}): it is received again from the server"
                );
                self.enqueue(segment, expect)?;
                return Ok(LeftSegment::Unchecked);
            }
        };
        let dir = settings.spool.clone();
        if left == LeftSegment::Refused {
            let path = spool::complete_path(&dir, segment);
            match blocking::run(move || spool::set_aside_damaged(&path)).await {
                Ok(copy) => self.damaged().note_set_aside(segment, &segment, copy),
                Err(e) => tracing::warn!(
                    file = %segment,
                    "cannot set the damaged file aside in the spool: {e}"
                ),
            }
        } else if let Err(e) = blocking::run(move || spool::remove_complete(&dir, segment)).await {
            tracing::warn!(file = %segment, "cannot remove the damaged copy from the spool: {e}");
        }
        Ok(left)
    }
}
