//! Two copies of the segment a newer timeline begins in, under the same name. The old
//! primary's is whole; a standby with `archive_mode = always` archives its own, cut at the
//! switch point and zero after it, when its upstream switches timeline (walreceiver.c). They
//! agree up to the switch point, which is all of that WAL the cluster follows from there on.
//! Whichever arrives second is not a contradiction: the archive keeps the first (it never
//! overwrites), and the second counts as archived, so that neither a standby's archiver nor a
//! receiver is stuck on it for good.
//!
//! Both copies are held in memory to be compared (a segment each): this happens once per
//! failover at most.

use super::{ClusterArchive, Result};
use crate::wal::{Lsn, SegmentName, SegmentSize, WalFileName, parse_history};

/// Which copy is cut at the switch point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The one offered: the archive's copy holds the same WAL and more.
    Offered,
    /// The one stored: the offered copy's WAL past the switch point (the old timeline's
    /// alone) stays out of the archive.
    Stored,
}

/// How `stored` and `offered`, copies of a segment that starts at `start`, relate at
/// `switch` (a position inside the segment): `None` when they differ before it, or neither
/// is zero after it.
pub fn cut_at(start: Lsn, switch: Lsn, stored: &[u8], offered: &[u8]) -> Option<Cut> {
    let at = usize::try_from(switch.0.checked_sub(start.0)?).ok()?;
    if at == 0 || stored.len() != offered.len() || at >= stored.len() {
        return None;
    }
    if stored[..at] != offered[..at] {
        return None;
    }
    let zero = |bytes: &[u8]| bytes.iter().all(|&b| b == 0);
    if zero(&offered[at..]) {
        Some(Cut::Offered)
    } else if zero(&stored[at..]) {
        Some(Cut::Stored)
    } else {
        None
    }
}

impl ClusterArchive {
    /// Whether `offered`, refused because the archive holds other content under `segment`'s
    /// name, and the archive's copy are the same segment on either side of a newer
    /// timeline's switch point that the archive's history files place inside it; with that
    /// timeline's number. Logged when so.
    pub(super) async fn copies_at_fork(
        &self,
        segment: SegmentName,
        size: SegmentSize,
        offered: &[u8],
    ) -> Result<Option<Cut>> {
        let Some(segno) = segment.segno(size) else {
            return Ok(None);
        };
        let start = segno.start_lsn(size);
        let mut switches = Vec::new();
        for timeline in self.history_timelines().await? {
            if timeline <= segment.timeline {
                continue;
            }
            let Some(content) = self.get_verified(&WalFileName::History(timeline)).await? else {
                continue;
            };
            let Ok(entries) = parse_history(timeline, &content) else {
                continue;
            };
            switches.extend(
                (entries.iter())
                    .filter(|e| e.timeline == segment.timeline)
                    .filter(|e| e.switch_point.0 / u64::from(size.bytes()) == segno.0)
                    .map(|e| (timeline, e.switch_point)),
            );
        }
        if switches.is_empty() {
            return Ok(None);
        }
        let Some(stored) = self.get_verified(&WalFileName::Segment(segment)).await? else {
            return Ok(None);
        };
        for (timeline, switch) in switches {
            match cut_at(start, switch, &stored, offered) {
                Some(Cut::Offered) => tracing::info!(
                    %segment,
                    "already archived: the archive's copy holds the same WAL up to {switch}, \
                     where timeline {} begins, and the old timeline's past it (this copy is \
                     cut there, as a standby with archive_mode = always archives it)",
                    timeline.0
                ),
                Some(Cut::Stored) => tracing::warn!(
                    %segment,
                    "the archive holds this segment cut at {switch}, where timeline {} begins \
                     (a standby's copy): the same WAL up to there; what this copy holds past \
                     it is on the old timeline alone (an old primary's last WAL, or a split \
                     brain's) and is not archived",
                    timeline.0
                ),
                None => continue,
            }
            return Ok(cut_at(start, switch, &stored, offered));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_agreeing_up_to_the_switch_with_one_zero_after_it_are_one_segment() {
        let start = Lsn(0x5000000);
        let whole: Vec<u8> = (0..64u8).map(|b| b | 1).collect();
        let mut cut = whole.clone();
        cut[40..].fill(0);
        let switch = Lsn(start.0 + 40);
        assert_eq!(cut_at(start, switch, &whole, &cut), Some(Cut::Offered));
        assert_eq!(cut_at(start, switch, &cut, &whole), Some(Cut::Stored));
        // Cut elsewhere than the switch, or different before it: a contradiction.
        assert_eq!(cut_at(start, Lsn(start.0 + 48), &whole, &cut), None);
        let mut other = cut.clone();
        other[3] ^= 0xff;
        assert_eq!(cut_at(start, switch, &whole, &other), None);
        // A switch at the segment's start, past its end, or before it.
        assert_eq!(cut_at(start, start, &whole, &cut), None);
        assert_eq!(cut_at(start, Lsn(start.0 + 64), &whole, &cut), None);
        assert_eq!(cut_at(start, Lsn(start.0 - 1), &whole, &cut), None);
    }
}
