//! `walhalla receive`: a streaming replication client on a physical slot that archives every
//! WAL byte. A supervisor runs sessions ([`session`]) and reconnects after failures with
//! exponential backoff and jitter, forever, until shutdown, `--endpos`, or a fatal problem.
//! A session learns what the server is ([`server`]), checks the slot ([`slot`]), chooses
//! where to start ([`start`]) and streams ([`stream`]), checking every page header of the WAL
//! before storing it. Received WAL goes to a local spool ([`spool`]); complete segments and the
//! ends of streams are archived by the uploader ([`upload`]); the flush position reported
//! follows what is stored ([`flush`]).
//!
//! The flush position reported to the server decides how far the slot lets the primary
//! recycle WAL. By default it is what is durable in the archive, so the primary keeps every
//! segment until it is safely off the host. With `--synchronous` it is what is durable in the
//! local spool, reported after every fsync, so the receiver can serve as a synchronous standby
//! and commits wait only for the local fsync.

mod attempt;
mod damaged;
mod flush;
mod history;
mod outstanding;
mod pace;
mod probe;
mod readback;
mod server;
mod session;
mod slot;
mod spool_place;
mod start;
mod stream;
mod superseded;
mod takeover;
mod upload;
mod uploading;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::archive::{self, Archive};
use crate::backoff::Backoff;
use crate::daemon::{ServedCluster, Shared};
use crate::metrics::{ErrorKind, ReceiverSettings};
use crate::protocol::connection::Error as ConnError;
use crate::protocol::conninfo::ConnParams;
use crate::spool;
use crate::wal::{Lsn, SystemId, TimelineId};
use session::SessionEnd;

pub use spool_place::{least_spool_bytes, spool_root};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const RECONNECT_BACKOFF: Backoff = Backoff::new(FIRST_BACKOFF, Duration::from_secs(60));
/// In `--synchronous` mode commits may wait for the receiver while it is disconnected: it
/// retries at most this far apart, as PostgreSQL's walreceiver does by default
/// (`wal_retrieve_retry_interval`).
const SYNCHRONOUS_BACKOFF: Backoff = Backoff::new(FIRST_BACKOFF, Duration::from_secs(5));
/// A session that lasted this long resets the backoff (as does one that made progress).
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// What the receiver reports as flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// WAL durable in the archive (the default).
    Archived,
    /// WAL durable in the local spool (`--synchronous`).
    Synchronous,
}

/// Settings of `walhalla receive`.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// Where and how to connect.
    pub conn: ConnParams,
    /// The physical replication slot to stream from.
    pub slot: Option<String>,
    /// Create the slot when it is missing.
    pub create_slot: bool,
    /// Where to start when neither the spool nor the archive holds anything yet.
    pub start_lsn: Option<Lsn>,
    /// Stop once everything up to here is archived.
    pub endpos: Option<Lsn>,
    /// The spool directory (default: per cluster under the user's state directory).
    pub spool: Option<PathBuf>,
    /// Stop reading from the server while the spool holds this much.
    pub spool_max_bytes: u64,
    /// How often to store a snapshot of the segment being received (`None`: only when the
    /// server asks for confirmation, at `--endpos` and at a timeline's end).
    pub partial_interval: Option<Duration>,
    /// How often to send a status update at the least.
    pub status_interval: Duration,
    /// Silence from the server after which the connection counts as dead (`None`: never);
    /// a reply is asked for after half of it.
    pub receive_timeout: Option<Duration>,
    /// How long shutdown waits for uploads; what is left stays in the spool.
    pub shutdown_timeout: Duration,
    /// What to report as flushed.
    pub mode: Mode,
    /// Uploads in flight at most.
    pub upload_parallelism: usize,
    /// zstd level of archived segments.
    pub compression_level: i32,
    /// The cluster the archive namespace is for, when given explicitly.
    pub system_id: Option<SystemId>,
    /// Set when a base backup streams its own WAL (`backup --wal stream`).
    pub for_backup: Option<BackupWal>,
}

/// How `backup --wal stream` drives the receiver: one session on a temporary slot (named by
/// [`ReceiveOptions::slot`]), created before the backup starts so that it keeps every segment
/// the backup needs; streaming begins at the backup's start once the server has said where
/// that is. The slot dies with the connection, so any failure ends the receiver: a new slot
/// could no longer promise the WAL in between.
#[derive(Clone, Debug)]
pub struct BackupWal {
    /// Turns true once the temporary slot exists: the backup may begin.
    pub slot_ready: Arc<watch::Sender<bool>>,
    /// The backup's start position and timeline, once known.
    pub start: watch::Receiver<Option<(Lsn, TimelineId)>>,
}

/// Runs the receiver until `--endpos` is archived, `shutdown` turns true, or a fatal error.
pub async fn run(
    options: ReceiveOptions,
    archive: Archive,
    mut shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    crate::failpoint::setup().map_err(anyhow::Error::msg)?;
    shared.metrics.receiver_started(ReceiverSettings {
        slot: options.slot.clone(),
        mode: match options.mode {
            Mode::Archived => "archived",
            Mode::Synchronous => "synchronous",
        },
    });
    let mut context = None;
    // When the cluster is known already, a restarting receiver serves what the spool and the
    // archive hold, and archives what an earlier run left in the spool (WAL it may have
    // confirmed), before any server is reachable.
    if let Some(system_id) = options
        .system_id
        .or_else(|| options.spool.as_deref().and_then(spool::owner))
    {
        let dir = options
            .spool
            .clone()
            .unwrap_or_else(|| spool_place::default_spool(system_id));
        // Before anything is served from it: what an earlier run left unsynced before a
        // restart of the host is discarded first (the session opens it again, to no effect).
        let (opening, synchronous) = (dir.clone(), options.mode == Mode::Synchronous);
        crate::blocking::run(move || spool::open(&opening, system_id, synchronous))
            .await
            .map_err(|e| anyhow::anyhow!("spool {}: {e}", dir.display()))?;
        shared.publish(ServedCluster {
            archive: archive.cluster(system_id),
            spool: Some(dir.clone()),
        });
        context = take_over_spool(&options, &archive, system_id, dir, &shared).await?;
    }
    let mut backoff = reconnect_backoff(options.mode);
    // The error the last sessions failed with before streaming, logged once until it
    // changes or a session streams.
    let mut failing: Option<String> = None;
    loop {
        let started = Instant::now();
        let outcome =
            session::run(&options, &archive, &mut context, shutdown.clone(), &shared).await;
        if shared.metrics.set_connected(false) {
            failing = None;
        }
        if let Err(e) = &outcome {
            shared.metrics.error(error_kind(&e.error));
        }
        // A session that received WAL past what any before it had made progress: the next
        // attempt starts from the first step, so a stream broken after a failover is not
        // resumed at the step the failover's own failed attempts reached. One that made none
        // (a server that accepts and then refuses, a failure that recurs at the same WAL)
        // keeps growing it.
        let progressed = context
            .as_mut()
            .is_some_and(|ctx| std::mem::take(&mut ctx.progressed));
        if progressed || started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        let pause = match outcome {
            Ok(SessionEnd::EndPos | SessionEnd::Shutdown) => return Ok(()),
            // The temporary slot is gone with the connection: nothing to reconnect to.
            Ok(SessionEnd::ServerEnded(why)) if options.for_backup.is_some() => {
                anyhow::bail!("the server ended the stream: {why}")
            }
            Err(e) if options.for_backup.is_some() => return Err(e.error),
            Ok(SessionEnd::ServerEnded(why)) => {
                tracing::warn!("disconnected: {why}; reconnecting");
                shared.metrics.disconnected(why);
                FIRST_BACKOFF
            }
            Err(e) if e.fatal => return Err(e.error),
            Err(e) => {
                let pause = backoff.next_pause();
                let error = format!("{:#}", e.error);
                shared.metrics.disconnected(error.clone());
                if failing.as_ref() == Some(&error) {
                    tracing::debug!(
                        "disconnected: {error}; reconnecting in {:.1}s",
                        pause.as_secs_f64()
                    );
                } else {
                    tracing::warn!(
                        "disconnected: {error}; reconnecting in {:.1}s (again at debug level until this changes)",
                        pause.as_secs_f64()
                    );
                    failing = Some(error);
                }
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => shared.metrics.reconnected(),
            _ = shutdown.changed() => {
                if let Some(ctx) = &context {
                    tracing::info!("shutting down: archiving what the spool holds");
                    let left = ctx.drain(Some(Instant::now() + options.shutdown_timeout)).await?;
                    ctx.keep_durable(left).await?;
                    report_left_in_spool(ctx, left, options.shutdown_timeout, options.mode);
                }
                return Ok(());
            }
        }
    }
}

/// Starts archiving what an earlier run left in `dir`, if it left WAL: `None` otherwise (the
/// first session then learns the segment size from the server). Says what it found.
async fn take_over_spool(
    options: &ReceiveOptions,
    archive: &Archive,
    system_id: SystemId,
    dir: PathBuf,
    shared: &Arc<Shared>,
) -> anyhow::Result<Option<session::Context>> {
    let scanned = dir.clone();
    let found = crate::blocking::run(move || {
        Ok::<_, std::io::Error>((spool::segment_size(&scanned)?, spool::scan(&scanned)?))
    })
    .await;
    if let Ok((_, found)) = &found
        && !found.unknown.is_empty()
    {
        tracing::warn!(
            spool = %dir.display(),
            files = %found.unknown.join(", "),
            "the spool holds files named like WAL that no PostgreSQL cluster writes: left alone, \
             never archived"
        );
    }
    let size = match found {
        Ok((Some(size), found)) => {
            tracing::info!(
                spool = %dir.display(),
                complete_segments = found.complete.len(),
                kept_tails = found.tails.len(),
                partial = found.partial.map(|s| s.to_string()).as_deref(),
                "the spool holds WAL an earlier run left: archiving it (an object the archive \
                 holds already must have the same bytes)"
            );
            size
        }
        Ok((None, found)) if found.complete.is_empty() && found.tails.is_empty() => {
            match found.damaged.len() {
                0 => {
                    tracing::info!(spool = %dir.display(), "the spool holds no WAL of an earlier run")
                }
                copies => tracing::info!(
                    spool = %dir.display(),
                    copies,
                    "the spool holds no WAL of an earlier run to archive, only damaged copies \
                     (named once the session starts)"
                ),
            }
            return Ok(None);
        }
        Ok((None, found)) => {
            tracing::warn!(
                spool = %dir.display(),
                files = found.complete.len() + found.tails.len(),
                "the spool holds files an earlier run left, none with a readable first page: \
                 each is checked once the server gives the segment size, and one that does not \
                 read back as WAL is received again"
            );
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(spool = %dir.display(), "cannot read the spool an earlier run left: {e}");
            return Ok(None);
        }
    };
    let ctx = session::new_context(options, archive, system_id, size, shared)
        .await
        .map_err(|e| e.error)?;
    crate::failpoint::hit(crate::failpoint::SPOOL_RECOVERY);
    if let Err(e) = ctx.take_over_spool().await {
        tracing::warn!("taking over the spool: {:#}", e.error);
    }
    Ok(Some(ctx))
}

/// Says what a shutdown left in `ctx`'s spool for the next start (`left` files not archived,
/// and the damaged copies kept), or that it left nothing. In synchronous mode the server may
/// have recycled that WAL: the spool then holds its only copy.
fn report_left_in_spool(ctx: &session::Context, left: usize, waited: Duration, mode: Mode) {
    let spool = &ctx.spool;
    let damaged = ctx.uploader.damaged().paths();
    if left > 0 {
        let keeper = match mode {
            Mode::Synchronous => {
                "this WAL was confirmed as flushed, so the spool may hold its only copy: keep the spool"
            }
            Mode::Archived => "the slot keeps this WAL on the server",
        };
        let copies = match damaged.is_empty() {
            true => String::new(),
            false => format!(
                "; it also keeps damaged copies of segments not archived: {}",
                shown(&damaged)
            ),
        };
        tracing::warn!(
            files = left,
            spool = %spool.display(),
            "not archived within --shutdown-timeout ({}s): left in the spool, archived at the next start ({keeper}){copies}",
            waited.as_secs()
        );
    } else if !spool.is_dir() {
        let kept = match mode {
            Mode::Synchronous => {
                "what it held that the archive lacks went with it, and was confirmed to the \
                 server (walhalla list shows where the archive ends)"
            }
            Mode::Archived => "the slot keeps on the server what the archive lacks",
        };
        tracing::warn!(
            spool = %spool.display(),
            "stopped; the spool is gone (removed or unmounted while the receiver ran): {kept}"
        );
    } else if damaged.is_empty() {
        tracing::info!(spool = %spool.display(), "stopped: everything received is archived");
    } else {
        tracing::warn!(
            spool = %spool.display(),
            copies = %shown(&damaged),
            "stopped: everything received is archived but the segments of the damaged copies \
             the spool keeps (see the README, \"Damaged spool files\")"
        );
    }
}

/// `paths`, for a message.
fn shown(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// How far apart reconnections go in `mode`.
fn reconnect_backoff(mode: Mode) -> Backoff {
    match mode {
        Mode::Synchronous => SYNCHRONOUS_BACKOFF,
        Mode::Archived => RECONNECT_BACKOFF,
    }
}

/// What kind of failure ended a session, for the error counters.
fn error_kind(error: &anyhow::Error) -> ErrorKind {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<ConnError>() {
            return if e.is_fatal() {
                ErrorKind::Protocol
            } else {
                ErrorKind::Connection
            };
        }
        if cause.is::<archive::Error>() {
            return ErrorKind::Archive;
        }
        if cause.is::<std::io::Error>() {
            return ErrorKind::Spool;
        }
    }
    ErrorKind::Protocol
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synchronous_receiver_retries_at_most_five_seconds_apart() {
        for (mode, most) in [(Mode::Synchronous, 5), (Mode::Archived, 60)] {
            let mut backoff = reconnect_backoff(mode);
            let longest = (0..20).map(|_| backoff.next_pause()).max().unwrap();
            assert!(
                longest <= Duration::from_secs(most),
                "{mode:?}: {longest:?}"
            );
            assert!(
                longest > Duration::from_secs(most) / 4,
                "{mode:?}: {longest:?}"
            );
        }
    }
}
