//! `walhalla push <path>`, the archive_command: validate the file against its name, compress
//! it into an envelope and store it create-only under the cluster's namespace.

use std::path::Path;

use anyhow::{Context, anyhow};
use bytes::Bytes;

use crate::archive::{Archive, ArchiveOptions, PutOutcome};
use crate::blocking;
use crate::config::Config;
use crate::envelope::Encoder;
use crate::wal::{WalFileName, validate_file};

/// Content at least this large is compressed with worker threads.
const PARALLEL_COMPRESSION_MIN_BYTES: usize = 1 << 20;
/// Compression worker threads at most.
const MAX_COMPRESSION_THREADS: u32 = 4;

/// Archives the file at `path`; the data directory is the current directory.
pub async fn push(config: &Config, path: &Path) -> anyhow::Result<PutOutcome> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let name: WalFileName = file_name.parse().map_err(|e: String| anyhow!(e))?;
    let content = {
        let owned = path.to_path_buf();
        blocking::run(move || std::fs::read(owned))
            .await
            .with_context(|| format!("read {}", path.display()))?
    };
    let facts = validate_file(&name, &content)
        .with_context(|| format!("refusing to archive {}", path.display()))?;
    let archive = Archive::open(
        &config.archive,
        &ArchiveOptions {
            timeout: config.timeout,
            create: true,
        },
    )?;
    let system_id =
        super::resolve_system_id(config.system_id, Path::new("."), facts.system_id, &archive)
            .await
            .with_context(|| format!("refusing to archive {name}"))?;
    let content = Bytes::from(content);
    let envelope = {
        let (content, level) = (content.clone(), config.compression_level);
        blocking::run(move || {
            let threads = if content.len() >= PARALLEL_COMPRESSION_MIN_BYTES {
                compression_threads()
            } else {
                0
            };
            Encoder::new(level, threads)?.encode(&content)
        })
        .await
        .with_context(|| format!("compress {name}"))?
    };
    let outcome = archive
        .cluster(system_id)
        .put(&name, content, envelope)
        .await?;
    match outcome {
        PutOutcome::Stored => tracing::info!(%name, %system_id, "archived"),
        PutOutcome::AlreadyArchived => {
            tracing::info!(%name, %system_id, "already archived with identical content")
        }
    }
    Ok(outcome)
}

fn compression_threads() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    cores.min(MAX_COMPRESSION_THREADS)
}
