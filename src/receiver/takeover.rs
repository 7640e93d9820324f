//! What an earlier run left in the spool, taken over at a start: each complete segment is read
//! back before the start plans where to stream from, so that no plan counts a file that does
//! not hold what was received (a filesystem repaired after an error can leave one empty, or
//! with other bytes inside its pages). A good file is handed to the uploader with its CRC; a
//! damaged one is removed and streamed again from the server, whose slot keeps it; one that
//! cannot be read is streamed again too, its upload tried again meanwhile.

use std::io::ErrorKind;

use super::readback::{Expect, SpoolFile, read_back};
use super::upload::Uploader;
use crate::archive::ClusterArchive;
use crate::blocking;
use crate::spool;
use crate::wal::{SegmentName, WalFileName};

/// The zstd level of the read-back's compression, whose output is thrown away (only the
/// content's CRC is kept): the fastest.
const CHECK_LEVEL: i32 = 1;

/// What the take-over found of one complete segment an earlier run left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeftSegment {
    /// It reads back as this cluster's WAL (or was handed over before): held by the spool.
    Held,
    /// Not held by the spool: damaged (removed; refused unless the archive holds it),
    /// unreadable, or gone.
    NotHeld,
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
            (Some(Expect::Crc(_)), _) => return Ok(LeftSegment::Held),
            (Some(Expect::Pages), _) => return Ok(LeftSegment::NotHeld),
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
        let read =
            blocking::run(move || read_back(&file, CHECK_LEVEL, size, system_id).map(|e| e.crc));
        let why = match read.await {
            Ok(crc) => {
                // Checked by the received CRC if there was one, so `crc` is that one.
                self.enqueue(segment, Expect::Crc(crc))?;
                return Ok(LeftSegment::Held);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(LeftSegment::NotHeld),
            Err(e) if e.kind() == ErrorKind::InvalidData => e,
            Err(e) => {
                tracing::warn!(
                    file = %segment,
                    "cannot read what an earlier run left in the spool ({e}): it is received \
                     again from the server, and its upload is tried again meanwhile"
                );
                self.enqueue(segment, expect)?;
                return Ok(LeftSegment::NotHeld);
            }
        };
        match archive.holds(&WalFileName::Segment(segment)).await {
            Ok(true) => tracing::warn!(
                file = %segment,
                "the spool's copy is damaged ({why}), but the archive holds the segment \
                 already: removing the copy"
            ),
            Ok(false) => {
                tracing::error!(
                    file = %segment,
                    "the spool did not give back what an earlier run received ({why}): not \
                     archived; removing it to receive it again from the server (its filesystem \
                     may be failing)"
                );
                self.refuse_left(segment, expect);
            }
            Err(e) => {
                tracing::warn!(
                    file = %segment,
                    "the spool's copy is damaged ({why}) and the archive cannot say whether it \
                     holds the segment ({e}): it is received again from the server"
                );
                self.enqueue(segment, expect)?;
                return Ok(LeftSegment::NotHeld);
            }
        }
        let dir = settings.spool.clone();
        if let Err(e) = blocking::run(move || spool::remove_complete(&dir, segment)).await {
            tracing::warn!(file = %segment, "cannot remove the damaged copy from the spool: {e}");
        }
        Ok(LeftSegment::NotHeld)
    }
}
