//! `walhalla verify`: reads the archive back and reports everything wrong with it, each
//! finding naming the object and the problem: every object's envelope and CRC-32 and each
//! segment's first page ([`objects`]), timeline history files chaining, backups against their
//! manifests ([`backups`]), and continuity: every segment from each backup's start along its
//! timeline path to the newest one (the restorable window, [`crate::coverage`]).
//!
//! `--since` re-reads only objects stored since then (and backups that stopped since then);
//! the listing-based checks (history chain, continuity) always cover the whole archive.
//! Files interrupted uploads left in a local archive are listed apart: not damage, but space.

mod backups;
mod objects;

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

use crate::archive::ObjectName;
use crate::archive::leftovers::{self, Leftover};
use crate::archive::{Archive, ClusterArchive};
use crate::coverage::{self, TimelineWal, window::Window};
use crate::envelope;
use crate::list::{listing_of, survey};
use crate::wal::{
    HistoryEntry, Lsn, OwnPageAfter, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName,
};

/// The version of the `verify --json` schema.
pub const VERIFY_FORMAT: u32 = 1;

/// What `walhalla verify` was asked for.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions {
    /// Re-read only what was stored at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Objects read at once.
    pub parallelism: usize,
}

/// Something wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The object's key, or what is affected (a timeline, a backup's stream).
    pub object: String,
    /// What is wrong.
    pub problem: String,
}

/// How much was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Objects (or backups) read and checked.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Objects (or backups) not re-read: older than `--since`, or incomplete backups.
    pub skipped: u64,
    /// Segments archived without a time index whose index was made now.
    pub indexed: u64,
}

/// One cluster's verification.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// The cluster.
    pub system_id: String,
    /// WAL objects and history files read.
    pub wal: Tally,
    /// Backups read.
    pub backups: Tally,
    /// Everything wrong; empty when the cluster's part of the archive is clean.
    pub findings: Vec<Finding>,
    /// What is worth knowing but not wrong (WAL past a fork): they leave the cluster clean.
    pub notes: Vec<Finding>,
    /// Files interrupted uploads left in a local archive (not archived objects; prune
    /// removes them): worth cleaning, not damage, so they leave the cluster clean.
    pub leftovers: Vec<Leftover>,
}

/// What `walhalla verify` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`VERIFY_FORMAT`].
    pub format: u32,
    /// Each cluster checked.
    pub clusters: Vec<ClusterReport>,
}

impl Report {
    /// Whether nothing is wrong. An archive that holds no cluster is not: its location is
    /// wrong, its directory not mounted, or nothing was archived yet, and a verify run by a
    /// scheduler must not call that clean.
    pub fn is_clean(&self) -> bool {
        !self.clusters.is_empty() && self.clusters.iter().all(|c| c.findings.is_empty())
    }
}

/// Verifies the clusters of `archive` (or the one named).
pub async fn run(
    archive: &Archive,
    system_id: Option<SystemId>,
    options: VerifyOptions,
) -> anyhow::Result<Report> {
    let ids = crate::list::clusters(archive, system_id).await?;
    let mut clusters = Vec::new();
    for id in ids {
        let report = verify_cluster(&archive.cluster(id), options)
            .await
            .with_context(|| format!("cluster {id}"))?;
        clusters.push(report);
    }
    Ok(Report {
        format: VERIFY_FORMAT,
        clusters,
    })
}

async fn verify_cluster(
    cluster: &ClusterArchive,
    options: VerifyOptions,
) -> anyhow::Result<ClusterReport> {
    let survey = survey(cluster).await?;
    let mut findings = Vec::new();
    let indexed = cluster.indexed_segments().await?;
    let (wal, found) = objects::check(
        cluster,
        &survey.inventory,
        &indexed,
        options.since,
        options.parallelism,
    )
    .await;
    findings.extend(found);
    let (backups, found) =
        backups::check(cluster, &survey, options.since, options.parallelism).await;
    findings.extend(found);
    let inventory_empty = survey.inventory.objects.is_empty();
    let histories = survey.histories.clone();
    let mut notes = Vec::new();
    if let Some(size) = survey.segment_size {
        for past in coverage::past_forks(&survey.inventory, &histories, size) {
            let fork_segment = match past.fork_segment {
                Some(segment) => written_past(cluster, segment, past.at, size).await,
                None => false,
            };
            notes.extend(wal_past_fork(&past, fork_segment));
        }
    }
    let listing = listing_of(cluster.system_id(), survey);
    findings.extend(listing.unreadable_histories.iter().map(|h| Finding {
        object: h.id.clone(),
        problem: format!("unreadable: {}", h.reason),
    }));
    findings.extend(history_chain(&histories, &listing.timelines));
    let has_backups = listing.backups.iter().any(|b| b.is_restorable());
    findings.extend(continuity(
        &listing.timelines,
        &listing.windows,
        has_backups,
    ));
    if listing.segment_size.is_none() && !inventory_empty {
        findings.push(Finding {
            object: format!("cluster {}", cluster.system_id()),
            problem: "no backup and no readable segment tells the segment size: continuity was not checked".into(),
        });
    }
    let leftovers = cluster
        .staging_leftovers(leftovers::SETTLED)
        .await
        .context("looking for files interrupted uploads left")?;
    Ok(ClusterReport {
        system_id: cluster.system_id().to_string(),
        wal,
        backups,
        findings,
        notes,
        leftovers,
    })
}

/// Whether the archive's `segment` holds a page of its own past the page holding `at`: WAL
/// written on past the fork, not a standby's copy cut there. Decoded through
/// [`OwnPageAfter`], the stored (compressed) object in memory; an object that cannot be read
/// answers no here (`verify` names it when it reads the object, unless `--since` skips it).
async fn written_past(
    cluster: &ClusterArchive,
    segment: SegmentName,
    at: Lsn,
    size: SegmentSize,
) -> bool {
    let name = ObjectName::File(WalFileName::Segment(segment));
    let Ok(Some(stored)) = cluster.get_wal_object(&name).await else {
        return false;
    };
    let Some(start) = segment.start_lsn(size) else {
        return false;
    };
    crate::blocking::run(move || {
        let mut watch = OwnPageAfter::new(start, at.0 - start.0);
        envelope::decode_into(&stored, &mut watch).ok()?;
        watch.found()
    })
    .await
    .unwrap_or(false)
}

/// A note on what a timeline holds past the last point where a newer timeline branched off
/// it: not damage (a point-in-time restore's abandoned future, WAL a failover lost, a split
/// brain's), but WAL no other timeline replays, which restores (following the newest
/// timeline by default) never reach unless told to, and an operator should know is there.
fn wal_past_fork(past: &coverage::PastFork, fork_segment: bool) -> Option<Finding> {
    let mut held = Vec::new();
    if let Some(segment) = past.fork_segment.filter(|_| fork_segment) {
        held.push(format!("the rest of segment {segment}"));
    }
    let segments: u64 = past.runs.iter().map(|r| r.segments).sum();
    match (past.runs.first(), past.runs.last()) {
        (Some(first), _) if segments == 1 => held.push(format!("segment {}", first.first)),
        (Some(first), Some(last)) => held.push(format!(
            "{segments} segments, {} through {}",
            first.first, last.last
        )),
        _ => {}
    }
    if let Some(end) = past.snapshot_end {
        held.push(format!("a snapshot reaching {end}"));
    }
    if held.is_empty() {
        return None;
    }
    Some(Finding {
        object: format!("timeline {}", past.timeline.0),
        problem: format!(
            "WAL past {}, where timeline {} branched off it, the last to do so ({}): no newer \
             timeline replays it, and restores follow the newest timeline unless told otherwise \
             (a point-in-time restore's abandoned future, WAL a failover lost, or a split \
             brain's); walhalla restore --target-timeline {} reaches it",
            past.at,
            past.child.0,
            held.join(", "),
            past.timeline.0
        ),
    })
}

/// Every timeline after the first with WAL needs a history file, and each history must extend
/// its parent's, when the archive has that one: the same ancestors at the same switch points,
/// one more at the end. (A parent's history file the archive never had is not needed: the
/// child's names every ancestor, and a parent with WAL here is reported for lacking one.)
fn history_chain(
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    timelines: &[TimelineWal],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for t in timelines
        .iter()
        .filter(|t| t.timeline > 1 && !t.history_file)
    {
        findings.push(Finding {
            object: format!("timeline {}", t.timeline),
            problem: format!(
                "WAL but no {}: recovery cannot follow it",
                WalFileName::History(TimelineId(t.timeline))
            ),
        });
    }
    for (timeline, entries) in histories {
        let Some((last, ancestors)) = entries.split_last() else {
            continue;
        };
        if last.timeline.0 <= 1 {
            continue;
        }
        let name = WalFileName::History(*timeline).to_string();
        if let Some(parent) = histories.get(&last.timeline) {
            if parent.as_slice() != ancestors {
                findings.push(Finding {
                    object: name,
                    problem: format!(
                        "does not extend {}: the ancestors differ",
                        WalFileName::History(last.timeline)
                    ),
                });
            }
        }
    }
    findings
}

/// A finding for each hole that matters ([`coverage::breaking_gaps`]).
fn continuity(timelines: &[TimelineWal], windows: &[Window], has_backups: bool) -> Vec<Finding> {
    coverage::breaking_gaps(timelines, windows, has_backups)
        .into_iter()
        .map(|(gap, backup)| {
            let problem = match (backup, has_backups) {
                (Some(backup), _) => {
                    format!("{}: backup {backup} cannot be restored", missing(&gap))
                }
                (None, true) => format!("{}: the restorable window stops before it", missing(&gap)),
                (None, false) => missing(&gap),
            };
            let snapshot = coverage::gap_snapshot(timelines, &gap.first)
                .map_or(String::new(), |s| {
                    format!(" (a snapshot holds {}'s WAL up to {})", s.segment, s.end)
                });
            Finding {
                object: gap.first.clone(),
                problem: problem + &snapshot,
            }
        })
        .collect()
}

fn missing(gap: &coverage::SegmentRun) -> String {
    if gap.segments == 1 {
        "missing".to_string()
    } else {
        format!(
            "missing, with the next {} through {}",
            gap.segments - 1,
            gap.last
        )
    }
}

/// `walhalla verify` for a person.
pub fn describe(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.clusters {
        out.push_str(&format!(
            "cluster {}: {} WAL objects read ({}, {} not re-read, {} newly indexed), {} backups checked ({} skipped): {}\n",
            c.system_id,
            c.wal.objects,
            crate::progress::bytes(c.wal.bytes),
            c.wal.skipped,
            c.wal.indexed,
            c.backups.objects,
            c.backups.skipped,
            if c.findings.is_empty() {
                "clean".to_string()
            } else {
                format!("{} problems", c.findings.len())
            }
        ));
        for f in &c.findings {
            out.push_str(&format!("  {}: {}\n", f.object, f.problem));
        }
        for n in &c.notes {
            out.push_str(&format!("  note, {}: {}\n", n.object, n.problem));
        }
        if !c.leftovers.is_empty() {
            let bytes = c.leftovers.iter().map(|l| l.bytes).sum();
            out.push_str(&format!(
                "  {} files left by interrupted uploads ({}; not archived objects, walhalla prune removes them):\n",
                c.leftovers.len(),
                crate::progress::bytes(bytes)
            ));
            for leftover in &c.leftovers {
                out.push_str(&format!("    {}\n", leftover.path.display()));
            }
        }
    }
    if report.clusters.is_empty() {
        out.push_str(
            "the archive holds no cluster: nothing to verify (a wrong location or prefix, an \
             unmounted directory, or nothing archived yet?)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(timeline: u32, switch_point: u64) -> HistoryEntry {
        HistoryEntry {
            timeline: TimelineId(timeline),
            switch_point: Lsn(switch_point),
        }
    }

    #[test]
    fn a_history_needs_its_parents_only_to_agree_with_them() {
        // An archive begun on timeline 3: timeline 2's history was never here, and is not
        // needed (3's names every ancestor).
        let three = vec![entry(1, 0x0200_0000), entry(2, 0x0500_0100)];
        let histories = BTreeMap::from([(TimelineId(3), three.clone())]);
        assert!(history_chain(&histories, &[]).is_empty());

        // With timeline 2's here, the two must agree.
        let mut histories = histories;
        histories.insert(TimelineId(2), vec![entry(1, 0x0300_0000)]);
        let findings = history_chain(&histories, &[]);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].problem.contains("does not extend"),
            "{findings:?}"
        );
        histories.insert(TimelineId(2), vec![entry(1, 0x0200_0000)]);
        assert!(history_chain(&histories, &[]).is_empty());
    }
}
