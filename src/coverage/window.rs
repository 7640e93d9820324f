//! The restorable window, pure: along a timeline path, the positions a restore can reach,
//! from the oldest complete backup's consistency point to the end of the WAL that follows it
//! without a hole, and where holes break it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::backup::meta::BackupMeta;
use crate::restore::plan::{self, Leg};
use crate::wal::{HistoryEntry, Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// The window along the path to one timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The timeline the path leads to.
    pub timeline: u32,
    /// The timelines on the path, oldest first.
    pub path: Vec<u32>,
    /// The stretches a restore can reach, oldest first; none when no backup can be restored
    /// along this path.
    pub spans: Vec<Span>,
    /// Complete backups on the path that cannot be restored, with why.
    pub unrestorable: Vec<Unrestorable>,
}

/// A stretch of the window: restores can reach from `from_lsn` to `to_lsn`, where its WAL
/// ends (PostgreSQL stops at the first record starting at or past a target position, so
/// one past the start of the last record is not reached).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    /// The oldest backup's consistency point (its stop).
    pub from_lsn: String,
    /// When that backup stopped.
    pub from_time: String,
    /// That backup.
    pub from_backup: String,
    /// The end of the WAL that follows without a hole.
    pub to_lsn: String,
    /// The newest commit (or abort) before `to_lsn`, when the time index tells it: the
    /// latest time a restore along this path can reach.
    pub to_time: Option<String>,
    /// What ends the span: the first missing segment, or `None` at the end of the archive.
    pub broken_by: Option<String>,
}

/// A complete backup on the path whose WAL is not all there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unrestorable {
    /// The backup.
    pub backup: String,
    /// The first segment missing between its start and its stop.
    pub missing: String,
}

/// The window along the path to each of `timelines`: `histories` gives the paths, `held`
/// what the archive holds, `backups` where restores can start.
pub fn windows(
    timelines: impl IntoIterator<Item = TimelineId>,
    backups: &[BackupMeta],
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    held: &BTreeMap<TimelineId, BTreeSet<SegNo>>,
    size: SegmentSize,
) -> Vec<Window> {
    timelines
        .into_iter()
        .filter(|t| t.0 == 1 || histories.contains_key(t))
        .map(|timeline| {
            let history = histories.get(&timeline).map_or(&[][..], Vec::as_slice);
            along(&plan::path(timeline, history), backups, held, size)
        })
        .collect()
}

/// The window along `path`.
fn along(
    path: &[Leg],
    backups: &[BackupMeta],
    held: &BTreeMap<TimelineId, BTreeSet<SegNo>>,
    size: SegmentSize,
) -> Window {
    let newest: BTreeMap<TimelineId, SegNo> = held
        .iter()
        .filter_map(|(t, segments)| Some((*t, *segments.last()?)))
        .collect();
    let mut spans: Vec<Span> = Vec::new();
    let mut unrestorable = Vec::new();
    // A backup missing one of its own objects starts no span; the backup says why.
    let mut complete: Vec<&BackupMeta> = backups.iter().filter(|b| b.is_restorable()).collect();
    complete.sort_by_key(|b| b.stop().unwrap_or(Lsn(u64::MAX)));
    let mut reached = Lsn(0);
    for backup in complete {
        let (Ok(stop), Ok(ranges)) = (
            backup.stop(),
            plan::needed_segments(backup, path, None, &newest, size),
        ) else {
            continue; // not on this path
        };
        if let Some(missing) = plan::missing_before_consistency(backup, path, held, size) {
            unrestorable.push(Unrestorable {
                backup: backup.id.clone(),
                missing: missing.to_string(),
            });
            continue;
        }
        let missing = plan::first_missing(&ranges, held, size);
        let end = match missing.and_then(|m| m.start_lsn(size)) {
            Some(at) => at,
            None => ranges
                .last()
                .map_or(stop, |&(_, _, to)| to.start_lsn(size).max(stop)),
        };
        // A newer backup whose stretch the older one already covers adds nothing.
        if end <= reached {
            continue;
        }
        reached = end;
        spans.push(Span {
            from_lsn: stop.to_string(),
            from_time: backup.stop_time.clone(),
            from_backup: backup.id.clone(),
            to_lsn: end.to_string(),
            to_time: None,
            broken_by: missing.map(|m: SegmentName| m.to_string()),
        });
    }
    Window {
        timeline: path.last().map_or(1, |l| l.timeline.0),
        path: path.iter().map(|l| l.timeline.0).collect(),
        spans,
        unrestorable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::meta::testing;

    const MIB: u32 = 1 << 20;

    fn backup(id: &str, timeline: u32, start: &str, stop: &str) -> BackupMeta {
        testing::backup(id, timeline, start, stop, &format!("{id}-stop"))
    }

    fn held(spec: &[(u32, std::ops::Range<u64>)]) -> BTreeMap<TimelineId, BTreeSet<SegNo>> {
        let mut held: BTreeMap<TimelineId, BTreeSet<SegNo>> = BTreeMap::new();
        for (t, range) in spec {
            held.entry(TimelineId(*t))
                .or_default()
                .extend(range.clone().map(SegNo));
        }
        held
    }

    #[test]
    fn a_backup_missing_one_of_its_own_objects_starts_no_span() {
        let size = SegmentSize::new(MIB).unwrap();
        let mut b2 = backup("b2", 1, "0/600028", "0/600100");
        b2.missing_objects = vec!["7/backups/b2/backup_manifest.zst".into()];
        let backups = [backup("b1", 1, "0/200028", "0/200100"), b2];
        let held = held(&[(1, 2..10)]);
        let window = &windows([TimelineId(1)], &backups, &BTreeMap::new(), &held, size)[0];
        assert_eq!(window.spans.len(), 1, "{window:?}");
        assert_eq!(window.spans[0].from_backup, "b1");
        // Its WAL is all there: the backup itself says why it cannot be restored.
        assert!(window.unrestorable.is_empty(), "{window:?}");
    }

    #[test]
    fn a_hole_splits_the_window_and_an_older_backup_behind_it_is_cut_short() {
        let size = SegmentSize::new(MIB).unwrap();
        let backups = [
            backup("b1", 1, "0/200028", "0/200100"),
            backup("b2", 1, "0/600028", "0/600100"),
        ];
        // Segments 2..=9 except 5.
        let held = held(&[(1, 2..5), (1, 6..10)]);
        let window = &windows([TimelineId(1)], &backups, &BTreeMap::new(), &held, size)[0];
        assert_eq!(window.path, [1]);
        assert_eq!(window.spans.len(), 2, "{window:?}");
        assert_eq!(window.spans[0].from_backup, "b1");
        assert_eq!(window.spans[0].to_lsn, "0/500000");
        assert_eq!(
            window.spans[0].broken_by.as_deref(),
            Some("000000010000000000000005")
        );
        assert_eq!(window.spans[1].from_lsn, "0/600100");
        assert_eq!(window.spans[1].to_lsn, "0/A00000");
        assert_eq!(window.spans[1].broken_by, None);
        assert!(window.unrestorable.is_empty());
    }

    #[test]
    fn a_backup_missing_its_own_wal_is_unrestorable_and_the_path_follows_the_fork() {
        let size = SegmentSize::new(MIB).unwrap();
        let backups = [
            backup("b1", 1, "0/200028", "0/300100"),
            backup("b2", 1, "0/400028", "0/400100"),
        ];
        // Segment 3 (b1's stop) is missing; timeline 2 branches in segment 6.
        let held = held(&[(1, 2..3), (1, 4..6), (2, 6..9)]);
        let histories = BTreeMap::from([(
            TimelineId(2),
            vec![HistoryEntry {
                timeline: TimelineId(1),
                switch_point: Lsn(0x60_0100),
            }],
        )]);
        let all = windows(
            [TimelineId(1), TimelineId(2)],
            &backups,
            &histories,
            &held,
            size,
        );
        let two = &all[1];
        assert_eq!(two.path, [1, 2]);
        assert_eq!(two.unrestorable[0].backup, "b1");
        assert_eq!(two.unrestorable[0].missing, "000000010000000000000003");
        assert_eq!(two.spans.len(), 1);
        assert_eq!(two.spans[0].from_backup, "b2");
        assert_eq!(two.spans[0].to_lsn, "0/900000");
        // Timeline 1 alone ends where its own WAL ends.
        assert_eq!(all[0].spans[0].to_lsn, "0/600000");
    }
}
