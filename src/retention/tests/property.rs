//! The retention rule on thousands of generated archives: timeline trees forking at random
//! positions, segments over ranges with holes, `.partial` files and snapshots, backups on
//! random timelines (some spanning a promotion, some incomplete), folders without metadata,
//! random policies. Each plan is checked against a model of recovery written independently of
//! the rule: which segment, of which timeline, PostgreSQL reads at each position.
//!
//! Checked: (1) every segment a retained backup reads along any path it can follow, and held
//! before, is held after; (2) no history file goes; (3) no retained backup goes, and every
//! complete one not retained does; (4) the newest complete backup is retained, and so is the
//! one restore chooses for the newest timeline; (5) pruning the result again with the same policy and time deletes
//! nothing; (6) if a complete backup could restore the newest timeline, a retained one can;
//! (7) a complete backup missing a segment before its consistency point is never retained,
//! and counts as incomplete in (3)-(6); (8) with `--keep-within`, a time at the duration's
//! start that restore's own choice reached along the newest timeline before, it reaches after.

use super::*;

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `from..=to`.
    fn range(&mut self, from: u64, to: u64) -> u64 {
        from + self.next() % (to - from + 1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Timeline {
    id: u32,
    /// Where it begins (its switch point off its parent; 0 for timeline 1).
    begin: Lsn,
    history: Vec<HistoryEntry>,
    /// The last segment it holds.
    last: u64,
}

const BASE: i64 = 1_770_000_000; // 2026-02-02

fn stamp(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(BASE + seconds).unwrap()
}

fn generate(rng: &mut Rng) -> (Inventory, Policy) {
    let mut timelines = vec![Timeline {
        id: 1,
        begin: Lsn(0),
        history: Vec::new(),
        last: rng.range(0, 40),
    }];
    for id in 2..=rng.range(1, 5) as u32 {
        let parent = &timelines[rng.range(0, timelines.len() as u64 - 1) as usize];
        let switch = Lsn(rng.range(parent.begin.0 + 1, (parent.last + 2) * MIB));
        let mut history = parent.history.clone();
        history.push(HistoryEntry {
            timeline: TimelineId(parent.id),
            switch_point: switch,
        });
        let first = switch.0 / MIB;
        timelines.push(Timeline {
            id,
            begin: switch,
            history,
            last: first + rng.range(0, 30),
        });
    }
    let mut objects = Vec::new();
    let mut inventory_timelines = BTreeMap::new();
    for t in &timelines {
        // The oldest WAL may have been pruned already.
        let first = t.begin.0 / MIB + if rng.chance(30) { rng.range(0, 5) } else { 0 };
        for n in first..=t.last {
            let modified =
                (!rng.chance(5)).then(|| stamp(n as i64 * 600 + rng.range(0, 900) as i64));
            if rng.chance(93) {
                objects.push(StoredObject {
                    name: ObjectName::File(WalFileName::Segment(segment(t.id, n))),
                    bytes: MIB,
                    modified,
                });
            }
            if rng.chance(5) {
                objects.push(object(ObjectName::File(WalFileName::Partial(segment(
                    t.id, n,
                )))));
            }
            if rng.chance(8) {
                let end = at(n, rng.range(1, MIB));
                objects.push(object(ObjectName::Snapshot {
                    segment: segment(t.id, n),
                    end,
                }));
            }
        }
        if t.id > 1 && rng.chance(92) {
            inventory_timelines.insert(TimelineId(t.id), t.history.clone());
            objects.push(file(WalFileName::History(TimelineId(t.id))));
        }
    }
    let mut backups: Vec<BackupMeta> = Vec::new();
    let mut used = BTreeSet::new();
    for _ in 0..rng.range(0, 6) {
        let t = &timelines[rng.range(0, timelines.len() as u64 - 1) as usize];
        let start = Lsn(rng.range(t.begin.0, (t.last + 1) * MIB));
        let mut stop = Lsn(start.0 + rng.range(0, 3 * MIB));
        let mut stop_timeline = t.id;
        // A standby's backup that replayed a promotion: it stops on a child.
        let children: Vec<&Timeline> = (timelines.iter())
            .filter(|c| {
                c.history
                    .last()
                    .is_some_and(|h| h.timeline.0 == t.id && h.switch_point > start)
            })
            .collect();
        if !children.is_empty() && rng.chance(15) {
            let child = children[rng.range(0, children.len() as u64 - 1) as usize];
            stop_timeline = child.id;
            stop = Lsn(child.begin.0 + rng.range(0, 2 * MIB));
        }
        let started = rng.range(0, 40 * 86_400) as i64;
        let stop_time = stamp(started + rng.range(60, 7200) as i64);
        let mut b = backup(t.id, start, stop, &stop_time.to_string());
        let utc = stamp(started).strftime("%Y%m%dT%H%M%SZ").to_string();
        let n = (1..)
            .find(|n| !used.contains(&(utc.clone(), *n)))
            .unwrap_or(1);
        used.insert((utc.clone(), n));
        b.id = BackupId::new(&utc, n).unwrap().to_string();
        b.stop_timeline = stop_timeline;
        b.wal_complete = rng.chance(85);
        if rng.chance(2) {
            // Nonsense the rule must refuse, not trip over.
            match rng.range(0, 3) {
                0 => b.start_lsn = "x".into(),
                1 => b.segment_size = 3,
                2 => b.stop_time = "yesterday".into(),
                _ => b.start_timeline = 0,
            }
        }
        if b.start().is_ok() && b.start_timeline > 0 {
            objects.push(backup_file(&b));
        }
        backups.push(b);
    }
    let interrupted = (0..rng.range(0, 2))
        .map(|_| {
            let utc = stamp(rng.range(0, 40 * 86_400) as i64).strftime("%Y%m%dT%H%M%SZ");
            BackupId::new(&utc.to_string(), 1).unwrap()
        })
        .filter(|id| !used.iter().any(|(utc, n)| *n == 1 && utc == id.as_str()))
        .collect();
    let now = stamp(41 * 86_400 + rng.range(0, 10 * 86_400) as i64);
    let hours = |rng: &mut Rng| Duration::from_secs(rng.range(1, 50 * 24) * 3600);
    let rule = match rng.range(0, 9) {
        0 => Rule::WalWithin(hours(rng)),
        1 => Rule::WalBefore(Lsn(rng.range(0, 60 * MIB))),
        2 | 3 => Rule::Backups {
            keep: None,
            within: Some(hours(rng)),
        },
        4 | 5 => Rule::Backups {
            keep: Some(rng.range(1, 4) as usize),
            within: Some(hours(rng)),
        },
        _ => Rule::Backups {
            keep: Some(rng.range(1, 4) as usize),
            within: None,
        },
    };
    let policy = Policy {
        rule,
        now,
        assume_interrupted: rng.chance(50),
    };
    let inventory = Inventory {
        backups,
        interrupted,
        unreadable: Vec::new(),
        timelines: inventory_timelines,
        objects,
        segment_size: size(),
    };
    (inventory, policy)
}

/// The segments restoring `backup` reads, as recovery does it, along every timeline path it can
/// follow: on each path, segment `n` comes from the newest timeline of the path that began at
/// or before `n` (the backup's own start counting as its first timeline's beginning).
fn read_by(backup: &BackupMeta, inventory: &Inventory, last: u64) -> BTreeSet<SegmentName> {
    let (start, stop) = (backup.start().unwrap(), backup.stop().unwrap());
    let mut read = BTreeSet::new();
    let mut paths = vec![(TimelineId(1), Vec::new())];
    paths.extend(inventory.timelines.iter().map(|(t, h)| (*t, h.clone())));
    for (timeline, history) in paths {
        let legs: Vec<(u32, Option<Lsn>)> = (history.iter())
            .map(|h| (h.timeline.0, Some(h.switch_point)))
            .chain([(timeline.0, None)])
            .collect();
        let Some(first) = follows(backup, &legs, stop) else {
            continue;
        };
        for n in start.0 / MIB..=last {
            let leg = (first..legs.len())
                .rfind(|&i| i == first || legs[i - 1].1.is_some_and(|end| end.0 / MIB <= n))
                .unwrap_or(first);
            read.insert(segment(legs[leg].0, n));
        }
    }
    read
}

/// Where on `legs` (timeline, end) `backup` starts, if it can follow them: its start and stop
/// timelines are on them in that order, and it stops before the path leaves its stop timeline.
fn follows(backup: &BackupMeta, legs: &[(u32, Option<Lsn>)], stop: Lsn) -> Option<usize> {
    let index = |t: u32| legs.iter().position(|leg| leg.0 == t);
    let (first, stop_leg) = (index(backup.start_timeline)?, index(backup.stop_timeline)?);
    (first <= stop_leg && legs[stop_leg].1.is_none_or(|end| stop <= end)).then_some(first)
}

/// Whether `held` has every segment restoring `backup` reads until it is consistent, from its
/// start through the segment holding its last byte, along some known path it can follow (true
/// when it can follow none: nothing is known to be missing).
fn reaches_consistency(
    backup: &BackupMeta,
    inventory: &Inventory,
    held: &BTreeSet<SegmentName>,
) -> bool {
    let (start, stop) = (backup.start().unwrap(), backup.stop().unwrap());
    let known = std::iter::once((1, Vec::new())).chain(
        (inventory.timelines.iter()).map(|(timeline, history)| (timeline.0, history.clone())),
    );
    let mut on_any = false;
    for (timeline, history) in known {
        let legs: Vec<(u32, Option<Lsn>)> = (history.iter())
            .map(|h| (h.timeline.0, Some(h.switch_point)))
            .chain([(timeline, None)])
            .collect();
        let Some(first) = follows(backup, &legs, stop) else {
            continue;
        };
        on_any = true;
        let reached = (start.0 / MIB..=(stop.0 - 1) / MIB).all(|n| {
            let leg = (first..legs.len())
                .rfind(|&i| i == first || legs[i - 1].1.is_some_and(|end| end.0 / MIB <= n))
                .unwrap_or(first);
            held.contains(&segment(legs[leg].0, n))
        });
        if reached {
            return true;
        }
    }
    !on_any
}

/// The path to the newest timeline, as (timeline, end) legs; `None` when its history is
/// missing.
fn newest_legs(inventory: &Inventory) -> Option<Vec<(u32, Option<Lsn>)>> {
    let newest = (inventory.timelines.keys().copied())
        .chain(held(inventory).iter().map(|s| s.timeline))
        .max()
        .unwrap_or(TimelineId(1));
    let history = match inventory.timelines.get(&newest) {
        Some(history) => history.clone(),
        None if newest.0 == 1 => Vec::new(),
        None => return None,
    };
    Some(
        (history.iter())
            .map(|h| (h.timeline.0, Some(h.switch_point)))
            .chain([(newest.0, None)])
            .collect(),
    )
}

/// The path to the newest timeline, as restore follows it; `None` when its history is
/// missing.
fn newest_path(inventory: &Inventory) -> Option<Vec<crate::restore::plan::Leg>> {
    let legs = newest_legs(inventory)?;
    let (newest, _) = *legs.last()?;
    let history = inventory.timelines.get(&TimelineId(newest));
    Some(path(
        TimelineId(newest),
        history.map_or(&[][..], Vec::as_slice),
    ))
}

/// Whether some backup of `backups` can restore the newest timeline.
fn newest_restorable(inventory: &Inventory, backups: &[&BackupMeta]) -> bool {
    let Some(legs) = newest_legs(inventory) else {
        return false;
    };
    (backups.iter()).any(|b| follows(b, &legs, b.stop().unwrap()).is_some())
}

/// Checks one plan; returns whether it deleted anything.
fn check(inventory: &Inventory, policy: &Policy, plan: &Plan) -> bool {
    let after = pruned(inventory, plan);
    let before_held = held(inventory);
    let after_held = held(&after);
    let last = before_held
        .iter()
        .filter_map(|s| s.segno(size()))
        .max()
        .map_or(0, |n| n.0);
    // Complete backups that can still be restored; the others count as incomplete.
    let mut complete: Vec<&BackupMeta> = inventory
        .backups
        .iter()
        .filter(|b| b.is_complete() && reaches_consistency(b, inventory, &before_held))
        .collect();
    // (7) A complete backup missing WAL before its consistency point is never retained.
    for b in inventory.backups.iter().filter(|b| b.is_complete()) {
        if !complete.iter().any(|c| c.id == b.id) {
            assert!(
                plan.retained.iter().all(|r| r.id.as_str() != b.id),
                "{} cannot be restored, yet is retained",
                b.id
            );
        }
    }
    let key = |b: &BackupMeta| {
        let id = BackupId::parse(&b.id).unwrap();
        (
            id.as_str()[..16].to_string(),
            id.as_str()
                .get(17..)
                .map_or(1, |n| n.parse::<u32>().unwrap()),
        )
    };
    complete.sort_by_key(|b| key(b));
    let retained: BTreeSet<&str> = plan.retained.iter().map(|r| r.id.as_str()).collect();
    // (1) Every segment a retained backup reads that was there is still there.
    for r in &plan.retained {
        let b = complete
            .iter()
            .find(|b| b.id == r.id.as_str())
            .expect("retained is complete");
        for needed in read_by(b, inventory, last) {
            assert!(
                !before_held.contains(&needed) || after_held.contains(&needed),
                "{needed} deleted, which {} needs\n{policy:?}\n{plan:#?}",
                b.id
            );
        }
    }
    // (2) History files stay.
    assert!(
        plan.delete_objects
            .iter()
            .all(|(n, _)| n.segment().is_some())
    );
    // (3) What is deleted is not retained, and every complete backup not retained is deleted.
    for d in &plan.delete_backups {
        assert!(!retained.contains(d.id.as_str()));
    }
    if let Rule::Backups { .. } = policy.rule {
        for b in &complete {
            let deleted = plan.delete_backups.iter().any(|d| d.id.as_str() == b.id);
            assert!(deleted != retained.contains(b.id.as_str()), "{}", b.id);
        }
        // (4) The newest complete backup is retained, and so is the one restore chooses for
        // the newest timeline: consistent last along its path.
        if let Some(newest) = complete.last() {
            assert!(retained.contains(newest.id.as_str()), "{}", newest.id);
        }
        if let Some(legs) = newest_legs(inventory) {
            let along = |b: &BackupMeta| {
                let stop = b.stop().unwrap();
                follows(b, &legs, stop)?;
                let leg = legs.iter().position(|leg| leg.0 == b.stop_timeline)?;
                Some((leg, stop))
            };
            let chosen = (complete.iter())
                .filter_map(|b| Some((along(b)?, b)))
                .max_by_key(|(at, _)| *at);
            if let Some((_, chosen)) = chosen {
                assert!(
                    retained.contains(chosen.id.as_str()),
                    "restore's {}",
                    chosen.id
                );
            }
            // (8) With a duration, a time at its start that restore could reach before the
            // prune (restore's own choice, among the backups that can become consistent) it
            // still can after it, from a backup kept. Any later time then can too.
            if let Rule::Backups {
                within: Some(within),
                ..
            } = policy.rule
            {
                let since = super::super::back_from(policy.now, within);
                let start = Target::Time {
                    at: since,
                    text: since.to_string(),
                };
                let path = newest_path(inventory);
                let before: Vec<BackupMeta> = complete.iter().map(|b| (*b).clone()).collect();
                let kept: Vec<BackupMeta> = (before.iter())
                    .filter(|b| retained.contains(b.id.as_str()))
                    .cloned()
                    .collect();
                let reached = |backups: &[BackupMeta]| {
                    let path = path.as_deref()?;
                    crate::restore::plan::choose(backups, &start, path)
                        .ok()
                        .map(|c| c.backup.id.clone())
                };
                if let Some(chosen) = reached(&before) {
                    assert!(
                        reached(&kept).is_some(),
                        "{chosen} restored to {since} before the prune; nothing kept does\n{policy:?}"
                    );
                }
            }
        }
        // (6) So is one that restores the newest timeline, if any did.
        let kept: Vec<&BackupMeta> = (complete.iter().copied())
            .filter(|b| retained.contains(b.id.as_str()))
            .collect();
        assert_eq!(
            newest_restorable(inventory, &complete),
            newest_restorable(inventory, &kept)
        );
    } else {
        // Nothing retained by name: only folders without metadata go, and only on the
        // operator's word.
        assert!(
            plan.delete_backups
                .iter()
                .all(|b| policy.assume_interrupted && b.why == Doomed::AssumedInterrupted),
            "{:?}",
            plan.delete_backups
        );
    }
    if let Rule::WalBefore(lsn) = policy.rule {
        for (name, _) in &plan.delete_objects {
            let n = name.segment().unwrap().segno(size()).unwrap();
            assert!(n.0 < lsn.0 / MIB || matches!(name, ObjectName::Snapshot { .. }));
        }
    }
    // Deleted objects were there, once each.
    let names: BTreeSet<ObjectName> = inventory.objects.iter().map(|o| o.name).collect();
    let deleted: BTreeSet<ObjectName> = plan.delete_objects.iter().map(|(n, _)| *n).collect();
    assert_eq!(deleted.len(), plan.delete_objects.len());
    assert!(deleted.is_subset(&names));
    // (5) Pruning again with the same policy and time deletes nothing more.
    let again = super::plan(&after, policy).expect("a pruned archive plans again");
    assert!(
        again.delete_objects.is_empty() && again.delete_backups.is_empty(),
        "second prune: {again:#?}\nfirst: {plan:#?}"
    );
    !plan.delete_objects.is_empty() || !plan.delete_backups.is_empty()
}

#[test]
fn no_retained_backup_ever_loses_a_segment_it_needs() {
    const CASES: u64 = 5000;
    let mut rng = Rng(0x5EED_0012);
    let (mut planned, mut deleting, mut in_progress, mut refused) = (0u64, 0u64, 0u64, 0u64);
    for case in 0..CASES {
        let (inventory, policy) = generate(&mut rng);
        match plan(&inventory, &policy) {
            Ok(plan) => {
                planned += 1;
                let result = std::panic::catch_unwind(|| check(&inventory, &policy, &plan));
                match result {
                    Ok(deleted) => deleting += u64::from(deleted),
                    Err(e) => {
                        eprintln!("case {case}: {inventory:#?}");
                        std::panic::resume_unwind(e);
                    }
                }
            }
            Err(PruneError::InProgress { .. }) => in_progress += 1,
            Err(PruneError::Invalid(_)) => refused += 1,
        }
    }
    eprintln!(
        "{CASES} cases: {planned} planned ({deleting} deleting), {in_progress} in progress, {refused} refused"
    );
    assert!(
        planned > CASES / 2 && deleting > CASES / 4,
        "{planned} planned, {deleting} deleting"
    );
}
