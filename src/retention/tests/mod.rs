//! The retention rule on hand-made archives (the acceptance scenarios), and on
//! thousands of generated ones ([`property`]).

mod property;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::backup::meta::testing;
use crate::restore::plan::{Target, needed_segments, path};
use crate::wal::{SegNo, WalFileName};

const MIB: u64 = 1 << 20;

fn size() -> SegmentSize {
    SegmentSize::new(1 << 20).unwrap()
}

/// A position: segment `seg`, `offset` bytes in.
fn at(seg: u64, offset: u64) -> Lsn {
    Lsn(seg * MIB + offset)
}

fn segment(timeline: u32, seg: u64) -> SegmentName {
    SegmentName::new(TimelineId(timeline), SegNo(seg), size())
}

fn time(text: &str) -> jiff::Timestamp {
    text.parse().unwrap()
}

/// A complete backup on `timeline` from `start` to `stop`, stopped at `stop_time`; its id is
/// its start time, one minute before.
fn backup(timeline: u32, start: Lsn, stop: Lsn, stop_time: &str) -> BackupMeta {
    let started = time(stop_time) - jiff::SignedDuration::from_secs(60);
    let id = started.strftime("%Y%m%dT%H%M%SZ").to_string();
    BackupMeta {
        start_time: started.to_string(),
        stored_bytes: 1000,
        ..testing::backup(
            &id,
            timeline,
            &start.to_string(),
            &stop.to_string(),
            stop_time,
        )
    }
}

fn object(name: ObjectName) -> StoredObject {
    StoredObject {
        name,
        bytes: 10,
        modified: None,
    }
}

fn file(name: WalFileName) -> StoredObject {
    object(ObjectName::File(name))
}

/// Full segments `from..=to` of `timeline`.
fn segments(timeline: u32, from: u64, to: u64) -> impl Iterator<Item = StoredObject> {
    (from..=to).map(move |n| file(WalFileName::Segment(segment(timeline, n))))
}

fn backup_file(b: &BackupMeta) -> StoredObject {
    let start = b.start().unwrap();
    file(WalFileName::Backup {
        segment: segment(b.start_timeline, start.0 / MIB),
        offset: (start.0 % MIB) as u32,
    })
}

fn history(entries: &[(u32, Lsn)]) -> Vec<HistoryEntry> {
    entries
        .iter()
        .map(|&(timeline, switch_point)| HistoryEntry {
            timeline: TimelineId(timeline),
            switch_point,
        })
        .collect()
}

fn policy(rule: Rule) -> Policy {
    Policy {
        rule,
        now: time("2026-03-10T12:00:00Z"),
        assume_interrupted: false,
    }
}

fn keep(n: usize) -> Policy {
    policy(Rule::Backups {
        keep: Some(n),
        within: None,
    })
}

fn inventory(backups: Vec<BackupMeta>, objects: Vec<StoredObject>) -> Inventory {
    Inventory {
        backups,
        interrupted: Vec::new(),
        unreadable: Vec::new(),
        timelines: BTreeMap::new(),
        objects,
        segment_size: size(),
    }
}

/// The inventory after `plan` ran.
fn pruned(inventory: &Inventory, plan: &Plan) -> Inventory {
    let gone: BTreeSet<ObjectName> = plan.delete_objects.iter().map(|(n, _)| *n).collect();
    let gone_backups: BTreeSet<&str> = plan.delete_backups.iter().map(|b| b.id.as_str()).collect();
    Inventory {
        backups: (inventory.backups.iter())
            .filter(|b| !gone_backups.contains(b.id.as_str()))
            .cloned()
            .collect(),
        interrupted: (inventory.interrupted.iter())
            .filter(|id| !gone_backups.contains(id.as_str()))
            .cloned()
            .collect(),
        unreadable: inventory.unreadable.clone(),
        timelines: inventory.timelines.clone(),
        objects: (inventory.objects.iter())
            .filter(|o| !gone.contains(&o.name))
            .cloned()
            .collect(),
        segment_size: inventory.segment_size,
    }
}

/// The full segments an inventory holds.
fn held(inventory: &Inventory) -> BTreeSet<SegmentName> {
    inventory
        .objects
        .iter()
        .filter_map(|o| match o.name {
            ObjectName::File(WalFileName::Segment(s)) => Some(s),
            _ => None,
        })
        .collect()
}

/// Whether every segment restoring `backup` along the path to `timeline` needs is held.
fn restorable(inventory: &Inventory, backup: &BackupMeta, timeline: u32) -> bool {
    let timeline = TimelineId(timeline);
    let empty = Vec::new();
    let path = path(
        timeline,
        inventory.timelines.get(&timeline).unwrap_or(&empty),
    );
    let held = held(inventory);
    let mut newest = BTreeMap::new();
    for s in &held {
        newest.insert(s.timeline, s.segno(size()).unwrap());
    }
    let ranges = needed_segments(backup, &path, None, &newest, size()).unwrap();
    ranges.iter().all(|&(tl, from, to)| {
        (from.0..to.0).all(|n| held.contains(&SegmentName::new(tl, SegNo(n), size())))
    })
}

/// That `plan` notes `backup` cannot be restored for want of `missing`.
fn assert_noted_unrestorable(plan: &Plan, backup: &BackupMeta, missing: &str) {
    let note = format!("backup {} cannot be restored: {missing}", backup.id);
    assert!(
        plan.notes.iter().any(|n| n.starts_with(&note)),
        "{:?}",
        plan.notes
    );
}

fn ids(plan: &Plan) -> (Vec<String>, Vec<String>) {
    let retained = plan.retained.iter().map(|r| r.id.to_string()).collect();
    let deleted = plan
        .delete_backups
        .iter()
        .map(|b| b.id.to_string())
        .collect();
    (retained, deleted)
}

#[test]
fn keep_one_of_three_backups() {
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let b3 = backup(1, at(8, 0x28), at(9, 0x100), "2026-03-03T10:00:00Z");
    let mut objects: Vec<StoredObject> = segments(1, 1, 12).collect();
    objects.extend([&b1, &b2, &b3].map(backup_file));
    let snapshot = |seg, end| {
        object(ObjectName::Snapshot {
            segment: segment(1, seg),
            end,
        })
    };
    // A snapshot of a segment archived since, and one of the segment being written.
    objects.extend([snapshot(12, at(12, 0x500)), snapshot(13, at(13, 0x500))]);
    let inventory = inventory(vec![b1.clone(), b2.clone(), b3.clone()], objects);

    let plan = plan(&inventory, &keep(1)).unwrap();
    assert_eq!(ids(&plan), (vec![b3.id.clone()], vec![b1.id, b2.id]));
    assert_eq!(plan.retained[0].why, vec![Why::Newest, Why::AmongNewest]);
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 8)));
    let gone: Vec<String> = plan
        .delete_objects
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let mut expected: Vec<String> = (1..=7).map(|n| format!("{}.zst", segment(1, n))).collect();
    expected.insert(1, "000000010000000000000002.00000028.backup.zst".into());
    expected.insert(5, "000000010000000000000005.00000028.backup.zst".into());
    expected.push("00000001000000000000000C.partial.0000000000C00500.zst".into());
    let mut sorted = gone.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected);
    assert_eq!(plan.bytes_freed(), 10 * 10 + 2 * 1000);

    let after = pruned(&inventory, &plan);
    assert!(restorable(&after, &b3, 1));
    // Pruning again deletes nothing more.
    let again = super::plan(&after, &keep(1)).unwrap();
    assert!(again.delete_objects.is_empty() && again.delete_backups.is_empty());
}

#[test]
fn keep_within_keeps_the_backup_a_restore_to_the_start_of_the_duration_needs() {
    // Now is 03-10 12:00; three days back is 03-07 12:00. Only b3 stopped since: without b2,
    // no point between 03-07 12:00 and b3's stop could be restored.
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-04T10:00:00Z");
    let b3 = backup(1, at(8, 0x28), at(9, 0x100), "2026-03-08T10:00:00Z");
    let mut objects: Vec<StoredObject> = segments(1, 1, 12).collect();
    objects.extend([&b1, &b2, &b3].map(backup_file));
    let inventory = inventory(vec![b1.clone(), b2.clone(), b3.clone()], objects);
    let within = policy(Rule::Backups {
        keep: None,
        within: Some(Duration::from_secs(3 * 86_400)),
    });
    let plan = plan(&inventory, &within).unwrap();
    assert_eq!(
        ids(&plan),
        (vec![b2.id.clone(), b3.id.clone()], vec![b1.id.clone()])
    );
    assert_eq!(plan.retained[0].why, vec![Why::WindowStart]);
    assert_eq!(plan.retained[1].why, vec![Why::Newest, Why::Within]);
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 5)));

    // A restore to the start of the duration chooses b2, and has its WAL.
    let after = pruned(&inventory, &plan);
    let start = Target::Time {
        at: time("2026-03-07T12:00:00Z"),
        text: "2026-03-07 12:00:00+00".into(),
    };
    let chosen = crate::restore::plan::choose(&after.backups, &start, &path(TimelineId(1), &[]));
    assert_eq!(chosen.unwrap().backup.id, b2.id);
    assert!(restorable(&after, &b2, 1));
    let again = super::plan(&after, &within).unwrap();
    assert!(again.delete_objects.is_empty() && again.delete_backups.is_empty());

    // A duration all three stopped within keeps none before it; one that begins after the
    // newest keeps the newest for its start.
    for days in [30, 1] {
        let within = policy(Rule::Backups {
            keep: None,
            within: Some(Duration::from_secs(days * 86_400)),
        });
        let plan = super::plan(&inventory, &within).unwrap();
        let kept = plan
            .retained
            .iter()
            .filter(|r| r.why.contains(&Why::WindowStart));
        assert_eq!(kept.count(), usize::from(days == 1), "{days} days");
    }
}

#[test]
fn the_newest_backup_is_the_one_restore_would_choose_when_backups_overlap() {
    // Two backups started in the same second: the second (`-2`) was consistent first. By
    // their identifiers it is the newer; restore chooses the other, consistent later. Before,
    // prune retained the first only and deleted the one restore chooses.
    let later = backup(1, at(2, 0x28), at(5, 0x100), "2026-03-01T10:00:00Z");
    let earlier = BackupMeta {
        id: format!("{}-2", later.id),
        ..backup(1, at(3, 0x28), at(4, 0x100), "2026-03-01T09:59:58Z")
    };
    let mut objects: Vec<StoredObject> = segments(1, 1, 8).collect();
    objects.extend([&later, &earlier].map(backup_file));
    let inventory = inventory(vec![later.clone(), earlier.clone()], objects);
    let backups = [later.clone(), earlier.clone()];
    let chosen = crate::restore::plan::choose(&backups, &Target::End, &path(TimelineId(1), &[]));
    assert_eq!(chosen.unwrap().backup.id, later.id);

    // Both are retained: the newest by its start, and the one restore would choose.
    let plan = plan(&inventory, &keep(1)).unwrap();
    assert_eq!(
        ids(&plan),
        (vec![later.id.clone(), earlier.id.clone()], vec![])
    );
    assert_eq!(
        plan.retained[0].why,
        vec![Why::NewestTimeline(TimelineId(1))]
    );
    assert_eq!(plan.retained[1].why, vec![Why::Newest, Why::AmongNewest]);
    let after = pruned(&inventory, &plan);
    assert!(restorable(&after, &later, 1) && restorable(&after, &earlier, 1));
}

/// Timeline 2 forked from timeline 1 at segment 6; backup 1 is on timeline 1 before it.
fn promotion() -> (Inventory, BackupMeta, BackupMeta) {
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-05T10:00:00Z");
    let b2 = backup(2, at(8, 0x28), at(8, 0x100), "2026-03-09T10:00:00Z");
    let mut objects: Vec<StoredObject> = segments(1, 1, 5).chain(segments(2, 6, 10)).collect();
    objects.push(file(WalFileName::Partial(segment(1, 6))));
    objects.push(file(WalFileName::History(TimelineId(2))));
    objects.extend([&b1, &b2].map(backup_file));
    let mut inventory = inventory(vec![b1.clone(), b2.clone()], objects);
    inventory
        .timelines
        .insert(TimelineId(2), history(&[(1, at(6, 0x1000))]));
    (inventory, b1, b2)
}

#[test]
fn a_backup_on_timeline_1_keeps_its_way_to_timeline_2() {
    let (inventory, b1, b2) = promotion();
    let within = policy(Rule::Backups {
        keep: None,
        within: Some(Duration::from_secs(7 * 86_400)),
    });
    let plan = plan(&inventory, &within).unwrap();
    assert_eq!(ids(&plan), (vec![b1.id.clone(), b2.id.clone()], vec![]));
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 2)));
    assert_eq!(plan.kept[&TimelineId(2)], Kept::From(segment(2, 6)));
    let gone: Vec<String> = plan
        .delete_objects
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(gone, ["000000010000000000000001.zst"]);
    let after = pruned(&inventory, &plan);
    assert!(restorable(&after, &b1, 2), "through the fork");
    assert!(restorable(&after, &b1, 1));
    assert!(restorable(&after, &b2, 2));

    // Keeping only the newest, timeline 1 is needed by no one: all of it goes, history stays.
    let plan = super::plan(&inventory, &keep(1)).unwrap();
    assert_eq!(ids(&plan), (vec![b2.id.clone()], vec![b1.id.clone()]));
    assert_eq!(plan.kept[&TimelineId(1)], Kept::Nothing);
    assert_eq!(plan.kept[&TimelineId(2)], Kept::From(segment(2, 8)));
    let after = pruned(&inventory, &plan);
    assert!(restorable(&after, &b2, 2));
    assert!(
        after
            .objects
            .iter()
            .all(|o| o.name.segment().is_none_or(|s| s.timeline.0 == 2))
    );
    assert!(
        after
            .objects
            .contains(&file(WalFileName::History(TimelineId(2))))
    );
}

#[test]
fn a_branch_that_forked_before_the_backup_is_not_its_to_keep() {
    // Timeline 2 left timeline 1 at segment 3 (a restore tried and abandoned), timeline 3 at
    // segment 7 (the promotion the cluster lives on). The backup at segment 5 reaches 3, not 2.
    let b0 = backup(1, at(1, 0x28), at(1, 0x100), "2026-03-01T10:00:00Z");
    let b1 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let objects = segments(1, 1, 8)
        .chain(segments(2, 3, 6))
        .chain(segments(3, 7, 9))
        .collect();
    let mut inventory = inventory(vec![b0.clone(), b1.clone()], objects);
    inventory
        .timelines
        .insert(TimelineId(2), history(&[(1, at(3, 0x10))]));
    inventory
        .timelines
        .insert(TimelineId(3), history(&[(1, at(7, 0x10))]));
    let plan = plan(&inventory, &keep(1)).unwrap();
    assert_eq!(ids(&plan), (vec![b1.id.clone()], vec![b0.id.clone()]));
    assert_eq!(plan.retained[0].why, vec![Why::Newest, Why::AmongNewest]);
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 5)));
    assert_eq!(plan.kept[&TimelineId(2)], Kept::Nothing);
    assert_eq!(plan.kept[&TimelineId(3)], Kept::From(segment(3, 7)));
    let after = pruned(&inventory, &plan);
    assert!(restorable(&after, &b1, 3) && restorable(&after, &b1, 1));
    assert!(held(&after).iter().all(|s| s.timeline.0 != 2));
}

#[test]
fn the_live_timeline_keeps_a_backup_that_restores_it() {
    // Timeline 2 (the newest) left timeline 1 at segment 3, before the newest backup began:
    // only the older backup can restore it, so it stays whatever --keep-backups says.
    let b0 = backup(1, at(1, 0x28), at(1, 0x100), "2026-03-01T10:00:00Z");
    let b1 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let objects = segments(1, 1, 8).chain(segments(2, 3, 9)).collect();
    let mut inventory = inventory(vec![b0.clone(), b1.clone()], objects);
    inventory
        .timelines
        .insert(TimelineId(2), history(&[(1, at(3, 0x10))]));
    let plan = plan(&inventory, &keep(1)).unwrap();
    assert_eq!(ids(&plan), (vec![b0.id.clone(), b1.id.clone()], vec![]));
    assert_eq!(
        plan.retained[0].why,
        vec![Why::NewestTimeline(TimelineId(2))]
    );
    assert!(plan.delete_objects.is_empty());
    assert!(restorable(&pruned(&inventory, &plan), &b0, 2));
}

#[test]
fn a_backup_consistent_after_a_fork_cannot_follow_it() {
    // The backup's stop lies past where timeline 2 left: restore cannot reach 2 from it, and no
    // retained backup can, so timeline 2 (the newest) is kept whole and the plan says why.
    let b = backup(1, at(5, 0x28), at(7, 0x100), "2026-03-02T10:00:00Z");
    let objects = segments(1, 4, 9).chain(segments(2, 6, 9)).collect();
    let mut inventory = inventory(vec![b], objects);
    inventory
        .timelines
        .insert(TimelineId(2), history(&[(1, at(6, 0x10))]));
    let plan = plan(&inventory, &keep(1)).unwrap();
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 5)));
    assert_eq!(plan.kept[&TimelineId(2)], Kept::All("the newest timeline"));
    assert!(plan.notes[0].contains("timeline 2"), "{:?}", plan.notes);
}

#[test]
fn folders_without_metadata_stop_a_prune_while_a_backup_may_run() {
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let mut inventory = inventory(vec![b1.clone(), b2.clone()], segments(1, 1, 6).collect());
    let folder = |id: &str| BackupId::parse(id).unwrap();
    inventory.interrupted = vec![folder("20260302T120000Z")];
    let refused = plan(&inventory, &keep(1)).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("newer than every complete backup"),
        "{refused}"
    );
    let mut go_on = keep(1);
    go_on.assume_interrupted = true;
    let plan = plan(&inventory, &go_on).unwrap();
    // Taken for interrupted: deleted though newer than the oldest retained backup, so that
    // the next prune does not refuse on it again.
    assert_eq!(
        ids(&plan),
        (
            vec![b2.id.clone()],
            vec![b1.id.clone(), "20260302T120000Z".into()]
        )
    );
    assert_eq!(plan.delete_backups[1].why, Doomed::AssumedInterrupted);

    // Older than a complete backup but from the last day: maybe a long backup still running.
    inventory.interrupted = vec![folder("20260310T010000Z")];
    inventory.backups[1].id = "20260310T020000Z".into();
    assert!(matches!(
        super::plan(&inventory, &keep(1)),
        Err(PruneError::InProgress { .. })
    ));

    // An old interrupted one, older than what is retained, goes.
    inventory.interrupted = vec![folder("20260301T000000Z")];
    let plan = super::plan(&inventory, &keep(1)).unwrap();
    assert_eq!(
        plan.delete_backups
            .iter()
            .map(|b| b.why.clone())
            .collect::<Vec<_>>(),
        [Doomed::Interrupted, Doomed::NotRetained]
    );
}

#[test]
fn assumed_interrupted_folders_go_whatever_the_rule() {
    // No complete backup, or an archive pruned by WAL age: nothing is retained by name, and
    // the folder would stop every prune again.
    let killed = BackupId::parse("20260310T110000Z").unwrap();
    let mut inventory = inventory(Vec::new(), segments(1, 1, 6).collect());
    inventory.interrupted = vec![killed.clone()];
    for rule in [
        Rule::Backups {
            keep: Some(1),
            within: None,
        },
        Rule::WalWithin(Duration::from_secs(3600)),
        Rule::WalBefore(at(3, 0)),
    ] {
        let mut assumed = policy(rule);
        assert!(
            matches!(
                plan(&inventory, &assumed),
                Err(PruneError::InProgress { .. })
            ),
            "{rule:?}"
        );
        assumed.assume_interrupted = true;
        let plan = plan(&inventory, &assumed).unwrap();
        assert_eq!(
            (plan.delete_backups.len(), plan.delete_backups[0].id.clone()),
            (1, killed.clone()),
            "{rule:?}"
        );
        assert_eq!(plan.delete_backups[0].why, Doomed::AssumedInterrupted);
    }
}

#[test]
fn unreadable_metadata_stops_a_prune() {
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let mut inventory = inventory(vec![b1, b2], segments(1, 1, 6).collect());
    // An old backup, written by a newer walhalla: it finished, and its needs are unknown.
    let old = BackupId::parse("20260201T000000Z").unwrap();
    inventory.unreadable = vec![(old, "backup.json: format 9 is newer than 1".into())];
    let mut policy = keep(1);
    for assume_interrupted in [false, true] {
        policy.assume_interrupted = assume_interrupted;
        let refused = plan(&inventory, &policy).unwrap_err().to_string();
        assert!(
            refused.contains("the metadata of backup 20260201T000000Z cannot be read")
                && refused.contains("format 9"),
            "{refused}"
        );
    }
}

#[test]
fn incomplete_backups_go_when_older_than_what_is_retained() {
    let mut b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    b1.wal_complete = false;
    let b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let mut b3 = backup(1, at(7, 0x28), at(7, 0x100), "2026-03-03T10:00:00Z");
    b3.wal_complete = false;
    let inventory = inventory(
        vec![b3, b2.clone(), b1.clone()],
        segments(1, 1, 8).collect(),
    );
    let plan = plan(&inventory, &keep(3)).unwrap();
    assert_eq!(ids(&plan), (vec![b2.id], vec![b1.id]));
    assert_eq!(plan.delete_backups[0].why, Doomed::Incomplete);
}

#[test]
fn a_backup_whose_wal_has_gone_is_not_retained_in_place_of_one_that_restores() {
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    let b3 = backup(1, at(8, 0x28), at(9, 0x100), "2026-03-03T10:00:00Z");
    // The newest backup's stop segment, 9, has gone from the archive since it was taken.
    let mut objects: Vec<StoredObject> = segments(1, 1, 8).chain(segments(1, 10, 12)).collect();
    objects.extend([&b1, &b2, &b3].map(backup_file));
    let first = inventory(vec![b1.clone(), b2.clone(), b3.clone()], objects);

    let plan = plan(&first, &keep(1)).unwrap();
    // b2 is now the newest backup that restores; b3 stays (newer than it), b1 goes.
    assert_eq!(ids(&plan), (vec![b2.id.clone()], vec![b1.id.clone()]));
    assert_eq!(plan.retained[0].why, vec![Why::Newest, Why::AmongNewest]);
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 5)));
    assert_noted_unrestorable(&plan, &b3, "000000010000000000000009");

    // Once older than a backup that restores, it goes like an incomplete one.
    let b4 = backup(1, at(11, 0x28), at(11, 0x100), "2026-03-04T10:00:00Z");
    let mut objects: Vec<StoredObject> = segments(1, 1, 8).chain(segments(1, 10, 12)).collect();
    objects.extend([&b1, &b2, &b3, &b4].map(backup_file));
    let second = inventory(vec![b1, b2, b3.clone(), b4.clone()], objects);
    let plan = super::plan(&second, &keep(1)).unwrap();
    assert_eq!(plan.retained[0].id.as_str(), b4.id);
    let deleted = plan.delete_backups.iter().find(|d| d.id.as_str() == b3.id);
    assert_eq!(
        deleted.map(|d| d.why.clone()),
        Some(Doomed::Unrestorable(segment(1, 9).to_string()))
    );
}

#[test]
fn a_backup_missing_one_of_its_own_objects_is_not_retained_in_place_of_one_that_restores() {
    let b1 = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let mut b2 = backup(1, at(5, 0x28), at(5, 0x100), "2026-03-02T10:00:00Z");
    // A piece of the newest backup has gone from the archive; its WAL is all there.
    let piece = format!("7/backups/{}/base/00000001.zst", b2.id);
    b2.missing_objects = vec![piece.clone()];
    let mut objects: Vec<StoredObject> = segments(1, 1, 8).collect();
    objects.extend([&b1, &b2].map(backup_file));
    let inventory = inventory(vec![b1.clone(), b2.clone()], objects);
    let plan = plan(&inventory, &keep(1)).unwrap();
    // b1 is the newest backup that restores, so it is retained with the WAL after it; b2 is
    // newer than it, so it stays too.
    assert_eq!(ids(&plan), (vec![b1.id.clone()], vec![]));
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 2)));
    assert_noted_unrestorable(&plan, &b2, &format!("{piece}, one of its own objects"));
}

#[test]
fn a_backup_that_stopped_where_a_promotion_began_restores_along_the_new_timeline() {
    // b2 stopped in segment 6 of timeline 1, where timeline 2 began: the old primary's last
    // segment is only a .partial, and recovery reads segment 6 from timeline 2 anyway.
    let (mut inventory, b1, _) = promotion();
    let b2 = backup(1, at(5, 0x28), at(6, 0x100), "2026-03-06T10:00:00Z");
    inventory.objects.push(backup_file(&b2));
    inventory.backups = vec![b1.clone(), b2.clone()];
    assert!(restorable(&inventory, &b2, 2));
    let plan = plan(&inventory, &keep(1)).unwrap();
    assert_eq!(ids(&plan), (vec![b2.id.clone()], vec![b1.id]));
    assert!(
        !plan.notes.iter().any(|n| n.contains("cannot be restored")),
        "{:?}",
        plan.notes
    );
    // Without timeline 2's segment 6 it cannot be restored along either timeline.
    inventory
        .objects
        .retain(|o| o.name != ObjectName::File(WalFileName::Segment(segment(2, 6))));
    let plan = super::plan(&inventory, &keep(1)).unwrap();
    assert_noted_unrestorable(&plan, &b2, "000000010000000000000006");
}

#[test]
fn wal_rules_are_for_archives_without_backups() {
    let mut objects: Vec<StoredObject> = segments(1, 1, 6).chain(segments(2, 4, 8)).collect();
    for (n, o) in objects.iter_mut().enumerate() {
        o.modified =
            Some(time("2026-03-01T00:00:00Z") + jiff::SignedDuration::from_hours(n as i64 * 24));
    }
    objects.push(file(WalFileName::History(TimelineId(2))));
    let mut inventory = inventory(Vec::new(), objects);
    inventory
        .timelines
        .insert(TimelineId(2), history(&[(1, at(4, 0))]));
    // now is 2026-03-10T12: the last 3 days hold objects 7.. (timeline 2's 5 to 8);
    // timeline 1's newest segment, 6, is kept anyway.
    let plan = plan(
        &inventory,
        &policy(Rule::WalWithin(Duration::from_secs(3 * 86_400))),
    )
    .unwrap();
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 6)));
    assert_eq!(plan.kept[&TimelineId(2)], Kept::From(segment(2, 5)));
    assert_eq!(plan.delete_objects.len(), 6);

    let plan = super::plan(&inventory, &policy(Rule::WalBefore(at(5, 0x10)))).unwrap();
    let gone: Vec<String> = plan
        .delete_objects
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        gone,
        [1, 2, 3, 4]
            .map(|n| format!("{}.zst", segment(1, n)))
            .into_iter()
            .chain([format!("{}.zst", segment(2, 4))])
            .collect::<Vec<_>>()
    );

    // A position past the end of the archive keeps each timeline's newest segment, and says so.
    let plan = super::plan(&inventory, &policy(Rule::WalBefore(at(0xFF00, 0)))).unwrap();
    assert_eq!(plan.kept[&TimelineId(1)], Kept::From(segment(1, 6)));
    assert_eq!(plan.kept[&TimelineId(2)], Kept::From(segment(2, 8)));
    assert_eq!(plan.delete_objects.len(), 5 + 4);
    assert_eq!(plan.notes.len(), 2, "{:?}", plan.notes);
    assert!(
        plan.notes[0].contains("lies past timeline 1's newest segment")
            && plan.notes[1].contains("lies past timeline 2's newest segment"),
        "{:?}",
        plan.notes
    );
    // A timeline with no complete segment (a .partial only) is kept whole.
    let mut partial_only = inventory.clone();
    (partial_only.objects).push(file(WalFileName::Partial(segment(3, 9))));
    (partial_only.timelines).insert(TimelineId(3), history(&[(1, at(4, 0)), (2, at(9, 0x80))]));
    let plan = super::plan(&partial_only, &policy(Rule::WalBefore(at(0xFF00, 0)))).unwrap();
    assert!(
        matches!(plan.kept[&TimelineId(3)], Kept::All(_)),
        "{:?}",
        plan.kept
    );
    assert!(
        plan.delete_objects
            .iter()
            .all(|(name, _)| name.segment().is_none_or(|s| s.timeline != TimelineId(3)))
    );

    let mut with_backup = inventory.clone();
    with_backup
        .backups
        .push(backup(1, at(2, 0), at(2, 0x100), "2026-03-01T10:00:00Z"));
    let refused = super::plan(&with_backup, &policy(Rule::WalBefore(at(5, 0)))).unwrap_err();
    assert!(refused.to_string().contains("--keep-backups"), "{refused}");
}

#[test]
fn nonsense_is_refused_with_context() {
    let mut b = backup(1, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    let inventory_with = |b: BackupMeta| inventory(vec![b], segments(1, 1, 3).collect());
    let refused =
        |inventory: &Inventory, policy: &Policy| plan(inventory, policy).unwrap_err().to_string();
    let both_none = policy(Rule::Backups {
        keep: None,
        within: None,
    });
    assert!(refused(&inventory_with(b.clone()), &both_none).contains("--keep-backups"));
    assert!(refused(&inventory_with(b.clone()), &keep(0)).contains("at least 1"));
    b.stop_lsn = "nowhere".into();
    let text = refused(&inventory_with(b.clone()), &keep(1));
    assert!(text.contains(&b.id) && text.contains("nowhere"), "{text}");
    b.stop_lsn = "0/200100".into();
    b.segment_size = 16 << 20;
    assert!(refused(&inventory_with(b), &keep(1)).contains("segment size"));
    // A backup on a timeline whose history file is missing: where it forked is unknown.
    let on_2 = backup(2, at(2, 0x28), at(2, 0x100), "2026-03-01T10:00:00Z");
    assert!(refused(&inventory_with(on_2), &keep(1)).contains("no timeline path"));
    // Without a complete backup nothing goes.
    let plan = plan(
        &inventory(Vec::new(), segments(1, 1, 3).collect()),
        &keep(1),
    )
    .unwrap();
    assert!(plan.delete_objects.is_empty() && !plan.notes.is_empty());
}
