//! Two copies of the segment a newer timeline begins in, under the same name. The old
//! primary's is whole; a standby with `archive_mode = always` archives its own, cut at the
//! switch point, when its upstream switches timeline (walreceiver.c): past the switch point's
//! page it holds no page of this segment (zeros, or a recycled file's stale pages, whose
//! headers name an older segment). They agree up to the switch point, which is all of that WAL
//! the cluster follows from there on. Whichever arrives second is not a contradiction: the
//! archive keeps the first (it never overwrites), and the second counts as archived, so that
//! neither a standby's archiver nor a receiver is stuck on it for good. A whole copy offered
//! second is kept beside it as a snapshot (`SEGMENT.partial.END`): its WAL past the switch point
//! is on the old timeline alone, an old primary's last WAL or a split brain's.
//!
//! The archive's copy is read and compared as it is decoded, on the blocking pool, each time
//! such a conflict comes up: memory holds its stored (compressed) object, not the segment.

use super::{ClusterArchive, Error, Result};
use crate::envelope;
use crate::wal::{Lsn, OwnPageAfter, SegmentName, SegmentSize, WalFileName};

/// Which copy is cut at the switch point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The one offered: the archive's copy holds the same WAL and more.
    Offered,
    /// The one stored: the offered copy's WAL past the switch point (the old timeline's
    /// alone) is kept beside it as a snapshot.
    Stored,
}

/// How the archive's copy and `offered`, copies of a segment that starts at `start`, relate
/// at `switch` (a position inside the segment): `None` when they differ before it, or neither
/// is cut there. `stored` writes the archive's copy into the writer it is given, as it
/// decodes it, and returns its length (`None` when it cannot be read): it is compared as it
/// streams, never held whole.
pub fn cut_at(
    start: Lsn,
    switch: Lsn,
    stored: impl FnOnce(&mut dyn std::io::Write) -> Option<u64>,
    offered: &[u8],
) -> Option<Cut> {
    let at = usize::try_from(switch.0.checked_sub(start.0)?).ok()?;
    if at == 0 || at >= offered.len() {
        return None;
    }
    let mut watch = StoredCopy {
        offered,
        at,
        pos: 0,
        agrees: true,
        own: OwnPageAfter::new(start, at as u64),
    };
    let length = stored(&mut watch)?;
    if !watch.agrees || length != offered.len() as u64 {
        return None;
    }
    if cut_after(start, at, offered)? {
        Some(Cut::Offered)
    } else if !watch.own.found()? {
        Some(Cut::Stored)
    } else {
        None
    }
}

/// The archive's copy as it streams: whether it agrees with the offered copy up to `at`, and
/// whether it holds pages of its own past it.
struct StoredCopy<'a> {
    offered: &'a [u8],
    at: usize,
    pos: usize,
    agrees: bool,
    own: OwnPageAfter,
}

impl std::io::Write for StoredCopy<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + buf.len();
        if self.pos < self.at {
            let upto = end.min(self.at);
            let compared = &buf[..upto - self.pos];
            self.agrees &= self.offered.get(self.pos..upto) == Some(compared);
        }
        self.pos = end;
        self.own.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `copy` holds no page of its own segment past the page holding offset `at`
/// ([`OwnPageAfter`]); `None` when its first page cannot be read.
fn cut_after(start: Lsn, at: usize, copy: &[u8]) -> Option<bool> {
    let mut watch = OwnPageAfter::new(start, at as u64);
    std::io::Write::write_all(&mut watch, copy).ok()?;
    watch.found().map(|own| !own)
}

impl ClusterArchive {
    /// Whether `offered`, refused because the archive holds other content under `segment`'s
    /// name, and the archive's copy are the same segment on either side of a newer timeline's
    /// switch point that the archive's history files place inside it. Logged when so; a whole
    /// copy offered second is kept as a snapshot.
    pub(super) async fn copies_at_fork(
        &self,
        segment: SegmentName,
        size: SegmentSize,
        offered: bytes::Bytes,
        envelope: bytes::Bytes,
    ) -> Result<Option<Cut>> {
        let Some(segno) = segment.segno(size) else {
            return Ok(None);
        };
        let start = segno.start_lsn(size);
        let switches = self.forks_inside(segment, size).await?;
        if switches.is_empty() {
            return Ok(None);
        }
        let name = WalFileName::Segment(segment);
        let Some(stored) = self.get(&name).await? else {
            return Ok(None);
        };
        let compared = offered.clone();
        let key = self.key(&name).to_string();
        let found = crate::blocking::run(move || {
            let mut corrupt = None;
            let found = switches.into_iter().find_map(|(timeline, switch)| {
                let decode = |out: &mut dyn std::io::Write| match envelope::decode_into(
                    &stored,
                    &mut &mut *out,
                ) {
                    Ok(header) => Some(header.content_len),
                    Err(error) => {
                        corrupt = Some(error);
                        None
                    }
                };
                cut_at(start, switch, decode, &compared).map(|cut| (timeline, switch, cut))
            });
            match (found, corrupt) {
                (None, Some(error)) => Err(Error::Corrupt { key, error }),
                (found, _) => Ok(found),
            }
        })
        .await?;
        let Some((timeline, switch, cut)) = found else {
            return Ok(None);
        };
        match cut {
            Cut::Offered => tracing::info!(
                %segment,
                "already archived: the archive's copy holds the same WAL up to {switch}, where \
                 timeline {} begins, and the old timeline's past it (this copy is cut there, as \
                 a standby with archive_mode = always archives it)",
                timeline.0
            ),
            Cut::Stored => {
                let end = Lsn(start.0 + offered.len() as u64);
                self.put_partial_snapshot(segment, end, offered, envelope)
                    .await?;
                tracing::warn!(
                    %segment,
                    "the archive holds this segment cut at {switch}, where timeline {} begins \
                     (a standby's copy): the same WAL up to there. This copy's WAL past it is \
                     on the old timeline alone (an old primary's last WAL, or a split brain's): \
                     kept beside it as a snapshot, {segment}.partial.{end}",
                    timeline.0
                );
            }
        }
        Ok(Some(cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::LongPageHeader;

    const PAGE: usize = 8192;

    /// [`cut_at`] with the archive's copy in memory.
    fn cut(start: Lsn, switch: Lsn, stored: &[u8], offered: &[u8]) -> Option<Cut> {
        let write = |out: &mut dyn std::io::Write| {
            // In pieces, as a decoder writes.
            for piece in stored.chunks(5000) {
                out.write_all(piece).ok()?;
            }
            Some(stored.len() as u64)
        };
        cut_at(start, switch, write, offered)
    }
    /// 1 MiB, the smallest segment PostgreSQL makes.
    const PAGES: usize = 128;

    /// A segment of `pages` pages starting at `start`, each page's header naming its address
    /// (the first a long header), the rest of each page filled with `fill`.
    fn segment(start: Lsn, pages: usize, fill: u8) -> Vec<u8> {
        let mut bytes = vec![fill; pages * PAGE];
        for page in 0..pages {
            let header = &mut bytes[page * PAGE..page * PAGE + 40];
            header[..2].copy_from_slice(&0xD110u16.to_le_bytes());
            header[2..4].copy_from_slice(&(if page == 0 { 2u16 } else { 0 }).to_le_bytes());
            header[4..8].copy_from_slice(&1u32.to_le_bytes());
            header[8..16].copy_from_slice(&(start.0 + (page * PAGE) as u64).to_le_bytes());
            if page == 0 {
                header[16..24].fill(0);
                header[24..32].copy_from_slice(&7u64.to_le_bytes());
                header[32..36].copy_from_slice(&((pages * PAGE) as u32).to_le_bytes());
                header[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn own_pages_are_seen_however_the_segment_is_split_into_writes() {
        use std::io::Write;
        let start = Lsn(0x5000000);
        let whole = segment(start, PAGES, 0x5a);
        let mut cut = whole.clone();
        cut[3 * PAGE + 100..].fill(0);
        // A stale page of an older segment past the cut is not one of its own.
        cut[9 * PAGE..10 * PAGE]
            .copy_from_slice(&segment(Lsn(0x1000000), PAGES, 1)[9 * PAGE..10 * PAGE]);
        let mut last_only = cut.clone();
        last_only[(PAGES - 1) * PAGE..].copy_from_slice(&whole[(PAGES - 1) * PAGE..]);
        for (copy, own) in [(&whole, true), (&cut, false), (&last_only, true)] {
            for chunk in [1, 7, 16, 40, 8191, PAGE, 3 * PAGE + 5, copy.len()] {
                let mut watch = OwnPageAfter::new(start, 3 * PAGE as u64 + 100);
                for part in copy.chunks(chunk) {
                    watch.write_all(part).unwrap();
                }
                assert_eq!(watch.found(), Some(own), "chunks of {chunk}");
            }
        }
        // Not whole pages, or no readable first page: no answer.
        let mut watch = OwnPageAfter::new(start, 100);
        watch.write_all(&cut[..PAGE + 10]).unwrap();
        assert_eq!(watch.found(), None);
        let mut watch = OwnPageAfter::new(start, 100);
        watch.write_all(&[0; PAGE]).unwrap();
        assert_eq!(watch.found(), None);
    }

    #[test]
    fn copies_agreeing_up_to_the_switch_one_without_pages_after_it_are_one_segment() {
        let start = Lsn(0x5000000);
        assert!(LongPageHeader::parse(&segment(start, PAGES, 0)).is_ok());
        let whole = segment(start, PAGES, 0x5a);
        let switch = Lsn(start.0 + 3 * PAGE as u64 + 100);
        // Cut: zeros past the switch.
        let mut zeroed = whole.clone();
        zeroed[3 * PAGE + 100..].fill(0);
        assert_eq!(cut(start, switch, &whole, &zeroed), Some(Cut::Offered));
        assert_eq!(cut(start, switch, &zeroed, &whole), Some(Cut::Stored));
        // Cut: a recycled file's stale pages past the switch page, naming an older segment.
        let mut stale = whole.clone();
        let old = segment(Lsn(0x1000000), PAGES, 0x33);
        stale[3 * PAGE + 100..].copy_from_slice(&old[3 * PAGE + 100..]);
        assert_eq!(cut(start, switch, &whole, &stale), Some(Cut::Offered));
        // Different before the switch, or with a page of this segment after it: no.
        let mut other = zeroed.clone();
        other[PAGE + 50] ^= 0xff;
        assert_eq!(cut(start, switch, &whole, &other), None);
        let mut resumed = zeroed.clone();
        resumed[6 * PAGE..7 * PAGE].copy_from_slice(&whole[6 * PAGE..7 * PAGE]);
        assert_eq!(cut(start, switch, &whole, &resumed), None);
        // A switch at the segment's start, past its end, or before it.
        assert_eq!(cut(start, start, &whole, &zeroed), None);
        assert_eq!(
            cut(start, Lsn(start.0 + (PAGES * PAGE) as u64), &whole, &zeroed),
            None
        );
        assert_eq!(cut(start, Lsn(start.0 - 1), &whole, &zeroed), None);
    }
}
