//! `restore`'s use of the archive's time indexes ([`super::targets`]): reading them along
//! the WAL a restore would replay, choosing the backup for a restore point, and checking
//! that the archived WAL reaches a time or a position, before a byte is written.
//!
//! When the restored server may replay WAL the archive does not hold yet (a fetch server is
//! given, or it restores as a standby, which waits for more WAL instead of ending), what the
//! indexes do not find is a warning, not a refusal: each check takes `more_wal`, the reason
//! why, if it may.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};

use super::plan::{self, Choice, Leg, Target};
use super::targets::{self, Step, TimeReach};
use crate::archive::ClusterArchive;
use crate::backup::meta::BackupMeta;
use crate::wal::{PgTimestamp, SegNo, SegmentName, SegmentSize, TimelineId};

/// The segments of `ranges` with their indexes, in order.
pub async fn steps(
    cluster: &ClusterArchive,
    ranges: &[(TimelineId, SegNo, SegNo)],
    size: SegmentSize,
) -> anyhow::Result<Vec<Step>> {
    let mut indexes: BTreeMap<TimelineId, BTreeMap<SegNo, _>> = BTreeMap::new();
    for &(timeline, from, to) in ranges {
        let found = cluster.segment_indexes(timeline, from, to, size).await?;
        indexes.entry(timeline).or_default().extend(found);
    }
    Ok(targets::walk(ranges, indexes, size))
}

/// Chooses the backup for restore point `name` on `path` by the indexes of the WAL from the
/// oldest usable backup on; `Err(String)` is a refusal, as [`plan::choose`]'s.
pub async fn choose_for_name<'a>(
    cluster: &ClusterArchive,
    backups: &'a [BackupMeta],
    name: &str,
    path: &[Leg],
    newest: &BTreeMap<TimelineId, SegNo>,
    more_wal: Option<&str>,
) -> anyhow::Result<Result<Choice<'a>, String>> {
    let target = Target::Name(name.into());
    let Some(&oldest) = plan::usable(backups, path).first() else {
        return Ok(plan::choose(backups, &target, path));
    };
    let size = oldest.segment_size().map_err(|e| anyhow!(e))?;
    let ranges = plan::needed_segments(oldest, path, None, newest, size).map_err(|e| anyhow!(e))?;
    let steps = steps(cluster, &ranges, size).await?;
    Ok(
        match targets::choose_for_name(backups, name, path, &steps, size) {
            Ok(chosen) => {
                if let Some(unchecked) = chosen.warning {
                    tracing::warn!(
                        "{unchecked}; choosing backup {} as without an index",
                        chosen.choice.backup.id
                    );
                }
                Ok(chosen.choice)
            }
            Err(refusal) => match more_wal {
                Some(why) => {
                    tracing::warn!("{refusal}; {why}, so choosing as without an index");
                    plan::choose(backups, &target, path)
                }
                None => Err(format!("{refusal}; nothing was written")),
            },
        },
    )
}

/// Chooses the backup for time `target` on `path`: by the backups' stop times, then checked
/// against the indexes ([`targets::choose_for_time`]) of the WAL from the start of the
/// backup before that one. When that one must be passed over, the WAL from the oldest
/// usable backup's start is read, and the newest backup consistent before the first commit
/// or abort past the target is chosen. `Err(String)` is a refusal, as [`plan::choose`]'s.
pub async fn choose_for_time<'a>(
    cluster: &ClusterArchive,
    backups: &'a [BackupMeta],
    (target, exclusive): (&Target, bool),
    path: &[Leg],
    newest: &BTreeMap<TimelineId, SegNo>,
) -> anyhow::Result<Result<Choice<'a>, String>> {
    let by_clock = match plan::choose(backups, target, path) {
        Ok(choice) => choice,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let (Target::Time { at, .. }, Ok(size), Ok(by_clock_stop)) = (
        target,
        by_clock.backup.segment_size(),
        by_clock.backup.stop(),
    ) else {
        return Ok(Ok(by_clock));
    };
    let Some(at) = PgTimestamp::from_unix_micros(at.as_microsecond()) else {
        return Ok(Ok(by_clock));
    };
    let by_clock = by_clock.backup;
    let usable = plan::usable(backups, path);
    let at_by_clock = usable.iter().position(|b| std::ptr::eq(*b, by_clock));
    let previous = at_by_clock
        .and_then(|i| i.checked_sub(1))
        .map_or(by_clock, |i| usable[i]);
    let mut first_stop = None;
    for from in [previous, usable[0]] {
        let from = earlier_start(from, by_clock);
        let ranges = plan::needed_segments(from, path, Some(by_clock_stop), newest, size)
            .map_err(|e| anyhow!(e))?;
        let steps = steps(cluster, &ranges, size).await?;
        let start = from.start().map_err(|e| anyhow!(e))?;
        first_stop = targets::first_known_stop(&steps, at, exclusive, start, size);
        if first_stop
            .as_ref()
            .is_none_or(|(mark, _)| by_clock_stop <= mark.lsn)
            || std::ptr::eq(from, usable[0])
        {
            break;
        }
    }
    Ok(
        targets::choose_for_time(backups, target, path, first_stop.as_ref()).map(|chosen| {
            if let Some(passed_over) = chosen.warning {
                tracing::warn!("{passed_over}");
            }
            chosen.choice
        }),
    )
}

/// Whichever of `a` and `b` starts first.
fn earlier_start<'a>(a: &'a BackupMeta, b: &'a BackupMeta) -> &'a BackupMeta {
    match (a.start(), b.start()) {
        (Ok(x), Ok(y)) if y < x => b,
        _ => a,
    }
}

/// Checks by the indexes of `steps` (from `backup` to the end of the archive) that recovery
/// to time `at` stops before the end of the archived WAL: refuses when every segment is
/// indexed and none has a commit or abort past it (unless `more_wal`), warns when one is not
/// indexed.
pub fn check_time(
    backup: &BackupMeta,
    target: &Target,
    exclusive: bool,
    steps: &[Step],
    more_wal: Option<&str>,
) -> anyhow::Result<()> {
    let Target::Time { at, .. } = target else {
        return Ok(());
    };
    let (Some(at), Ok(start), Ok(size)) = (
        PgTimestamp::from_unix_micros(at.as_microsecond()),
        backup.start(),
        backup.segment_size(),
    ) else {
        return Ok(());
    };
    match targets::time_reach(steps, at, exclusive, start, size) {
        TimeReach::Stops { segment, by } => tracing::info!(
            "by the archive's time index, recovery to {target} stops in segment {segment}, at or before the commit or abort at {by}"
        ),
        TimeReach::Unknown { segment } => tracing::warn!(
            "{}: whether the archived WAL reaches {target} is not checked",
            targets::uncovered(segment)
        ),
        TimeReach::Short { newest } => {
            let latest = match newest {
                Some((time, segment)) => format!(
                    "its latest commit or abort is at {} (in segment {segment})",
                    targets::time_text(time)
                ),
                None => "it holds no commit or abort".into(),
            };
            let problem = format!(
                "the archived WAL from backup {} does not reach {target}: {latest}, so PostgreSQL would replay to the end \
                 and fail with \"recovery ended before configured recovery target was reached\" (a time target \
                 needs a commit or abort after it; without a target, restore replays all the archive holds)",
                backup.id
            );
            return refuse_unless(more_wal, problem);
        }
    }
    Ok(())
}

/// Checks that the archived WAL holds a record at or past LSN target `target`, which recovery
/// must read to stop there, when the target's segment is the newest archived one of its
/// timeline (the last of `ranges`): its index says where the WAL ends ([`SegmentIndex::valid_end`](crate::timeindex::SegmentIndex)).
/// A target at or past that, such as a position in the unused rest of a segment after
/// `pg_switch_wal()`, is refused (with `more_wal`, warned about). Without an index, nothing
/// is checked.
pub async fn check_lsn(
    cluster: &ClusterArchive,
    target: &Target,
    ranges: &[(TimelineId, SegNo, SegNo)],
    newest: &BTreeMap<TimelineId, SegNo>,
    size: SegmentSize,
    more_wal: Option<&str>,
) -> anyhow::Result<()> {
    // Ranges end before their last number.
    let (Target::Lsn(lsn), Some(&(timeline, _, to))) = (target, ranges.last()) else {
        return Ok(());
    };
    let last = SegNo(to.0.saturating_sub(1));
    if newest.get(&timeline) != Some(&last) {
        return Ok(());
    }
    let indexes = cluster.segment_indexes(timeline, last, to, size).await?;
    let Some(end) = indexes.get(&last).map(|index| index.valid_end) else {
        return Ok(());
    };
    if end > *lsn {
        return Ok(());
    }
    let problem = format!(
        "the archived WAL ends at {end} (in segment {}, the newest of timeline {}), so no record \
         starts at or past {target}: PostgreSQL would replay to the end and fail with \
         \"recovery ended before configured recovery target was reached\"",
        SegmentName::new(timeline, last, size),
        timeline.0
    );
    refuse_unless(more_wal, problem)
}

/// Refuses the restore for `problem`, or only warns when the restored server may replay more
/// WAL than the archive holds (`more_wal`, why).
fn refuse_unless(more_wal: Option<&str>, problem: String) -> anyhow::Result<()> {
    match more_wal {
        Some(why) => {
            tracing::warn!("{problem}; going on, since {why}");
            Ok(())
        }
        None => bail!("{problem}; nothing was written"),
    }
}
