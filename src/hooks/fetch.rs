//! `walhalla fetch <name> <dest>`, the restore_command: take the file from the prefetch cache
//! when a worker already fetched it, else get it from its [`Sources`] (the fetch server, then
//! the archive), verified, written to `dest` atomically.

use std::path::Path;

use anyhow::anyhow;
use tokio::time::Instant;

use super::prefetch::{self, Cache};
use super::sources::{FetchOutcome, Sources, nothing_archived, unreachable};
use super::{hole, in_standby_mode, promotion};
use crate::blocking;
use crate::client::ClientSettings;
use crate::config::Config;
use crate::wal::{SegmentName, SegmentSize, WalFileName};

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
    /// The recovery replays the archive to its end, and `restore` found every segment it
    /// needs through this one: a miss of one of them is a hole, refused (see
    /// [`super::hole`]).
    pub to_end: Option<SegmentName>,
}

/// Restores `name` to `dest`; the data directory is the current directory. The whole call
/// ends within `--timeout`. Readahead only makes fetches faster: a problem with its cache is
/// a warning, and the file is fetched directly.
pub async fn fetch(
    config: &Config,
    name: &str,
    dest: &Path,
    options: &FetchOptions,
) -> anyhow::Result<FetchOutcome> {
    let deadline = Instant::now() + config.timeout;
    let name: WalFileName = name.parse().map_err(|e: String| anyhow!(e))?;
    let dest_dir = crate::fsutil::parent_dir(dest);
    if let Some(user) = crate::osuser::root_in_others_dir(dest_dir) {
        tracing::warn!(
            "fetching as root into {}, which belongs to {user}: the file written (and a \
             readahead cache) is root's and private, which PostgreSQL running as {user} cannot \
             read; run walhalla as {user} (e.g. runuser -u {user} -- walhalla …)",
            dest_dir.display()
        );
    }
    if promotion::copied_from_pg_wal(Path::new("."), &name, dest) {
        tracing::info!(
            "recovery has ended (no standby.signal or recovery.signal): PostgreSQL takes {name} \
             from pg_wal (timeline 1 has none), so the archive is not asked"
        );
        return Ok(FetchOutcome::NotFound);
    }
    let mut sources = Sources::new(config, &options.client, Some(deadline))?;
    if !in_standby_mode() {
        sources = sources.ending_recovery_on_failure();
    }
    if options.prefetch > 0 && !options.partial && options.client.server.is_none() {
        // A live readahead worker with these settings started after a file of this cluster
        // was restored from this archive: a miss is the archive's end, no listing needed.
        let cache = Cache::beside(dest, config, &options.client);
        sources = sources.vouch_with(move || cache.vouches());
    }
    // Readahead serves PostgreSQL's recovery, which restores every segment as RECOVERYXLOG;
    // a fetch by hand to some other file starts no background worker.
    let for_recovery = dest.file_name().is_some_and(|n| n == RECOVERY_SEGMENT);
    let mut prefetching = match name {
        WalFileName::Segment(segment)
            if options.prefetch > 0 && !options.partial && for_recovery =>
        {
            Some((segment, Cache::beside(dest, config, &options.client)))
        }
        _ => None,
    };
    if let Some((segment, cache)) = prefetching.clone() {
        let expected = sources.declared_system_id()?;
        let (taker, to) = (cache.clone(), dest.to_path_buf());
        let taking = blocking::run(move || taker.take(segment, &to, expected));
        // The cache is local: past the deadline the file system hangs, and nothing is left
        // for a direct fetch either.
        let taken = tokio::time::timeout_at(deadline, taking)
            .await
            .map_err(|_| anyhow!("{cache}: no answer within --timeout"))?;
        match taken {
            Ok(Some(size)) => {
                record(&cache, segment, size, config, options, deadline).await;
                return Ok(FetchOutcome::Restored);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("{cache}: {e:#}; fetching {segment} directly, without readahead");
                prefetching = None;
            }
        }
    }
    // A segment restore found archived is not made up from a snapshot: gone since, it is a
    // hole (below), not the end of the WAL.
    let partial = options.partial
        && !matches!((name, options.to_end), (WalFileName::Segment(segment), Some(last))
            if hole::was_checked(segment, last));
    let mut restored = sources.restore(&name, dest, partial).await;
    if let (Err(e), Some((_, cache))) = (&restored, &prefetching) {
        if out_of_space(e) {
            // The readahead cache shares pg_wal's filesystem: the segment asked for comes first.
            let releasing = cache.clone();
            match blocking::run(move || releasing.release()).await {
                Ok(0) => {}
                Ok(_) => {
                    tracing::warn!("{e:#}: emptied the readahead cache {cache} and trying again");
                    restored = sources.restore(&name, dest, partial).await;
                }
                Err(why) => tracing::warn!("{cache}: not emptied: {why}"),
            }
        }
    }
    let (outcome, size) = match restored {
        Ok(answer) => answer,
        // A new standby probes an archive nothing was pushed to yet (its primary archives
        // elsewhere, or not yet), and a streaming standby probes for history files whenever
        // its stream breaks, maybe while the fetch server restarts too: "not found" lets it
        // stream and ask again; a refusal would shut it down. In archive recovery, the
        // refusal stands: "not found" would end recovery early.
        Err(e) if (nothing_archived(&e) || unreachable(&e)) && in_standby_mode() => {
            tracing::warn!("{e:#} (standby mode: {name} taken as not available)");
            (FetchOutcome::NotFound, None)
        }
        Err(e) => return Err(e),
    };
    if let (Some((segment, cache)), Some(size)) = (&prefetching, size) {
        record(cache, *segment, size, config, options, deadline).await;
    }
    if let (FetchOutcome::NotFound, WalFileName::Segment(segment), Some(last)) =
        (&outcome, name, options.to_end)
    {
        hole::refuse(&sources, segment, last).await?;
    }
    Ok(outcome)
}

/// Records the request for readahead, by the deadline; the file is already in place, so a
/// failure is only a warning.
async fn record(
    cache: &Cache,
    segment: SegmentName,
    size: SegmentSize,
    config: &Config,
    options: &FetchOptions,
    deadline: Instant,
) {
    let requesting = prefetch::request(
        cache,
        segment,
        size,
        config,
        &options.client,
        options.prefetch,
    );
    if tokio::time::timeout_at(deadline, requesting).await.is_err() {
        tracing::warn!("{cache}: readahead not recorded within --timeout");
    }
}

/// Whether `e` comes of a full filesystem (ENOSPC, or EDQUOT for a quota).
fn out_of_space(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(crate::fsutil::is_out_of_space)
}

#[cfg(test)]
mod tests {
    use super::out_of_space;

    #[test]
    fn a_full_filesystem_is_told_through_the_error_context() {
        let full = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("write pg_wal/RECOVERYXLOG");
        assert!(out_of_space(&full));
        let denied = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EACCES))
            .context("write pg_wal/RECOVERYXLOG");
        assert!(!out_of_space(&denied));
    }
}
