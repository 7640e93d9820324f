//! What an archive covers, pure: each timeline's WAL as contiguous runs of segments with the
//! gaps between them ([`timelines`]), and the restorable window along each timeline path
//! ([`window`]).

pub mod window;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::archive::{ObjectInfo, ObjectName, WalInventory};
use crate::timeindex::RestorePointMark;
use crate::wal::{HistoryEntry, Lsn, SegNo, SegmentName, SegmentSize, TimelineId, WalFileName};

/// A run of consecutive segments of one timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentRun {
    /// The first segment.
    pub first: String,
    /// The last segment.
    pub last: String,
    /// How many segments.
    pub segments: u64,
}

/// One timeline's WAL in the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineWal {
    /// The timeline.
    pub timeline: u32,
    /// The timeline it branched from and where (`X/Y`), from its history file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<(u32, String)>,
    /// Whether the archive holds its history file (every timeline after the first needs one).
    pub history_file: bool,
    /// The complete segments held, as runs.
    pub ranges: Vec<SegmentRun>,
    /// The segments missing between the timeline's first (where it branched, when the archive
    /// follows it there, or its oldest receiver snapshot, else its oldest complete segment)
    /// and its newest complete segment or receiver snapshot (a snapshot is of the segment
    /// being received, so every segment before it should be complete).
    pub gaps: Vec<SegmentRun>,
    /// The gaps whose first segment a receiver snapshot holds the start of (a lost segment's
    /// WAL up to its damage, or a stream's end): a last-resort recovery may replay up to
    /// there.
    pub gap_snapshots: Vec<GapSnapshot>,
    /// `.partial` segments archived at promotions.
    pub partial_files: Vec<String>,
    /// `.backup` history files.
    pub backup_files: u64,
    /// Receiver snapshots of segments being received.
    pub snapshots: u64,
    /// Bytes stored for this timeline's objects.
    pub stored_bytes: u64,
    /// How many of its segments have a time index (`list` reads them; 0 elsewhere).
    pub indexed_segments: u64,
    /// The restore points its time indexes record, in WAL order.
    pub restore_points: Vec<RestorePointMark>,
}

/// A receiver snapshot of a gap's first segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GapSnapshot {
    /// The segment, the gap's first.
    pub segment: String,
    /// Where the newest snapshot of it ends (`X/Y`).
    pub end: String,
}

/// The snapshot of `segment`, the first of a gap, if the archive holds one.
pub fn gap_snapshot<'a>(timelines: &'a [TimelineWal], segment: &str) -> Option<&'a GapSnapshot> {
    (timelines.iter())
        .flat_map(|t| &t.gap_snapshots)
        .find(|s| s.segment == segment)
}

/// The complete segments held per timeline.
pub fn held_segments(
    objects: &[(ObjectName, ObjectInfo)],
    size: SegmentSize,
) -> BTreeMap<TimelineId, BTreeSet<SegNo>> {
    let mut held: BTreeMap<TimelineId, BTreeSet<SegNo>> = BTreeMap::new();
    for (name, _) in objects {
        if let ObjectName::File(WalFileName::Segment(segment)) = name {
            if let Some(n) = segment.segno(size) {
                held.entry(segment.timeline).or_default().insert(n);
            }
        }
    }
    held
}

/// Each timeline's WAL: every timeline with objects or a history file, oldest first.
pub fn timelines(
    inventory: &WalInventory,
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    size: SegmentSize,
) -> Vec<TimelineWal> {
    let held = held_segments(&inventory.objects, size);
    let with_history: BTreeSet<TimelineId> = inventory.histories.iter().map(|(t, _)| *t).collect();
    let mut all: BTreeSet<TimelineId> = with_history.clone();
    all.extend(
        inventory
            .objects
            .iter()
            .filter_map(|(n, _)| n.segment())
            .map(|s| s.timeline),
    );
    all.into_iter()
        .map(|timeline| {
            let parent = histories
                .get(&timeline)
                .and_then(|h| h.last())
                .map(|e| (e.timeline, e.switch_point));
            let empty = BTreeSet::new();
            let segments = held.get(&timeline).unwrap_or(&empty);
            // From its switch point when the archive follows it there from an ancestor (its
            // parent may have no segment of its own); an archive that began on this timeline
            // begins at its first segment.
            let followed = histories
                .get(&timeline)
                .is_some_and(|h| h.iter().any(|e| held.contains_key(&e.timeline)));
            let begins = parent
                .filter(|_| followed)
                .map(|(_, at)| SegNo::containing(at, size));
            // A receiver's snapshot older than every complete segment: the archive began with
            // it, and its segment never arrived whole, so from there on it is a hole. One newer
            // than every complete segment is of the segment being received: what lies between
            // is a hole too.
            // The newest end of each segment's snapshots.
            let mut snapshots: BTreeMap<SegNo, Lsn> = BTreeMap::new();
            for (name, _) in &inventory.objects {
                if let ObjectName::Snapshot { segment, end } = name
                    && segment.timeline == timeline
                    && let Some(n) = segment.segno(size)
                {
                    let newest = snapshots.entry(n).or_insert(*end);
                    *newest = (*newest).max(*end);
                }
            }
            let first_snapshot = snapshots.first_key_value().map(|(n, _)| *n);
            let begins = match (begins, first_snapshot) {
                (Some(b), Some(s)) => Some(b.min(s)),
                (b, s) => b.or(s),
            };
            let newest_snapshot = snapshots.last_key_value().map(|(n, _)| *n);
            let gaps = missing_runs(segments, begins, newest_snapshot, timeline, size);
            let gap_snapshots = (snapshots.iter())
                .map(|(n, end)| GapSnapshot {
                    segment: SegmentName::new(timeline, *n, size).to_string(),
                    end: end.to_string(),
                })
                .filter(|s| gaps.iter().any(|g| g.first == s.segment))
                .collect();
            let mut wal = TimelineWal {
                timeline: timeline.0,
                parent: parent.map(|(t, at)| (t.0, at.to_string())),
                history_file: with_history.contains(&timeline),
                ranges: runs(segments.iter().copied(), timeline, size),
                gaps,
                gap_snapshots,
                partial_files: Vec::new(),
                backup_files: 0,
                snapshots: 0,
                stored_bytes: 0,
                indexed_segments: 0,
                restore_points: Vec::new(),
            };
            for (name, info) in &inventory.objects {
                if name.segment().is_none_or(|s| s.timeline != timeline) {
                    continue;
                }
                wal.stored_bytes += info.size;
                match name {
                    ObjectName::File(WalFileName::Partial(s)) => {
                        wal.partial_files.push(format!("{s}.partial"))
                    }
                    ObjectName::File(WalFileName::Backup { .. }) => wal.backup_files += 1,
                    ObjectName::Snapshot { .. } => wal.snapshots += 1,
                    _ => {}
                }
            }
            wal
        })
        .collect()
}

/// The holes that matter, each once: with complete backups, the runs of missing segments
/// that break a restorable window or leave a backup unrestorable, each with the backup it
/// leaves unrestorable if so; without, every gap in a timeline's WAL.
pub fn breaking_gaps(
    timelines: &[TimelineWal],
    windows: &[window::Window],
    has_backups: bool,
) -> Vec<(SegmentRun, Option<String>)> {
    let gaps = || timelines.iter().flat_map(|t| &t.gaps);
    if !has_backups {
        return gaps().map(|g| (g.clone(), None)).collect();
    }
    let run_at = |segment: &str| {
        gaps()
            .find(|g| g.first == segment)
            .cloned()
            .unwrap_or(SegmentRun {
                first: segment.to_string(),
                last: segment.to_string(),
                segments: 1,
            })
    };
    let mut found: Vec<(SegmentRun, Option<String>)> = Vec::new();
    for w in windows {
        let broken = w.spans.iter().filter_map(|s| s.broken_by.as_deref());
        for segment in broken {
            if !found.iter().any(|(g, b)| g.first == segment && b.is_none()) {
                found.push((run_at(segment), None));
            }
        }
        for u in &w.unrestorable {
            if !found
                .iter()
                .any(|(g, b)| g.first == u.missing && b.as_ref() == Some(&u.backup))
            {
                found.push((run_at(&u.missing), Some(u.backup.clone())));
            }
        }
    }
    found
}

/// What the archive holds of a timeline past the last point where a newer timeline branched
/// off it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastFork {
    /// The timeline.
    pub timeline: TimelineId,
    /// The timeline that branched off it last.
    pub child: TimelineId,
    /// Where that child begins.
    pub at: Lsn,
    /// The complete segment the child begins in, when held and the fork lies inside it: it
    /// may hold WAL past the fork or not (a standby's copy is cut there), which only reading
    /// it tells.
    pub fork_segment: Option<SegmentName>,
    /// The complete segments wholly past the fork.
    pub runs: Vec<SegmentRun>,
    /// The end of the newest receiver snapshot past the fork.
    pub snapshot_end: Option<Lsn>,
}

/// For each timeline that newer ones branched off, what the archive holds of it past the last
/// such point (every history file names each ancestor with its switch point): WAL no other
/// timeline replays (a point-in-time restore's abandoned future, WAL a failover lost, or a
/// split brain's). Timelines past whose last fork nothing may lie are left out.
pub fn past_forks(
    inventory: &WalInventory,
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    size: SegmentSize,
) -> Vec<PastFork> {
    let held = held_segments(&inventory.objects, size);
    let mut last: BTreeMap<TimelineId, (Lsn, TimelineId)> = BTreeMap::new();
    for (timeline, entries) in histories {
        for (i, entry) in entries.iter().enumerate() {
            let child = entries.get(i + 1).map_or(*timeline, |next| next.timeline);
            let fork = last
                .entry(entry.timeline)
                .or_insert((entry.switch_point, child));
            if entry.switch_point > fork.0 {
                *fork = (entry.switch_point, child);
            }
        }
    }
    let empty = BTreeSet::new();
    last.into_iter()
        .filter_map(|(timeline, (at, child))| {
            let segments = held.get(&timeline).unwrap_or(&empty);
            let first_past = SegNo(at.0.div_ceil(u64::from(size.bytes())));
            let forked_in = SegNo::containing(at, size);
            let fork_segment = (forked_in != first_past && segments.contains(&forked_in))
                .then(|| SegmentName::new(timeline, forked_in, size));
            let snapshot_end = (inventory.objects.iter())
                .filter_map(|(name, _)| match name {
                    ObjectName::Snapshot { segment, end } if segment.timeline == timeline => {
                        Some(*end)
                    }
                    _ => None,
                })
                .filter(|end| *end > at)
                .max();
            let runs = runs(segments.range(first_past..).copied(), timeline, size);
            (fork_segment.is_some() || !runs.is_empty() || snapshot_end.is_some()).then_some(
                PastFork {
                    timeline,
                    child,
                    at,
                    fork_segment,
                    runs,
                    snapshot_end,
                },
            )
        })
        .collect()
}

/// Consecutive numbers of `segments` (ascending) as runs.
fn runs(
    segments: impl IntoIterator<Item = SegNo>,
    timeline: TimelineId,
    size: SegmentSize,
) -> Vec<SegmentRun> {
    let mut spans: Vec<(SegNo, SegNo)> = Vec::new();
    for n in segments {
        match spans.last_mut() {
            Some((_, last)) if last.0 + 1 == n.0 => *last = n,
            _ => spans.push((n, n)),
        }
    }
    spans
        .into_iter()
        .map(|(first, last)| SegmentRun {
            first: SegmentName::new(timeline, first, size).to_string(),
            last: SegmentName::new(timeline, last, size).to_string(),
            segments: last.0 - first.0 + 1,
        })
        .collect()
}

/// The runs of segments missing from `held` between `begins` (or the oldest held) and the
/// newest held.
fn missing_runs(
    held: &BTreeSet<SegNo>,
    begins: Option<SegNo>,
    snapshot: Option<SegNo>,
    timeline: TimelineId,
    size: SegmentSize,
) -> Vec<SegmentRun> {
    // A timeline whose archive holds only snapshots has gaps too, from where it begins.
    let (Some(from), Some(until)) = (
        [begins, held.first().copied()].into_iter().flatten().min(),
        [snapshot, held.last().copied()].into_iter().flatten().max(),
    ) else {
        return Vec::new();
    };
    runs(
        (from.0..until.0).map(SegNo).filter(|n| !held.contains(n)),
        timeline,
        size,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 16 << 20;

    fn inventory(names: &[&str]) -> WalInventory {
        WalInventory {
            objects: names
                .iter()
                .map(|n| {
                    let name = ObjectName::parse(&format!("{n}.zst")).expect("an object name");
                    (
                        name,
                        ObjectInfo {
                            size: 10,
                            modified: None,
                        },
                    )
                })
                .collect(),
            histories: Vec::new(),
        }
    }

    #[test]
    fn a_parents_segments_past_a_fork_are_found_and_the_one_it_begins_in_is_not() {
        let size = SegmentSize::new(SIZE).unwrap();
        let inv = inventory(&[
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000010000000000000008",
            "000000020000000000000005",
            "000000020000000000000006",
            "000000030000000000000003",
            "000000010000000000000009.partial.0000000009000100",
            "000000020000000000000005.partial.0000000005000000",
        ]);
        let fork = |timeline, at| HistoryEntry {
            timeline: TimelineId(timeline),
            switch_point: Lsn(at),
        };
        // Timeline 2 begins inside segment 5, timeline 3 (from 2) at segment 6's first byte,
        // timeline 4 (from 3) past everything timeline 3 holds.
        let histories = BTreeMap::from([
            (TimelineId(2), vec![fork(1, 0x0500_0100)]),
            (
                TimelineId(3),
                vec![fork(1, 0x0500_0100), fork(2, 0x0600_0000)],
            ),
            (
                TimelineId(4),
                vec![
                    fork(1, 0x0500_0100),
                    fork(2, 0x0600_0000),
                    fork(3, 0x0400_0000),
                ],
            ),
        ]);
        let past = past_forks(&inv, &histories, size);
        assert_eq!(past.len(), 2, "{past:?}");
        assert_eq!(
            (past[0].timeline, past[0].child),
            (TimelineId(1), TimelineId(2))
        );
        assert_eq!(past[0].at, Lsn(0x0500_0100));
        // Segment 5 holds timeline 1's WAL up to the fork, and may hold more.
        assert_eq!(
            past[0].fork_segment,
            Some(SegmentName::new(TimelineId(1), SegNo(5), size))
        );
        assert_eq!(
            past[0].runs,
            [
                runs([SegNo(6)], TimelineId(1), size),
                runs([SegNo(8)], TimelineId(1), size)
            ]
            .concat()
        );
        assert_eq!(past[0].snapshot_end, Some(Lsn(0x0900_0100)));
        // Segment 6 of timeline 2 begins exactly where timeline 3 does: all of it is past.
        assert_eq!(
            (past[1].timeline, past[1].child),
            (TimelineId(2), TimelineId(3))
        );
        assert_eq!(past[1].runs, runs([SegNo(6)], TimelineId(2), size));
        assert_eq!((past[1].fork_segment, past[1].snapshot_end), (None, None));

        // A later branch off timeline 1 (a point-in-time restore from it): only what lies past
        // that one is on no other timeline, and timeline 1 is noted once.
        let mut histories = histories;
        histories.insert(TimelineId(5), vec![fork(1, 0x0700_0000)]);
        let past = past_forks(&inv, &histories, size);
        assert_eq!(past.len(), 2, "{past:?}");
        assert_eq!(
            (past[0].child, past[0].at),
            (TimelineId(5), Lsn(0x0700_0000))
        );
        assert_eq!(past[0].fork_segment, None);
        assert_eq!(past[0].runs, runs([SegNo(8)], TimelineId(1), size));
        assert_eq!(past[0].snapshot_end, Some(Lsn(0x0900_0100)));
    }

    /// Timeline 2's history file in `inv`, and its history: branched from timeline 1 at
    /// 0/5000100, in segment 5.
    fn timeline_2_from_0_5000100(
        inv: &mut WalInventory,
    ) -> BTreeMap<TimelineId, Vec<HistoryEntry>> {
        inv.histories.push((TimelineId(2), ObjectInfo::default()));
        BTreeMap::from([(
            TimelineId(2),
            vec![HistoryEntry {
                timeline: TimelineId(1),
                switch_point: Lsn(0x0500_0100),
            }],
        )])
    }

    #[test]
    fn runs_and_gaps_per_timeline() {
        let size = SegmentSize::new(SIZE).unwrap();
        let mut inv = inventory(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000004",
            "000000010000000000000004.00000028.backup",
            "000000010000000000000005.partial",
            "000000020000000000000007",
            "000000020000000000000008.partial.0000000008000100",
        ]);
        let histories = timeline_2_from_0_5000100(&mut inv);
        let wal = timelines(&inv, &histories, size);
        assert_eq!(wal.len(), 2);
        let one = &wal[0];
        assert_eq!(one.ranges.len(), 2);
        assert_eq!(one.ranges[0].segments, 2);
        assert_eq!(one.gaps, runs([SegNo(3)], TimelineId(1), size));
        assert_eq!(one.partial_files, ["000000010000000000000005.partial"]);
        assert_eq!((one.backup_files, one.history_file), (1, false));
        let two = &wal[1];
        assert_eq!(two.parent, Some((1, "0/5000100".to_string())));
        // Timeline 2 begins in segment 5: 5 and 6 are missing.
        assert_eq!(two.gaps, runs([SegNo(5), SegNo(6)], TimelineId(2), size));
        assert_eq!(
            (two.snapshots, two.history_file, two.stored_bytes),
            (1, true, 20)
        );
    }

    #[test]
    fn a_timeline_holding_only_snapshots_has_a_gap_from_where_it_begins() {
        // Timeline 2 branched in segment 5; the archive holds only a snapshot of segment 8.
        let size = SegmentSize::new(SIZE).unwrap();
        let mut inv = inventory(&[
            "000000010000000000000004",
            "000000020000000000000008.partial.0000000008000100",
        ]);
        let histories = timeline_2_from_0_5000100(&mut inv);
        let wal = timelines(&inv, &histories, size);
        assert_eq!(wal[1].gaps, runs((5..8).map(SegNo), TimelineId(2), size));
        // One snapshot alone, where nothing says where its timeline begins: no gap.
        let inv = inventory(&["000000010000000000000008.partial.0000000008000100"]);
        assert!(timelines(&inv, &BTreeMap::new(), size)[0].gaps.is_empty());
    }

    #[test]
    fn a_snapshot_older_than_every_complete_segment_begins_a_gap() {
        // A receiver archived a snapshot of 0x14, then its slot was invalidated and it went on
        // at 0x24: 0x14 never arrived whole, nor anything up to 0x23.
        let size = SegmentSize::new(SIZE).unwrap();
        let inv = inventory(&[
            "000000010000000000000014.partial.000000001447EA40",
            "000000010000000000000024",
            "000000010000000000000025",
        ]);
        let wal = &timelines(&inv, &BTreeMap::new(), size)[0];
        assert_eq!(
            wal.gaps,
            vec![SegmentRun {
                first: "000000010000000000000014".into(),
                last: "000000010000000000000023".into(),
                segments: 16,
            }]
        );
        // A snapshot of the segment being received, after the complete ones, is no gap.
        let inv = inventory(&[
            "000000010000000000000024",
            "000000010000000000000025.partial.0000000025000100",
        ]);
        assert_eq!(timelines(&inv, &BTreeMap::new(), size)[0].gaps, vec![]);
        // Segments lost before it are (helper-79: 0x0B to 0x12 reported lost by the receiver,
        // then only a snapshot of 0x13).
        let inv = inventory(&[
            "00000001000000000000000A",
            "000000010000000000000013.partial.0000000013000100",
        ]);
        assert_eq!(
            timelines(&inv, &BTreeMap::new(), size)[0].gaps,
            vec![SegmentRun {
                first: "00000001000000000000000B".into(),
                last: "000000010000000000000012".into(),
                segments: 8,
            }]
        );
    }

    #[test]
    fn a_gaps_first_segment_names_its_newest_snapshot() {
        // 5 lost, its WAL up to the damage kept in two snapshots; 8 being received.
        let size = SegmentSize::new(SIZE).unwrap();
        let inv = inventory(&[
            "000000010000000000000004",
            "000000010000000000000005.partial.0000000005002000",
            "000000010000000000000005.partial.0000000005001000",
            "000000010000000000000006",
            "000000010000000000000007",
            "000000010000000000000008.partial.0000000008000100",
        ]);
        let wal = timelines(&inv, &BTreeMap::new(), size);
        assert_eq!(wal[0].gaps, runs([SegNo(5)], TimelineId(1), size));
        let expected = GapSnapshot {
            segment: "000000010000000000000005".into(),
            end: "0/5002000".into(),
        };
        assert_eq!(wal[0].gap_snapshots, std::slice::from_ref(&expected));
        assert_eq!(gap_snapshot(&wal, &expected.segment), Some(&expected));
        assert_eq!(gap_snapshot(&wal, "000000010000000000000008"), None);
        // A gap that begins past a segment's snapshot names none.
        let inv = inventory(&[
            "000000010000000000000004",
            "000000010000000000000006.partial.0000000006001000",
            "000000010000000000000007",
        ]);
        let wal = timelines(&inv, &BTreeMap::new(), size);
        assert_eq!(wal[0].gaps, runs([SegNo(5), SegNo(6)], TimelineId(1), size));
        assert_eq!(wal[0].gap_snapshots, []);
    }

    #[test]
    fn an_archive_that_began_on_a_later_timeline_has_no_gap_before_its_first_segment() {
        // A receiver started on timeline 3, long after the switch from timeline 2 (in segment
        // 5), whose WAL the archive never had.
        let size = SegmentSize::new(SIZE).unwrap();
        let mut inv = inventory(&["000000030000000000000009", "00000003000000000000000A"]);
        inv.histories.push((TimelineId(3), ObjectInfo::default()));
        let histories = BTreeMap::from([(
            TimelineId(3),
            vec![
                HistoryEntry {
                    timeline: TimelineId(1),
                    switch_point: Lsn(0x0200_0000),
                },
                HistoryEntry {
                    timeline: TimelineId(2),
                    switch_point: Lsn(0x0500_0100),
                },
            ],
        )]);
        let wal = timelines(&inv, &histories, size);
        assert_eq!(wal.len(), 1);
        assert!(wal[0].gaps.is_empty(), "{:?}", wal[0].gaps);

        // With timeline 1's WAL here, the archive followed the switches (timeline 2 has no
        // segment of its own): 3's segments from the switch on are missing.
        let mut inv = inventory(&[
            "000000010000000000000001",
            "000000030000000000000009",
            "00000003000000000000000A",
        ]);
        inv.histories.push((TimelineId(3), ObjectInfo::default()));
        let wal = timelines(&inv, &histories, size);
        let three = wal.iter().find(|t| t.timeline == 3).unwrap();
        assert_eq!(
            three.gaps,
            runs((5..9).map(SegNo), TimelineId(3), size),
            "{three:?}"
        );
    }
}
