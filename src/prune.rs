//! `walhalla prune`: applies the retention rule ([`crate::retention`]) to one cluster's part
//! of the archive: lists it once, plans, and deletes what the plan names (backups first,
//! each starting with its metadata, then WAL objects oldest first), or with `--dry-run`
//! only says what would go. In a local archive it also removes the files interrupted
//! uploads left ([`crate::archive::leftovers`]).

use std::fmt::Write as _;

use anyhow::Context;

use serde::Serialize;

use crate::archive::ClusterArchive;
use crate::archive::leftovers::{self, Leftover};
use crate::backup::catalog::NoMeta;
use crate::list::survey;
use crate::progress::bytes;
use crate::retention::{self, Doomed, Kept, Policy, StoredObject, Why};

/// What `walhalla prune` was asked for.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// The rule and the time it counts from.
    pub policy: Policy,
    /// Say what would go; delete nothing.
    pub dry_run: bool,
}

/// What a prune did (or, with `--dry-run`, would do).
#[derive(Debug, Serialize)]
pub struct PruneReport {
    /// The cluster.
    pub system_id: String,
    /// Nothing was deleted.
    pub dry_run: bool,
    /// The retained backups and why.
    pub retained: Vec<Named>,
    /// The backups deleted and why.
    pub deleted_backups: Vec<Named>,
    /// The WAL-area objects deleted.
    pub deleted_objects: Vec<Sized>,
    /// Files interrupted uploads left in a local archive, removed.
    pub deleted_leftovers: Vec<Leftover>,
    /// Bytes freed, as far as known.
    pub freed_bytes: u64,
    /// Per timeline, what is kept: `from SEGMENT`, `all (why)` or `nothing`.
    pub kept: Vec<(u32, String)>,
    /// What the operator should know.
    pub notes: Vec<String>,
}

/// A backup and a reason.
#[derive(Debug, Serialize)]
pub struct Named {
    /// The backup.
    pub id: String,
    /// Why.
    pub why: String,
    /// Its stored size, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// An object and its stored size.
#[derive(Debug, Serialize)]
pub struct Sized {
    /// The object's file name.
    pub name: String,
    /// Its stored size in bytes.
    pub bytes: u64,
}

/// Plans and carries out a prune of `cluster`.
pub async fn run(cluster: &ClusterArchive, options: PruneOptions) -> anyhow::Result<PruneReport> {
    let survey = survey(cluster).await?;
    let Some(segment_size) = survey.segment_size else {
        anyhow::bail!(
            "cluster {}: no backup and no readable segment tells its segment size; nothing to prune",
            cluster.system_id()
        );
    };
    if let Some((timeline, why)) = survey.unreadable_histories.first() {
        anyhow::bail!(
            "the history file of timeline {timeline} cannot be read ({why}): prune needs every timeline's history; run walhalla verify"
        );
    }
    let inventory = retention::Inventory {
        backups: survey.backups,
        interrupted: (survey.unusable.iter())
            .filter(|(_, why)| *why == NoMeta::Absent)
            .map(|(id, _)| id.clone())
            .collect(),
        unreadable: (survey.unusable.into_iter())
            .filter_map(|(id, why)| match why {
                NoMeta::Unreadable(why) => Some((id, why)),
                NoMeta::Absent => None,
            })
            .collect(),
        timelines: survey.histories,
        objects: survey
            .inventory
            .objects
            .iter()
            .map(|(name, info)| StoredObject {
                name: *name,
                bytes: info.size,
                modified: info.modified,
            })
            .collect(),
        segment_size,
    };
    let plan = retention::plan(&inventory, &options.policy)?;
    let deleted_leftovers = cluster
        .staging_leftovers(leftovers::SETTLED)
        .await
        .context("looking for files interrupted uploads left")?;
    let mut report = PruneReport {
        system_id: cluster.system_id().to_string(),
        dry_run: options.dry_run,
        retained: plan
            .retained
            .iter()
            .map(|r| Named {
                id: r.id.to_string(),
                why: r.why.iter().map(why).collect::<Vec<_>>().join(", "),
                bytes: None,
            })
            .collect(),
        deleted_backups: plan
            .delete_backups
            .iter()
            .map(|b| Named {
                id: b.id.to_string(),
                why: doomed(&b.why),
                bytes: b.stored_bytes,
            })
            .collect(),
        deleted_objects: plan
            .delete_objects
            .iter()
            .map(|(name, bytes)| Sized {
                name: name.to_string(),
                bytes: *bytes,
            })
            .collect(),
        freed_bytes: plan.bytes_freed() + deleted_leftovers.iter().map(|l| l.bytes).sum::<u64>(),
        deleted_leftovers,
        kept: plan
            .kept
            .iter()
            .map(|(t, kept)| (t.0, kept_text(kept)))
            .collect(),
        notes: plan.notes.clone(),
    };
    if options.dry_run {
        return Ok(report);
    }
    let mut progress = Progress::default();
    let deleting = async {
        for backup in &plan.delete_backups {
            let without_meta =
                matches!(backup.why, Doomed::Interrupted | Doomed::AssumedInterrupted);
            if without_meta && cluster.has_backup_meta(&backup.id).await? {
                // A backup that was running after all has finished since the listing.
                let note = format!(
                    "backup {} wrote its metadata while prune ran: it was running, and is kept",
                    backup.id
                );
                tracing::warn!("{note}");
                report
                    .deleted_backups
                    .retain(|b| b.id != backup.id.as_str());
                report.notes.push(note);
                continue;
            }
            progress.at = Some((backup.id.as_str(), Step::Meta { without_meta }));
            cluster.delete_backup_meta(&backup.id).await?;
            progress.at = Some((backup.id.as_str(), Step::Rest));
            let objects = cluster.delete_backup_rest(&backup.id).await?;
            tracing::info!(backup = %backup.id, objects, "deleted backup");
            progress.backups.push(backup.id.as_str());
            progress.at = None;
        }
        for (name, _) in &plan.delete_objects {
            cluster.delete_wal_object(name).await?;
            progress.wal_objects += 1;
        }
        if !plan.delete_objects.is_empty() {
            tracing::info!(objects = plan.delete_objects.len(), "deleted WAL");
        }
        anyhow::Ok(())
    };
    // What went before a failure is said: the next run's plan no longer shows it.
    deleting.await.with_context(|| progress.stopped())?;
    leftovers::remove(report.deleted_leftovers.clone(), leftovers::SETTLED)
        .await
        .context("removing files interrupted uploads left")?;
    Ok(report)
}

fn why(why: &Why) -> String {
    match why {
        Why::Newest => "the newest complete backup".into(),
        Why::AmongNewest => "among the newest --keep-backups".into(),
        Why::Within => "stopped within --keep-within".into(),
        Why::WindowStart => {
            "the one restore chooses for the start of --keep-within (the newest before it)".into()
        }
        Why::NewestTimeline(t) => format!("the one restore chooses for timeline {t}"),
    }
}

fn doomed(why: &Doomed) -> String {
    match why {
        Doomed::NotRetained => "outside the retention".into(),
        Doomed::Incomplete => "incomplete, older than every retained backup".into(),
        Doomed::Unrestorable(missing) => {
            format!("cannot be restored ({missing} is missing), older than every retained backup")
        }
        Doomed::Interrupted => "interrupted, older than every retained backup".into(),
        Doomed::AssumedInterrupted => "interrupted, as --assume-interrupted says".into(),
    }
}

fn kept_text(kept: &Kept) -> String {
    match kept {
        Kept::From(segment) => format!("from {segment}"),
        Kept::All(why) => format!("all ({why})"),
        Kept::Nothing => "nothing".into(),
    }
}

/// `walhalla prune` for a person.
pub fn describe(report: &PruneReport) -> String {
    let mut out = String::new();
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let counted = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(
        out,
        "cluster {}: {verb} {} and {}, {}",
        report.system_id,
        counted(report.deleted_backups.len(), "backup"),
        counted(report.deleted_objects.len(), "WAL object"),
        bytes(report.freed_bytes)
    );
    for b in &report.retained {
        let _ = writeln!(out, "  keeps backup {}: {}", b.id, b.why);
    }
    for b in &report.deleted_backups {
        let size = b.bytes.map_or(String::new(), |n| format!(", {}", bytes(n)));
        let _ = writeln!(out, "  {verb} backup {}: {}{size}", b.id, b.why);
    }
    if !report.deleted_leftovers.is_empty() {
        let _ = writeln!(
            out,
            "  {verb} {} left by interrupted uploads",
            counted(report.deleted_leftovers.len(), "file")
        );
    }
    for (timeline, kept) in &report.kept {
        let _ = writeln!(out, "  timeline {timeline}: keeps {kept}");
    }
    if report.dry_run {
        for object in &report.deleted_objects {
            let _ = writeln!(out, "  {verb} {} ({})", object.name, bytes(object.bytes));
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out
}

/// How far a prune's deletions went, for the message when one fails.
#[derive(Default)]
struct Progress<'a> {
    /// The backups deleted whole.
    backups: Vec<&'a str>,
    /// The backup being deleted, and its step.
    at: Option<(&'a str, Step)>,
    /// The WAL objects deleted.
    wal_objects: usize,
}

/// A step of deleting one backup.
#[derive(Clone, Copy)]
enum Step {
    /// Its metadata: until it goes, the backup is as it was (whole, unless it was
    /// interrupted and has none).
    Meta {
        /// Interrupted: it has no metadata to delete, and is not whole.
        without_meta: bool,
    },
    /// The rest of its folder, its metadata gone.
    Rest,
}

impl Progress<'_> {
    /// What went before the failure, which the next run's plan no longer shows.
    fn stopped(&self) -> String {
        let mut said = match self.backups.as_slice() {
            [] => "prune stopped before deleting any backup".to_string(),
            ids => format!("prune stopped after deleting backups {}", ids.join(", ")),
        };
        match self.at {
            Some((id, Step::Meta { without_meta: true })) => said.push_str(&format!(
                ", at backup {id}, an interrupted one: nothing of it deleted yet"
            )),
            Some((
                id,
                Step::Meta {
                    without_meta: false,
                },
            )) => said.push_str(&format!(
                ", at backup {id}: deleting its metadata failed, so the backup is whole unless \
                 that delete took effect unanswered (`walhalla list` shows it)"
            )),
            Some((id, Step::Rest)) => said.push_str(&format!(
                ", while deleting backup {id} (its metadata already gone, it cannot be restored; \
                 prune --assume-interrupted deletes the rest of it)"
            )),
            None => {}
        }
        if self.wal_objects > 0 {
            said.push_str(&format!(" and {} WAL objects", self.wal_objects));
        }
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_cut_short_says_how_far_it_went() {
        let at = |backups: Vec<&'static str>, at, wal_objects| {
            Progress {
                backups,
                at,
                wal_objects,
            }
            .stopped()
        };
        assert_eq!(
            at(Vec::new(), None, 0),
            "prune stopped before deleting any backup"
        );
        // The store refused the first request: the backup is untouched.
        assert_eq!(
            at(
                vec!["A"],
                Some((
                    "B",
                    Step::Meta {
                        without_meta: false
                    }
                )),
                0
            ),
            "prune stopped after deleting backups A, at backup B: deleting its metadata failed, \
             so the backup is whole unless that delete took effect unanswered (`walhalla list` \
             shows it)"
        );
        assert_eq!(
            at(
                Vec::new(),
                Some(("B", Step::Meta { without_meta: true })),
                0
            ),
            "prune stopped before deleting any backup, at backup B, an interrupted one: nothing \
             of it deleted yet"
        );
        assert_eq!(
            at(vec!["A", "B"], Some(("C", Step::Rest)), 0),
            "prune stopped after deleting backups A, B, while deleting backup C (its metadata \
             already gone, it cannot be restored; prune --assume-interrupted deletes the rest of it)"
        );
        assert_eq!(
            at(vec!["A"], None, 3),
            "prune stopped after deleting backups A and 3 WAL objects"
        );
    }

    #[test]
    fn sizes_are_in_the_units_of_the_total() {
        let report = PruneReport {
            system_id: "7".into(),
            dry_run: true,
            retained: Vec::new(),
            deleted_backups: vec![Named {
                id: "20261205T174012Z".into(),
                why: "outside the retention".into(),
                bytes: Some(3 << 20),
            }],
            deleted_objects: vec![Sized {
                name: "000000010000000000000014".into(),
                bytes: 562,
            }],
            deleted_leftovers: vec![Leftover {
                path: "/a/wal/x.zst#1".into(),
                bytes: 10,
            }],
            freed_bytes: (3 << 20) + 572,
            kept: Vec::new(),
            notes: Vec::new(),
        };
        let text = describe(&report);
        assert!(
            text.contains("would delete 000000010000000000000014 (562 B)"),
            "{text}"
        );
        assert!(text.contains("outside the retention, 3.0 MiB"), "{text}");
        assert!(
            text.contains("would delete 1 file left by interrupted uploads"),
            "{text}"
        );
        assert!(
            text.starts_with("cluster 7: would delete 1 backup and 1 WAL object, 3.0 MiB"),
            "{text}"
        );
    }
}
