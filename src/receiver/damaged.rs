//! Damaged copies the spool keeps ([`spool::set_aside_damaged`]): files that did not read back
//! as received, never archived. The segment is received again from the server if it still
//! has it; once the archive holds the segment, its damaged copies go. If the server no longer
//! has it (in `--synchronous` mode a checkpoint may have recycled it), the segment is reported
//! lost and its damaged copy is named there: it may be the only copy of the WAL before the
//! damage, which PostgreSQL can replay up to the damaged record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::outstanding::Job;
use super::readback;
use super::upload::Queue;
use crate::archive::ClusterArchive;
use crate::blocking;
use crate::spool;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId, WalFileName};

/// The damaged copies in the spool, by the segment each is a copy of.
#[derive(Debug, Default)]
pub(super) struct DamagedCopies {
    copies: Mutex<BTreeMap<SegmentName, BTreeSet<PathBuf>>>,
    /// Lost segments whose WAL up to the damage this process archives or has archived
    /// ([`archive_valid_prefix`]): once each, however many sessions find them lost.
    prefixed: Mutex<BTreeSet<SegmentName>>,
}

impl DamagedCopies {
    fn copies(&self) -> std::sync::MutexGuard<'_, BTreeMap<SegmentName, BTreeSet<PathBuf>>> {
        self.copies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn prefixed(&self) -> std::sync::MutexGuard<'_, BTreeSet<SegmentName>> {
        self.prefixed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether lost segment `segment`'s WAL up to the damage is to be archived now: not when
    /// this process does or did already.
    pub(super) fn begin_prefix(&self, segment: SegmentName) -> bool {
        self.prefixed().insert(segment)
    }

    /// Whether this process archives or has archived lost segment `segment`'s WAL up to the
    /// damage already, so a start need not ask the archive about it again.
    pub(super) fn prefix_begun(&self, segment: SegmentName) -> bool {
        self.prefixed().contains(&segment)
    }

    /// `segment`'s prefix could not be archived this time: a later session tries again.
    pub(super) fn prefix_failed(&self, segment: SegmentName) {
        self.prefixed().remove(&segment);
    }

    /// Takes note of a damaged copy of `segment` at `path`.
    pub(super) fn keep(&self, segment: SegmentName, path: PathBuf) {
        self.copies().entry(segment).or_default().insert(path);
    }

    /// Takes note of file `what`, refused, set aside as a damaged copy of `segment` at `path`,
    /// and says so.
    pub(super) fn note_set_aside(
        &self,
        segment: SegmentName,
        what: &dyn std::fmt::Display,
        path: PathBuf,
    ) {
        tracing::warn!(
            file = %what,
            copy = %path.display(),
            "kept the refused file aside as a damaged copy, never archived: it goes once the \
             archive holds the segment"
        );
        self.keep(segment, path);
    }

    /// Every damaged copy's path, by segment.
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        self.copies().values().flatten().cloned().collect()
    }

    /// The damaged copies of segments `first` to `last` of `timeline`.
    pub(super) fn within(
        &self,
        timeline: TimelineId,
        first: SegNo,
        last: SegNo,
        size: SegmentSize,
    ) -> Vec<(SegmentName, PathBuf)> {
        let range =
            SegmentName::new(timeline, first, size)..=SegmentName::new(timeline, last, size);
        self.copies()
            .range(range)
            .flat_map(|(&segment, paths)| paths.iter().map(move |p| (segment, p.clone())))
            .collect()
    }

    /// Removes `segment`'s damaged copies, which the archive holds now: logged; one that
    /// cannot be removed is left, with a warning.
    pub(super) async fn remove_archived(&self, segment: SegmentName) {
        let Some(paths) = self.copies().remove(&segment) else {
            return;
        };
        for path in paths {
            let removing = path.clone();
            match blocking::run(move || spool::remove_damaged(&removing)).await {
                Ok(()) => tracing::info!(
                    %segment,
                    copy = %path.display(),
                    "removed the damaged copy the spool kept: the archive holds the segment now"
                ),
                Err(e) => tracing::warn!(
                    %segment,
                    copy = %path.display(),
                    "the archive holds the segment now, but its damaged copy cannot be removed \
                     from the spool ({e}): remove it by hand"
                ),
            }
        }
    }

    /// Takes over the damaged copies an earlier run left (`found`, listed at each session's
    /// start): those of a segment the archive holds go; the others are kept, and the ones not
    /// known before named in one warning.
    pub(super) async fn take_over(
        &self,
        archive: &ClusterArchive,
        found: Vec<(SegmentName, PathBuf)>,
    ) {
        let new: Vec<(SegmentName, PathBuf)> = {
            let copies = self.copies();
            found
                .into_iter()
                .filter(|(segment, path)| !copies.get(segment).is_some_and(|p| p.contains(path)))
                .collect()
        };
        let mut kept = Vec::new();
        for (segment, path) in new {
            self.keep(segment, path.clone());
            if let Ok(true) = archive.holds(&WalFileName::Segment(segment)).await {
                self.remove_archived(segment).await;
            } else {
                kept.push(path.display().to_string());
            }
        }
        if !kept.is_empty() {
            tracing::warn!(
                copies = %kept.join(", "),
                "the spool keeps damaged copies of segments not archived yet (they did not read \
                 back as received): each goes once its segment is archived; if the server no \
                 longer has the segment, its copy holds the WAL before the damage (see the \
                 README, \"Damaged spool files\")"
            );
        }
    }
}

/// Archives the WAL of lost segment `segment` up to the damage in its damaged `copies` (the
/// copy that holds the most, [`readback::valid_end`]) as a snapshot: kept as a tail in the
/// spool `dir` ([`spool::keep_valid_prefix`]) and queued. Not when the archive holds a
/// snapshot of the segment that reaches as far already (an earlier run's, or the stream's):
/// that one serves a recovery at least as far, and an object of that name holds those bytes.
/// The copies stay. Returns false when it failed where a later try may succeed (a copy that
/// cannot be read, a spool that cannot be written).
pub(super) async fn archive_valid_prefix(
    archive: &ClusterArchive,
    queue: &Queue,
    dir: &Path,
    size: SegmentSize,
    segment: SegmentName,
    copies: Vec<PathBuf>,
) -> bool {
    let shown = (copies.iter())
        .map(|c| c.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let best = blocking::run(move || {
        let mut best: Option<(Lsn, PathBuf)> = None;
        for copy in copies {
            if let Some(end) = readback::valid_end(&copy, segment, size)?
                && best.as_ref().is_none_or(|&(was, _)| end > was)
            {
                best = Some((end, copy));
            }
        }
        Ok::<_, std::io::Error>(best)
    })
    .await;
    let (end, copy) = match best {
        Ok(Some(best)) => best,
        Ok(None) => {
            tracing::warn!(
                %segment,
                copies = %shown,
                "no WAL of the lost segment's damaged copies is archived: no position was found \
                 where their WAL stops checking (damage before the first record, or where no \
                 record's check covers it)"
            );
            return true;
        }
        Err(e) => {
            tracing::warn!(%segment, copies = %shown, "cannot read the lost segment's damaged copies: {e}");
            return false;
        }
    };
    if let Ok(Some(archived)) = archive.newest_snapshot_end(segment).await
        && archived >= end
    {
        tracing::info!(
            %segment,
            %end,
            archived_snapshot_end = %archived,
            "the archive holds a snapshot of the lost segment that reaches as far as its damaged \
             copies do"
        );
        return true;
    }
    let (tail_dir, source) = (dir.to_path_buf(), copy.clone());
    match blocking::run(move || spool::keep_valid_prefix(&tail_dir, &source, segment, end, size))
        .await
    {
        Ok(()) => {
            tracing::warn!(
                %segment,
                %end,
                copy = %copy.display(),
                "archiving the lost segment's WAL up to the damage in its copy, as a snapshot"
            );
            // Stopped only with the receiver: the next start archives the tail.
            let _ = queue.submit(Job::Tail(segment, end));
            true
        }
        Err(e) => {
            tracing::warn!(
                %segment,
                copy = %copy.display(),
                "cannot keep the lost segment's WAL up to the damage in its copy: {e}; the next \
                 session tries again"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_found_by_segment_range_and_timeline() {
        let size = SegmentSize::new(1 << 24).unwrap();
        let name = |tl, n| SegmentName::new(TimelineId(tl), SegNo(n), size);
        let copies = DamagedCopies::default();
        copies.keep(name(1, 5), "a".into());
        copies.keep(name(1, 5), "a.tail".into());
        copies.keep(name(1, 9), "b".into());
        copies.keep(name(2, 6), "c".into());
        let within = |tl, a, b| {
            copies
                .within(TimelineId(tl), SegNo(a), SegNo(b), size)
                .into_iter()
                .map(|(_, p)| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(within(1, 5, 5), ["a", "a.tail"]);
        assert_eq!(within(1, 4, 9), ["a", "a.tail", "b"]);
        assert_eq!(within(1, 6, 8), Vec::<String>::new());
        assert_eq!(within(2, 0, 100), ["c"]);
    }

    #[test]
    fn a_prefix_is_begun_once_a_process_and_again_after_a_failure() {
        let size = SegmentSize::new(1 << 24).unwrap();
        let segment = SegmentName::new(TimelineId(1), SegNo(5), size);
        let copies = DamagedCopies::default();
        assert!(!copies.prefix_begun(segment));
        assert!(copies.begin_prefix(segment));
        assert!(copies.prefix_begun(segment));
        assert!(!copies.begin_prefix(segment), "begun already");
        copies.prefix_failed(segment);
        assert!(!copies.prefix_begun(segment), "a later session tries again");
        assert!(copies.begin_prefix(segment));
    }
}
