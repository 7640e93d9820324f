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
use crate::wal::{WalFileName, validate_file};

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
    if let Some((_, Ok(prepared))) = &index
        && let Some(damage) = prepared.damage()
    {
        anyhow::bail!(
            "refusing to archive {}: its WAL ends before the segment does ({damage}), and \
             PostgreSQL writes a complete segment whole: a copy cut short or a damaged file \
             (recovery would stop there)",
            path.display()
        );
    }
    let cluster = archive.cluster(system_id);
    let outcome = cluster.put(&name, content.clone(), envelope).await?;
    if let Some((segment, prepared)) = index {
        cluster.store_index(segment, prepared).await;
    }
    match outcome {
        PutOutcome::Stored => tracing::info!(%name, %system_id, "archived"),
        PutOutcome::AlreadyArchived => {
            tracing::info!(%name, %system_id, "already archived with identical content")
        }
    }
    Ok(outcome)
}

fn compression_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(MAX_COMPRESSION_THREADS)
}
