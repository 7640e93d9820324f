//! One replication session: connect, identify the server, choose where to start
//! ([`super::start`]), stream each timeline ([`super::stream`]) and, when a stream ends for
//! any reason, keep what it received of its segment for the archive. A session ends with an
//! error (the supervisor reconnects, or stops on a fatal one), at `--endpos`, or at shutdown.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use tokio::sync::watch;
use tokio::time::Instant;

use super::history::archive_history;
use super::pace::Pace;
use super::probe::{UNDEFINED_FILE, Upstream, first_kept};
use super::server::{identify, sender_timeout, warn_if_named_synchronous};
use super::slot::{SlotRequest, SlotWatch, create_temporary_slot, keeps_no_more, session_slot};
use super::spool_place::{self, default_spool};
use super::start::{BehindArchive, StartPlan, start_point};
use super::stream::{Stream, StreamEnd, next_timeline};
use super::superseded::newer_fork;
use super::upload::{UploadSettings, Uploader};
use super::{BackupWal, Mode, ReceiveOptions};
use crate::archive::{Archive, ClusterArchive};
use crate::blocking;
use crate::daemon::{ServedCluster, Shared};
use crate::protocol::commands::Identity;
use crate::protocol::connection::{Connection, CopyStart, Error as ConnError};
use crate::protocol::conninfo::HostAddr;
use crate::spool::{self, SegmentWriter};
use crate::wal::page_stream::PageChecker;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId};

/// SQLSTATE of "replication slot does not exist".
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE of "permission denied" (a role without the REPLICATION attribute).
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE of an invalid name (a slot name the server refuses).
const INVALID_NAME: &str = "42602";
/// SQLSTATE of "can no longer access replication slot" (an invalidated slot, PostgreSQL 18).
const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// How a session failed: whether reconnecting can help.
#[derive(Debug)]
pub struct SessionError {
    /// Retrying cannot help: stop the receiver.
    pub fatal: bool,
    /// What happened.
    pub error: anyhow::Error,
}

impl SessionError {
    /// A failure retrying cannot cure.
    pub fn fatal(error: anyhow::Error) -> Self {
        SessionError { fatal: true, error }
    }

    /// The SQLSTATE of the server error behind this failure, if there is one.
    fn sqlstate(&self) -> Option<&str> {
        self.error
            .chain()
            .find_map(|e| e.downcast_ref::<ConnError>())
            .and_then(|e| e.server_error())
            .map(|e| e.code.as_str())
    }
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(error: E) -> Self {
        SessionError {
            fatal: false,
            error: error.into(),
        }
    }
}

/// A connection error, fatal when retrying cannot help: bad credentials or configuration, a
/// missing slot, or WAL the server no longer has (streaming on would leave a gap).
pub fn from_conn(error: ConnError) -> SessionError {
    let code = error.server_error().map(|e| e.code.as_str());
    let fatal = error.is_fatal()
        || matches!(
            code,
            Some(
                UNDEFINED_OBJECT
                    | UNDEFINED_FILE
                    | INSUFFICIENT_PRIVILEGE
                    | INVALID_NAME
                    | OBJECT_NOT_IN_PREREQUISITE_STATE
            )
        );
    SessionError {
        fatal,
        error: error.into(),
    }
}

/// Why a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Everything up to `--endpos` is archived.
    EndPos,
    /// Shutdown was requested; what was complete is archived or stays in the spool.
    Shutdown,
    /// The server ended the stream (it shut down, or the timeline ended).
    ServerEnded(String),
}

/// What outlives a session: the cluster, the spool and the uploader.
pub struct Context {
    pub(super) system_id: SystemId,
    pub(super) segment_size: SegmentSize,
    pub(super) spool: PathBuf,
    /// Whether spool segments are fsynced (see [`spool::open`]).
    pub(super) durable_spool: bool,
    /// The bytes the spool may hold before the stream stops reading (see [`spool_place::limit`]).
    pub(super) spool_limit: u64,
    pub(super) cluster: ClusterArchive,
    pub(super) uploader: Uploader,
    pub(super) shared: Arc<Shared>,
    /// Segments found missing from the archive and gone from the server: not asked for again.
    pub(super) lost: BTreeSet<SegNo>,
    /// What this run learned of the slot.
    pub(super) slot_watch: SlotWatch,
    /// Hosts last found on an older timeline than the archive's ([`BehindArchive`]), tried
    /// after the others.
    pub(super) behind: Vec<HostAddr>,
    /// The timeline the server of the current session is on: one streamed below it is
    /// historic, ended by the server at its switch point.
    pub(super) server_timeline: TimelineId,
    /// Where the slot kept WAL from when the current session began, when known: a flush
    /// position reported below it would move the slot back over WAL the server may have
    /// removed already.
    pub(super) slot_kept_from: Option<Lsn>,
    /// The furthest position a stream of this run has written to.
    pub(super) furthest: Lsn,
    /// Set when a stream wrote past [`Self::furthest`]: progress, which the reconnect loop
    /// takes to reset its backoff (a session failing the same way after re-receiving the same
    /// WAL makes none).
    pub(super) progressed: bool,
}

impl Context {
    /// Records whether `host` was last found on an older timeline than the archive's
    /// ([`BehindArchive`]): such hosts are tried after the others.
    pub(super) fn note_behind(&mut self, host: &HostAddr, behind: bool) {
        self.behind.retain(|h| h != host);
        if behind {
            self.behind.push(host.clone());
        }
    }

    /// A spool that disappeared while the receiver runs (unmounted for a repair, or removed)
    /// is not created again behind the operator's back: it may come back with WAL to archive,
    /// and in synchronous mode it held WAL already confirmed to the server. Until it is back,
    /// each session ends before connecting, with this error. A directory back without the
    /// spool's marker (made anew) or with another cluster's is opened again as at start
    /// ([`spool::open`]): marked, its fsync policy recorded, another cluster's refused.
    async fn check_spool(&mut self, synchronous: bool) -> Result<(), SessionError> {
        let (dir, system_id) = (self.spool.clone(), self.system_id);
        let found = blocking::run(move || spool::still_open(&dir, system_id)).await;
        let shown = self.spool.display();
        match found {
            Ok(true) => Ok(()),
            Ok(false) => {
                let dir = self.spool.clone();
                self.durable_spool =
                    blocking::run(move || spool::open(&dir, system_id, synchronous))
                        .await
                        .map_err(|e| anyhow!("spool {shown}: {e}"))?;
                tracing::info!(spool = %shown, "the spool is back, opened again");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                Err(anyhow!("the spool {shown} is no longer a directory").into())
            }
            Err(e) => Err(anyhow!(e)
                .context(format!(
                    "the spool {shown} cannot be used (unmounted, or removed while the receiver \
                     ran?): waiting for it to come back; a restart of the receiver creates it \
                     anew and reports what the archive lacks"
                ))
                .into()),
        }
    }

    /// Waits until everything handed to the uploader is archived, or `deadline` passes;
    /// says how many files stay in the spool then. An error when the uploader stopped for
    /// good.
    pub async fn drain(&self, deadline: Option<Instant>) -> anyhow::Result<usize> {
        match self.uploader.wait_idle(deadline).await {
            Ok(true) => Ok(0),
            Ok(false) => Ok(self.uploader.pending()),
            Err(fatal) => bail!(fatal),
        }
    }

    /// After a shutdown's drain left `left` files in the spool: in the default mode, which
    /// does not fsync the spool, fsyncs them, so that a restart of the host (a planned
    /// reboot) does not discard them.
    pub async fn keep_durable(&self, left: usize) -> anyhow::Result<()> {
        if left > 0 && !self.durable_spool {
            let dir = self.spool.clone();
            blocking::run(move || spool::make_durable(&dir))
                .await
                .context("fsync what is left in the spool")?;
        }
        Ok(())
    }

    /// Keeps the spool's `.partial` as a tail to archive (see [`spool::keep_tail`]), unless
    /// the archive already holds it up to `stored_through`.
    pub async fn keep_tail(&self, stored_through: Lsn) -> Result<(), SessionError> {
        let (dir, size) = (self.spool.clone(), self.segment_size);
        let kept = blocking::run(move || spool::keep_tail(&dir, size))
            .await
            .context("keep the end of the stream in the spool")?;
        if let Some((segment, end)) = kept {
            if end <= stored_through {
                // Said at info level like a tail archived now: where the stream ended is what
                // a last-resort recovery reaches.
                tracing::info!(%segment, %end, "the end of the stream is archived already (a snapshot stored while streaming)");
                let dir = self.spool.clone();
                blocking::run(move || spool::remove_tail(&dir, segment, end))
                    .await
                    .context("remove a tail already archived")?;
            } else {
                tracing::debug!(%segment, %end, "keeping the end of the stream for the archive");
                self.uploader
                    .enqueue_tail(segment, end)
                    .map_err(|e| SessionError::fatal(anyhow!(e)))?;
            }
        }
        Ok(())
    }
}

/// Runs one session; `context` is filled in by the first one.
pub async fn run(
    options: &ReceiveOptions,
    archive: &Archive,
    context: &mut Option<Context>,
    mut shutdown: watch::Receiver<bool>,
    shared: &Arc<Shared>,
) -> Result<SessionEnd, SessionError> {
    if let Some(ctx) = context.as_mut() {
        ctx.check_spool(options.mode == Mode::Synchronous).await?;
    }
    let behind = context.as_ref().map_or(&[][..], |ctx| &ctx.behind[..]);
    let mut conn = Connection::connect_trying_last(&options.conn, behind)
        .await
        .map_err(from_conn)?;
    // At debug: the "streaming" line says it at info once the session streams, and a session
    // that fails before then (a slot another receiver holds) would repeat it at every retry.
    tracing::debug!(host = %conn.host(), tls = conn.is_encrypted(), "connected");

    let facts = identify(
        &mut conn,
        options.system_id.or(context.as_ref().map(|c| c.system_id)),
    )
    .await?;
    let Identity {
        system_id,
        timeline,
        lsn: server_lsn,
    } = facts.identity;
    let segment_size = facts.segment_size;

    if context.is_none() {
        *context = Some(new_context(options, archive, system_id, segment_size, shared).await?);
        if options.mode != Mode::Synchronous && options.for_backup.is_none() {
            warn_if_named_synchronous(&mut conn, &options.conn.application_name).await;
        }
    }
    let ctx = context.as_mut().expect("just set");
    if ctx.segment_size != segment_size {
        return Err(SessionError::fatal(anyhow!(
            "the server's segment size changed to {segment_size}"
        )));
    }

    ctx.slot_kept_from = None;
    let plan = if let Some(backup) = &options.for_backup {
        let slot = options
            .slot
            .as_deref()
            .ok_or_else(|| SessionError::fatal(anyhow!("a backup's stream needs a slot name")))?;
        let Some(plan) =
            backup_start(&mut conn, ctx, slot, backup, timeline, &mut shutdown).await?
        else {
            return Ok(SessionEnd::Shutdown);
        };
        plan
    } else {
        // A promotion the archive knows of by its history file alone (the new primary has not
        // archived a segment yet): a server still on an older timeline is an old primary left
        // running, or a standby that has not followed yet. Refused like one behind the
        // archive's segments ([`start_point`]), before its slot is touched, so that a
        // synchronous receiver never confirms a split brain's commits.
        if let Some(fork) = newer_fork(&ctx.cluster, timeline).await? {
            ctx.note_behind(conn.host(), true);
            return Err(BehindArchive::refusal(conn.host(), timeline, fork.newer));
        }
        let slot_restart = match &options.slot {
            Some(slot) => {
                let request = SlotRequest {
                    params: &options.conn,
                    name: slot,
                    create: options.create_slot,
                    system_id,
                };
                session_slot(&mut conn, request, &mut ctx.slot_watch).await?
            }
            None => None,
        };
        ctx.slot_kept_from = slot_restart;
        let planned = start_point(
            options,
            ctx,
            &mut conn,
            timeline,
            slot_restart,
            slot_restart.unwrap_or(server_lsn),
        )
        .await;
        let behind = planned
            .as_ref()
            .is_err_and(|e| e.error.is::<BehindArchive>());
        ctx.note_behind(conn.host(), behind);
        planned?
    };
    ctx.server_timeline = timeline;
    let (mut timeline, mut start) = (plan.timeline, plan.segment);
    let pace = Pace::new(options.status_interval, sender_timeout(&mut conn).await);
    // Stream one timeline after the other: when the server ends one, continue on the next.
    loop {
        let start_lsn = start.start_lsn(segment_size);
        let command = match &options.slot {
            Some(slot) => format!(
                "START_REPLICATION SLOT \"{slot}\" PHYSICAL {start_lsn} TIMELINE {}",
                timeline.0
            ),
            None => format!(
                "START_REPLICATION PHYSICAL {start_lsn} TIMELINE {}",
                timeline.0
            ),
        };
        let started = conn.start_copy_both(&command).await;
        // Whether this stream received anything: an error after that is not about its start.
        let mut received = false;
        // How far it came.
        let mut reached = start_lsn;
        let ended = match started {
            Err(e) => Err(from_conn(e)),
            // The archive holds the old timeline up to where it ends: go on with the next.
            Ok(CopyStart::TimelineEnded(rows)) => next_timeline(&rows, timeline),
            Ok(CopyStart::Streaming) => {
                tracing::info!(host = %conn.host(), tls = conn.is_encrypted(), %start_lsn, timeline = timeline.0, slot = options.slot.as_deref().unwrap_or(""), "streaming");
                shared.metrics.set_upstream(conn.host().to_string());
                shared.metrics.set_timeline(timeline.0);
                shared.metrics.stream_started(start_lsn.0);
                shared.metrics.set_connected(true);
                let (dir, durable) = (ctx.spool.clone(), ctx.durable_spool);
                let writer = blocking::run(move || {
                    SegmentWriter::create(&dir, timeline, start, segment_size, durable)
                })
                .await
                .context("create the spool file")?;
                let pages = PageChecker::new(facts.pages(timeline), start_lsn);
                let mut stream =
                    Stream::new(&mut conn, writer, pages, options, ctx, timeline, pace);
                let ended = stream.run(&mut shutdown).await;
                received = stream.written() > start_lsn;
                let stored_through = stream.snapshot_end();
                let written = stream.written();
                reached = written;
                if written > ctx.furthest {
                    ctx.furthest = written;
                    ctx.progressed = true;
                }
                match (ctx.keep_tail(stored_through).await, &ended) {
                    (Ok(()), _) => {}
                    (Err(e), Ok(_)) => return Err(e),
                    // The stream's own failure (and whether it is fatal) is what counts; this
                    // one most likely has the same cause.
                    (Err(e), Err(_)) => tracing::warn!("{:#}", e.error),
                }
                ended
            }
        };
        let host = conn.host().to_string();
        match ended {
            Ok(StreamEnd::Session(end)) => return Ok(end),
            Ok(StreamEnd::Timeline { next, switch_point }) => {
                archive_history(&mut conn, &ctx.cluster, next).await?;
                tracing::info!(from = timeline.0, to = next.0, %switch_point, "timeline switch");
                crate::failpoint::hit(crate::failpoint::TIMELINE_SWITCH);
                timeline = next;
                start = SegNo::containing(switch_point, segment_size);
            }
            Err(e)
                if e.sqlstate() == Some(UNDEFINED_FILE)
                    && (start, timeline) == (plan.segment, plan.timeline)
                    && !received
                    && !plan.guaranteed
                    && (plan.segment < plan.resume || options.slot.is_some()) =>
            {
                // Missing from the archive and gone from the server.
                let upstream = Upstream {
                    options,
                    host: &conn.host().clone(),
                    system_id,
                    timeline: plan.timeline,
                    size: segment_size,
                };
                drop(conn);
                return report_lost_run(&upstream, ctx, &plan, &e.error, &mut shutdown).await;
            }
            // The slot should have kept this WAL (PostgreSQL 16 and 17 let a client stream
            // from an invalidated slot, whose restart position then moves again although it
            // keeps nothing), or the server refuses the invalidated slot (18).
            Err(e)
                if matches!(
                    e.sqlstate(),
                    Some(UNDEFINED_FILE | OBJECT_NOT_IN_PREREQUISITE_STATE)
                ) && options.slot.is_some()
                    && options.for_backup.is_none() =>
            {
                let slot = options.slot.as_deref().unwrap_or_default();
                let (create, watch) = (options.create_slot, &mut ctx.slot_watch);
                return Err(keeps_no_more(e, &command, conn.host(), slot, create, watch));
            }
            // Without a slot nothing kept the WAL the receiver needs to go on: streaming from
            // what the server has would leave a hole, so the run ends, saying how to go on.
            Err(e)
                if e.sqlstate() == Some(UNDEFINED_FILE)
                    && options.slot.is_none()
                    && options.for_backup.is_none() =>
            {
                // Where the stream was when the server found the WAL gone.
                let at = match received {
                    true => SegNo::containing(reached, segment_size),
                    false => start,
                };
                let segment = SegmentName::new(timeline, at, segment_size);
                return Err(SessionError::fatal(e.error.context(format!(
                    "{command} on {host}: the server no longer has {segment}, which the archive \
                     lacks, and without a slot nothing kept it. To go on, start with -S NAME \
                     --create-slot: what the archive lacks is then reported as lost, and the slot \
                     keeps WAL for the receiver from then on"
                ))));
            }
            Err(SessionError { fatal, error }) => {
                if let Some(behind) = error.downcast_ref::<BehindArchive>() {
                    ctx.note_behind(&behind.host, true);
                }
                // The command says where the stream began; say how far it came too.
                let reached = match received {
                    true => format!(", having received up to {reached}"),
                    false => String::new(),
                };
                return Err(SessionError {
                    fatal,
                    error: error.context(format!("{command} on {host}{reached}")),
                });
            }
        }
    }
}

/// The segment `plan` starts at, which the archive lacks, is gone from the server (`error`):
/// lost to the archive, up to the first segment the server still has (or the next one the
/// archive holds). Says so once, remembers it, and ends the session so that the next one
/// goes on at once from what the server has; when the server did not say where its WAL
/// begins, the session fails, and the next try comes after a pause.
async fn report_lost_run(
    upstream: &Upstream<'_>,
    ctx: &mut Context,
    plan: &StartPlan,
    error: &anyhow::Error,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let kept = tokio::select! {
        kept = first_kept(upstream, plan.segment) => kept,
        _ = shutdown.wait_for(|stop| *stop) => return Ok(SessionEnd::Shutdown),
    };
    let lost_until = match kept {
        Some(kept) if plan.segment >= plan.resume => kept,
        Some(kept) => kept.min(plan.missing_until),
        None => plan.missing_until,
    };
    ctx.lost.extend((plan.segment.0..lost_until.0).map(SegNo));
    ctx.report_gap(plan.timeline, plan.segment, SegNo(lost_until.0 - 1));
    let name = |segment| SegmentName::new(plan.timeline, segment, upstream.size);
    let end = format!(
        "{} no longer has {}, which the archive lacks ({error:#}); streaming on from {}",
        upstream.host,
        name(plan.segment),
        name(lost_until)
    );
    match kept {
        Some(_) => Ok(SessionEnd::ServerEnded(end)),
        None => Err(anyhow!(end).into()),
    }
}

/// For `backup --wal stream`: creates the temporary slot, says so, and waits for the backup's
/// start (`None` at shutdown). Streaming then begins at the segment holding it, on the
/// backup's timeline, whose history is archived first.
async fn backup_start(
    conn: &mut Connection,
    ctx: &Context,
    slot: &str,
    backup: &BackupWal,
    server_timeline: TimelineId,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<StartPlan>, SessionError> {
    create_temporary_slot(conn, slot).await?;
    backup.slot_ready.send_replace(true);
    let mut start = backup.start.clone();
    let (lsn, timeline) = tokio::select! {
        known = start.wait_for(Option::is_some) => known
            .map_err(|_| SessionError::fatal(anyhow!("the backup ended before it started")))?
            .expect("waited for Some"),
        _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
    };
    if timeline != server_timeline {
        return Err(SessionError::fatal(anyhow!(
            "the backup started on timeline {timeline}, but {} streams timeline {server_timeline}",
            conn.host()
        )));
    }
    if timeline.0 > 1 {
        archive_history(conn, &ctx.cluster, timeline).await?;
    }
    let segment = SegNo::containing(lsn, ctx.segment_size);
    Ok(Some(StartPlan {
        timeline,
        segment,
        missing_until: SegNo(segment.0 + 1),
        guaranteed: true,
        resume: segment,
    }))
}

/// Opens the spool and starts the uploader: what every session of this receiver shares.
pub async fn new_context(
    options: &ReceiveOptions,
    archive: &Archive,
    system_id: SystemId,
    segment_size: SegmentSize,
    shared: &Arc<Shared>,
) -> Result<Context, SessionError> {
    let spool = options
        .spool
        .clone()
        .unwrap_or_else(|| default_spool(system_id));
    let dir = spool.clone();
    // The synchronous mode reports the spool's fsynced position as flushed; the default mode
    // reports what the archive holds, and the slot keeps the rest.
    let synchronous = options.mode == Mode::Synchronous;
    let durable_spool = blocking::run(move || spool::open(&dir, system_id, synchronous))
        .await
        .map_err(|e| SessionError::fatal(anyhow!("spool {}: {e}", spool.display())))?;
    let cluster = archive.cluster(system_id);
    let settings = UploadSettings {
        spool: spool.clone(),
        segment_size,
        compression_level: options.compression_level,
        parallelism: options.upload_parallelism,
        system_id,
    };
    let uploader = Uploader::start(cluster.clone(), settings, shared.clone());
    shared.publish(ServedCluster {
        archive: cluster.clone(),
        spool: Some(spool.clone()),
    });
    tracing::info!(spool = %spool.display(), %system_id, archive = %archive.location(), "receiver ready");
    Ok(Context {
        system_id,
        segment_size,
        spool_limit: spool_place::limit(options.spool_max_bytes, segment_size),
        spool,
        durable_spool,
        cluster,
        uploader,
        shared: shared.clone(),
        lost: BTreeSet::new(),
        server_timeline: TimelineId(0),
        slot_kept_from: None,
        furthest: Lsn(0),
        progressed: false,
        slot_watch: SlotWatch::default(),
        behind: Vec::new(),
    })
}
