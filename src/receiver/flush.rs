//! The flush position reported to the server, computed from what is safely stored. Pure: the
//! stream gathers the facts, this decides.
//!
//! The physical slot's `restart_lsn` becomes the reported flush position as is, and a
//! synchronous commit waits for it, so it must never pass WAL that is not safely stored: the
//! archive (default) or the fsynced spool (`--synchronous`; a file an earlier run left there
//! counts once it read back as received). Within one connection it never
//! goes back, and once anything is stored it is never 0 (which the server shows as a NULL
//! `flush_lsn`).

use super::Mode;
use crate::wal::Lsn;

/// What is known stored at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Stored {
    /// Just past the last byte written to the spool.
    pub written: Lsn,
    /// Just past the last byte fsynced in the spool.
    pub synced: Lsn,
    /// The start of the segment being received: everything before it was handed to the
    /// uploader (or was in the archive when streaming started).
    pub segment_start: Lsn,
    /// The start of the oldest complete segment not yet archived, if any.
    pub oldest_unarchived: Option<Lsn>,
    /// The start of the oldest segment an earlier run left in the spool that is not yet read
    /// back, or did not read back as received: its file is no proof of what it holds.
    pub oldest_unverified: Option<Lsn>,
    /// The end of the newest snapshot of the segment being received stored in the archive.
    pub snapshot_end: Lsn,
}

impl Stored {
    /// Everything before this position is in the archive.
    pub fn archived(&self) -> Lsn {
        let complete = self
            .oldest_unarchived
            .map_or(self.segment_start, |oldest| oldest.min(self.segment_start));
        // A snapshot covers the current segment from its start: it counts only once
        // everything before that segment is in.
        if complete >= self.segment_start {
            complete.max(self.snapshot_end)
        } else {
            complete
        }
        .min(self.written)
    }

    /// Where a spool file an earlier run left that has not read back holds the synchronous
    /// flush position, when it holds it below what is fsynced: commits waiting on the
    /// receiver wait there.
    pub fn held_by_unverified(&self) -> Option<Lsn> {
        self.oldest_unverified
            .filter(|&start| start < self.synced.min(self.written))
    }

    /// What `mode` may call flushed.
    pub fn flushed(&self, mode: Mode) -> Lsn {
        match mode {
            Mode::Synchronous => {
                let synced = self.synced.min(self.written);
                self.oldest_unverified
                    .map_or(synced, |start| start.min(synced))
            }
            Mode::Archived => self.archived(),
        }
    }
}

/// The flush positions one connection reported: never decreasing.
#[derive(Debug, Default)]
pub struct FlushReport {
    last: Lsn,
}

impl FlushReport {
    /// The position to report now: what is stored, or the last reported one when that is
    /// further (a snapshot counted earlier stays in the archive after its segment completes).
    pub fn next(&mut self, stored: Lsn) -> Lsn {
        self.last = self.last.max(stored);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn stored(written: u64, segment: u64, oldest: Option<u64>, snapshot: u64) -> Stored {
        Stored {
            written: Lsn(written),
            synced: Lsn(written),
            segment_start: Lsn(segment * MIB),
            oldest_unarchived: oldest.map(|n| Lsn(n * MIB)),
            oldest_unverified: None,
            snapshot_end: Lsn(snapshot),
        }
    }

    #[test]
    fn synchronous_stops_at_a_spool_file_not_yet_read_back() {
        // Streaming resumed past segment 5, which an earlier run left in the spool: until it
        // reads back as received, nothing from it on counts as stored.
        let mut s = stored(7 * MIB + 10, 7, Some(5), 0);
        s.oldest_unverified = Some(Lsn(5 * MIB));
        assert_eq!(s.flushed(Mode::Synchronous), Lsn(5 * MIB));
        assert_eq!(s.held_by_unverified(), Some(Lsn(5 * MIB)));
        s.oldest_unverified = Some(Lsn(8 * MIB));
        assert_eq!(s.held_by_unverified(), None, "not past what is fsynced");
        s.oldest_unverified = None;
        assert_eq!(s.flushed(Mode::Synchronous), Lsn(7 * MIB + 10));
    }

    #[test]
    fn archived_stops_at_the_oldest_unarchived_segment() {
        // Segments 5 and 6 complete, 6 uploaded first: only what is before 5 counts.
        assert_eq!(stored(7 * MIB + 10, 7, Some(5), 0).archived(), Lsn(5 * MIB));
        // Everything complete is in: up to the current segment, plus its snapshot.
        let s = stored(7 * MIB + 10, 7, None, 7 * MIB + 4);
        assert_eq!(s.archived(), Lsn(7 * MIB + 4));
        // A snapshot does not count while an earlier segment is missing.
        let s = stored(7 * MIB + 10, 7, Some(6), 7 * MIB + 4);
        assert_eq!(s.archived(), Lsn(6 * MIB));
        assert_eq!(s.flushed(Mode::Synchronous), Lsn(7 * MIB + 10));
    }

    #[test]
    fn the_report_never_goes_back_when_a_segment_completes() {
        let mut report = FlushReport::default();
        let before = report.next(stored(7 * MIB + 10, 7, None, 7 * MIB + 10).archived());
        // Segment 7 completes and waits for its upload: what is archived falls back to its
        // start, but the snapshot stored before is still in the archive.
        let after = report.next(stored(8 * MIB + 1, 8, Some(7), 0).archived());
        assert_eq!((before, after), (Lsn(7 * MIB + 10), Lsn(7 * MIB + 10)));
        assert_eq!(
            report.next(stored(8 * MIB + 1, 8, None, 0).archived()),
            Lsn(8 * MIB)
        );
    }
}
