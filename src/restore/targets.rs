//! What the archive's time indexes ([`crate::timeindex`]) say about a restore's target,
//! pure: which backup can reach a restore point, and whether the archived WAL reaches a time.
//!
//! The indexes are read along the WAL recovery would replay: a [`Step`] per segment, in
//! order along the timeline path. Segments archived before walhalla indexed WAL, or whose
//! index is unreadable or did not read the whole segment, have none: where such a segment
//! could change the answer, the answer is "unknown" and the restore goes on as it did without
//! indexes.
//!
//! PostgreSQL stops at the first record that matches its target, wherever replay is, even
//! before the restored database is consistent (it then fails with "requested recovery stop
//! point is before consistent recovery point"):
//!
//! - a restore point: the first restore point with that name replayed from the backup's
//!   start. A backup can reach name N when that first one lies after the backup's stop;
//!   restore chooses the newest such backup, and recovery stops at the first restore point
//!   named N after that backup's start, not necessarily the newest of that name.
//! - a time T: the first commit or abort whose time is after T (at or after T with
//!   `--target-exclusive`). When no archived commit or abort is, recovery replays to the end
//!   of the archive and fails with "recovery ended before configured recovery target was
//!   reached". A backup is chosen for T by its stop time, the clock of the host that took
//!   it; where the indexes show such a commit before that backup is consistent, the host's
//!   clock was behind the server's, and an older backup is chosen.

use std::collections::BTreeMap;

use super::plan::{self, Choice, Leg, Target};
use crate::backup::meta::BackupMeta;
use crate::timeindex::{RestorePointMark, SegmentIndex, XactMark, format_time};
use crate::wal::{Lsn, PgTimestamp, SegNo, SegmentName, SegmentSize, TimelineId};

/// A segment recovery replays, with its index when the archive holds a usable one.
#[derive(Clone, Debug)]
pub struct Step {
    /// The segment.
    pub segment: SegmentName,
    /// Its number.
    pub segno: SegNo,
    /// Its index, when it lists everything in the segment.
    pub index: Option<SegmentIndex>,
}

/// The segments of `ranges` (as [`plan::needed_segments`] gives them) in order, each with
/// its index from `indexes` when that one covers the whole segment.
pub fn walk(
    ranges: &[(TimelineId, SegNo, SegNo)],
    mut indexes: BTreeMap<TimelineId, BTreeMap<SegNo, SegmentIndex>>,
    size: SegmentSize,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for &(timeline, from, to) in ranges {
        let mut held = indexes.remove(&timeline).unwrap_or_default();
        steps.extend((from.0..to.0).map(SegNo).map(|segno| Step {
            segment: SegmentName::new(timeline, segno, size),
            segno,
            index: held.remove(&segno).filter(SegmentIndex::covers_segment),
        }));
    }
    steps
}

/// The steps from the one holding `from` on.
fn from_lsn(steps: &[Step], from: Lsn, size: SegmentSize) -> &[Step] {
    let first = SegNo::containing(from, size);
    let skip = steps.iter().take_while(|s| s.segno < first).count();
    &steps[skip..]
}

/// Where recovery from a backup starting at `from` to a time stops, by the indexes of
/// `steps`: at or before the commit or abort at the position returned. Recovery reads no WAL
/// past the record it stops at, so a hole after it does not matter. `None` when the indexes
/// cannot tell, and for other targets (a restore point's is found while choosing:
/// [`plan::Choice::stop`]).
pub fn stop_position(
    steps: &[Step],
    target: &Target,
    exclusive: bool,
    from: Lsn,
    size: SegmentSize,
) -> Option<Lsn> {
    let Target::Time { at, .. } = target else {
        return None;
    };
    let at = PgTimestamp::from_unix_micros(at.as_microsecond())?;
    match time_reach(steps, at, exclusive, from, size) {
        TimeReach::Stops { by, .. } => Some(by),
        _ => None,
    }
}

/// What the indexes say about the first restore point of a name after a position.
#[derive(Debug, PartialEq, Eq)]
enum Found<'a> {
    /// This one, in this segment.
    At(&'a RestorePointMark, SegmentName),
    /// None: every segment to the end is indexed.
    Nowhere,
    /// Unknown: this segment, before any found, has no index, or ends in a record that may
    /// be one.
    Unknown(SegmentName),
}

fn first_restore_point<'a>(
    steps: &'a [Step],
    name: &str,
    from: Lsn,
    size: SegmentSize,
) -> Found<'a> {
    for step in from_lsn(steps, from, size) {
        let Some(index) = &step.index else {
            return Found::Unknown(step.segment);
        };
        // A restore point's position is its record's end: after `from` when it starts there.
        if let Some(point) = index
            .restore_points
            .iter()
            .find(|p| p.name == name && p.lsn > from)
        {
            return Found::At(point, step.segment);
        }
        if index.crossing_may_be_restore_point() {
            return Found::Unknown(step.segment);
        }
    }
    Found::Nowhere
}

/// A backup chosen with the indexes, and what the log should warn of: for a restore point,
/// why the indexes could not tell whether it reaches it; for a time, the newer backup the
/// indexes passed over.
#[derive(Debug)]
pub struct IndexedChoice<'a> {
    /// The backup and why.
    pub choice: Choice<'a>,
    /// A warning for the log.
    pub warning: Option<String>,
}

/// Chooses the newest complete backup on `path` from which recovery reaches restore point
/// `name` (see the module's documentation), from the indexes of `steps`, which run from the
/// oldest such backup's start to the end of the archive. When a segment without an index
/// leaves it open, the newest backup not known to miss the restore point is chosen,
/// unchecked. Refuses when the indexes show that no backup reaches it.
pub fn choose_for_name<'a>(
    backups: &'a [BackupMeta],
    name: &str,
    path: &[Leg],
    steps: &[Step],
    size: SegmentSize,
) -> Result<IndexedChoice<'a>, String> {
    let usable = plan::usable(backups, path);
    let Some(&oldest) = usable.first() else {
        // The same refusal as without indexes.
        let choice = plan::choose(backups, &Target::Name(name.into()), path)?;
        return Ok(IndexedChoice {
            choice,
            warning: None,
        });
    };
    for &backup in usable.iter().rev() {
        let (Ok(start), Ok(stop)) = (backup.start(), backup.stop()) else {
            continue;
        };
        match first_restore_point(steps, name, start, size) {
            Found::At(point, segment) if point.lsn > stop => {
                let reason = format!(
                    "the newest complete backup consistent before restore point {name:?} \
                     (at {}, {}, in {segment}, by the archive's time index; backup consistent at {}, {})",
                    point.lsn,
                    time_text(point.time),
                    backup.stop_lsn,
                    backup.stop_time
                );
                return Ok(IndexedChoice {
                    choice: Choice {
                        backup,
                        reason,
                        stop: Some(point.lsn),
                    },
                    warning: None,
                });
            }
            // Recovery would stop there before the backup is consistent.
            Found::At(..) | Found::Nowhere => {}
            Found::Unknown(segment) => {
                let reason = format!(
                    "the newest complete backup on the timeline path (consistent at {}, {}) \
                     that the time index does not show missing restore point {name:?}",
                    backup.stop_lsn, backup.stop_time
                );
                let unchecked = format!(
                    "{}: whether recovery from backup {} reaches restore point {name:?} is not known",
                    uncovered(segment),
                    backup.id
                );
                return Ok(IndexedChoice {
                    choice: Choice {
                        backup,
                        reason,
                        stop: None,
                    },
                    warning: Some(unchecked),
                });
            }
        }
    }
    let newest = from_lsn(steps, oldest.start().unwrap_or_default(), size)
        .iter()
        .filter_map(|s| Some((s.index.as_ref()?, s.segment)))
        .flat_map(|(index, segment)| index.restore_points.iter().map(move |p| (p, segment)))
        .rfind(|(p, _)| p.name == name);
    Err(match newest {
        Some((point, segment)) => format!(
            "no complete backup reaches restore point {name:?}: the newest of that name is at {} ({}, in {segment}), \
             and the oldest complete backup, {}, is consistent at {} ({}); recovery from a backup stops at the \
             first restore point of the name after the backup's start",
            point.lsn,
            time_text(point.time),
            oldest.id,
            oldest.stop_lsn,
            oldest.stop_time
        ),
        None => format!(
            "the archive holds no restore point {name:?} along timeline path {} after the oldest \
             complete backup, {} (every archived segment from its start on has a time index, and \
             none names it): PostgreSQL would replay to the end and fail",
            path.iter()
                .map(|leg| leg.timeline.to_string())
                .collect::<Vec<_>>()
                .join(" → "),
            oldest.id
        ),
    })
}

/// Whether the archived WAL from a backup reaches a time target.
#[derive(Debug, PartialEq, Eq)]
pub enum TimeReach {
    /// Recovery stops in this segment, at or before the commit or abort starting at `by`
    /// (the segment's latest).
    Stops {
        /// The segment.
        segment: SegmentName,
        /// A commit or abort recovery stops at or before.
        by: Lsn,
    },
    /// No archived commit or abort is past the target, and every segment is indexed.
    Short {
        /// The latest commit or abort time found, and its segment.
        newest: Option<(PgTimestamp, SegmentName)>,
    },
    /// None found, but this segment (the first such) has no index, or ends in a record that
    /// may be a commit or abort.
    Unknown {
        /// The segment.
        segment: SegmentName,
    },
}

/// Whether recovery replaying `steps` from `from` stops for time `at` (after it, or at or
/// after it when `exclusive`), as PostgreSQL's `recovery_target_time` does.
pub fn time_reach(
    steps: &[Step],
    at: PgTimestamp,
    exclusive: bool,
    from: Lsn,
    size: SegmentSize,
) -> TimeReach {
    let stops = stops_at(at, exclusive);
    let mut newest: Option<(PgTimestamp, SegmentName)> = None;
    let mut unindexed = None;
    for step in from_lsn(steps, from, size) {
        let Some(index) = &step.index else {
            unindexed = unindexed.or(Some(step.segment));
            continue;
        };
        if let Some(latest) = &index.latest_xact {
            if latest.lsn < from {
                // Before the backup's start, so never replayed: what the segment holds after
                // the start is not known from its marks.
                unindexed = unindexed.or(Some(step.segment));
            } else if stops(latest.time) {
                return TimeReach::Stops {
                    segment: step.segment,
                    by: latest.lsn,
                };
            } else if newest.is_none_or(|(t, _)| t < latest.time) {
                newest = Some((latest.time, step.segment));
            }
        }
        if index.crossing_may_end_a_transaction() {
            unindexed = unindexed.or(Some(step.segment));
        }
    }
    match unindexed {
        Some(segment) => TimeReach::Unknown { segment },
        None => TimeReach::Short { newest },
    }
}

/// Whether a commit or abort at a time stops recovery to time `at`, as PostgreSQL's
/// `recovery_target_time` does: after it, or at or after it when `exclusive`.
fn stops_at(at: PgTimestamp, exclusive: bool) -> impl Fn(PgTimestamp) -> bool {
    move |t| if exclusive { t >= at } else { t > at }
}

/// The first commit or abort at or after `from` that the indexes of `steps` show stopping
/// recovery to time `at` ([`stops_at`]), with its segment. Recovery replaying from `from`
/// stops there or sooner: an unindexed segment, or a record that is neither its segment's
/// earliest nor latest, may stop it first.
pub fn first_known_stop(
    steps: &[Step],
    at: PgTimestamp,
    exclusive: bool,
    from: Lsn,
    size: SegmentSize,
) -> Option<(XactMark, SegmentName)> {
    let stops = stops_at(at, exclusive);
    from_lsn(steps, from, size).iter().find_map(|step| {
        let index = step.index.as_ref()?;
        [&index.earliest_xact, &index.latest_xact]
            .into_iter()
            .flatten()
            .filter(|mark| mark.lsn >= from && stops(mark.time))
            .min_by_key(|mark| mark.lsn)
            .map(|mark| (mark.clone(), step.segment))
    })
}

/// Chooses the backup for time `target` as [`plan::choose`] does, by the backups' stop
/// times, but never one consistent after `stop`, a commit or abort recovery to the target
/// stops at or before ([`first_known_stop`] from the start of the WAL the candidates need).
/// A backup's stop time is the clock of the host that took it; a commit's time is the
/// server's. Recovery from a backup consistent after such a commit stops before the backup
/// is consistent and fails, or, when the backup starts after the commit, already holds the
/// transaction the target leaves out.
pub fn choose_for_time<'a>(
    backups: &'a [BackupMeta],
    target: &Target,
    path: &[Leg],
    stop: Option<&(XactMark, SegmentName)>,
) -> Result<IndexedChoice<'a>, String> {
    let by_clock = plan::choose(backups, target, path)?;
    let consistent_by = |b: &BackupMeta, lsn: Lsn| b.stop().is_ok_and(|s| s <= lsn);
    let Some((mark, segment)) = stop.filter(|(m, _)| !consistent_by(by_clock.backup, m.lsn)) else {
        return Ok(IndexedChoice {
            choice: by_clock,
            warning: None,
        });
    };
    let evidence = format!(
        "recovery to {target} stops at or before the commit or abort at {} ({}, in segment {segment}, by the archive's time index)",
        mark.lsn,
        time_text(mark.time)
    );
    let passed = by_clock.backup;
    match plan::choose_where(backups, target, path, |b| consistent_by(b, mark.lsn)) {
        Ok(choice) => {
            let passed_over = format!(
                "{evidence}, before backup {} is consistent at {}, although that backup stopped at {} by the clock \
                 of the host that took it: are the two hosts' clocks apart? Choosing backup {} instead",
                passed.id, passed.stop_lsn, passed.stop_time, choice.backup.id
            );
            Ok(IndexedChoice {
                choice,
                warning: Some(passed_over),
            })
        }
        Err(_) => {
            let oldest = plan::usable(backups, path)
                .first()
                .copied()
                .unwrap_or(passed);
            Err(format!(
                "no backup is consistent before {target}: {evidence}, and every complete backup is consistent after \
                 that or stopped after the target by the clock of the host that took it (the oldest, {}, is \
                 consistent at {}, {})",
                oldest.id, oldest.stop_lsn, oldest.stop_time
            ))
        }
    }
}

/// Why the indexes cannot tell about `segment`, for messages.
pub fn uncovered(segment: SegmentName) -> String {
    format!(
        "the time index does not cover segment {segment} (archived before walhalla indexed WAL, \
         an unreadable index, or a record continuing into the next segment)"
    )
}

/// A time for messages.
pub fn time_text(time: PgTimestamp) -> String {
    format_time(time).unwrap_or_else(|| format!("{} µs after 2000-01-01", time.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::meta::testing::backup;
    use crate::timeindex::{CrossingRecord, INDEX_FORMAT, IndexEnd};

    const MIB: u32 = 1 << 20;
    /// 2026-01-01T00:00:00Z in PostgreSQL's microseconds.
    const BASE: i64 = 820_540_800_000_000;

    fn size() -> SegmentSize {
        SegmentSize::new(MIB).unwrap()
    }

    fn second(s: f64) -> PgTimestamp {
        PgTimestamp(BASE + (s * 1e6) as i64)
    }

    /// Segment `n` of timeline 1, indexed: its latest commit at second `n`, at the segment's
    /// offset 0x200, and restore points `(name, offset)`.
    fn indexed(n: u64, points: &[(&str, u64)]) -> SegmentIndex {
        let start = n * u64::from(MIB);
        let mark = |at: f64| XactMark {
            lsn: Lsn(start + 0x200),
            time: second(at),
        };
        SegmentIndex {
            format: INDEX_FORMAT,
            segment: SegmentName::new(TimelineId(1), SegNo(n), size()),
            records: 10,
            commits: 1,
            aborts: 0,
            earliest_xact: Some(mark(n as f64 - 0.5)),
            latest_xact: Some(mark(n as f64)),
            restore_points: points
                .iter()
                .map(|&(name, offset)| RestorePointMark {
                    name: name.into(),
                    lsn: Lsn(start + offset),
                    time: second(n as f64),
                })
                .collect(),
            valid_end: Lsn(start + u64::from(MIB)),
            end: IndexEnd::SegmentEnd,
        }
    }

    /// Segments 2 to 12 of timeline 1, all indexed but `unindexed`, with restore points.
    fn steps(points: &[(u64, &str, u64)], unindexed: &[u64]) -> Vec<Step> {
        let indexes = (2..13)
            .filter(|n| !unindexed.contains(n))
            .map(|n| {
                let here: Vec<(&str, u64)> = points
                    .iter()
                    .filter(|p| p.0 == n)
                    .map(|p| (p.1, p.2))
                    .collect();
                (SegNo(n), indexed(n, &here))
            })
            .collect();
        walk(
            &[(TimelineId(1), SegNo(2), SegNo(13))],
            BTreeMap::from([(TimelineId(1), indexes)]),
            size(),
        )
    }

    fn backups() -> [BackupMeta; 3] {
        [
            backup("a", 1, "0/200028", "0/200100", "2026-01-01T00:00:02Z"),
            backup("b", 1, "0/500028", "0/500100", "2026-01-01T00:00:05Z"),
            backup("c", 1, "0/900028", "0/900100", "2026-01-01T00:00:09Z"),
        ]
    }

    fn chosen(
        points: &[(u64, &str, u64)],
        unindexed: &[u64],
        name: &str,
    ) -> Result<(String, bool), String> {
        let backups = backups();
        let path = plan::path(TimelineId(1), &[]);
        choose_for_name(&backups, name, &path, &steps(points, unindexed), size())
            .map(|c| (c.choice.backup.id.clone(), c.warning.is_some()))
    }

    #[test]
    fn a_restore_point_chooses_the_newest_backup_consistent_before_it() {
        // Between backups a and b: a, checked.
        assert_eq!(
            chosen(&[(3, "x", 0x100)], &[], "x"),
            Ok(("a".into(), false))
        );
        // After c: c.
        assert_eq!(
            chosen(&[(3, "x", 0x100), (11, "x", 0x100)], &[], "x"),
            Ok(("c".into(), false))
        );
        // Inside b's backup (between its start and stop): recovery from b would stop there,
        // before b is consistent; from a it stops there too, consistently.
        assert_eq!(
            chosen(&[(5, "x", 0x80), (7, "x", 0)], &[], "x"),
            Ok(("a".into(), false))
        );
        // Nowhere, and everything indexed: refused, naming it.
        let refused = chosen(&[(3, "x", 0x100)], &[], "y").unwrap_err();
        assert!(refused.contains("no restore point \"y\""), "{refused}");
        // Before every backup's stop.
        let refused = chosen(&[(2, "x", 0x40)], &[], "x").unwrap_err();
        assert!(
            refused.contains("the newest of that name is at 0/200040"),
            "{refused}"
        );
    }

    #[test]
    fn an_unindexed_segment_leaves_the_choice_unchecked() {
        // Segment 10 was archived before indexing: c may reach it, unchecked.
        assert_eq!(
            chosen(&[(3, "x", 0x100)], &[10], "x"),
            Ok(("c".into(), true))
        );
        // A restore point found before the gap decides.
        assert_eq!(
            chosen(&[(9, "x", 0x200)], &[10], "x"),
            Ok(("c".into(), false))
        );
        // A restore point may continue from segment 10 into 11, where no index lists it.
        let backups = backups();
        let path = plan::path(TimelineId(1), &[]);
        let mut crossing = steps(&[(3, "x", 0x100)], &[]);
        let ten = crossing[8].index.as_mut().unwrap();
        ten.end = IndexEnd::Continues {
            at: Lsn(0xAFFFC0),
            length: 100,
            record: CrossingRecord::RestorePoint,
        };
        let chosen = choose_for_name(&backups, "x", &path, &crossing, size()).unwrap();
        assert_eq!(chosen.choice.backup.id, "c");
        assert!(chosen.warning.unwrap().contains("00000001000000000000000A"));
        // Any other record there changes nothing.
        crossing[8].index.as_mut().unwrap().end = IndexEnd::Continues {
            at: Lsn(0xAFFFC0),
            length: 100,
            record: CrossingRecord::Other,
        };
        let chosen = choose_for_name(&backups, "x", &path, &crossing, size()).unwrap();
        assert_eq!(
            (chosen.choice.backup.id.as_str(), chosen.warning),
            ("a", None)
        );
        // A record whose header is cut at the segment's end may be a restore point only
        // when it is long enough for one (98 bytes).
        for (length, unknown) in [(64, false), (97, false), (98, true), (200, true)] {
            crossing[8].index.as_mut().unwrap().end = IndexEnd::Continues {
                at: Lsn(0xAFFFF0),
                length,
                record: CrossingRecord::Unknown,
            };
            let chosen = choose_for_name(&backups, "x", &path, &crossing, size()).unwrap();
            assert_eq!(
                chosen.choice.backup.id.as_str(),
                if unknown { "c" } else { "a" },
                "{length}"
            );
        }
        // An index that did not read its whole segment counts as none.
        let mut cut = indexed(4, &[]);
        cut.end = IndexEnd::Truncated { at: Lsn(0x400100) };
        let cut = walk(
            &[(TimelineId(1), SegNo(4), SegNo(5))],
            BTreeMap::from([(TimelineId(1), BTreeMap::from([(SegNo(4), cut)]))]),
            size(),
        );
        assert!(cut[0].index.is_none());
    }

    #[test]
    fn a_time_is_reached_when_a_later_commit_is_archived() {
        let all = steps(&[], &[]);
        let from = Lsn(0x500028);
        let reach = |steps: &[Step], at: f64, exclusive| {
            time_reach(steps, second(at), exclusive, from, size())
        };
        let stops = |n: u64| TimeReach::Stops {
            segment: SegmentName::new(TimelineId(1), SegNo(n), size()),
            by: Lsn(n * u64::from(MIB) + 0x200),
        };
        assert_eq!(reach(&all, 6.5, false), stops(7));
        // A commit before the backup's start is never replayed: it stops nothing.
        let after_the_mark = Lsn(0x500300);
        assert_eq!(
            time_reach(&all, second(4.5), false, after_the_mark, size()),
            stops(6)
        );
        assert_eq!(reach(&all, 4.5, false), stops(5));
        // Inclusive stops after a commit at exactly the target, exclusive at it.
        assert_eq!(reach(&all, 6.0, false), stops(7));
        assert_eq!(reach(&all, 6.0, true), stops(6));
        let twelve = SegmentName::new(TimelineId(1), SegNo(12), size());
        assert_eq!(
            reach(&all, 60.0, false),
            TimeReach::Short {
                newest: Some((second(12.0), twelve))
            }
        );
        let gap = steps(&[], &[10]);
        assert_eq!(
            reach(&gap, 60.0, false),
            TimeReach::Unknown {
                segment: SegmentName::new(TimelineId(1), SegNo(10), size())
            }
        );
        // Found past the gap all the same.
        assert_eq!(reach(&gap, 10.5, false), stops(11));
        // A commit continuing into the next segment is unread: its time is not known.
        let mut crossing = steps(&[], &[]);
        crossing[8].index.as_mut().unwrap().end = IndexEnd::Continues {
            at: Lsn(0xAFFFC0),
            length: 100,
            record: CrossingRecord::XactEnd,
        };
        assert_eq!(
            reach(&crossing, 60.0, false),
            TimeReach::Unknown {
                segment: SegmentName::new(TimelineId(1), SegNo(10), size())
            }
        );
        // So is one whose header is cut, unless it is too short for a commit (34 bytes).
        for (length, unknown) in [(33, false), (34, true)] {
            crossing[8].index.as_mut().unwrap().end = IndexEnd::Continues {
                at: Lsn(0xAFFFF8),
                length,
                record: CrossingRecord::Unknown,
            };
            let reached = reach(&crossing, 60.0, false);
            assert_eq!(
                matches!(reached, TimeReach::Unknown { .. }),
                unknown,
                "{length}: {reached:?}"
            );
        }
    }

    #[test]
    fn a_time_passes_over_a_backup_the_indexes_show_consistent_after_it() {
        let all = steps(&[], &[]);
        let path = plan::path(TimelineId(1), &[]);
        let mut backups = backups();
        // c stopped at 00:00:09 by the server's clock; the host that took it was 3 s behind.
        backups[2].stop_time = "2026-01-01T00:00:06Z".into();
        let at = "2026-01-01T00:00:06.5Z";
        let target = Target::Time {
            at: at.parse().unwrap(),
            text: at.into(),
        };
        let from = backups[1].start().unwrap();
        let stop = first_known_stop(&all, second(6.5), false, from, size());
        let (mark, segment) = stop.clone().unwrap();
        assert_eq!((mark.lsn, mark.time), (Lsn(0x700200), second(7.0)));
        assert_eq!(segment.to_string(), "000000010000000000000007");
        let chosen = choose_for_time(&backups, &target, &path, stop.as_ref()).unwrap();
        assert_eq!(chosen.choice.backup.id, "b");
        let why = chosen.warning.unwrap();
        assert!(
            why.contains("before backup c is consistent at 0/900100") && why.contains("clocks"),
            "{why}"
        );
        // Without the index (or with nothing found past the target): the stop times decide.
        let chosen = choose_for_time(&backups, &target, &path, None).unwrap();
        assert_eq!(
            (chosen.choice.backup.id.as_str(), chosen.warning),
            ("c", None)
        );
        // A commit after the target, found after c's stop, leaves c chosen.
        let late = first_known_stop(&all, second(9.5), false, from, size());
        let chosen = choose_for_time(&backups, &target, &path, late.as_ref()).unwrap();
        assert_eq!(chosen.choice.backup.id, "c");
        // Exclusive stops at a commit at exactly the target; marks before `from` are not
        // replayed.
        let exact = first_known_stop(&all, second(6.0), true, from, size()).unwrap();
        assert_eq!(exact.0.lsn, Lsn(0x600200));
        let none = first_known_stop(&all, second(3.0), false, Lsn(0xC00300), size());
        assert_eq!(none, None);
        // An unindexed segment holds nothing known.
        let gap = steps(&[], &[7, 8]);
        let found = first_known_stop(&gap, second(6.5), false, from, size()).unwrap();
        assert_eq!(found.0.lsn, Lsn(0x900200));
    }

    #[test]
    fn a_time_no_backup_is_consistent_before_by_the_indexes_is_refused() {
        let all = steps(&[], &[]);
        let path = plan::path(TimelineId(1), &[]);
        // One backup, from segment 2 to 3, stopped at 00:00:01 by a clock behind the server's.
        let backups = [backup(
            "a",
            1,
            "0/200028",
            "0/300100",
            "2026-01-01T00:00:01Z",
        )];
        let at = "2026-01-01T00:00:01.7Z";
        let target = Target::Time {
            at: at.parse().unwrap(),
            text: at.into(),
        };
        let stop = first_known_stop(&all, second(1.7), false, Lsn(0x200028), size());
        let refused = choose_for_time(&backups, &target, &path, stop.as_ref()).unwrap_err();
        assert!(
            refused.contains("no backup is consistent before time")
                && refused.contains("commit or abort at 0/200200")
                && refused.contains("(the oldest, a, is consistent at 0/300100"),
            "{refused}"
        );
    }
}
