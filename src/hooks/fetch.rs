//! `walhalla fetch <name> <dest>`, the restore_command: take the file from the prefetch cache
//! when a worker already fetched it, else get it from its [`Sources`] (the fetch server, then
//! the archive), verified, written to `dest` atomically.

use std::path::Path;

use anyhow::anyhow;

use super::prefetch::{self, Cache};
use super::sources::{FetchOutcome, Sources};
use crate::blocking;
use crate::client::ClientSettings;
use crate::config::Config;
use crate::wal::WalFileName;

/// The name PostgreSQL gives `%p` when it restores a segment (xlogrecovery.c).
const RECOVERY_SEGMENT: &str = "RECOVERYXLOG";

/// Options of `walhalla fetch`.
#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    /// Serve a segment the archive lacks from the newest partial snapshot, zero-padded.
    pub partial: bool,
    /// The fetch server to ask first.
    pub client: ClientSettings,
    /// Segments to fetch ahead in the background (0: none).
    pub prefetch: usize,
}

/// Restores `name` to `dest`; the data directory is the current directory.
pub async fn fetch(
    config: &Config,
    name: &str,
    dest: &Path,
    options: &FetchOptions,
) -> anyhow::Result<FetchOutcome> {
    let name: WalFileName = name.parse().map_err(|e: String| anyhow!(e))?;
    let sources = Sources::new(config, &options.client)?;
    // Readahead serves PostgreSQL's recovery, which restores every segment as RECOVERYXLOG;
    // a fetch by hand to some other file starts no background worker.
    let for_recovery = dest.file_name().is_some_and(|n| n == RECOVERY_SEGMENT);
    let prefetching = match name {
        WalFileName::Segment(segment)
            if options.prefetch > 0 && !options.partial && for_recovery =>
        {
            Some((segment, Cache::beside(dest, config, &options.client)))
        }
        _ => None,
    };
    if let Some((segment, cache)) = &prefetching {
        let expected = sources.declared_system_id()?;
        let (taker, segment, to) = (cache.clone(), *segment, dest.to_path_buf());
        let taken = blocking::run(move || taker.take(segment, &to, expected)).await?;
        if let Some(size) = taken {
            prefetch::request(
                cache,
                segment,
                size,
                config,
                &options.client,
                options.prefetch,
            )
            .await;
            return Ok(FetchOutcome::Restored);
        }
    }
    let (outcome, size) = sources.restore(&name, dest, options.partial).await?;
    if let (Some((segment, cache)), Some(size)) = (&prefetching, size) {
        prefetch::request(
            cache,
            *segment,
            size,
            config,
            &options.client,
            options.prefetch,
        )
        .await;
    }
    Ok(outcome)
}
