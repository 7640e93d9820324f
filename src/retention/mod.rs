//! `walhalla prune`'s retention rule, pure: from what an archive holds (its backups, its
//! timelines' histories, every object of its `wal/` area) and a [`Policy`], the [`Plan`] of
//! what to delete and what is kept, and why. No I/O: the command lists the archive, calls
//! [`plan`], prints the plan (`--dry-run`) or deletes what it names.
//!
//! # Which backups are retained
//!
//! With [`Rule::Backups`], a complete backup (its WAL all archived) is retained when any of
//! these holds (the union, as PostgreSQL's backup tools do):
//!
//! - it is among the `keep` newest complete backups (by identifier, that is start time);
//! - it stopped (`stop_time`) within `within` before [`Policy::now`];
//! - it is the backup a restore to the start of `within` chooses on the newest timeline's
//!   path (of those that stopped before then, the one consistent last along it), so that
//!   every point of the duration can be restored, as pgBackRest's and Barman's time-based
//!   retention keep it;
//! - it is the newest complete backup: always, whatever the policy;
//! - it is the backup `restore` chooses for the newest timeline (the one it follows by
//!   default): of the complete backups on that timeline's path, the one consistent last along
//!   it. A promotion or a point-in-time restore to a point before the newest backup leaves the
//!   live timeline restorable only from an older backup, and two backups that overlapped
//!   (started in the same second, or a long one that ended after a later short one) make the
//!   newest by start another than the one consistent last.
//!
//! Every other complete backup is deleted. An incomplete backup (`wal_complete` false) is never
//! retained (restore never chooses it); it is deleted when older than the oldest retained
//! backup, and kept otherwise (`list` still shows it). So is a backup folder without usable
//! metadata, once it is known not to be a backup in progress (below), and a complete backup
//! that cannot be restored because a segment between its start and its stop has gone from the
//! archive since, along every timeline path it can follow: it is not counted among the complete
//! backups above, so a lost segment never makes prune keep a backup that cannot be restored in
//! place of older ones that can.
//!
//! # Which WAL is kept
//!
//! A retained backup can follow the path to a timeline (the timeline's history, then itself)
//! when restore's own test says so ([`crate::restore::plan`]): its start and stop timelines are
//! on the path, and it is consistent before the path leaves its stop timeline. So a timeline
//! that forked off the backup's timeline after the backup's stop is reachable from it; one that
//! forked before its stop, or off an ancestor before the backup's timeline began, is not. Along
//! every path it can follow, the backup needs what restore's `needed_segments` names: from its
//! start segment on its start timeline, and on each later timeline of the path from the segment
//! holding the switch point. A timeline's own path is among those a backup that reaches one of
//! its children can follow (restore with `--target-timeline current`, or a parent that went on
//! after the fork), so WAL of a parent past a fork is kept too.
//!
//! Per timeline, everything from the first segment any retained backup needs on it is kept
//! (segments, `.partial`, `.backup` files and receiver snapshots) and everything before it
//! goes ([`Kept::From`]). A timeline no retained backup needs loses all its WAL
//! ([`Kept::Nothing`]), except the newest timeline, which is kept whole, and a timeline after
//! 1 without a history file, whose fork point is unknown ([`Kept::All`]); a retained backup
//! that lies on no path the history files describe (one is missing) makes the rule refuse.
//! Timeline history files are never deleted. A receiver snapshot (`SEGMENT.partial.END`) is
//! deleted, whatever the rule, when the archive holds the full segment.
//!
//! # Archives without backups
//!
//! [`Rule::WalWithin`] keeps, per timeline, everything from the oldest segment modified within
//! the duration (a segment of unknown time counts as recent), and at least the newest complete
//! segment. [`Rule::WalBefore`] deletes, on every timeline, what lies before the segment
//! holding the position, and also keeps at least the newest complete segment. Both refuse an archive holding a complete backup: its WAL would go.
//!
//! # Backups in progress
//!
//! A backup folder without metadata is a backup that was interrupted, or one still running
//! (the metadata is written last). The rule refuses ([`PruneError::InProgress`]) when such a
//! folder is newer than every complete backup or started less than [`IN_PROGRESS_WINDOW`]
//! before `now`, and deletes it once it is older than the oldest retained backup. With
//! [`Policy::assume_interrupted`] (the operator knows no backup runs), every such folder is
//! deleted: else the next prune would refuse on the same folder again. The WAL a backup newer
//! than every complete backup needs is kept anyway (the newest complete backup is always
//! retained, and that WAL comes after its start); what the refusal protects is the folder
//! itself, and a backup racing the listing.
//!
//! A folder whose metadata exists but cannot be read (corrupt, or written by a newer
//! walhalla) is a backup that finished: the rule refuses rather than guess what it needs.

mod duration;
mod keep;
#[cfg(test)]
mod tests;

pub use duration::parse_duration;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::archive::{BackupId, ObjectName};
use crate::backup::meta::BackupMeta;
use crate::wal::{HistoryEntry, Lsn, SegmentName, SegmentSize, TimelineId};

/// How recently a backup folder without metadata must have started to be taken for a backup
/// still in progress, whatever its place among the complete backups.
pub const IN_PROGRESS_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// One object of the archive's `wal/` area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// What it is.
    pub name: ObjectName,
    /// Its size as stored, in bytes.
    pub bytes: u64,
    /// When it was stored (the store's modification time), if known: for [`Rule::WalWithin`].
    pub modified: Option<jiff::Timestamp>,
}

/// What the archive holds, as the command lists it for one cluster.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// Every backup with readable metadata, complete or not, in any order.
    pub backups: Vec<BackupMeta>,
    /// Backup folders without metadata: interrupted, or still in progress.
    pub interrupted: Vec<BackupId>,
    /// Backup folders whose metadata cannot be read, and why.
    pub unreadable: Vec<(BackupId, String)>,
    /// The history of every timeline that has a history file (timeline 1 has none).
    pub timelines: BTreeMap<TimelineId, Vec<HistoryEntry>>,
    /// Every object of the `wal/` area (history files may be listed too: they are kept).
    pub objects: Vec<StoredObject>,
    /// The cluster's WAL segment size.
    pub segment_size: SegmentSize,
}

/// What to retain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Retain backups by count and/or age, and the WAL they need (`--keep-backups`,
    /// `--keep-within`); at least one of the two must be given.
    Backups {
        /// Retain the newest this many complete backups (at least 1).
        keep: Option<usize>,
        /// Retain every complete backup that stopped within this long before `now`.
        within: Option<Duration>,
    },
    /// For an archive without backups: keep the WAL modified within this long (`--keep-wal-within`).
    WalWithin(Duration),
    /// For an archive without backups: delete the WAL before the segment holding this
    /// position, on every timeline (`--before`).
    WalBefore(Lsn),
}

/// The retention policy of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What to retain.
    pub rule: Rule,
    /// The time the durations count back from.
    pub now: jiff::Timestamp,
    /// Take every backup folder without metadata for an interrupted backup, never for one in
    /// progress (the operator knows no backup runs), and delete it.
    pub assume_interrupted: bool,
}

/// Why a backup is retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The newest complete backup, always retained.
    Newest,
    /// Among the newest `keep` complete backups.
    AmongNewest,
    /// Stopped within the `within` duration.
    Within,
    /// The one a restore to the start of the `within` duration chooses on the newest
    /// timeline's path: of those that stopped before it, the one consistent last along the
    /// path. So every point of the duration can be restored, not only those after the oldest
    /// backup within it.
    WindowStart,
    /// The backup `restore` chooses for the newest timeline, this one, by default: of those
    /// on its path, the one consistent last along it. It differs from the newest (by start)
    /// after a promotion, or when two backups overlapped (started in the same second, or a
    /// long one ended after a later short one).
    NewestTimeline(TimelineId),
}

/// A retained backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    /// The backup.
    pub id: BackupId,
    /// The segment its restore starts from.
    pub start: SegmentName,
    /// Every reason it is retained.
    pub why: Vec<Why>,
}

/// Why a backup is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doomed {
    /// A complete backup the policy does not retain.
    NotRetained,
    /// An incomplete backup older than the oldest retained one.
    Incomplete,
    /// A complete backup older than the oldest retained one that cannot be restored: this is
    /// not in the archive. One of its own objects (a piece, its manifest), else a segment
    /// between its start and its stop (the first one missing along the first path it can
    /// follow; every other path misses one too).
    Unrestorable(String),
    /// A folder without metadata older than the oldest retained backup.
    Interrupted,
    /// A folder without metadata newer than that, taken for an interrupted backup on the
    /// operator's word ([`Policy::assume_interrupted`]).
    AssumedInterrupted,
}

/// A backup folder to delete, whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedBackup {
    /// The folder.
    pub id: BackupId,
    /// Its size as stored, when its metadata says.
    pub stored_bytes: Option<u64>,
    /// Why it goes.
    pub why: Doomed,
}

/// What is kept of one timeline's WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Every object of this segment and later ones; older ones go.
    From(SegmentName),
    /// Everything, for this reason.
    All(&'static str),
    /// Nothing: no retained backup needs any of it.
    Nothing,
}

/// What a prune deletes and keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The retained backups, oldest first.
    pub retained: Vec<Retained>,
    /// Backup folders to delete, oldest first.
    pub delete_backups: Vec<DeletedBackup>,
    /// Objects of the `wal/` area to delete, with their sizes, in the order listed.
    pub delete_objects: Vec<(ObjectName, u64)>,
    /// What is kept of each timeline the archive knows.
    pub kept: BTreeMap<TimelineId, Kept>,
    /// Things the operator should know (a timeline no backup can restore, …).
    pub notes: Vec<String>,
}

impl Plan {
    /// The oldest retained backup.
    pub fn oldest_retained(&self) -> Option<&Retained> {
        self.retained.first()
    }

    /// The bytes the plan frees, as far as known (a folder without metadata counts 0).
    pub fn bytes_freed(&self) -> u64 {
        let objects: u64 = self.delete_objects.iter().map(|(_, bytes)| bytes).sum();
        let backups: u64 = self
            .delete_backups
            .iter()
            .filter_map(|b| b.stored_bytes)
            .sum();
        objects.saturating_add(backups)
    }
}

/// Why the rule refuses to plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PruneError {
    /// A backup folder without metadata may belong to a backup still running.
    #[error(
        "backup {id} has no metadata yet and {why}: a backup may be in progress, and prune does not run during one (if it was interrupted: prune --assume-interrupted)"
    )]
    InProgress {
        /// The folder.
        id: BackupId,
        /// What makes it look in progress.
        why: &'static str,
    },
    /// The policy or the inventory cannot be acted on.
    #[error("{0}")]
    Invalid(String),
}

/// A backup with its identifier checked, for ordering.
struct Backup<'a> {
    meta: &'a BackupMeta,
    id: BackupId,
}

/// Plans a prune of `inventory` by `policy` (the rules are in the module's documentation).
///
/// Refuses with [`PruneError::InProgress`] while a backup may be running, and with
/// [`PruneError::Invalid`] when the policy retains nothing by name (`--keep-backups 0`, or
/// neither count nor age), when a backup's metadata cannot be read or a complete backup's does
/// not make sense (it would be unsafe to guess what it needs), when a WAL-only rule meets
/// complete backups, or when a retained backup lies on no timeline path the history files
/// describe.
pub fn plan(inventory: &Inventory, policy: &Policy) -> Result<Plan, PruneError> {
    let size = inventory.segment_size;
    if let Some((id, why)) = inventory.unreadable.first() {
        return Err(invalid(format!(
            "the metadata of backup {id} cannot be read ({why}); prune does not guess what a backup needs. \
             If a newer walhalla wrote it, prune with that one; if it is corrupt (walhalla verify says so), \
             delete the backup's folder by hand"
        )));
    }
    let mut backups = Vec::new();
    for meta in &inventory.backups {
        let id = meta.backup_id().map_err(invalid)?;
        let context = |e: String| invalid(format!("backup {id}: {e}"));
        if meta.is_complete() {
            // Everything the rule reads of a complete backup must make sense, or nothing goes.
            if meta.start().map_err(context)? > meta.stop().map_err(context)? {
                return Err(context("it starts after it stops".into()));
            }
            if meta.start_timeline == 0 || meta.start_timeline > meta.stop_timeline {
                return Err(context(format!(
                    "it runs from timeline {} to timeline {}",
                    meta.start_timeline, meta.stop_timeline
                )));
            }
            meta.stop_timestamp().map_err(context)?;
            if meta.segment_size().map_err(context)? != size {
                return Err(context(format!(
                    "its segment size, {} bytes, is not the archive's, {size}",
                    meta.segment_size
                )));
            }
        }
        backups.push(Backup { meta, id });
    }
    backups.sort_by(|a, b| order(&a.id).cmp(&order(&b.id)));
    check_not_in_progress(inventory, &backups, policy)?;
    let timelines = keep::Timelines::new(inventory, size);
    let mut plan = Plan::default();
    // A complete backup whose own objects or WAL have gone from the archive since cannot be
    // restored: retaining it in place of one that can would leave nothing to restore from.
    let mut unrestorable = BTreeMap::new();
    for b in backups.iter().filter(|b| b.meta.is_complete()) {
        let (missing, what) = if let Some(object) = b.meta.missing_objects.first() {
            (object.clone(), "one of its own objects")
        } else if let Some(segment) = timelines.missing_before_consistency(b.meta) {
            (segment.to_string(), "between its start and its stop")
        } else {
            continue;
        };
        plan.notes.push(format!(
            "backup {} cannot be restored: {missing}, {what}, is not in the archive; it is not counted among the retained backups",
            b.id
        ));
        unrestorable.insert(b.id.clone(), missing);
    }
    let complete: Vec<&Backup> = backups
        .iter()
        .filter(|b| b.meta.is_complete() && !unrestorable.contains_key(&b.id))
        .collect();
    match policy.rule {
        Rule::Backups { keep, within } => {
            if keep.is_none() && within.is_none() {
                return Err(invalid(
                    "retain backups by --keep-backups, --keep-within, or both".into(),
                ));
            }
            if keep == Some(0) {
                return Err(invalid("--keep-backups must be at least 1".into()));
            }
            if complete.is_empty() {
                plan.notes.push(
                    "the archive holds no complete backup that can be restored: no WAL is deleted (for WAL alone, use --keep-wal-within or --before)".into(),
                );
                plan.kept = timelines.keep_all("no restorable backup to retain by");
            } else {
                plan.retained = retain(&complete, keep, within, policy.now, &timelines)?;
                let metas: Vec<&BackupMeta> = complete
                    .iter()
                    .filter(|b| plan.retained.iter().any(|r| r.id == b.id))
                    .map(|b| b.meta)
                    .collect();
                plan.kept = timelines
                    .needed_by(&metas, &mut plan.notes)
                    .map_err(invalid)?;
                plan.delete_backups = doomed(&backups, &plan.retained, &unrestorable);
            }
        }
        Rule::WalWithin(_) | Rule::WalBefore(_) if backups.iter().any(|b| b.meta.is_complete()) => {
            return Err(invalid(format!(
                "the archive holds {} complete backup(s), whose WAL --keep-wal-within and --before would not spare: retain backups with --keep-backups or --keep-within",
                backups.iter().filter(|b| b.meta.is_complete()).count()
            )));
        }
        Rule::WalWithin(within) => {
            let since = back_from(policy.now, within);
            plan.kept = timelines.modified_since(since);
        }
        Rule::WalBefore(lsn) => plan.kept = timelines.before(lsn, &mut plan.notes),
    }
    let oldest_retained = plan.retained.first().map(|r| &r.id);
    plan.delete_backups
        .extend(doomed_folders(inventory, oldest_retained, policy));
    plan.delete_backups
        .sort_by(|a, b| order(&a.id).cmp(&order(&b.id)));
    plan.delete_objects = keep::doomed_objects(&inventory.objects, &plan.kept, size);
    Ok(plan)
}

fn invalid(message: String) -> PruneError {
    PruneError::Invalid(message)
}

/// A backup identifier's order: its start time, then its number within that second (from
/// text, `-10` would sort before `-2`).
fn order(id: &BackupId) -> (&str, u32) {
    match id.as_str().split_once('-') {
        Some((time, n)) => (time, n.parse().unwrap_or(u32::MAX)),
        None => (id.as_str(), 1),
    }
}

/// The start time a backup identifier records (`YYYYMMDDTHHMMSSZ`).
fn started(id: &BackupId) -> Option<jiff::Timestamp> {
    let t = order(id).0;
    let part = |range: std::ops::Range<usize>| t.get(range);
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        part(0..4)?,
        part(4..6)?,
        part(6..8)?,
        part(9..11)?,
        part(11..13)?,
        part(13..15)?
    );
    text.parse().ok()
}

/// `now - duration`, or the earliest time when that is out of range.
fn back_from(now: jiff::Timestamp, duration: Duration) -> jiff::Timestamp {
    now.checked_sub(duration).unwrap_or(jiff::Timestamp::MIN)
}

fn check_not_in_progress(
    inventory: &Inventory,
    backups: &[Backup],
    policy: &Policy,
) -> Result<(), PruneError> {
    if policy.assume_interrupted {
        return Ok(());
    }
    let newest_complete = backups.iter().rev().find(|b| b.meta.is_complete());
    let recent = back_from(policy.now, IN_PROGRESS_WINDOW);
    for id in &inventory.interrupted {
        let why = if newest_complete.is_none_or(|b| order(id) > order(&b.id)) {
            "is newer than every complete backup"
        } else if started(id).is_none_or(|t| t >= recent) {
            "started less than a day ago"
        } else {
            continue;
        };
        return Err(PruneError::InProgress {
            id: id.clone(),
            why,
        });
    }
    Ok(())
}

/// The complete backups (oldest first) the policy retains, oldest first.
fn retain(
    complete: &[&Backup],
    keep: Option<usize>,
    within: Option<Duration>,
    now: jiff::Timestamp,
    timelines: &keep::Timelines,
) -> Result<Vec<Retained>, PruneError> {
    let since = within.map(|d| back_from(now, d));
    let reaching_newest = timelines.newest_reaching_latest(complete.iter().map(|b| b.meta));
    let stops = (complete.iter())
        .map(|b| b.meta.stop_timestamp().map_err(invalid))
        .collect::<Result<Vec<_>, _>>()?;
    // The backup a restore to the window's start chooses on the newest timeline's path: the
    // one consistent last of those that stopped before it. Without it, the window would begin
    // only where the oldest backup within it stopped.
    let window_start = since.and_then(|since| {
        let before: Vec<usize> = (0..complete.len()).filter(|&i| stops[i] < since).collect();
        let chosen = timelines.newest_reaching_latest(before.iter().map(|&i| complete[i].meta));
        chosen.map(|k| before[k])
    });
    let count = complete.len();
    let mut retained = Vec::new();
    for (index, backup) in complete.iter().enumerate() {
        let meta = backup.meta;
        let rank = count - index;
        let mut why = Vec::new();
        if rank == 1 {
            why.push(Why::Newest);
        }
        if keep.is_some_and(|keep| rank <= keep) {
            why.push(Why::AmongNewest);
        }
        if since.is_some_and(|since| stops[index] >= since) {
            why.push(Why::Within);
        }
        if window_start == Some(index) {
            why.push(Why::WindowStart);
        }
        if reaching_newest == Some(index) && rank != 1 {
            why.push(Why::NewestTimeline(timelines.latest()));
        }
        if !why.is_empty() {
            let start = meta.start().map_err(invalid)?;
            retained.push(Retained {
                id: backup.id.clone(),
                start: timelines.segment_of(meta.timeline(), start),
                why,
            });
        }
    }
    Ok(retained)
}

/// The backups with metadata to delete: complete ones not retained, and incomplete or
/// `unrestorable` ones older than the oldest retained backup.
fn doomed(
    backups: &[Backup],
    retained: &[Retained],
    unrestorable: &BTreeMap<BackupId, String>,
) -> Vec<DeletedBackup> {
    let Some(oldest) = retained.first().map(|r| order(&r.id)) else {
        return Vec::new();
    };
    backups
        .iter()
        .filter_map(|b| {
            let older = order(&b.id) < oldest;
            let why = if let Some(missing) = unrestorable.get(&b.id) {
                if !older {
                    return None;
                }
                Doomed::Unrestorable(missing.clone())
            } else if b.meta.is_complete() {
                if retained.iter().any(|r| r.id == b.id) {
                    return None;
                }
                Doomed::NotRetained
            } else if older {
                Doomed::Incomplete
            } else {
                return None;
            };
            Some(DeletedBackup {
                id: b.id.clone(),
                stored_bytes: Some(b.meta.stored_bytes),
                why,
            })
        })
        .collect()
}

/// The folders without metadata to delete: those older than the oldest retained backup, and,
/// when the policy assumes that no backup runs, every one, whatever the rule (else the next
/// prune would refuse on the same folder again).
fn doomed_folders(
    inventory: &Inventory,
    oldest_retained: Option<&BackupId>,
    policy: &Policy,
) -> Vec<DeletedBackup> {
    inventory
        .interrupted
        .iter()
        .filter_map(|id| {
            let why = if oldest_retained.is_some_and(|oldest| order(id) < order(oldest)) {
                Doomed::Interrupted
            } else if policy.assume_interrupted {
                Doomed::AssumedInterrupted
            } else {
                return None;
            };
            Some(DeletedBackup {
                id: id.clone(),
                stored_bytes: None,
                why,
            })
        })
        .collect()
}
