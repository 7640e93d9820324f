//! What an uploader is responsible for: the segments and kept tails handed over and not yet
//! archived, and the segments refused because their files did not read back as received. The
//! oldest of them bounds the position the receiver may report as archived, whatever order
//! parallel uploads finish in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::readback::Expect;
use crate::daemon::Shared;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// One piece of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Job {
    /// A complete spool segment, and how to check it.
    Segment(SegmentName, Expect),
    /// A kept tail: the segment's bytes up to `end`, archived as a receiver snapshot.
    Tail(SegmentName, Lsn),
}

/// The work an uploader is responsible for, with when each segment was handed over.
#[derive(Default)]
pub(super) struct Outstanding {
    /// When each was handed over, and how to check it (the best expectation handed over).
    segments: BTreeMap<SegmentName, (SystemTime, Expect)>,
    tails: BTreeSet<(SegmentName, Lsn)>,
    /// Segments refused (they did not read back as received) and not yet handed over again,
    /// with how they were to be checked.
    refused: BTreeMap<SegmentName, Expect>,
}

impl Outstanding {
    /// How segment `segment` is checked: `Some` with its expectation while it is handed over
    /// and not yet archived or refused; else, for one refused, `None` with the expectation it
    /// was refused under (a CRC received this run is kept), or `None` with [`Expect::Pages`].
    pub(super) fn known(&self, segment: SegmentName) -> (Option<Expect>, Expect) {
        match self.segments.get(&segment) {
            Some((_, expect)) => (Some(*expect), *expect),
            None => (
                None,
                self.refused.get(&segment).copied().unwrap_or(Expect::Pages),
            ),
        }
    }

    fn contains(&self, job: Job) -> bool {
        match job {
            Job::Segment(s, _) => self.segments.contains_key(&s),
            Job::Tail(s, end) => self.tails.contains(&(s, end)),
        }
    }

    /// Takes `job` over; says whether it is new work to queue. A job already outstanding
    /// is not queued again, but a segment the stream wrote again is then checked by what was
    /// received this time (a job reads its file at each attempt). A refused segment handed
    /// over again (the stream received it again, or its file is back in the spool, as after
    /// a filesystem was repaired and mounted again) is checked again like any other.
    pub(super) fn hand_over(&mut self, job: Job) -> bool {
        if self.contains(job) {
            if let Job::Segment(segment, Expect::Crc(crc)) = job {
                if let Some((_, expect)) = self.segments.get_mut(&segment) {
                    *expect = Expect::Crc(crc);
                }
            }
            return false;
        }
        self.insert(job);
        true
    }

    fn insert(&mut self, job: Job) {
        match job {
            Job::Segment(s, expect) => {
                // A refused segment found in the spool again keeps the CRC it was received with.
                let expect = match (expect, self.refused.remove(&s)) {
                    (Expect::Pages, Some(known @ Expect::Crc(_))) => known,
                    _ => expect,
                };
                self.segments.insert(s, (SystemTime::now(), expect));
            }
            Job::Tail(s, end) => {
                self.tails.insert((s, end));
            }
        }
    }

    pub(super) fn remove(&mut self, job: Job) {
        match job {
            Job::Segment(s, _) => {
                self.segments.remove(&s);
            }
            Job::Tail(s, end) => {
                self.tails.remove(&(s, end));
            }
        }
    }

    /// Takes note of a job whose file was refused: a segment stays outstanding until it is
    /// handed over again.
    pub(super) fn refuse(&mut self, job: Job) {
        if let Job::Segment(s, handed) = job {
            let expect = self.expectation(s, handed);
            self.refused.insert(s, expect);
        }
        self.remove(job);
    }

    /// The start of the oldest outstanding segment, refused ones included, by position
    /// (timelines do not matter: positions run on across a switch).
    pub(super) fn oldest_segment_start(&self, size: SegmentSize) -> Option<Lsn> {
        self.segments
            .keys()
            .chain(self.refused.keys())
            .filter_map(|s| s.start_lsn(size))
            .min()
    }

    /// Segment `segment`'s file read back well, with content CRC `crc`: an earlier run's file
    /// is known for what it holds from now on, and checked by that at later attempts.
    pub(super) fn read_back(&mut self, segment: SegmentName, crc: u32) {
        if let Some((_, expect @ Expect::Pages)) = self.segments.get_mut(&segment) {
            *expect = Expect::Crc(crc);
        }
    }

    /// The start of the oldest segment an earlier run left in the spool ([`Expect::Pages`])
    /// that has not read back yet, or was refused: nothing from there on is known
    /// stored, whatever the spool's files say, until it is checked or received again.
    pub(super) fn oldest_unverified_start(&self, size: SegmentSize) -> Option<Lsn> {
        let left = |(s, expect): (&SegmentName, &Expect)| (*expect == Expect::Pages).then_some(*s);
        let outstanding = self.segments.iter().map(|(s, (_, e))| (s, e));
        (outstanding.chain(self.refused.iter()))
            .filter_map(left)
            .filter_map(|s| s.start_lsn(size))
            .min()
    }

    /// Bytes of WAL these files hold in the spool.
    pub(super) fn bytes(&self, size: SegmentSize) -> u64 {
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

    /// How to check segment `segment`'s file now: the best expectation handed over while it
    /// is outstanding, else `handed`.
    pub(super) fn expectation(&self, segment: SegmentName, handed: Expect) -> Expect {
        self.segments
            .get(&segment)
            .map_or(handed, |(_, expect)| *expect)
    }

    /// Segments and kept tails handed over and not yet archived or refused.
    pub(super) fn pending(&self) -> usize {
        self.segments.len() + self.tails.len()
    }

    /// The refused segments not handed over again since, oldest first.
    pub(super) fn refused_segments(&self) -> impl Iterator<Item = SegmentName> + '_ {
        self.refused.keys().copied()
    }

    /// A refused segment that starts before `position`.
    pub(super) fn refused_before(&self, position: Lsn, size: SegmentSize) -> Option<SegmentName> {
        self.refused_segments()
            .find(|s| s.start_lsn(size).is_some_and(|start| start < position))
    }

    /// Forgets the refused segments of `timeline` from `first` to before `until`.
    pub(super) fn forget_refused(
        &mut self,
        timeline: TimelineId,
        first: SegNo,
        until: SegNo,
        size: SegmentSize,
    ) {
        self.refused.retain(|s, _| {
            s.timeline != timeline || s.segno(size).is_none_or(|n| n < first || n >= until)
        });
    }

    /// Publishes the queue's depth and age.
    pub(super) fn publish(&self, shared: &Shared) {
        let oldest = self.segments.values().map(|(since, _)| *since).min();
        shared.metrics.set_upload_queue(self.segments.len(), oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            o.insert(Job::Segment(name(1, n), Expect::Pages));
        }
        o.insert(Job::Tail(name(1, 4), Lsn(4 * (1 << 20) + 100)));
        // 6 finishes before 5: 5 still bounds the archived position.
        o.remove(Job::Segment(name(1, 6), Expect::Pages));
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(5).start_lsn(size)));
        o.remove(Job::Segment(name(1, 5), Expect::Pages));
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(7).start_lsn(size)));
        // A later timeline's segment is compared by position.
        o.insert(Job::Segment(name(2, 3), Expect::Pages));
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(3).start_lsn(size)));
        assert_eq!(o.bytes(size), 2 * (1 << 20) + 100);
    }

    #[test]
    fn an_earlier_runs_segment_bounds_what_is_stored_until_it_is_checked() {
        let size = SegmentSize::new(1 << 20).unwrap();
        let name = |n: u64| SegmentName::new(TimelineId(1), SegNo(n), size);
        let mut o = Outstanding::default();
        // Received by this run: known by its CRC, not bounding the spool's position.
        o.insert(Job::Segment(name(4), Expect::Crc(4)));
        assert_eq!(o.oldest_unverified_start(size), None);
        // Left by an earlier run: bounds it until read back (the archive may be away).
        o.insert(Job::Segment(name(6), Expect::Pages));
        o.insert(Job::Segment(name(7), Expect::Pages));
        assert_eq!(
            o.oldest_unverified_start(size),
            Some(SegNo(6).start_lsn(size))
        );
        o.read_back(name(6), 66);
        assert_eq!(o.expectation(name(6), Expect::Pages), Expect::Crc(66));
        assert_eq!(
            o.oldest_unverified_start(size),
            Some(SegNo(7).start_lsn(size))
        );
        assert_eq!(o.known(name(7)), (Some(Expect::Pages), Expect::Pages));
        // Refused: still, until received again.
        o.refuse(Job::Segment(name(7), Expect::Pages));
        assert_eq!(o.known(name(7)), (None, Expect::Pages));
        assert_eq!(
            o.oldest_unverified_start(size),
            Some(SegNo(7).start_lsn(size))
        );
        assert!(o.hand_over(Job::Segment(name(7), Expect::Crc(7))));
        assert_eq!(o.oldest_unverified_start(size), None);
    }

    #[test]
    fn a_refused_segment_bounds_what_is_archived_until_it_is_handed_over_again() {
        let size = SegmentSize::new(1 << 20).unwrap();
        let name = |n: u64| SegmentName::new(TimelineId(1), SegNo(n), size);
        let mut o = Outstanding::default();
        for n in [5, 6] {
            o.insert(Job::Segment(name(n), Expect::Crc(n as u32)));
        }
        o.refuse(Job::Segment(name(5), Expect::Crc(5)));
        o.remove(Job::Segment(name(6), Expect::Crc(6)));
        // Known by the CRC it was received with, should its file be found again.
        assert_eq!(o.known(name(5)), (None, Expect::Crc(5)));
        // Its file is gone from the spool, but nothing from 5 on counts as archived.
        assert_eq!(o.segments.len(), 0);
        assert_eq!(o.bytes(size), 0);
        assert_eq!(o.oldest_segment_start(size), Some(SegNo(5).start_lsn(size)));
        // Found in the spool again (its filesystem mounted again), or received again: checked
        // again, and outstanding like any other.
        assert!(o.hand_over(Job::Segment(name(5), Expect::Pages)));
        assert!(o.refused.is_empty());
        assert_eq!(
            o.segments[&name(5)].1,
            Expect::Crc(5),
            "checked by what was received"
        );
        o.refuse(Job::Segment(name(5), Expect::Pages));
        assert!(o.hand_over(Job::Segment(name(5), Expect::Crc(5))));
        assert!(o.refused.is_empty());
        // Written again while its job waits: checked by the newer CRC.
        assert!(!o.hand_over(Job::Segment(name(5), Expect::Crc(55))));
        assert_eq!(o.segments[&name(5)].1, Expect::Crc(55));
        o.remove(Job::Segment(name(5), Expect::Crc(5)));
        assert_eq!(o.oldest_segment_start(size), None);
    }
}
