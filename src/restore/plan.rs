//! What a restore will do, decided before a byte is copied, pure: the timeline path recovery
//! will follow, the backup to start from (and why), and the WAL segments it will need.

use std::collections::BTreeMap;
use std::fmt;

use crate::backup::meta::BackupMeta;
use crate::wal::{HistoryEntry, Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The end of the archived WAL.
    End,
    /// As soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    /// A point in time; the text is passed on to PostgreSQL as written.
    Time {
        /// The instant, for choosing the backup.
        at: jiff::Timestamp,
        /// The value as the user wrote it.
        text: String,
    },
    /// A WAL position.
    Lsn(Lsn),
    /// A transaction id.
    Xid(String),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::End => write!(f, "the end of the archive"),
            Target::Immediate => write!(f, "the end of the backup"),
            Target::Time { text, .. } => write!(f, "time {text}"),
            Target::Lsn(lsn) => write!(f, "position {lsn}"),
            Target::Xid(xid) => write!(f, "transaction {xid}"),
            Target::Name(name) => write!(f, "restore point {name:?}"),
        }
    }
}

pub use super::target_time::parse_time;

/// One timeline on the path recovery follows, with the position where it ends (where the
/// next timeline on the path branches off); the last one has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    /// The timeline.
    pub timeline: TimelineId,
    /// Where the next timeline on the path begins.
    pub end: Option<Lsn>,
}

/// The timelines recovery follows to reach `timeline`: its ancestors (from its history file),
/// oldest first, then itself.
pub fn path(timeline: TimelineId, history: &[HistoryEntry]) -> Vec<Leg> {
    history
        .iter()
        .map(|entry| Leg {
            timeline: entry.timeline,
            end: Some(entry.switch_point),
        })
        .chain(std::iter::once(Leg {
            timeline,
            end: None,
        }))
        .collect()
}

/// The backup chosen, and why.
#[derive(Debug)]
pub struct Choice<'a> {
    /// The backup.
    pub backup: &'a BackupMeta,
    /// Why this one, for the log and `--json`.
    pub reason: String,
    /// Where recovery to the target stops, when choosing found it (a restore point's record
    /// end, by the time index): restore then needs no WAL past it.
    pub stop: Option<Lsn>,
}

/// Where on `path` a backup sits: the indexes of the legs its start and its stop are on, and
/// its stop, when it is consistent before its stop leg ends. A standby's backup may start on
/// the timeline before a promotion it replayed. `retention` asks it which paths a backup can
/// follow.
pub(crate) fn on_path(backup: &BackupMeta, path: &[Leg]) -> Option<(usize, usize, Lsn)> {
    let stop = backup.stop().ok()?;
    let leg_of = |timeline: u32| path.iter().position(|leg| leg.timeline.0 == timeline);
    let (first, last) = (
        leg_of(backup.start_timeline)?,
        leg_of(backup.stop_timeline)?,
    );
    (first <= last && path[last].end.is_none_or(|end| stop <= end)).then_some((first, last, stop))
}

/// The restorable backups on `path`, oldest first: by the leg their stop is on, then by
/// their stop.
pub fn usable<'a>(backups: &'a [BackupMeta], path: &[Leg]) -> Vec<&'a BackupMeta> {
    let mut usable: Vec<(&BackupMeta, (usize, Lsn))> = backups
        .iter()
        .filter(|b| b.is_restorable())
        .filter_map(|b| on_path(b, path).map(|(_, last, stop)| (b, (last, stop))))
        .collect();
    usable.sort_by_key(|(_, at)| *at);
    usable.into_iter().map(|(b, _)| b).collect()
}

/// Chooses the newest complete backup on `path` from which `target` can be reached: for a
/// time, one consistent before it (by its stop time); for a position, one consistent at or
/// before it.
pub fn choose<'a>(
    backups: &'a [BackupMeta],
    target: &Target,
    path: &[Leg],
) -> Result<Choice<'a>, String> {
    choose_where(backups, target, path, |_| true)
}

/// [`choose`] among the backups `also` accepts; a refusal is [`choose`]'s when none does.
pub fn choose_where<'a>(
    backups: &'a [BackupMeta],
    target: &Target,
    path: &[Leg],
    also: impl Fn(&BackupMeta) -> bool,
) -> Result<Choice<'a>, String> {
    let usable = usable(backups, path);
    let Some(&oldest) = usable.first() else {
        let timelines: Vec<String> = path.iter().map(|l| l.timeline.to_string()).collect();
        return Err(format!(
            "no restorable backup lies on timeline path {} ({} backups in the archive, {} complete, {} restorable)",
            timelines.join(" → "),
            backups.len(),
            backups.iter().filter(|b| b.is_complete()).count(),
            backups.iter().filter(|b| b.is_restorable()).count()
        ));
    };
    let fits = |b: &BackupMeta| match target {
        Target::Time { at, .. } => b.stop_timestamp().is_ok_and(|stop| stop <= *at),
        Target::Lsn(lsn) => b.stop().is_ok_and(|stop| stop <= *lsn),
        _ => true,
    };
    let chosen = usable.iter().rev().find(|b| fits(b) && also(b)).copied();
    let Some(backup) = chosen else {
        return Err(format!(
            "no backup is consistent before {target}: the oldest complete backup, {}, is consistent at {} ({})",
            oldest.id, oldest.stop_lsn, oldest.stop_time
        ));
    };
    let reason = match target {
        Target::Time { .. } | Target::Lsn(_) => format!(
            "the newest complete backup consistent before {target} (at {}, {})",
            backup.stop_lsn, backup.stop_time
        ),
        _ => format!(
            "the newest complete backup on the timeline path (consistent at {}, {})",
            backup.stop_lsn, backup.stop_time
        ),
    };
    Ok(Choice {
        backup,
        reason,
        stop: None,
    })
}

/// The segments a restore from `backup` needs, per timeline, as half-open ranges: from the
/// backup's start along `path`, through the backup's stop, then to `until` (a target position)
/// or, without one, through the newest segment `newest` holds of each timeline.
pub fn needed_segments(
    backup: &BackupMeta,
    path: &[Leg],
    until: Option<Lsn>,
    newest: &BTreeMap<TimelineId, SegNo>,
    size: SegmentSize,
) -> Result<Vec<(TimelineId, SegNo, SegNo)>, String> {
    let start = backup.start()?;
    let stop = backup.stop()?;
    let (first_leg, _, _) = on_path(backup, path)
        .ok_or_else(|| format!("backup {} is not on the timeline path", backup.id))?;
    let last_byte = |lsn: Lsn| SegNo::containing(Lsn(lsn.0.saturating_sub(1)), size);
    // Past the segment holding the target (and the backup's last byte).
    let through_target =
        |target: Lsn| SegNo(last_byte(Lsn(target.0.saturating_add(1)).max(stop)).0 + 1);
    let mut from = SegNo::containing(start, size);
    let mut ranges = Vec::new();
    let legs = &path[first_leg..];
    for (n, leg) in legs.iter().enumerate() {
        // Segments up to the one where the next timeline begins come from this timeline; that
        // one and later from the next (it holds this timeline's WAL up to the switch).
        // Recovery reads the segment holding the switch from the newer timeline, which also
        // covers a stop in it; the old timeline may have it only as .partial.
        let to = match (leg.end, until) {
            (Some(end), _) => SegNo::containing(end, size),
            (None, Some(target)) => through_target(target),
            (None, None) => {
                let newest = newest.get(&leg.timeline).map_or(from, |n| SegNo(n.0 + 1));
                newest.max(SegNo(last_byte(stop).0 + 1))
            }
        };
        let target_before_switch = leg.end.zip(until).filter(|(end, target)| target < end);
        let to = match target_before_switch {
            Some((_, target)) => to.min(through_target(target)),
            None => to,
        };
        if to > from {
            ranges.push((leg.timeline, from, to));
            from = to;
        }
        if let Some((_, target)) = target_before_switch {
            // A target in the segment holding the switch: that segment, from the newest
            // timeline begun by then (more than one may begin in it), as recovery reads it.
            let past = through_target(target);
            let begun = (n + 1..legs.len())
                .take_while(|&j| {
                    legs[j - 1]
                        .end
                        .is_some_and(|e| SegNo::containing(e, size) <= from)
                })
                .last();
            if let (Some(j), true) = (begun, past > from) {
                ranges.push((legs[j].timeline, from, past));
            }
            break;
        }
    }
    Ok(ranges)
}

/// The first segment `backup` needs to become consistent that `held` (what the archive holds
/// per timeline) lacks: from its start along `path` through the segment holding its last byte,
/// that one from the next timeline when it holds the switch to it. A backup missing one cannot
/// be restored along `path` at all. `None` too when the backup is not on `path`.
pub fn missing_before_consistency(
    backup: &BackupMeta,
    path: &[Leg],
    held: &BTreeMap<TimelineId, std::collections::BTreeSet<SegNo>>,
    size: SegmentSize,
) -> Option<SegmentName> {
    let last_byte = Lsn(backup.stop().ok()?.0.saturating_sub(1));
    let ranges = needed_segments(backup, path, Some(last_byte), &BTreeMap::new(), size).ok()?;
    first_missing(&ranges, held, size)
}

/// The last timeline's newest segment, when the last range of `ranges` runs past it: the
/// target lies past the archive's end (a hole on that timeline is a missing segment before
/// it). `Some((timeline, None))` when that timeline, one the path switched to after
/// `stop` (the segment holding the backup's last byte), has no segment archived yet (just after
/// a failover); `None` when the range holds the backup's own WAL (missing, not an end).
pub fn past_the_end(
    ranges: &[(TimelineId, SegNo, SegNo)],
    newest: &BTreeMap<TimelineId, SegNo>,
    stop: SegNo,
) -> Option<(TimelineId, Option<SegNo>)> {
    let &(timeline, from, to) = ranges.last()?;
    match newest.get(&timeline) {
        Some(&last) => (to.0 > last.0 + 1).then_some((timeline, Some(last))),
        None => (from > stop).then_some((timeline, None)),
    }
}

/// `ranges` cut after segment `last.1` of timeline `last.0`, the last one's, or without that
/// timeline's range when it has none (see [`past_the_end`]).
pub fn clip_to(ranges: &mut Vec<(TimelineId, SegNo, SegNo)>, last: (TimelineId, Option<SegNo>)) {
    if let Some(range) = ranges.last_mut().filter(|r| r.0 == last.0) {
        range.2 = last.1.map_or(range.1, |n| SegNo(n.0 + 1));
        if range.1 >= range.2 {
            ranges.pop();
        }
    }
}

/// The first segment of `ranges` that `held` (what the archive holds per timeline) lacks.
pub fn first_missing(
    ranges: &[(TimelineId, SegNo, SegNo)],
    held: &BTreeMap<TimelineId, std::collections::BTreeSet<SegNo>>,
    size: SegmentSize,
) -> Option<SegmentName> {
    ranges.iter().find_map(|&(timeline, from, to)| {
        (from.0..to.0)
            .map(SegNo)
            .find(|n| !held.get(&timeline).is_some_and(|h| h.contains(n)))
            .map(|n| SegmentName::new(timeline, n, size))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backup::meta::testing::backup;
    use std::collections::BTreeSet;

    const MIB: u32 = 1 << 20;

    fn at(text: &str) -> Target {
        Target::Time {
            at: text.parse().unwrap(),
            text: text.into(),
        }
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    #[test]
    fn chooses_the_newest_backup_before_the_target() {
        let backups = [
            backup("a", 1, "0/2000028", "0/2000100", "2026-01-01T10:00:00Z"),
            backup("b", 1, "0/5000028", "0/5000100", "2026-01-01T11:00:00Z"),
            backup("c", 1, "0/9000028", "0/9000100", "2026-01-01T12:00:00Z"),
        ];
        let path = path(TimelineId(1), &[]);
        let id = |t: &Target| choose(&backups, t, &path).map(|c| c.backup.id.clone());
        assert_eq!(id(&at("2026-01-01T11:30:00Z")), Ok("b".into()));
        assert_eq!(id(&at("2026-01-01T12:00:00Z")), Ok("c".into()));
        assert_eq!(id(&Target::End), Ok("c".into()));
        assert_eq!(id(&Target::Lsn(lsn("0/6000000"))), Ok("b".into()));
        let refused = id(&at("2026-01-01T09:00:00Z")).unwrap_err();
        assert!(refused.contains("oldest complete backup, a"), "{refused}");

        let mut incomplete = backups.clone();
        incomplete[2].wal_complete = false;
        assert_eq!(
            choose(&incomplete, &Target::End, &path).map(|c| c.backup.id.clone()),
            Ok("b".into())
        );
    }

    #[test]
    fn a_backup_spanning_a_promotion_starts_on_the_old_timeline() {
        // Taken on a standby that replayed the promotion to timeline 2 during the backup.
        let mut spanning = backup("s", 1, "0/500028", "0/700100", "2026-01-01T10:00:00Z");
        spanning.stop_timeline = 2;
        let history = [HistoryEntry {
            timeline: TimelineId(1),
            switch_point: lsn("0/600000"),
        }];
        let to_2 = path(TimelineId(2), &history);
        let backups = [spanning];
        let chosen = choose(&backups, &Target::End, &to_2).unwrap();
        let size = SegmentSize::new(MIB).unwrap();
        let newest = BTreeMap::from([(TimelineId(2), SegNo(8))]);
        assert_eq!(
            needed_segments(chosen.backup, &to_2, None, &newest, size).unwrap(),
            vec![
                (TimelineId(1), SegNo(5), SegNo(6)),
                (TimelineId(2), SegNo(6), SegNo(9))
            ]
        );
        // Along timeline 1 alone it is not restorable.
        assert!(choose(&backups, &Target::End, &path(TimelineId(1), &[])).is_err());
    }

    #[test]
    fn a_segment_where_two_timelines_began_is_read_from_the_newer() {
        // Timeline 2 began at 0/600100 and timeline 3 at 0/600200, both in segment 6; the
        // backup stopped in segment 6 on timeline 1, before either switch.
        let b = backup("b", 1, "0/500028", "0/600080", "2026-01-01T10:00:00Z");
        let history = [
            HistoryEntry {
                timeline: TimelineId(1),
                switch_point: lsn("0/600100"),
            },
            HistoryEntry {
                timeline: TimelineId(2),
                switch_point: lsn("0/600200"),
            },
        ];
        let to_3 = path(TimelineId(3), &history);
        let size = SegmentSize::new(MIB).unwrap();
        let consistent = vec![
            (TimelineId(1), SegNo(5), SegNo(6)),
            (TimelineId(3), SegNo(6), SegNo(7)),
        ];
        // Recovery reads segment 6 from timeline 3 (the newest begun by it), to the target and
        // to consistency alike; timeline 2 holds it only as .partial.
        assert_eq!(
            needed_segments(&b, &to_3, Some(lsn("0/600090")), &BTreeMap::new(), size).unwrap(),
            consistent
        );
        let held = BTreeMap::from([
            (TimelineId(1), BTreeSet::from([SegNo(5)])),
            (TimelineId(3), BTreeSet::from([SegNo(6)])),
        ]);
        assert_eq!(missing_before_consistency(&b, &to_3, &held, size), None);
        let without = BTreeMap::from([(TimelineId(1), BTreeSet::from([SegNo(5)]))]);
        assert_eq!(
            missing_before_consistency(&b, &to_3, &without, size).map(|s| s.to_string()),
            Some("000000030000000000000006".into())
        );
        // Without a target, the same segment from the same timeline, then on to the newest.
        let newest = BTreeMap::from([(TimelineId(3), SegNo(7))]);
        assert_eq!(
            needed_segments(&b, &to_3, None, &newest, size).unwrap(),
            vec![
                (TimelineId(1), SegNo(5), SegNo(6)),
                (TimelineId(3), SegNo(6), SegNo(8))
            ]
        );
    }

    #[test]
    fn past_the_end_is_the_last_timeline_running_out_not_a_hole_before() {
        let (one, two) = (TimelineId(1), TimelineId(2));
        let newest = BTreeMap::from([(one, SegNo(4)), (two, SegNo(9))]);
        // Timeline 1 up to its fork in segment 7 (three segments it lacks: holes), then 2.
        let mut ranges = vec![(one, SegNo(2), SegNo(8)), (two, SegNo(7), SegNo(20))];
        let stop = SegNo(3);
        assert_eq!(
            past_the_end(&ranges, &newest, stop),
            Some((two, Some(SegNo(9))))
        );
        clip_to(&mut ranges, (two, Some(SegNo(9))));
        assert_eq!(
            ranges,
            [(one, SegNo(2), SegNo(8)), (two, SegNo(7), SegNo(10))]
        );
        assert_eq!(past_the_end(&ranges, &newest, stop), None);
        // Timeline 1's own shortfall before the fork is not "past the end".
        assert_eq!(
            past_the_end(&ranges[..1], &newest, stop),
            Some((one, Some(SegNo(4))))
        );
        let ranges = [(one, SegNo(2), SegNo(8)), (two, SegNo(7), SegNo(9))];
        assert_eq!(past_the_end(&ranges, &newest, stop), None);
        // No segment at all on the backup's own timeline: missing WAL, not an end.
        let ranges = [(TimelineId(3), SegNo(1), SegNo(5))];
        assert_eq!(past_the_end(&ranges, &newest, stop), None);
        // None yet on the timeline a failover just began: the archive ends before it; not
        // when the backup's own WAL runs into it (a backup across a promotion).
        let three = TimelineId(3);
        let mut ranges = vec![(two, SegNo(5), SegNo(9)), (three, SegNo(9), SegNo(12))];
        assert_eq!(past_the_end(&ranges, &newest, SegNo(9)), None);
        assert_eq!(past_the_end(&ranges, &newest, stop), Some((three, None)));
        clip_to(&mut ranges, (three, None));
        assert_eq!(ranges, [(two, SegNo(5), SegNo(9))]);
    }

    #[test]
    fn follows_the_timeline_path() {
        // Timeline 2 branched from 1 at 0/600000; a backup on 1 after that is off the path.
        let backups = [
            backup("old", 1, "0/200028", "0/200100", "2026-01-01T10:00:00Z"),
            backup("late", 1, "0/700028", "0/700100", "2026-01-01T11:00:00Z"),
        ];
        let history = [HistoryEntry {
            timeline: TimelineId(1),
            switch_point: lsn("0/600000"),
        }];
        let to_2 = path(TimelineId(2), &history);
        let chosen = choose(&backups, &Target::End, &to_2).unwrap();
        assert_eq!(chosen.backup.id, "old");

        let size = SegmentSize::new(MIB).unwrap();
        let newest = BTreeMap::from([(TimelineId(1), SegNo(7)), (TimelineId(2), SegNo(9))]);
        let ranges = needed_segments(chosen.backup, &to_2, None, &newest, size).unwrap();
        assert_eq!(
            ranges,
            vec![
                (TimelineId(1), SegNo(2), SegNo(6)),
                (TimelineId(2), SegNo(6), SegNo(10))
            ]
        );
        // A target before the switch stays on timeline 1.
        let ranges =
            needed_segments(chosen.backup, &to_2, Some(lsn("0/400010")), &newest, size).unwrap();
        assert_eq!(ranges, vec![(TimelineId(1), SegNo(2), SegNo(5))]);
        // A target in the segment holding a switch reads that segment from the new timeline,
        // as recovery does (the old one may hold it only as .partial).
        let mid = path(
            TimelineId(2),
            &[HistoryEntry {
                timeline: TimelineId(1),
                switch_point: lsn("0/680000"),
            }],
        );
        let ranges =
            needed_segments(chosen.backup, &mid, Some(lsn("0/650000")), &newest, size).unwrap();
        assert_eq!(
            ranges,
            vec![
                (TimelineId(1), SegNo(2), SegNo(6)),
                (TimelineId(2), SegNo(6), SegNo(7))
            ]
        );

        let held = BTreeMap::from([
            (TimelineId(1), (2..6).map(SegNo).collect()),
            (TimelineId(2), [6, 7, 9].map(SegNo).into_iter().collect()),
        ]);
        let all = needed_segments(chosen.backup, &to_2, None, &newest, size).unwrap();
        assert_eq!(
            first_missing(&all, &held, size).map(|s| s.to_string()),
            Some("000000020000000000000008".into())
        );
    }
}
