//! `walhalla list`: what the archive holds, per cluster: its backups, its WAL per timeline as
//! runs of segments with the gaps named, its history files, and the restorable window along
//! each timeline path. The JSON form is documented in docs/ARCHIVE-FORMAT.md ("`list --json`").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;

use crate::archive::{Archive, BackupId, ClusterArchive, ObjectName, WalInventory};
use crate::backup::catalog::{self, NoMeta};
use crate::backup::meta::BackupMeta;
use crate::coverage::{self, SegmentRun, TimelineWal, window::Window};
use crate::progress::bytes;
use crate::timeindex::{self, SegmentIndex};
use crate::wal::{
    HistoryEntry, LongPageHeader, Lsn, SegNo, SegmentSize, SystemId, TimelineId, WalFileName,
    version,
};

/// The version of the `list --json` schema.
pub const LIST_FORMAT: u32 = 1;

/// What `walhalla list` reports.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// [`LIST_FORMAT`].
    pub format: u32,
    /// Each cluster in the archive (or the one named).
    pub clusters: Vec<ClusterListing>,
}

/// One cluster.
#[derive(Debug, Serialize)]
pub struct ClusterListing {
    /// Its system identifier, as a decimal string.
    pub system_id: String,
    /// Its PostgreSQL major version, from its backups or its WAL's page headers.
    pub postgres_major: Option<u32>,
    /// Its WAL segment size in bytes, when known.
    pub segment_size: Option<u32>,
    /// Its backups, oldest first.
    pub backups: Vec<BackupMeta>,
    /// Backup folders restore cannot use, with why.
    pub unusable: Vec<Unusable>,
    /// Its WAL, per timeline.
    pub timelines: Vec<TimelineWal>,
    /// History files that could not be read.
    pub unreadable_histories: Vec<Unusable>,
    /// The restorable window along the path to each timeline.
    pub windows: Vec<Window>,
}

/// Something in the archive that cannot be used, and why.
#[derive(Debug, Serialize)]
pub struct Unusable {
    /// The backup or the history file.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// The clusters `list` and `verify` read: `system_id` (an error, naming the clusters the
/// archive holds, when it holds no such cluster), or every one.
pub async fn clusters(
    archive: &Archive,
    system_id: Option<SystemId>,
) -> anyhow::Result<Vec<SystemId>> {
    let held = archive.clusters().await?;
    match system_id {
        None => Ok(held),
        Some(id) if held.contains(&id) => Ok(vec![id]),
        Some(id) => Err(crate::archive::ChoiceError::NotHeld { named: id, held }.into()),
    }
}

/// Reads what the archive holds of `system_id`, or of every cluster in it.
pub async fn listing(archive: &Archive, system_id: Option<SystemId>) -> anyhow::Result<Listing> {
    let ids = clusters(archive, system_id).await?;
    let mut clusters = Vec::new();
    for id in ids {
        clusters.push(
            cluster_listing(&archive.cluster(id))
                .await
                .with_context(|| format!("cluster {id}"))?,
        );
    }
    Ok(Listing {
        format: LIST_FORMAT,
        clusters,
    })
}

/// What one listing of a cluster's part of the archive found: what `list`, `verify` and
/// `prune` work from.
#[derive(Debug)]
pub struct Survey {
    /// The backups with readable metadata, oldest first.
    pub backups: Vec<BackupMeta>,
    /// Backup folders without usable metadata (interrupted, in progress, corrupt), and why.
    pub unusable: Vec<(BackupId, NoMeta)>,
    /// Every WAL object and history file.
    pub inventory: WalInventory,
    /// The parsed history files.
    pub histories: BTreeMap<TimelineId, Vec<HistoryEntry>>,
    /// History files that could not be read, and why.
    pub unreadable_histories: Vec<(TimelineId, String)>,
    /// The cluster's segment size, when a backup or a segment tells it.
    pub segment_size: Option<SegmentSize>,
    /// The cluster's PostgreSQL major version, likewise.
    pub major: Option<u32>,
}

/// Lists a cluster's part of the archive once and reads its backups' metadata and its
/// history files.
pub async fn survey(cluster: &ClusterArchive) -> anyhow::Result<Survey> {
    let (mut backups, mut unusable) = (Vec::new(), Vec::new());
    for entry in catalog::read(cluster).await? {
        match entry.meta {
            Ok(meta) => backups.push(meta),
            Err(reason) => unusable.push((entry.id, reason)),
        }
    }
    let inventory = cluster.wal_inventory().await?;
    let (histories, unreadable_histories) = cluster
        .histories(inventory.histories.iter().map(|(t, _)| *t).collect())
        .await?;
    let facts = facts(cluster, &backups, &inventory).await?;
    Ok(Survey {
        backups,
        unusable,
        inventory,
        histories,
        unreadable_histories,
        segment_size: facts.segment_size,
        major: facts.major,
    })
}

/// One cluster's listing.
pub async fn cluster_listing(cluster: &ClusterArchive) -> anyhow::Result<ClusterListing> {
    let mut listing = listing_of(cluster.system_id(), survey(cluster).await?);
    add_index_facts(cluster, &mut listing).await?;
    Ok(listing)
}

/// How many segments before a window's end are searched for the newest commit.
const COMMIT_SEARCH_SEGMENTS: u64 = 32;

/// Time indexes read, per timeline and segment.
type Indexes = BTreeMap<TimelineId, BTreeMap<SegNo, SegmentIndex>>;

/// Whether RFC 3339 time `a` is before `b` (`false` when either does not parse).
fn is_before(a: &str, b: &str) -> bool {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// Where each window span ends: its timeline and the segment just past its end.
fn span_ends(listing: &ClusterListing, size: SegmentSize) -> Vec<(TimelineId, SegNo)> {
    listing
        .windows
        .iter()
        .flat_map(|w| w.spans.iter().map(move |s| (w.timeline, &s.to_lsn)))
        .filter_map(|(t, end)| Some((TimelineId(t), SegNo::containing(end.parse().ok()?, size))))
        .collect()
}

/// Fills in where each window span ends, from the time indexes of the segments before its end
/// (none for segments archived without an index):
/// - the time: the newest commit (or abort) the last [`COMMIT_SEARCH_SEGMENTS`] segments
///   record, if any does;
/// - the position: just past the last whole record of the span's last segment, where its WAL
///   ends, rather than that segment's end. A record that runs on into a segment the archive
///   lacks cannot be replayed, and a switch leaves the rest of its segment unused.
fn set_end_times(listing: &mut ClusterListing, size: SegmentSize, indexes: &Indexes) {
    for window in &mut listing.windows {
        let Some(of_timeline) = indexes.get(&TimelineId(window.timeline)) else {
            continue;
        };
        for span in &mut window.spans {
            let Ok(end) = span.to_lsn.parse::<Lsn>() else {
                continue;
            };
            let to = SegNo::containing(end, size);
            let from = span.from_lsn.parse::<Lsn>().unwrap_or(end);
            let last_whole = (to.0.checked_sub(1))
                .and_then(|last| of_timeline.get(&SegNo(last)))
                .map(|index| index.valid_end)
                .filter(|&at| at >= from && at < end);
            if to.start_lsn(size) == end
                && let Some(at) = last_whole
            {
                span.to_lsn = at.to_string();
            }
            span.to_time = of_timeline
                .range(SegNo(to.0.saturating_sub(COMMIT_SEARCH_SEGMENTS))..to)
                .rev()
                .find_map(|(_, index)| index.latest_xact.as_ref())
                .and_then(|mark| timeindex::format_time(mark.time));
        }
    }
}

/// Fills in the windows' end times, reading only the indexes of the segments just before
/// each end (the daemon's survey).
pub async fn add_end_times(
    cluster: &ClusterArchive,
    listing: &mut ClusterListing,
) -> anyhow::Result<()> {
    let Some(size) = listing.segment_size.and_then(SegmentSize::new) else {
        return Ok(());
    };
    let mut indexes = Indexes::new();
    for (timeline, to) in span_ends(listing, size) {
        let from = SegNo(to.0.saturating_sub(COMMIT_SEARCH_SEGMENTS));
        let read = cluster.segment_indexes(timeline, from, to, size).await?;
        indexes.entry(timeline).or_default().extend(read);
    }
    set_end_times(listing, size, &indexes);
    Ok(())
}

/// Fills in each timeline's restore points and how many of its segments are indexed, and the
/// windows' end times, from every time index the archive holds (a read of each, once).
pub async fn add_index_facts(
    cluster: &ClusterArchive,
    listing: &mut ClusterListing,
) -> anyhow::Result<()> {
    let Some(size) = listing.segment_size.and_then(SegmentSize::new) else {
        return Ok(());
    };
    let segno = |text: &str| match text.parse::<WalFileName>().ok()? {
        WalFileName::Segment(s) => s.segno(size),
        _ => None,
    };
    let mut indexes = Indexes::new();
    for timeline in &mut listing.timelines {
        let first = timeline.ranges.first().and_then(|r| segno(&r.first));
        let last = timeline.ranges.last().and_then(|r| segno(&r.last));
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let id = TimelineId(timeline.timeline);
        let read = cluster
            .segment_indexes(id, first, SegNo(last.0 + 1), size)
            .await?;
        timeline.indexed_segments = read.len() as u64;
        timeline.restore_points = read
            .values()
            .flat_map(|index| index.restore_points.iter().cloned())
            .collect();
        indexes.insert(id, read);
    }
    set_end_times(listing, size, &indexes);
    Ok(())
}

/// The listing of what `survey` found of cluster `system_id`.
pub fn listing_of(system_id: SystemId, survey: Survey) -> ClusterListing {
    let (timelines, windows) = match survey.segment_size {
        Some(size) => covered(&survey.inventory, &survey.histories, &survey.backups, size),
        None => (Vec::new(), Vec::new()),
    };
    ClusterListing {
        system_id: system_id.to_string(),
        postgres_major: survey.major,
        segment_size: survey.segment_size.map(SegmentSize::bytes),
        backups: survey.backups,
        unusable: survey
            .unusable
            .into_iter()
            .map(|(id, reason)| Unusable {
                id: id.to_string(),
                reason: reason.to_string(),
            })
            .collect(),
        timelines,
        unreadable_histories: survey
            .unreadable_histories
            .into_iter()
            .map(|(t, reason)| Unusable {
                id: WalFileName::History(t).to_string(),
                reason,
            })
            .collect(),
        windows,
    }
}

/// The runs per timeline and the windows along every timeline's path.
fn covered(
    inventory: &WalInventory,
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    backups: &[BackupMeta],
    size: SegmentSize,
) -> (Vec<TimelineWal>, Vec<Window>) {
    let timelines = coverage::timelines(inventory, histories, size);
    let held = coverage::held_segments(&inventory.objects, size);
    let windows = coverage::window::windows(
        timelines.iter().map(|t| TimelineId(t.timeline)),
        backups,
        histories,
        &held,
        size,
    );
    (timelines, windows)
}

/// The segment size and major version of a cluster.
struct Facts {
    segment_size: Option<SegmentSize>,
    major: Option<u32>,
}

/// From the newest backup, or else from the first page of the newest segment.
async fn facts(
    cluster: &ClusterArchive,
    backups: &[BackupMeta],
    inventory: &WalInventory,
) -> anyhow::Result<Facts> {
    if let Some(backup) = backups.last() {
        return Ok(Facts {
            segment_size: backup.segment_size().ok(),
            major: Some(backup.server_major),
        });
    }
    let newest = inventory
        .objects
        .iter()
        .rev()
        .find_map(|(name, _)| match name {
            ObjectName::File(file @ WalFileName::Segment(_)) => Some(*file),
            _ => None,
        });
    let Some(name) = newest else {
        return Ok(Facts {
            segment_size: None,
            major: None,
        });
    };
    let content = cluster.get_verified(&name).await?;
    let header = content
        .as_deref()
        .and_then(|c| LongPageHeader::parse(c).ok());
    Ok(Facts {
        segment_size: header.and_then(|h| h.segment_size().ok()),
        major: header.and_then(|h| version::by_page_magic(h.magic).ok().map(|m| m.number)),
    })
}

/// `walhalla list` for a person.
pub fn describe(listing: &Listing) -> String {
    let mut out = String::new();
    for cluster in &listing.clusters {
        describe_cluster(cluster, &mut out);
    }
    if listing.clusters.is_empty() {
        out.push_str(
            "the archive holds no cluster (a wrong location or prefix, an unmounted directory, \
             or nothing archived yet?)\n",
        );
    }
    out
}

fn describe_cluster(cluster: &ClusterListing, out: &mut String) {
    let major = cluster
        .postgres_major
        .map_or(String::new(), |m| format!(", PostgreSQL {m}"));
    let size = cluster
        .segment_size
        .map_or(String::new(), |s| format!(", {} MiB segments", s >> 20));
    let _ = writeln!(out, "cluster {}{major}{size}", cluster.system_id);
    describe_backups(cluster, out);
    out.push_str("  WAL\n");
    // With backups, a gap that breaks no window and no backup is WAL no restore needs, as
    // prune leaves before the oldest backup it keeps: named, but not as a hole.
    let has_backups = cluster.backups.iter().any(|b| b.is_restorable());
    let breaking = coverage::breaking_gaps(&cluster.timelines, &cluster.windows, has_backups);
    // A breaking run may start inside a gap (a backup's first missing segment), and names of
    // one timeline sort as they number.
    let needed = |gap: &SegmentRun| {
        !has_backups || (breaking.iter()).any(|(g, _)| gap.first <= g.first && g.first <= gap.last)
    };
    for t in &cluster.timelines {
        let parent = t.parent.as_ref().map_or(String::new(), |(p, at)| {
            format!(" (from timeline {p} at {at})")
        });
        let history = if t.timeline > 1 && !t.history_file {
            ", NO HISTORY FILE"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    timeline {}{parent}{history}: {} stored",
            t.timeline,
            bytes(t.stored_bytes)
        );
        // Runs and the gaps between them in WAL order (names of one timeline sort as they
        // number).
        let mut runs: Vec<(&str, String)> = t
            .ranges
            .iter()
            .map(|r| {
                (
                    r.first.as_str(),
                    format!("{} .. {}  {} segments", r.first, r.last, r.segments),
                )
            })
            .chain(t.gaps.iter().map(|g| {
                let line = if needed(g) {
                    let snapshot = coverage::gap_snapshot(&cluster.timelines, &g.first)
                        .map_or(String::new(), |s| {
                            format!("; a snapshot holds {}'s WAL up to {}", s.segment, s.end)
                        });
                    format!(
                        "GAP {} .. {}  {} missing{snapshot}",
                        g.first, g.last, g.segments
                    )
                } else {
                    format!(
                        "absent {} .. {}  {} segments, which no restore from these backups needs",
                        g.first, g.last, g.segments
                    )
                };
                (g.first.as_str(), line)
            }))
            .collect();
        runs.sort_by(|a, b| a.0.cmp(b.0));
        for (_, line) in runs {
            let _ = writeln!(out, "      {line}");
        }
        for p in &t.partial_files {
            let _ = writeln!(out, "      {p}");
        }
        if t.snapshots > 0 {
            let _ = writeln!(
                out,
                "      {} receiver snapshot(s) (SEGMENT.partial.END)",
                t.snapshots
            );
        }
        for point in &t.restore_points {
            let time = timeindex::format_time(point.time).unwrap_or_default();
            let _ = writeln!(
                out,
                "      restore point {:?} at {} ({time})",
                point.name, point.lsn
            );
        }
    }
    if cluster.timelines.is_empty() {
        out.push_str("    none\n");
    }
    for h in &cluster.unreadable_histories {
        let _ = writeln!(out, "    {} unreadable: {}", h.id, h.reason);
    }
    out.push_str("  restorable window\n");
    for w in &cluster.windows {
        let path = w
            .path
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" > ");
        let _ = writeln!(out, "    timeline {} (path {path})", w.timeline);
        for s in &w.spans {
            let end = match &s.broken_by {
                Some(missing) => match coverage::gap_snapshot(&cluster.timelines, missing) {
                    Some(snapshot) => format!(
                        ", then {missing} is missing; a snapshot holds its WAL up to {}",
                        snapshot.end
                    ),
                    None => format!(", then {missing} is missing"),
                },
                None => ", the end of the archive".to_string(),
            };
            let until = match &s.to_time {
                None => String::new(),
                // A backup taken while nothing committed: no time target lies in the span.
                Some(t) if is_before(t, &s.from_time) => {
                    format!(" (last commit {t}, before the backup: no time target in this span)")
                }
                Some(t) => format!(" (last commit {t})"),
            };
            let _ = writeln!(
                out,
                "      {} ({}, backup {}) to {}{until}{end}",
                s.from_lsn, s.from_time, s.from_backup, s.to_lsn
            );
        }
        if w.spans.is_empty() {
            out.push_str("      none: no backup can be restored along this path\n");
        }
        for u in &w.unrestorable {
            let _ = writeln!(
                out,
                "      backup {} cannot be restored: {} is missing",
                u.backup, u.missing
            );
        }
    }
}

fn describe_backups(cluster: &ClusterListing, out: &mut String) {
    let _ = writeln!(
        out,
        "  {:<20} {:<28} {:<22} {:<22} {:>3} {:>10} {:>10}  STATE",
        "BACKUP", "STOPPED (UTC)", "START LSN", "STOP LSN", "TLI", "SIZE MiB", "STORED MiB",
    );
    for b in &cluster.backups {
        let lost = (cluster.windows.iter())
            .flat_map(|w| &w.unrestorable)
            .find(|u| u.backup == b.id);
        let state = if let Some(missing) = b.missing_objects.first() {
            format!("cannot be restored ({missing} is missing)")
        } else if let Some(lost) = lost {
            format!("cannot be restored ({} is missing)", lost.missing)
        } else if b.is_complete() {
            "complete".to_string()
        } else {
            format!(
                "incomplete (missing {})",
                b.wal_missing.as_deref().unwrap_or("?")
            )
        };
        let standby = if b.from_standby {
            ", from a standby"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<28} {:<22} {:<22} {:>3} {:>10} {:>10}  {state}{standby}",
            b.id,
            b.stop_time,
            b.start_lsn,
            b.stop_lsn,
            b.stop_timeline,
            b.size() >> 20,
            b.stored_bytes >> 20,
        );
    }
    for u in &cluster.unusable {
        let _ = writeln!(out, "  {:<20} unusable: {}", u.id, u.reason);
    }
    if cluster.backups.is_empty() && cluster.unusable.is_empty() {
        out.push_str("  no backups\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::window::Span;
    use crate::wal::SegmentName;

    fn span(to_lsn: &str, to_time: Option<&str>) -> Span {
        Span {
            from_lsn: "0/6100100".into(),
            from_time: "2026-12-05T23:55:09Z".into(),
            from_backup: "20261205T235508Z".into(),
            to_lsn: to_lsn.into(),
            to_time: to_time.map(Into::into),
            broken_by: None,
        }
    }

    /// A cluster of 1 MiB segments on timeline 1 with these window spans.
    fn cluster_with(spans: Vec<Span>) -> ClusterListing {
        ClusterListing {
            system_id: "7".into(),
            postgres_major: Some(17),
            segment_size: Some(1 << 20),
            backups: Vec::new(),
            unusable: Vec::new(),
            timelines: Vec::new(),
            unreadable_histories: Vec::new(),
            windows: vec![Window {
                timeline: 1,
                path: vec![1],
                spans,
                unrestorable: Vec::new(),
            }],
        }
    }

    #[test]
    fn a_span_ends_where_its_last_segments_wal_ends_when_the_index_tells() {
        let size = SegmentSize::new(1 << 20).unwrap();
        let index = |segno: u64, valid_end: u64| {
            let segment = SegmentName::new(TimelineId(1), SegNo(segno), size);
            let index = SegmentIndex {
                format: timeindex::INDEX_FORMAT,
                segment,
                records: 1,
                commits: 0,
                aborts: 0,
                earliest_xact: None,
                latest_xact: None,
                restore_points: Vec::new(),
                valid_end: Lsn(valid_end),
                end: timeindex::IndexEnd::Switch,
            };
            (SegNo(segno), index)
        };
        let indexes = Indexes::from([(
            TimelineId(1),
            BTreeMap::from([index(0x61, 0x61FF0A8), index(0x63, 0x63FFFE0)]),
        )]);
        let mut listing = cluster_with(vec![
            // Ends at 0x62's start: its WAL ends in 0x61, which its index tells.
            span("0/6200000", None),
            // A backup's stop past the last segment: kept.
            span("0/6300028", None),
            // No index for 0x64: the segment's end stays.
            span("0/6500000", None),
            // An index whose end lies before the span's start (it cannot): ignored.
            Span {
                from_lsn: "0/63FFFF0".into(),
                ..span("0/6400000", None)
            },
        ]);
        set_end_times(&mut listing, size, &indexes);
        let ends: Vec<&str> = (listing.windows[0].spans.iter())
            .map(|s| s.to_lsn.as_str())
            .collect();
        assert_eq!(ends, ["0/61FF0A8", "0/6300028", "0/6500000", "0/6400000"]);
    }

    #[test]
    fn a_span_whose_last_commit_precedes_its_backup_says_no_time_lies_in_it() {
        let cluster = cluster_with(vec![
            span("0/6200000", Some("2026-12-05T23:48:59.123456Z")),
            span("0/6200000", Some("2026-12-05T23:58:00.5Z")),
        ]);
        let mut out = String::new();
        describe_cluster(&cluster, &mut out);
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("last commit")).collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].contains(
                "(last commit 2026-12-05T23:48:59.123456Z, before the backup: no time target in this span)"
            ),
            "{out}"
        );
        assert!(
            lines[1].contains("(last commit 2026-12-05T23:58:00.5Z), the end"),
            "{out}"
        );
    }

    #[test]
    fn a_gap_no_backup_needs_is_not_named_a_hole() {
        let run = |first: u64, last: u64| SegmentRun {
            first: format!("0000000100000000{first:08X}"),
            last: format!("0000000100000000{last:08X}"),
            segments: last - first + 1,
        };
        // Pruned before the backup at 0x10; a hole at 0x13 breaks its window.
        let mut broken = span("0/12000000", None);
        broken.broken_by = Some(run(0x13, 0x13).first);
        let mut cluster = cluster_with(vec![broken]);
        cluster.timelines = vec![TimelineWal {
            timeline: 1,
            parent: None,
            history_file: false,
            ranges: vec![run(0x10, 0x12), run(0x14, 0x15)],
            gaps: vec![run(0x05, 0x0F), run(0x13, 0x13)],
            gap_snapshots: Vec::new(),
            partial_files: Vec::new(),
            backup_files: 0,
            snapshots: 0,
            stored_bytes: 6 << 20,
            indexed_segments: 0,
            restore_points: Vec::new(),
        }];
        let lines = |cluster: &ClusterListing| {
            let mut out = String::new();
            describe_cluster(cluster, &mut out);
            let wanted = |l: &&str| l.contains("GAP") || l.contains("absent");
            out.lines()
                .filter(wanted)
                .map(str::trim)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        // Without a backup every gap is a hole.
        assert_eq!(
            lines(&cluster),
            [
                "GAP 000000010000000000000005 .. 00000001000000000000000F  11 missing",
                "GAP 000000010000000000000013 .. 000000010000000000000013  1 missing",
            ]
        );
        cluster.backups = vec![crate::backup::meta::testing::backup(
            "b1",
            1,
            "0/10000028",
            "0/10000100",
            "2026-12-05T23:55:09Z",
        )];
        assert_eq!(
            lines(&cluster),
            [
                "absent 000000010000000000000005 .. 00000001000000000000000F  11 segments, which no restore from these backups needs",
                "GAP 000000010000000000000013 .. 000000010000000000000013  1 missing",
            ]
        );
        // A snapshot of the hole's segment (a lost segment's WAL up to its damage) is named
        // with the gap and where the window stops.
        cluster.timelines[0].gap_snapshots = vec![crate::coverage::GapSnapshot {
            segment: run(0x13, 0x13).first,
            end: "0/13002000".into(),
        }];
        assert_eq!(
            lines(&cluster)[1],
            "GAP 000000010000000000000013 .. 000000010000000000000013  1 missing; a snapshot \
             holds 000000010000000000000013's WAL up to 0/13002000"
        );
        let mut out = String::new();
        describe_cluster(&cluster, &mut out);
        assert!(
            out.contains(
                ", then 000000010000000000000013 is missing; a snapshot holds its WAL up to \
                 0/13002000"
            ),
            "{out}"
        );
        // A backup whose WAL is missing from inside the first gap: that gap is a hole.
        cluster.windows[0].unrestorable = vec![crate::coverage::window::Unrestorable {
            backup: "b0".into(),
            missing: run(0x09, 0x09).first,
        }];
        assert!(
            lines(&cluster)[0].starts_with("GAP 000000010000000000000005"),
            "{:?}",
            lines(&cluster)
        );
    }
}
