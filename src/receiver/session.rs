//! One replication session: connect, identify the server, choose where to start, stream WAL
//! into the spool, hand complete segments to the uploader, and report positions back. A
//! session ends with an error (the supervisor reconnects, or stops on a fatal one), at
//! `--endpos`, or at shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::spool::{self, SegmentWriter};
use super::upload::{UploadSettings, Uploader};
use super::{Mode, ReceiveOptions};
use crate::archive::{self, Archive, ClusterArchive};
use crate::blocking;
use crate::daemon::{ServedCluster, Shared};
use crate::envelope::Encoder;
use crate::protocol::connection::{Connection, CopyMessage, Error as ConnError};
use crate::protocol::replication::{ServerMessage, parse_server_message, status_update};
use crate::wal::{
    HistoryEntry, Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName,
    parse_history,
};

/// SQLSTATE of "replication slot does not exist".
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE of "requested WAL segment … has already been removed".
const UNDEFINED_FILE: &str = "58P01";
/// SQLSTATE of "permission denied" (a role without the REPLICATION attribute).
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// No message from the server for this long means the connection is dead (the server sends
/// a keepalive at least every wal_sender_timeout / 2); PostgreSQL's wal_receiver_timeout.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a session failed: whether reconnecting can help.
#[derive(Debug)]
pub struct SessionError {
    /// Retrying cannot help: stop the receiver.
    pub fatal: bool,
    /// What happened.
    pub error: anyhow::Error,
}

impl SessionError {
    fn fatal(error: anyhow::Error) -> Self {
        SessionError { fatal: true, error }
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
fn from_conn(error: ConnError) -> SessionError {
    let code = error.server_error().map(|e| e.code.as_str());
    let fatal = error.is_fatal()
        || matches!(
            code,
            Some(UNDEFINED_OBJECT | UNDEFINED_FILE | INSUFFICIENT_PRIVILEGE)
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
    /// Shutdown was requested; what was complete is archived.
    Shutdown,
    /// The server ended the stream (it shut down, or the timeline ended).
    ServerEnded(String),
}

/// What outlives a session: the cluster, the spool and the uploader.
pub struct Context {
    system_id: SystemId,
    segment_size: SegmentSize,
    spool: PathBuf,
    cluster: ClusterArchive,
    uploader: Uploader,
    shared: Arc<Shared>,
}

impl Context {
    /// Waits until every segment handed to the uploader is archived, or it failed for good.
    pub async fn drain(&self) -> anyhow::Result<()> {
        let mut progress = self.uploader.progress();
        loop {
            if let Some(fatal) = progress.borrow().fatal.clone() {
                bail!(fatal);
            }
            if self.uploader.is_idle() {
                return Ok(());
            }
            progress
                .changed()
                .await
                .map_err(|_| anyhow!("the uploader stopped"))?;
        }
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
    let mut conn = Connection::connect(&options.conn)
        .await
        .map_err(from_conn)?;
    tracing::info!(host = %conn.host(), tls = conn.is_encrypted(), "connected");

    if conn
        .parameter("integer_datetimes")
        .is_some_and(|v| v != "on")
    {
        let host = conn.host().to_string();
        return Err(SessionError::fatal(anyhow!(
            "{host} does not use integer timestamps, which the protocol needs"
        )));
    }
    let identity = conn
        .simple_query("IDENTIFY_SYSTEM")
        .await
        .map_err(from_conn)?;
    let row = identity
        .first()
        .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM returned no row"))?;
    let field = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM column {i} is missing"))
    };
    let system_id: SystemId = field(0)?.parse().map_err(|e: String| anyhow!(e))?;
    let timeline = TimelineId(field(1)?.parse().context("IDENTIFY_SYSTEM timeline")?);
    let server_lsn: Lsn = field(2)?.parse().map_err(|e: String| anyhow!(e))?;
    if let Some(expected) = options.system_id.or(context.as_ref().map(|c| c.system_id)) {
        if expected != system_id {
            return Err(SessionError::fatal(anyhow!(
                "server {} belongs to cluster {system_id}, but this receiver archives cluster {expected}",
                conn.host()
            )));
        }
    }
    let segment_size =
        parse_segment_size(&conn.show("wal_segment_size").await.map_err(from_conn)?)?;

    if context.is_none() {
        *context = Some(new_context(options, archive, system_id, segment_size, shared).await?);
    }
    let ctx = context.as_mut().expect("just set");
    if ctx.segment_size != segment_size {
        return Err(SessionError::fatal(anyhow!(
            "the server's segment size changed to {segment_size}"
        )));
    }

    let slot_start = match &options.slot {
        Some(slot) => ensure_slot(&mut conn, slot, options.create_slot).await?,
        None => None,
    };
    let (mut timeline, mut start) = start_point(
        options,
        ctx,
        &mut conn,
        timeline,
        slot_start.unwrap_or(server_lsn),
    )
    .await?;
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
        if let Err(e) = conn.start_copy_both(&command).await {
            let host = conn.host().to_string();
            let SessionError { fatal, error } = from_conn(e);
            return Err(SessionError {
                fatal,
                error: error.context(format!("{command} on {host}")),
            });
        }
        tracing::info!(host = %conn.host(), %start_lsn, timeline = timeline.0, slot = options.slot.as_deref().unwrap_or(""), "streaming");
        shared.metrics.set_timeline(timeline.0);
        shared.metrics.stream_started(start_lsn.0);
        shared.metrics.set_connected(true);

        let dir = ctx.spool.clone();
        let writer =
            blocking::run(move || SegmentWriter::create(&dir, timeline, start, segment_size))
                .await
                .context("create the spool file")?;
        // With nothing outstanding, everything before the start is archived or none of ours.
        ctx.uploader.new_stream();
        let floor = if ctx.uploader.is_idle() {
            start_lsn
        } else {
            Lsn(0)
        };
        let mut stream = Stream {
            conn: &mut conn,
            floor,
            writer: Some(writer),
            options,
            ctx,
            timeline,
            snapshot: None,
            snapshot_end: Lsn(0),
            server_end: Lsn(0),
        };
        match stream.run(&mut shutdown).await? {
            StreamEnd::Session(end) => return Ok(end),
            StreamEnd::Timeline { next, switch_point } => {
                archive_history(&mut conn, &ctx.cluster, next).await?;
                tracing::info!(from = timeline.0, to = next.0, %switch_point, "timeline switch");
                timeline = next;
                start = SegNo::containing(switch_point, segment_size);
            }
        }
    }
}

async fn new_context(
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
    blocking::run(move || spool::open(&dir, system_id))
        .await
        .map_err(|e| SessionError::fatal(anyhow!("spool {}: {e}", spool.display())))?;
    let cluster = archive.cluster(system_id);
    let settings = UploadSettings {
        spool: spool.clone(),
        segment_size,
        compression_level: options.compression_level,
        parallelism: options.upload_parallelism,
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
        spool,
        cluster,
        uploader,
        shared: shared.clone(),
    })
}

/// The spool used when none is given: per cluster, under the user's state directory.
pub fn default_spool(system_id: SystemId) -> PathBuf {
    spool_root().join(format!("spool-{system_id}"))
}

/// The directory default spools go in: `walhalla` in the user's state directory.
pub fn spool_root() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("walhalla")
}

/// Makes sure the slot exists (creating it when asked) and returns its restart position.
async fn ensure_slot(
    conn: &mut Connection,
    slot: &str,
    create: bool,
) -> Result<Option<Lsn>, SessionError> {
    if conn.server_major_version().unwrap_or(0) >= 15 {
        let rows = conn
            .simple_query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
            .await
            .map_err(from_conn)?;
        let row = rows
            .first()
            .ok_or_else(|| anyhow!("READ_REPLICATION_SLOT returned no row"))?;
        match row.first().cloned().flatten().as_deref() {
            Some("physical") => {
                let restart = row
                    .get(1)
                    .cloned()
                    .flatten()
                    .and_then(|l| l.parse::<Lsn>().ok());
                return Ok(restart);
            }
            Some(other) => {
                return Err(SessionError::fatal(anyhow!(
                    "slot \"{slot}\" is a {other} slot, not a physical one"
                )));
            }
            None if !create => {
                return Err(SessionError::fatal(anyhow!(
                    "replication slot \"{slot}\" does not exist on {}: create it or pass --create-slot",
                    conn.host()
                )));
            }
            None => {}
        }
    } else if !create {
        // Before PostgreSQL 15 a missing slot shows when streaming starts (SQLSTATE 42704).
        return Ok(None);
    }
    match conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => tracing::info!(slot, host = %conn.host(), "created replication slot"),
        Err(e) if e.server_error().is_some_and(|s| s.code == "42710") => {} // created meanwhile
        Err(e) => return Err(from_conn(e)),
    }
    // A physical slot's creation reports no position (0/0): read the one it reserved.
    if conn.server_major_version().unwrap_or(0) >= 15 {
        let rows = conn
            .simple_query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
            .await
            .map_err(from_conn)?;
        return Ok(rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|l| l.parse().ok()));
    }
    Ok(None)
}

/// Where to start, and on which timeline. After the newest segment the spool or the archive
/// holds (the segment of an interrupted `.partial` is received again from its start); on an
/// empty archive at `--start-lsn`, else `fallback` (the slot's restart position or the
/// server's current one). When the server is on a newer timeline, the old timeline is asked
/// for (the server streams it to its end, then switches), unless the archive holds WAL past
/// the point where the server's history forked: then streaming restarts at the fork on the
/// timeline that followed, and what was archived of the old timeline stays.
async fn start_point(
    options: &ReceiveOptions,
    ctx: &Context,
    conn: &mut Connection,
    server_timeline: TimelineId,
    fallback: Lsn,
) -> Result<(TimelineId, SegNo), SessionError> {
    let size = ctx.segment_size;
    let dir = ctx.spool.clone();
    let spooled = blocking::run(move || spool::scan(&dir))
        .await
        .context("scan the spool")?;
    for &segment in &spooled.complete {
        ctx.uploader
            .enqueue(segment)
            .map_err(|e| SessionError::fatal(anyhow!(e)))?;
    }
    let next_after = |s: SegmentName| s.segno(size).map(|n| (s.timeline, SegNo(n.0 + 1)));
    let at = |s: SegmentName| s.segno(size).map(|n| (s.timeline, n));
    let held = [
        spooled.complete.last().and_then(|s| next_after(*s)),
        spooled.partial.and_then(at),
        ctx.cluster.newest_segment().await?.and_then(next_after),
    ]
    .into_iter()
    .flatten()
    .max();
    let history = match server_timeline.0 {
        1 => Vec::new(),
        _ => archive_history(conn, &ctx.cluster, server_timeline).await?,
    };
    let Some((timeline, next)) = held else {
        return Ok((
            server_timeline,
            SegNo::containing(options.start_lsn.unwrap_or(fallback), size),
        ));
    };
    if timeline == server_timeline {
        return Ok((timeline, next));
    }
    if timeline > server_timeline {
        return Err(anyhow!(
            "{} is on timeline {} but the archive already holds timeline {}: waiting for a server on a newer timeline",
            conn.host(),
            server_timeline.0,
            timeline.0
        )
        .into());
    }
    let Some(position) = history.iter().position(|e| e.timeline == timeline) else {
        return Err(SessionError::fatal(anyhow!(
            "the archive holds timeline {}, which is not in the history of {}'s timeline {}",
            timeline.0,
            conn.host(),
            server_timeline.0
        )));
    };
    let switch_point = history[position].switch_point;
    if next.start_lsn(size) <= switch_point {
        return Ok((timeline, next));
    }
    let successor = history
        .get(position + 1)
        .map_or(server_timeline, |e| e.timeline);
    tracing::warn!(
        timeline = timeline.0,
        %switch_point,
        "the archive holds WAL of timeline {} past where the server's history left it: restarting at the fork on timeline {}",
        timeline.0,
        successor.0
    );
    Ok((successor, SegNo::containing(switch_point, size)))
}

/// Archives the history file of `timeline` as the server has it (before any segment of that
/// timeline), and returns its entries.
async fn archive_history(
    conn: &mut Connection,
    cluster: &ClusterArchive,
    timeline: TimelineId,
) -> Result<Vec<HistoryEntry>, SessionError> {
    let rows = conn
        .simple_query_raw(&format!("TIMELINE_HISTORY {}", timeline.0))
        .await
        .map_err(from_conn)?;
    let name = WalFileName::History(timeline);
    let (file, content) = match rows
        .first()
        .map(|r| (r.first().cloned().flatten(), r.get(1).cloned().flatten()))
    {
        Some((Some(file), Some(content))) => (file, content),
        _ => return Err(anyhow!("TIMELINE_HISTORY {} returned no file", timeline.0).into()),
    };
    if file != name.to_string().as_bytes() {
        return Err(anyhow!(
            "TIMELINE_HISTORY {} returned a file named {:?}",
            timeline.0,
            String::from_utf8_lossy(&file)
        )
        .into());
    }
    let entries = parse_history(timeline, &content)
        .map_err(|e| anyhow!("{name} from {}: {e}", conn.host()))?;
    let content = Bytes::from(content);
    let encoded = content.clone();
    let envelope = blocking::run(move || {
        Encoder::new(crate::envelope::DEFAULT_LEVEL, 1).and_then(|mut e| e.encode(&encoded))
    })
    .await
    .context("compress a history file")?;
    cluster
        .put(&name, content, envelope)
        .await
        .map_err(|e| match e {
            e @ (archive::Error::Conflict { .. } | archive::Error::Corrupt { .. }) => {
                SessionError::fatal(e.into())
            }
            e => e.into(),
        })?;
    Ok(entries)
}

/// Parses `SHOW wal_segment_size` (`16MB`, `1GB`).
fn parse_segment_size(text: &str) -> anyhow::Result<SegmentSize> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &text[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        other => bail!("unknown unit {other:?} in wal_segment_size {text:?}"),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| anyhow!("wal_segment_size {text:?} is not a size"))?;
    u32::try_from(bytes)
        .ok()
        .and_then(SegmentSize::new)
        .ok_or_else(|| anyhow!("wal_segment_size {text:?} is not a power of two from 1 MB to 1 GB"))
}

/// The streaming part of a session.
struct Stream<'a> {
    conn: &'a mut Connection,
    /// A position known archived when the session started.
    floor: Lsn,
    writer: Option<SegmentWriter>,
    options: &'a ReceiveOptions,
    ctx: &'a mut Context,
    timeline: TimelineId,
    /// A snapshot upload of the current segment in flight, and the position it covers.
    snapshot: Option<(Lsn, JoinHandle<anyhow::Result<()>>)>,
    /// The end of the newest snapshot stored.
    snapshot_end: Lsn,
    /// The end of WAL on the server, as last reported.
    server_end: Lsn,
}

/// How streaming one timeline ended.
enum StreamEnd {
    /// The session is over.
    Session(SessionEnd),
    /// The server ended the timeline; streaming goes on on `next` from `switch_point`.
    Timeline {
        /// The next timeline.
        next: TimelineId,
        /// Where it branched off.
        switch_point: Lsn,
    },
}

impl Stream<'_> {
    /// The server ended the timeline (CopyDone): answer, read where the next one starts, and
    /// archive what was received of the old timeline's last segment.
    async fn end_of_timeline(&mut self) -> Result<StreamEnd, SessionError> {
        self.conn.send_copy_done().await.map_err(from_conn)?;
        let rows = self.conn.read_results().await.map_err(from_conn)?;
        let row = rows.first().ok_or_else(|| {
            anyhow!(
                "no next timeline after the end of timeline {}",
                self.timeline.0
            )
        })?;
        let next = row
            .first()
            .cloned()
            .flatten()
            .and_then(|t| t.parse::<u32>().ok());
        let switch_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|l| l.parse::<Lsn>().ok());
        let (Some(next), Some(switch_point)) = (next, switch_point) else {
            return Err(anyhow!(
                "unreadable next timeline after timeline {}: {row:?}",
                self.timeline.0
            )
            .into());
        };
        if next <= self.timeline.0 {
            return Err(anyhow!(
                "the server switched from timeline {} to {next}",
                self.timeline.0
            )
            .into());
        }
        self.store_tail().await?;
        Ok(StreamEnd::Timeline {
            next: TimelineId(next),
            switch_point,
        })
    }

    /// Stores what was received of the current segment, retrying until it is stored.
    async fn store_tail(&mut self) -> Result<(), SessionError> {
        let mut pause = Duration::from_secs(1);
        loop {
            // A snapshot in flight may cover less: let it finish, then store one that covers all.
            if let Some((end, task)) = self.snapshot.take() {
                if let Ok(Ok(())) = task.await {
                    self.snapshot_end = self.snapshot_end.max(end);
                }
            }
            self.start_snapshot().await?;
            let Some((end, task)) = self.snapshot.take() else {
                return Ok(());
            };
            match task.await.map_err(|e| anyhow!("snapshot task: {e}"))? {
                Ok(()) => {
                    self.snapshot_end = end;
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.downcast_ref(),
                        Some(archive::Error::Conflict { .. } | archive::Error::Corrupt { .. })
                    ) =>
                {
                    return Err(SessionError::fatal(e));
                }
                Err(e) => {
                    tracing::warn!(
                        retry_in_s = pause.as_secs(),
                        "the end of the segment is not archived yet: {e:#}"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<StreamEnd, SessionError> {
        let mut status = tokio::time::interval(self.options.status_interval);
        let mut partial = self.options.partial_interval.map(tokio::time::interval);
        let mut progress = self.ctx.uploader.progress();
        let mut last_message = tokio::time::Instant::now();
        loop {
            if let Some(end) = self.options.endpos {
                if self.written() >= end {
                    return Ok(StreamEnd::Session(self.finish_at_endpos(end).await?));
                }
            }
            let spool_full = self.spool_bytes() >= self.options.spool_max_bytes;
            tokio::select! {
                _ = shutdown.changed() => return Ok(StreamEnd::Session(self.shut_down().await?)),
                message = self.conn.read_copy(), if !spool_full => {
                    last_message = tokio::time::Instant::now();
                    match message.map_err(from_conn)? {
                        CopyMessage::Data(payload) => self.handle(payload).await?,
                        CopyMessage::Done => return self.end_of_timeline().await,
                        CopyMessage::Complete(tag) => {
                            return Ok(StreamEnd::Session(SessionEnd::ServerEnded(format!("the server ended streaming ({tag})"))));
                        }
                    }
                }
                _ = status.tick() => {
                    // While the spool is full nothing is read, so silence proves nothing.
                    if spool_full {
                        last_message = tokio::time::Instant::now();
                    } else if last_message.elapsed() > RECEIVE_TIMEOUT {
                        return Err(anyhow!("no message from the server for {}s", RECEIVE_TIMEOUT.as_secs()).into());
                    }
                    self.send_status(false).await?;
                }
                _ = async { partial.as_mut().expect("guarded").tick().await }, if partial.is_some() => {
                    self.start_snapshot().await?;
                }
                changed = progress.changed() => {
                    changed.map_err(|_| SessionError::fatal(anyhow!("the uploader stopped")))?;
                    if let Some(fatal) = progress.borrow().fatal.clone() {
                        return Err(SessionError::fatal(anyhow!(fatal)));
                    }
                    if self.options.mode == Mode::Archived {
                        self.send_status(false).await?;
                    }
                }
                done = async { (&mut self.snapshot.as_mut().expect("guarded").1).await }, if self.snapshot.is_some() => {
                    let (end, _) = self.snapshot.take().expect("guarded");
                    match done.map_err(|e| anyhow!("snapshot task: {e}"))? {
                        // Only a snapshot of the segment still being received counts.
                        Ok(()) if end > self.writer.as_ref().expect("current segment").start_lsn() => {
                            self.snapshot_end = self.snapshot_end.max(end);
                            self.send_status(false).await?;
                        }
                        Ok(()) => {}
                        Err(e) => tracing::warn!("snapshot of the current segment not stored: {e:#}"),
                    }
                }
            }
        }
    }

    fn writer(&mut self) -> &mut SegmentWriter {
        self.writer
            .as_mut()
            .expect("a session always has a current segment")
    }

    fn written(&self) -> Lsn {
        self.writer.as_ref().expect("current segment").end_lsn()
    }

    /// Bytes in the spool: complete segments waiting for upload, and the current one.
    fn spool_bytes(&self) -> u64 {
        let pending = self.ctx.uploader.pending() as u64 * u64::from(self.ctx.segment_size.bytes());
        let current = self.writer.as_ref().map_or(0, |w| {
            u64::from(self.ctx.segment_size.bytes()) - w.remaining()
        });
        pending + current
    }

    /// The position reported as flushed: durable in the spool (`--synchronous`), or durable in
    /// the archive (the default), never past what was written.
    fn flushed(&self) -> Lsn {
        let writer = self.writer.as_ref().expect("current segment");
        let flushed = match self.options.mode {
            Mode::Synchronous => writer.synced_lsn(),
            Mode::Archived => {
                let archived = self
                    .ctx
                    .uploader
                    .progress()
                    .borrow()
                    .archived
                    .unwrap_or(Lsn(0));
                let archived = archived.max(self.floor);
                // A snapshot covers the current segment only: it counts once all before it is in.
                let snapshot = if archived >= writer.start_lsn() {
                    self.snapshot_end
                } else {
                    Lsn(0)
                };
                archived.max(snapshot)
            }
        };
        flushed.min(writer.end_lsn())
    }

    async fn send_status_without_flush(&mut self) -> Result<(), SessionError> {
        let message = status_update(self.written(), Lsn(0), SystemTime::now(), false);
        self.ctx.shared.metrics.set_flushed(0);
        self.conn.queue_copy_data(&message);
        self.conn.flush().await.map_err(from_conn)
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), SessionError> {
        let flushed = self.flushed();
        let message = status_update(self.written(), flushed, SystemTime::now(), reply_requested);
        let metrics = &self.ctx.shared.metrics;
        metrics.set_flushed(flushed.0);
        metrics.set_spool_bytes(self.spool_bytes());
        self.conn.queue_copy_data(&message);
        self.conn.flush().await.map_err(from_conn)
    }

    async fn handle(&mut self, payload: Bytes) -> Result<(), SessionError> {
        match parse_server_message(payload)? {
            ServerMessage::XLogData {
                start,
                server_end,
                data,
            } => {
                self.server_end = self.server_end.max(server_end);
                self.ctx.shared.metrics.set_server_end(server_end.0);
                if start != self.written() {
                    return Err(anyhow!(
                        "the server sent WAL from {start}, expected {}",
                        self.written()
                    )
                    .into());
                }
                let data = match self.options.endpos {
                    Some(end) if start.0 + data.len() as u64 > end.0 => {
                        data.slice(..(end.0.saturating_sub(start.0)) as usize)
                    }
                    _ => data,
                };
                self.write(data).await?;
                if self.options.mode == Mode::Synchronous && !self.conn.has_buffered_message() {
                    self.sync().await?;
                    self.send_status(false).await?;
                }
            }
            ServerMessage::Keepalive {
                server_end,
                reply_requested,
            } => {
                self.server_end = self.server_end.max(server_end);
                self.ctx.shared.metrics.set_server_end(server_end.0);
                if reply_requested {
                    if self.options.mode == Mode::Synchronous {
                        self.sync().await?;
                        self.send_status(false).await?;
                    } else if self.written() >= self.server_end {
                        // Caught up and asked to confirm: a primary shutting down waits until
                        // the flush position, or the write position when no flush position is
                        // given, reaches what it sent (walsender.c WalSndDone). Store the
                        // current segment as a snapshot, and answer without a flush position
                        // (InvalidXLogRecPtr: the slot stays where it is) so the server
                        // need not wait for the archive.
                        self.start_snapshot().await?;
                        self.send_status_without_flush().await?;
                    } else {
                        self.send_status(false).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes WAL into the spool, completing segments as they fill.
    async fn write(&mut self, mut data: Bytes) -> Result<(), SessionError> {
        while !data.is_empty() {
            let take = (self.writer().remaining() as usize).min(data.len());
            let chunk = data.split_to(take);
            let mut writer = self.writer.take().expect("current segment");
            let written = chunk.len() as u64;
            let writer = blocking::run(move || writer.write(&chunk).map(|()| writer))
                .await
                .context("write to the spool")?;
            self.ctx
                .shared
                .metrics
                .received(writer.end_lsn().0, written);
            if writer.remaining() > 0 {
                self.writer = Some(writer);
                continue;
            }
            let next = SegNo(writer.end_lsn().0 / u64::from(self.ctx.segment_size.bytes()));
            let (dir, timeline, size) =
                (self.ctx.spool.clone(), self.timeline, self.ctx.segment_size);
            let (done, writer) = blocking::run(move || -> std::io::Result<_> {
                let done = writer.finish()?;
                Ok((done, SegmentWriter::create(&dir, timeline, next, size)?))
            })
            .await
            .context("complete a segment in the spool")?;
            self.writer = Some(writer);
            self.snapshot_end = Lsn(0);
            tracing::debug!(segment = %done, "segment complete");
            // No waiting here: the spool limit, checked before each read, is the backpressure.
            self.ctx
                .uploader
                .enqueue(done)
                .map_err(|e| SessionError::fatal(anyhow!(e)))?;
        }
        Ok(())
    }

    async fn sync(&mut self) -> Result<(), SessionError> {
        let mut writer = self.writer.take().expect("current segment");
        let writer = blocking::run(move || writer.sync().map(|()| writer))
            .await
            .context("fsync the spool")?;
        self.writer = Some(writer);
        Ok(())
    }

    /// Starts storing the current segment as received so far, unless a snapshot is already
    /// in flight or stored up to here.
    async fn start_snapshot(&mut self) -> Result<(), SessionError> {
        let end = self.written();
        let writer = self.writer.as_ref().expect("current segment");
        let segment_start =
            Lsn(end.0 - (u64::from(self.ctx.segment_size.bytes()) - writer.remaining()));
        if self.snapshot.is_some() || end <= self.snapshot_end || end == segment_start {
            return Ok(());
        }
        let content = Bytes::from({
            let writer = self.writer.take().expect("current segment");
            let (writer, content) = blocking::run(move || {
                let content = writer.read_back();
                (writer, content)
            })
            .await;
            self.writer = Some(writer);
            content.context("read the spool for a snapshot")?
        });
        let segment = self.writer().segment();
        let (cluster, level) = (self.ctx.cluster.clone(), self.options.compression_level);
        let task = tokio::spawn(async move {
            let encoded = content.clone();
            let envelope =
                blocking::run(move || Encoder::new(level, 1).and_then(|mut e| e.encode(&encoded)))
                    .await?;
            cluster
                .put_partial_snapshot(segment, end, content, envelope)
                .await?;
            tracing::debug!(%segment, %end, "stored a snapshot of the current segment");
            Ok(())
        });
        self.snapshot = Some((end, task));
        Ok(())
    }

    /// At `--endpos`: archive everything up to it, then end the session.
    async fn finish_at_endpos(&mut self, end: Lsn) -> Result<SessionEnd, SessionError> {
        self.store_tail().await?;
        self.ctx.drain().await.map_err(SessionError::fatal)?;
        self.send_status(false).await?;
        tracing::info!(%end, "reached the end position; everything up to it is archived");
        Ok(SessionEnd::EndPos)
    }

    /// On SIGTERM/SIGINT: make the spool durable, archive what is complete, report once more.
    async fn shut_down(&mut self) -> Result<SessionEnd, SessionError> {
        self.sync().await?;
        tracing::info!("shutting down: archiving complete segments");
        self.ctx.drain().await.map_err(SessionError::fatal)?;
        self.send_status(false).await?;
        Ok(SessionEnd::Shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_segment_size_as_the_server_shows_it() {
        assert_eq!(parse_segment_size("16MB").unwrap().bytes(), 16 << 20);
        assert_eq!(parse_segment_size("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(parse_segment_size("1024kB").unwrap().bytes(), 1 << 20);
        for bad in ["", "MB", "3MB", "2TB", "16 MB", "-1MB", "17179869185GB"] {
            assert!(parse_segment_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
