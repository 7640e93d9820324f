//! Which backup a restore starts from, and the timeline path its recovery follows: a backup
//! named with `--backup` (checked against the target and the path), or the one the target
//! chooses ([`plan::choose`], or the time indexes for a time or a restore point).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};

use super::plan::{self, Leg, Target};
use super::settings::TimelineChoice;
use super::{RestoreOptions, indexed};
use crate::archive::ClusterArchive;
use crate::backup::meta::BackupMeta;
use crate::wal::{SegNo, TimelineId, WalFileName, parse_history};

/// Why named backup `backup` cannot be restored along `path`, and what to give instead.
fn off_the_path(backup: &BackupMeta, path: &[Leg]) -> String {
    let timelines: Vec<String> = path.iter().map(|l| l.timeline.to_string()).collect();
    let own = backup.stop_timeline;
    let leg = |timeline: u32| path.iter().find(|l| l.timeline.0 == timeline);
    let why = match leg(own) {
        None => format!("timeline {own}, where it is consistent, is not on it"),
        Some(Leg { end: Some(end), .. }) => format!(
            "that path leaves timeline {own} at {end}, before the backup is consistent ({})",
            backup.stop_lsn
        ),
        Some(_) => format!(
            "timeline {}, where it starts, is not on it",
            backup.start_timeline
        ),
    };
    format!(
        "backup {} cannot be restored along timeline path {}: {why}; give --target-timeline {own} \
         to restore it on its own timeline, or name a backup on the path (walhalla list shows \
         each backup's timeline)",
        backup.id,
        timelines.join(" → ")
    )
}

/// Chooses the backup and the timeline path.
pub(super) async fn choose<'a>(
    cluster: &ClusterArchive,
    backups: &'a [BackupMeta],
    options: &RestoreOptions,
    newest_timeline: Option<TimelineId>,
    newest: &BTreeMap<TimelineId, SegNo>,
) -> anyhow::Result<(plan::Choice<'a>, Vec<Leg>)> {
    if let Some(id) = options.backup.as_deref().filter(|id| *id != "latest") {
        let backup = backups
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| anyhow!("the archive holds no usable backup {id}"))?;
        if !backup.is_complete() {
            bail!(
                "backup {id} is incomplete: WAL segment {} never reached the archive",
                backup.wal_missing.as_deref().unwrap_or("?")
            );
        }
        if let Some(first) = backup.missing_objects.first() {
            bail!(
                "backup {id} cannot be restored: {} of its objects are not in the archive (the first: {first}); choose another backup (walhalla list)",
                backup.missing_objects.len()
            );
        }
        let path = timeline_path(
            cluster,
            options.recovery.timeline,
            TimelineId(backup.stop_timeline),
            newest_timeline,
        )
        .await?;
        if plan::on_path(backup, &path).is_none() {
            bail!("{}", off_the_path(backup, &path));
        }
        // The target must lie after the named backup's consistency point, by the test that
        // chooses a backup: PostgreSQL cannot tell when it does not. Recovery to a time from a
        // backup that already holds later commits would stop after them and promote the wrong
        // state; to an LSN or a restore point, it would fail. (Where an xid lies is not known.)
        // Among the backups consistent up to its own consistency point (it sorts last), the
        // test must choose it: a commit the time index places between the target and its
        // start makes it pass over it.
        let stop = backup.stop().map_err(|e| anyhow!("backup {id}: {e}"))?;
        let up_to: Vec<BackupMeta> = (backups.iter())
            .filter(|b| b.stop().is_ok_and(|s| s <= stop))
            .cloned()
            .collect();
        let stop = match choose_on(cluster, &up_to, options, &path, newest).await? {
            // (A backup consistent at the same position is as good; where its recovery stops
            // is then not this one's.)
            Ok(choice) if choice.backup.stop_lsn == backup.stop_lsn => {
                choice.stop.filter(|_| choice.backup.id == backup.id)
            }
            Ok(choice) => bail!(
                "backup {id} cannot be restored to this target: it is consistent at {} ({}), \
                 not before the target; backup {} is {}",
                backup.stop_lsn,
                backup.stop_time,
                choice.backup.id,
                choice.reason
            ),
            Err(refusal) => bail!("backup {id} cannot be restored to this target: {refusal}"),
        };
        let reason = "named with --backup".to_string();
        return Ok((
            plan::Choice {
                backup,
                reason,
                stop,
            },
            path,
        ));
    }
    let timeline = options.recovery.timeline.unwrap_or(TimelineChoice::Latest);
    if timeline == TimelineChoice::Current {
        // The path is the chosen backup's own timeline: try the newest timeline first.
        let mut timelines: Vec<u32> = backups.iter().map(|b| b.stop_timeline).collect();
        timelines.sort_unstable();
        timelines.dedup();
        let mut last_error = String::new();
        for tl in timelines.into_iter().rev() {
            let path = plan::path(TimelineId(tl), &[]);
            match choose_on(cluster, backups, options, &path, newest).await? {
                Ok(choice) => return Ok((choice, path)),
                Err(e) => last_error = e,
            }
        }
        bail!(last_error);
    }
    let path = timeline_path(cluster, Some(timeline), TimelineId(1), newest_timeline).await?;
    let choice = choose_on(cluster, backups, options, &path, newest)
        .await?
        .map_err(|e| anyhow!("{e}{}", timeline_hint(&path, options.recovery.timeline)))?;
    Ok((choice, path))
}

/// For a refusal along the default path when it crosses timelines: which path that was, and
/// how to follow another (a target may lie on a timeline the newest one forked from).
pub(super) fn timeline_hint(path: &[Leg], chosen: Option<TimelineChoice>) -> String {
    if chosen.is_some() || path.len() < 2 {
        return String::new();
    }
    let timelines: Vec<String> = path.iter().map(|leg| leg.timeline.0.to_string()).collect();
    format!(
        " (along the path to the newest timeline, {}; --target-timeline N follows timeline N's)",
        timelines.join(" → ")
    )
}

/// Chooses the backup on `path`: for a restore point or a time with the archive's time
/// indexes, for the other targets by the backups alone. `Err(String)` is a refusal.
async fn choose_on<'a>(
    cluster: &ClusterArchive,
    backups: &'a [BackupMeta],
    options: &RestoreOptions,
    path: &[Leg],
    newest: &BTreeMap<TimelineId, SegNo>,
) -> anyhow::Result<Result<plan::Choice<'a>, String>> {
    match &options.recovery.target {
        Target::Name(name) => {
            let more_wal = super::more_wal(options);
            indexed::choose_for_name(cluster, backups, name, path, newest, more_wal).await
        }
        target @ Target::Time { .. } => {
            let target = (target, options.recovery.exclusive);
            indexed::choose_for_time(cluster, backups, target, path, newest).await
        }
        target => Ok(plan::choose(backups, target, path)),
    }
}

/// The timeline path for `choice`; `current` is `backup_timeline`, `latest` the newest of
/// the history files and `newest_segment_timeline`.
async fn timeline_path(
    cluster: &ClusterArchive,
    choice: Option<TimelineChoice>,
    backup_timeline: TimelineId,
    newest_segment_timeline: Option<TimelineId>,
) -> anyhow::Result<Vec<Leg>> {
    let timeline = match choice.unwrap_or(TimelineChoice::Latest) {
        TimelineChoice::Current => backup_timeline,
        TimelineChoice::Id(n) => TimelineId(n),
        TimelineChoice::Latest => {
            let newest_history = cluster.history_timelines().await?.into_iter().max();
            newest_history
                .max(newest_segment_timeline)
                .unwrap_or(TimelineId(1))
                .max(backup_timeline)
        }
    };
    if timeline.0 == 1 {
        return Ok(plan::path(timeline, &[]));
    }
    let name = WalFileName::History(timeline);
    let content = cluster.get_verified(&name).await?.ok_or_else(|| {
        anyhow!("the archive holds no {name}, which recovery to timeline {timeline} needs")
    })?;
    let history = parse_history(timeline, &content).map_err(|e| anyhow!("{name}: {e}"))?;
    Ok(plan::path(timeline, &history))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;

    #[test]
    fn a_refusal_along_the_default_path_names_it_when_it_crosses_timelines() {
        let forked = plan::path(
            TimelineId(2),
            &[crate::wal::HistoryEntry {
                timeline: TimelineId(1),
                switch_point: Lsn(0x300_0000),
            }],
        );
        assert_eq!(
            timeline_hint(&forked, None),
            " (along the path to the newest timeline, 1 → 2; --target-timeline N follows timeline N's)"
        );
        assert_eq!(timeline_hint(&forked, Some(TimelineChoice::Id(2))), "");
        assert_eq!(timeline_hint(&plan::path(TimelineId(1), &[]), None), "");
    }

    #[test]
    fn a_named_backup_off_the_path_is_refused_saying_where_it_lies() {
        use crate::backup::meta::testing::backup;
        let path = plan::path(
            TimelineId(3),
            &[
                crate::wal::HistoryEntry {
                    timeline: TimelineId(1),
                    switch_point: Lsn(0x300_0000),
                },
                crate::wal::HistoryEntry {
                    timeline: TimelineId(2),
                    switch_point: Lsn(0x500_0000),
                },
            ],
        );
        // Taken on timeline 1 after the promotion that began timeline 2 (an old primary that
        // went on): past the fork.
        let zombie = backup(
            "20261205T235218Z",
            1,
            "0/4000028",
            "0/4000100",
            "2026-12-05T23:52:30Z",
        );
        assert!(plan::on_path(&zombie, &path).is_none());
        assert_eq!(
            off_the_path(&zombie, &path),
            "backup 20261205T235218Z cannot be restored along timeline path 1 → 2 → 3: that path \
             leaves timeline 1 at 0/3000000, before the backup is consistent (0/4000100); give \
             --target-timeline 1 to restore it on its own timeline, or name a backup on the path \
             (walhalla list shows each backup's timeline)"
        );
        let elsewhere = backup(
            "20261205T235300Z",
            4,
            "0/6000028",
            "0/6000100",
            "2026-12-05T23:53:30Z",
        );
        assert!(
            off_the_path(&elsewhere, &path)
                .contains("timeline 4, where it is consistent, is not on it")
        );
    }
}
