//! What is kept of each timeline's WAL, and which objects therefore go.

use std::collections::{BTreeMap, BTreeSet};

use super::{Inventory, Kept, StoredObject};
use crate::archive::ObjectName;
use crate::backup::meta::BackupMeta;
use crate::restore::plan::{Leg, missing_before_consistency, needed_segments, on_path, path};
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId, WalFileName};

/// The archive's timelines: the path to each (`None` when its history is unknown) and the
/// complete segments each holds.
pub(super) struct Timelines {
    size: SegmentSize,
    paths: BTreeMap<TimelineId, Option<Vec<Leg>>>,
    /// Per timeline, its complete segments and when each was stored, if known.
    full: BTreeMap<TimelineId, BTreeMap<SegNo, Option<jiff::Timestamp>>>,
    /// Per timeline, its complete segments (`full`'s keys).
    held: BTreeMap<TimelineId, BTreeSet<SegNo>>,
    /// The timeline `restore` follows by default: the newest of the history files' and the
    /// complete segments'.
    latest: TimelineId,
}

impl Timelines {
    pub(super) fn new(inventory: &Inventory, size: SegmentSize) -> Timelines {
        let mut full: BTreeMap<TimelineId, BTreeMap<SegNo, _>> = BTreeMap::new();
        let mut known = BTreeSet::from([TimelineId(1)]);
        for object in &inventory.objects {
            let Some(segment) = object.name.segment() else {
                continue;
            };
            known.insert(segment.timeline);
            if let (ObjectName::File(WalFileName::Segment(_)), Some(n)) =
                (object.name, segment.segno(size))
            {
                full.entry(segment.timeline)
                    .or_default()
                    .insert(n, object.modified);
            }
        }
        for (timeline, history) in &inventory.timelines {
            known.insert(*timeline);
            known.extend(history.iter().map(|entry| entry.timeline));
        }
        let backup_timelines = inventory
            .backups
            .iter()
            .flat_map(|b| [b.start_timeline, b.stop_timeline]);
        known.extend(backup_timelines.filter(|&t| t > 0).map(TimelineId));
        let paths = known
            .into_iter()
            .map(|timeline| {
                let path = match inventory.timelines.get(&timeline) {
                    Some(history) => Some(path(timeline, history)),
                    None if timeline.0 == 1 => Some(path(timeline, &[])),
                    None => None,
                };
                (timeline, path)
            })
            .collect();
        let latest = (inventory.timelines.keys().chain(full.keys()).max())
            .copied()
            .unwrap_or(TimelineId(1));
        let held = (full.iter())
            .map(|(&timeline, segments)| (timeline, segments.keys().copied().collect()))
            .collect();
        Timelines {
            size,
            paths,
            full,
            held,
            latest,
        }
    }

    /// The timeline `restore` follows by default.
    pub(super) fn latest(&self) -> TimelineId {
        self.latest
    }

    /// The segment of `timeline` holding `lsn`.
    pub(super) fn segment_of(&self, timeline: TimelineId, lsn: Lsn) -> SegmentName {
        SegmentName::new(timeline, SegNo::containing(lsn, self.size), self.size)
    }

    /// The index of the backup of `backups` (complete, oldest first) that `restore` chooses
    /// for the latest timeline by default: of those on its path, the one consistent last
    /// along it ([`crate::restore::plan::usable`]'s order, ties to the later one).
    pub(super) fn newest_reaching_latest<'a>(
        &self,
        backups: impl Iterator<Item = &'a BackupMeta>,
    ) -> Option<usize> {
        let path = self.paths.get(&self.latest)?.as_ref()?;
        backups
            .enumerate()
            .filter_map(|(index, b)| on_path(b, path).map(|(_, last, stop)| (index, (last, stop))))
            .max_by_key(|(_, along)| *along)
            .map(|(index, _)| index)
    }

    /// The first segment `backup` needs to become consistent that the archive lacks along
    /// every known path it is on (the first path's, by timeline), or `None` when one path has
    /// them all: a backup missing one on every path cannot be restored at all. A backup that
    /// stopped in the segment where a promotion began needs that segment from the new timeline
    /// when the old one kept only a `.partial`. `None` too when no path to it is known (a
    /// history file is missing): nothing is known to be missing.
    pub(super) fn missing_before_consistency(&self, backup: &BackupMeta) -> Option<SegmentName> {
        let mut first = None;
        for path in self.paths.values().flatten() {
            if on_path(backup, path).is_none() {
                continue;
            }
            match missing_before_consistency(backup, path, &self.held, self.size) {
                None => return None,
                Some(missing) => first = first.or(Some(missing)),
            }
        }
        first
    }

    /// Every timeline kept whole, for `reason`.
    pub(super) fn keep_all(&self, reason: &'static str) -> BTreeMap<TimelineId, Kept> {
        self.paths
            .keys()
            .map(|&timeline| (timeline, Kept::All(reason)))
            .collect()
    }

    /// What `retained` need: on each timeline, from the first segment any of them reads there
    /// along any path it can follow.
    pub(super) fn needed_by(
        &self,
        retained: &[&BackupMeta],
        notes: &mut Vec<String>,
    ) -> Result<BTreeMap<TimelineId, Kept>, String> {
        let newest: BTreeMap<TimelineId, SegNo> = self
            .full
            .iter()
            .filter_map(|(timeline, held)| Some((*timeline, *held.keys().next_back()?)))
            .collect();
        let mut first: BTreeMap<TimelineId, SegNo> = BTreeMap::new();
        for backup in retained {
            let mut follows_one = false;
            for path in self.paths.values().flatten() {
                if on_path(backup, path).is_none() {
                    continue;
                }
                follows_one = true;
                let ranges = needed_segments(backup, path, None, &newest, self.size)
                    .map_err(|e| format!("backup {}: {e}", backup.id))?;
                for (timeline, from, _) in ranges {
                    first
                        .entry(timeline)
                        .and_modify(|n| *n = (*n).min(from))
                        .or_insert(from);
                }
            }
            if !follows_one {
                return Err(format!(
                    "backup {} (timeline {} to {}) lies on no timeline path the archive's history files describe (is one missing?); nothing can be pruned safely",
                    backup.id, backup.start_timeline, backup.stop_timeline
                ));
            }
        }
        let mut kept = BTreeMap::new();
        for (&timeline, path) in &self.paths {
            let keep = if path.is_none() {
                Kept::All("no history file: where it forked is unknown")
            } else if let Some(&n) = first.get(&timeline) {
                Kept::From(SegmentName::new(timeline, n, self.size))
            } else if timeline == self.latest {
                notes.push(format!(
                    "no retained backup can restore timeline {timeline}, the newest; its WAL is kept whole"
                ));
                Kept::All("the newest timeline")
            } else {
                Kept::Nothing
            };
            kept.insert(timeline, keep);
        }
        Ok(kept)
    }

    /// Per timeline, from the oldest complete segment stored at or after `since` (or at an
    /// unknown time), and at least the newest complete segment.
    pub(super) fn modified_since(&self, since: jiff::Timestamp) -> BTreeMap<TimelineId, Kept> {
        self.paths
            .keys()
            .map(|&timeline| {
                let held = self.full.get(&timeline);
                let recent = held.and_then(|held| {
                    held.iter()
                        .find(|(_, modified)| modified.is_none_or(|m| m >= since))
                        .or_else(|| held.iter().next_back())
                });
                let keep = match recent {
                    Some((&n, _)) => Kept::From(SegmentName::new(timeline, n, self.size)),
                    None => Kept::All("it holds no complete segment"),
                };
                (timeline, keep)
            })
            .collect()
    }

    /// On every timeline, from the segment holding `lsn`, and at least the newest complete
    /// segment: a position past the end of the archive (mistyped, or another cluster's) never
    /// empties a timeline. Says in `notes` where it keeps more than asked.
    pub(super) fn before(&self, lsn: Lsn, notes: &mut Vec<String>) -> BTreeMap<TimelineId, Kept> {
        let wanted = SegNo::containing(lsn, self.size);
        self.paths
            .keys()
            .map(|&timeline| {
                let newest = self.full.get(&timeline).and_then(|held| held.keys().next_back());
                let keep = match newest {
                    None => Kept::All("it holds no complete segment"),
                    Some(&newest) if newest < wanted => {
                        let newest = SegmentName::new(timeline, newest, self.size);
                        notes.push(format!(
                            "{lsn} lies past timeline {timeline}'s newest segment, {newest}, which is kept"
                        ));
                        Kept::From(newest)
                    }
                    Some(_) => Kept::From(SegmentName::new(timeline, wanted, self.size)),
                };
                (timeline, keep)
            })
            .collect()
    }
}

/// The objects `kept` does not keep, and receiver snapshots of segments held in full.
pub(super) fn doomed_objects(
    objects: &[StoredObject],
    kept: &BTreeMap<TimelineId, Kept>,
    size: SegmentSize,
) -> Vec<(ObjectName, u64)> {
    let full: BTreeSet<SegmentName> = objects
        .iter()
        .filter_map(|o| match o.name {
            ObjectName::File(WalFileName::Segment(segment)) => Some(segment),
            _ => None,
        })
        .collect();
    objects
        .iter()
        .filter(|object| {
            // History files have no segment, and are never deleted.
            let Some(segment) = object.name.segment() else {
                return false;
            };
            let Some(n) = segment.segno(size) else {
                return false;
            };
            let before = match kept.get(&segment.timeline) {
                Some(Kept::From(first)) => first.segno(size).is_some_and(|first| n < first),
                Some(Kept::Nothing) => true,
                Some(Kept::All(_)) | None => false,
            };
            let superseded =
                matches!(object.name, ObjectName::Snapshot { .. }) && full.contains(&segment);
            before || superseded
        })
        .map(|object| (object.name, object.bytes))
        .collect()
}
