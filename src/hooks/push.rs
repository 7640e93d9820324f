//! `walhalla push <path>`, the archive_command: validate the file against its name, compress
//! it into an envelope and store it create-only under the cluster's namespace; for a complete
//! segment, whose WAL must run to its end or to a switch, then its time index
//! ([`crate::timeindex`]).

use std::path::Path;

use anyhow::{Context, anyhow};

use crate::archive::{PutOutcome, prepare_index};
use crate::blocking;
use crate::config::Config;
use crate::envelope::Encoder;
use crate::wal::{
    LongPageHeader, Lsn, SegmentName, SegmentSize, TimelineId, WalFileName, parse_history,
    switch_point_in, validate_file,
};

/// Compression worker threads at most.
const MAX_COMPRESSION_THREADS: usize = 4;

/// Archives the file at `path`; the data directory is the current directory.
pub async fn push(config: &Config, path: &Path) -> anyhow::Result<PutOutcome> {
    let deadline = tokio::time::Instant::now() + config.timeout;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let name: WalFileName = file_name.parse().map_err(|e: String| anyhow!(e))?;
    let content = {
        let owned = path.to_path_buf();
        // SAFETY: PostgreSQL neither changes nor truncates a file while its archive_command
        // runs. Were it truncated anyway (or its disk failed), reading it would raise SIGBUS,
        // which `mapped::exit_on_unreadable_map` turns into exit 1: the archiver keeps the WAL
        // and tries again.
        blocking::run(move || unsafe { crate::mapped::map_immutable_file(&owned) })
            .await
            .with_context(|| format!("read {}", path.display()))?
    };
    let facts = validate_file(&name, &content)
        .with_context(|| format!("refusing to archive {}", path.display()))?;
    let archive = super::open_archive(config, true, Some(deadline)).await?;
    let system_id =
        super::resolve_system_id(config.system_id, Path::new("."), facts.system_id, &archive)
            .await
            .with_context(|| format!("refusing to archive {name}"))?;
    let envelope = async {
        let (content, level) = (content.clone(), config.compression_level);
        blocking::run(move || Encoder::new(level, compression_threads())?.encode(&content))
            .await
            .with_context(|| format!("compress {name}"))
    };
    // A complete segment's records are read while it is compressed: its time index, stored
    // after it, and whether its WAL runs to its end or to a switch. One that ends early (a
    // copy cut short, its tail zeros) would end a recovery there, silently: it is refused.
    // An index that cannot be made never fails the push.
    let index = async {
        match name {
            WalFileName::Segment(segment) => {
                Some((segment, prepare_index(segment, content.clone()).await))
            }
            _ => None,
        }
    };
    let (envelope, index) = tokio::join!(envelope, index);
    let envelope = envelope?;
    let cluster = archive.cluster(system_id);
    if let Some((segment, Ok(prepared))) = &index
        && let (Some(damage), Some(valid_end)) = (prepared.damage(), prepared.valid_end())
    {
        let wal_dir = crate::fsutil::parent_dir(path);
        match fork_in(&cluster, wal_dir, *segment, &content, valid_end).await? {
            Some((timeline, switch)) => tracing::info!(
                %name,
                "its WAL ends at {valid_end}{} timeline {} begins: the old timeline's last \
                 segment, as a standby with archive_mode = always archives it",
                if valid_end == switch { ", where".to_owned() } else { format!(", past {switch} where") },
                timeline.0
            ),
            None => anyhow::bail!(
                "refusing to archive {}: its WAL ends before the segment does ({damage}), and \
                 PostgreSQL writes a complete segment whole unless a newer timeline begins in \
                 it (no history file here or in the archive says so): a copy cut short or a \
                 damaged file (recovery would stop there)",
                path.display()
            ),
        }
    }
    let outcome = cluster.put(&name, content.clone(), envelope).await?;
    // The archive's copy at a fork is not this one: its index is made from its own content.
    if let Some((segment, prepared)) = index.filter(|_| outcome != PutOutcome::AtFork) {
        cluster.store_index(segment, prepared).await;
    }
    match outcome {
        PutOutcome::Stored => tracing::info!(%name, %system_id, "archived"),
        PutOutcome::AlreadyArchived => {
            tracing::info!(%name, %system_id, "already archived with identical content")
        }
        // Said by the archive, with the switch point.
        PutOutcome::AtFork => {}
    }
    Ok(outcome)
}

/// The newer timeline that begins inside `segment` where its valid WAL ends (`valid_end`),
/// and where: a standby with `archive_mode = always` archives its old timeline's last
/// segment under the segment's own name when its upstream switches timeline (walreceiver.c),
/// with WAL up to the switch point only. Its history file is looked for beside the segment
/// (PostgreSQL may archive the segment first) and in the archive.
async fn fork_in(
    cluster: &crate::archive::ClusterArchive,
    wal_dir: &Path,
    segment: SegmentName,
    content: &[u8],
    valid_end: Lsn,
) -> anyhow::Result<Option<(TimelineId, Lsn)>> {
    let Ok(header) = LongPageHeader::parse(content) else {
        return Ok(None);
    };
    let start = header.page_address;
    let Some(size) = SegmentSize::new(header.segment_size_bytes) else {
        return Ok(None);
    };
    let dir = wal_dir.to_path_buf();
    let mut forks: Vec<(TimelineId, Lsn)> = blocking::run(move || {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let WalFileName::History(timeline) = entry.file_name().to_str()?.parse().ok()?
                else {
                    return None;
                };
                let content = std::fs::read(entry.path()).ok()?;
                let entries = parse_history(timeline, &content).ok()?;
                Some((timeline, switch_point_in(&entries, segment, size)?))
            })
            .filter(|(timeline, _)| *timeline > segment.timeline)
            .collect()
    })
    .await;
    let archived = (cluster.forks_inside(segment, size).await)
        .context("looking in the archive's history files for a timeline beginning in it")?;
    forks.extend(archived);
    Ok(forks
        .into_iter()
        .filter(|(_, switch)| {
            // Valid WAL ends at the switch point (at most past the page header of a page
            // that begins there), not merely somewhere after it.
            let ends_there = *switch <= valid_end && valid_end.0 - switch.0 <= LONG_PAGE_HEADER;
            *switch > start && ends_there
        })
        .min_by_key(|(timeline, _)| *timeline))
}

/// The longest page header (`SizeOfXLogLongPHD`): where valid WAL that ends at a page boundary
/// may be reported to end.
const LONG_PAGE_HEADER: u64 = 40;

fn compression_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(MAX_COMPRESSION_THREADS)
}
