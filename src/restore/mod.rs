//! `walhalla restore`: a base backup from the archive into a new data directory, set up to
//! recover to a target through `walhalla fetch`.
//!
//! Everything that can be checked is checked before a byte is written: the backup is chosen
//! for the target along the timeline path ([`plan`]), and every WAL segment from it to the
//! target (or to the end of the archive) must be in the archive. Files are then written from
//! the backup's pieces, each verified against the server's manifest ([`extract`]); on any
//! failure the partial restore is removed, so nothing half-restored is left to start.

mod choice;
mod destination;
pub mod extract;
mod indexed;
pub mod pieces;
pub mod plan;
pub mod settings;
mod snapshot_hole;
mod target_time;
pub mod targets;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;

use crate::archive::{Archive, BackupObject, ClusterArchive, Location};
use crate::backup::catalog;
use crate::backup::manifest::{self, Manifest};
use crate::backup::meta::BackupMeta;
use crate::wal::{Lsn, SegNo, SegmentName, SystemId, TimelineId};
use crate::{blocking, envelope};
use choice::{choose, timeline_hint};
use destination::Destination;
use plan::Target;
use settings::Recovery;
use write::{finish_directory, tablespace_destinations, write_durable, write_files};

/// What `walhalla restore` was asked for.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The new data directory.
    pub dest: PathBuf,
    /// `latest` (by the target) or a backup's id.
    pub backup: Option<String>,
    /// The cluster, when the archive holds several.
    pub system_id: Option<SystemId>,
    /// How the restored server recovers.
    pub recovery: Recovery,
    /// Write `standby.signal` instead of `recovery.signal`.
    pub standby: bool,
    /// Empty a non-empty destination first.
    pub force: bool,
    /// New directories for tablespaces, by OID.
    pub tablespace_map: BTreeMap<u32, PathBuf>,
    /// Pieces fetched at once.
    pub parallelism: usize,
}

/// What a restore did, for the summary and `--json`.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: String,
    /// Why that one.
    pub reason: String,
    /// The target, in words.
    pub target: String,
    /// The data directory.
    pub data_directory: PathBuf,
    /// Where each tablespace went, by OID.
    pub tablespaces: BTreeMap<String, PathBuf>,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// The WAL segments the recovery needs, all checked present: the first and the last.
    pub wal: (String, String),
    /// A receiver's snapshot past the last complete segment, which this recovery does not
    /// replay (without `--partial`): the segment and where the snapshot ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_beyond: Option<(String, String)>,
    /// With `--partial`, the segment missing after `wal` whose snapshot recovery replays last,
    /// and where that snapshot (and so recovery) ends: the archive's WAL after it is not
    /// replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_in_snapshot: Option<(String, String)>,
    /// The settings added to postgresql.auto.conf.
    pub settings: BTreeMap<String, String>,
    /// The signal file written.
    pub signal: String,
    /// The PostgreSQL major the backup was taken from, whose binaries the server needs.
    pub postgres_major: u32,
    /// How to start the server.
    pub start: String,
}

/// Restores a backup from `archive` as `options` say.
pub async fn run(options: &RestoreOptions, archive: &Archive) -> anyhow::Result<RestoreReport> {
    let cluster = archive.cluster(archive.chosen_cluster(options.system_id).await?);
    let entries = catalog::read(&cluster).await?;
    let backups: Vec<BackupMeta> = entries
        .iter()
        .filter_map(|e| e.meta.as_ref().ok().cloned())
        .collect();
    if backups.is_empty() {
        bail!(
            "the archive holds no backup of cluster {} (walhalla backup takes one)",
            cluster.system_id()
        );
    }
    for b in backups.iter().filter(|b| !b.missing_objects.is_empty()) {
        tracing::warn!(
            "backup {} cannot be restored: {} of its objects are not in the archive (the first: {}); restore does not choose it",
            b.id,
            b.missing_objects.len(),
            b.missing_objects[0]
        );
    }

    let target = &options.recovery.target;
    // Listed once: the newest timeline for the path, the end of the WAL to check.
    let newest_segments = cluster.newest_segments_per_timeline().await?;
    let newest_timeline = newest_segments.iter().map(|s| s.timeline).max();
    // Segment numbers need a segment size: the backups' (all the same for one cluster).
    let newest: BTreeMap<TimelineId, SegNo> = match backups[0].segment_size() {
        Ok(size) => newest_segments
            .iter()
            .filter_map(|s| Some((s.timeline, s.segno(size)?)))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let (choice, path) = choose(&cluster, &backups, options, newest_timeline, &newest).await?;
    let (backup, reason) = (choice.backup, choice.reason);
    // Chosen, not yet restored: the checks below may still refuse it.
    tracing::info!(backup = %backup.id, "backup chosen: {reason}");
    let size = backup.segment_size().map_err(|e| anyhow!(e))?;
    let until = match target {
        Target::Lsn(lsn) => Some(*lsn),
        // Through the backup's last byte.
        Target::Immediate => Some(Lsn(backup
            .stop()
            .map_err(|e| anyhow!(e))?
            .0
            .saturating_sub(1))),
        _ => None,
    };
    let mut ranges =
        plan::needed_segments(backup, &path, until, &newest, size).map_err(|e| anyhow!(e))?;
    let exclusive = options.recovery.exclusive;
    // Where recovery stops, when the indexes tell: a restore point's the choice found, a
    // time's the indexes of the WAL to the end say. It needs nothing after that.
    let steps = match target {
        Target::Time { .. } => indexed::steps(&cluster, &ranges, size).await?,
        _ => Vec::new(),
    };
    let start = backup.start().map_err(|e| anyhow!(e))?;
    let stop =
        (choice.stop).or_else(|| targets::stop_position(&steps, target, exclusive, start, size));
    if let Some(stop) = stop {
        ranges = plan::needed_segments(backup, &path, Some(stop), &newest, size)
            .map_err(|e| anyhow!(e))?;
    }
    let mut held = BTreeMap::new();
    for &(timeline, from, to) in &ranges {
        let segments = cluster.segments_between(timeline, from, to, size).await?;
        held.entry(timeline)
            .or_insert_with(std::collections::BTreeSet::new)
            .extend(segments);
    }
    let more_wal = more_wal(options);
    // The last timeline's WAL ends before the target: not a hole, the target lies past the
    // archive's end. Refused, unless the restored server may get more WAL than the archive
    // holds (a standby, a fetch server, the receiver's snapshots): then it replays what the
    // archive holds, and the rest is its source's.
    let last_byte = Lsn(backup.stop().map_err(|e| anyhow!(e))?.0.saturating_sub(1));
    let past_end = plan::past_the_end(&ranges, &newest, SegNo::containing(last_byte, size));
    if let Some(last) = past_end {
        let needed = match last.1 {
            Some(n) => format!(
                "WAL after {}, the newest segment of timeline {}",
                SegmentName::new(last.0, n, size),
                last.0.0
            ),
            None => format!(
                "WAL of timeline {}, which has no segment archived yet",
                last.0.0
            ),
        };
        let problem = format!(
            "{target} lies past the archive's end: recovery from backup {} would need {needed}",
            backup.id,
        );
        match more_wal {
            None => bail!(
                "{problem}; nothing was written{}",
                timeline_hint(&path, options.recovery.timeline)
            ),
            Some(why) => {
                tracing::warn!("{problem}; going on, since {why}");
                plan::clip_to(&mut ranges, last);
            }
        }
    }
    let mut ends_in_snapshot = None;
    if let Some(missing) = plan::first_missing(&ranges, &held, size) {
        let backup_end = SegNo::containing(last_byte, size);
        let snapshot =
            snapshot_hole::snapshot_in_reach(&cluster, &ranges, missing, backup_end, size).await;
        let to_end = matches!(target, Target::End);
        let last_resort = to_end && options.recovery.partial && !options.standby;
        match (snapshot, last_resort) {
            (Ok(Some(end)), true) => {
                tracing::warn!(
                    "WAL segment {missing} is not in the archive, which holds a snapshot of it up \
                     to {end}: with --partial, recovery from backup {} replays it and ends there; \
                     the archive's WAL after it is not replayed",
                    backup.id
                );
                snapshot_hole::cut_before(&mut ranges, missing, size);
                ends_in_snapshot = Some((missing.to_string(), end.to_string()));
            }
            (Err(e), true) => return Err(e),
            (snapshot, _) => {
                // Only a restore to the end chooses the same backup and path with --partial.
                let snapshot = match snapshot {
                    Ok(Some(end)) if to_end => format!(
                        ". The archive holds a snapshot of it, its WAL up to {end}: `restore \
                         --partial` (not --standby) replays up to there and ends recovery, \
                         leaving out the archive's WAL after it"
                    ),
                    Ok(Some(end)) => {
                        format!(". The archive holds a snapshot of it, its WAL up to {end}")
                    }
                    _ => String::new(),
                };
                bail!(
                    "WAL segment {missing} is not in the archive, and recovery from backup {} to {target} needs it; nothing was written{}{snapshot}",
                    backup.id,
                    timeline_hint(&path, options.recovery.timeline)
                );
            }
        }
    }
    indexed::check_time(backup, target, exclusive, &steps, more_wal)?;
    if past_end.is_none() {
        indexed::check_lsn(&cluster, target, &ranges, &newest, size, more_wal).await?;
    }
    let wal_span = span(&ranges, size);
    let snapshot_beyond = match (target, options.recovery.partial) {
        (Target::End, false) => snapshot_beyond(&cluster, &ranges, size).await?,
        _ => None,
    };

    let (manifest, manifest_bytes) = read_manifest(&cluster, backup).await?;
    let tablespaces = tablespace_destinations(backup, &options.tablespace_map)?;
    // Every destination is checked before any is touched. --force empties only what the
    // command line names: a tablespace's default location is the source server's own.
    let mut destinations = vec![Destination::data_directory(
        options.dest.clone(),
        options.force,
    )];
    for (oid, dir) in &tablespaces {
        let mapped = options.tablespace_map.contains_key(oid);
        destinations.push(Destination::tablespace(
            *oid,
            dir.clone(),
            mapped,
            options.force,
        ));
    }
    let checked = destinations.clone();
    let local_archive = match archive.location() {
        Location::Local(dir) => Some(dir.clone()),
        _ => None,
    };
    blocking::run(move || {
        destination::refuse_overlaps(&checked)?;
        checked.iter().try_for_each(|destination| {
            if let Some(archive) = &local_archive {
                destination::refuse_the_archive(destination, archive)?;
            }
            destination.check()
        })
    })
    .await?;

    // The newest segment checked above, through which every one recovery needs is held; not
    // for a standby, which never ends recovery on a miss.
    let checked_through = (ranges.last())
        .filter(|_| !options.standby)
        .filter(|(_, from, to)| to > from)
        .map(|&(timeline, _, to)| SegmentName::new(timeline, SegNo(to.0 - 1), size));
    let settings = options
        .recovery
        .settings(cluster.system_id(), checked_through);
    let signal = if options.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    let restored = async {
        let prepared = destinations.clone();
        blocking::run(move || prepared.iter().try_for_each(Destination::prepare)).await?;
        let (files, bytes) =
            write_files(&cluster, backup, &manifest, options, &tablespaces).await?;
        let (dest, meta, settings, map) = (
            options.dest.clone(),
            backup.clone(),
            settings.clone(),
            tablespaces.clone(),
        );
        blocking::run(move || {
            // Beside the files, as pg_basebackup leaves it: pg_verifybackup checks the
            // directory.
            write_durable(&dest.join("backup_manifest"), &manifest_bytes)
                .context("write backup_manifest")?;
            finish_directory(&dest, &meta, &settings, &map, signal)
        })
        .await?;
        anyhow::Ok((files, bytes))
    };
    let (files, bytes) = match restored.await {
        Ok(done) => done,
        Err(e) => {
            blocking::run(move || destination::remove_partial(&destinations)).await;
            return Err(e.context(format!(
                "restore of backup {} failed; the partial restore was removed",
                backup.id
            )));
        }
    };
    Ok(RestoreReport {
        backup: backup.id.clone(),
        reason,
        target: target.to_string(),
        data_directory: options.dest.clone(),
        tablespaces: tablespaces
            .iter()
            .map(|(oid, dir)| (oid.to_string(), dir.clone()))
            .collect(),
        files,
        bytes,
        wal: wal_span,
        snapshot_beyond,
        ends_in_snapshot,
        settings: settings
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        signal: signal.into(),
        postgres_major: backup.server_major,
        start: settings::start_hint(&options.dest),
    })
}

/// The archive's newest snapshot when it lies past the last segment of `ranges` (what a
/// recovery to the end replays) on the same timeline: its segment and its end.
async fn snapshot_beyond(
    cluster: &ClusterArchive,
    ranges: &[(TimelineId, SegNo, SegNo)],
    size: crate::wal::SegmentSize,
) -> anyhow::Result<Option<(String, String)>> {
    let Some(&(timeline, _, to)) = ranges.last() else {
        return Ok(None);
    };
    let (_, snapshot) = cluster.newest_segment_and_snapshot().await?;
    let Some(snapshot) = snapshot.filter(|s| s.timeline == timeline) else {
        return Ok(None);
    };
    if snapshot.segno(size).is_none_or(|n| n < to) {
        return Ok(None);
    }
    Ok(cluster
        .newest_snapshot_end(snapshot)
        .await?
        .map(|end| (snapshot.to_string(), end.to_string())))
}

/// Why the restored server may replay WAL the archive does not hold yet, if it may (see
/// [`indexed`]).
fn more_wal(options: &RestoreOptions) -> Option<&'static str> {
    if options.recovery.server.is_some() {
        Some("the fetch server may hold newer WAL")
    } else if options.recovery.partial {
        Some("fetch --partial serves the receiver's snapshots past the complete segments")
    } else if options.standby {
        Some("a standby waits for WAL not archived yet rather than ending at the archive's end")
    } else {
        None
    }
}

/// The first and last segment names of `ranges`, for the report.
fn span(ranges: &[(TimelineId, SegNo, SegNo)], size: crate::wal::SegmentSize) -> (String, String) {
    let name = |tl, n| crate::wal::SegmentName::new(tl, n, size).to_string();
    match (ranges.first(), ranges.last()) {
        (Some(&(t1, from, _)), Some(&(t2, _, to))) => (name(t1, from), name(t2, SegNo(to.0 - 1))),
        _ => (String::new(), String::new()),
    }
}

/// The backup's manifest, verified, and its bytes.
async fn read_manifest(
    cluster: &ClusterArchive,
    backup: &BackupMeta,
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let id = backup.backup_id().map_err(|e| anyhow!(e))?;
    let key = cluster.backup_object_key(&id, &BackupObject::Manifest);
    let stored = cluster
        .get_backup_object(&id, &BackupObject::Manifest)
        .await?
        .ok_or_else(|| anyhow!("{key} is missing from the archive"))?;
    blocking::run(move || {
        let content = envelope::decode(&stored).with_context(|| format!("{key} is corrupt"))?;
        let manifest = manifest::parse(&content).with_context(|| key.clone())?;
        Ok((manifest, content))
    })
    .await
}

/// The summary of a restore, for a person.
pub fn describe(report: &RestoreReport) -> String {
    let mut out = format!(
        "restored backup {} into {} ({} files, {} MiB): {}\n",
        report.backup,
        report.data_directory.display(),
        report.files,
        report.bytes >> 20,
        report.reason
    );
    for (oid, dir) in &report.tablespaces {
        out.push_str(&format!("tablespace {oid} in {}\n", dir.display()));
    }
    out.push_str(&format!(
        "recovery to {} will replay WAL {} to {} (checked present in the archive)\n",
        report.target, report.wal.0, report.wal.1
    ));
    if let Some((segment, end)) = &report.ends_in_snapshot {
        out.push_str(&format!(
            "then the snapshot of {segment}, which the archive lacks, up to {end}, where recovery \
             ends: the archive's WAL after that hole is not replayed\n"
        ));
    }
    if let Some((segment, end)) = &report.snapshot_beyond {
        out.push_str(&format!(
            "the archive also holds a receiver's snapshot of {segment} up to {end}, past the last \
             complete segment: this recovery stops before it; after losing the primary and the \
             receiver's host, restore with --partial to replay it too\n"
        ));
    }
    out.push_str(&format!(
        "wrote {} and added to postgresql.auto.conf:\n",
        report.signal
    ));
    for (name, value) in &report.settings {
        out.push_str(&format!("  {name} = '{}'\n", value.replace('\'', "''")));
    }
    if !report.settings.contains_key("archive_mode") {
        out.push_str(
            "archiving is as the backup's configuration says: once promoted, the server archives its new \
             timeline where that sends it, which may be this archive; there the new timeline becomes the \
             newest, and a receiver of the original cluster, within about a minute of its history file's arrival, \
             waits for a server on it instead of streaming (restore with --archive-mode off for a copy \
             that must not)\n",
        );
    }
    out.push_str(&format!(
        "start the server with PostgreSQL {}'s pg_ctl: {}",
        report.postgres_major, report.start
    ));
    out
}
