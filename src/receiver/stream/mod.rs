//! Streaming one timeline: write WAL into the spool, hand complete segments to the uploader,
//! store snapshots of the segment being received, and answer the server with status updates
//! whose flush position never passes what is safely stored ([`super::flush`]).
//!
//! Liveness, as PostgreSQL's walreceiver does it: an idle primary sends nothing while the
//! receiver keeps sending status updates, so after half of `--receive-timeout` of silence the
//! receiver asks for a reply, and only after the whole of it gives up on the connection.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod spooling;

use super::flush::{FlushReport, Stored};
use super::pace::Pace;
use super::readback;
use super::server::refuse_page;
use super::session::{Context, SessionEnd, SessionError, from_conn};
use super::start::BehindArchive;
use super::superseded::{Fork, SupersededWatch};
use super::{Mode, ReceiveOptions};
use crate::blocking;
use crate::mapped::SequentialMap;
use crate::protocol::connection::{Connection, CopyMessage, Row};
use crate::protocol::replication::{ServerMessage, parse_server_message, status_update};
use crate::spool::SegmentWriter;
use crate::wal::page_stream::PageChecker;
use crate::wal::{Lsn, SegmentName, TimelineId};

/// How often the archive is asked for a newer timeline while one streams
/// ([`super::superseded`]): in synchronous mode, how long a split brain's commits may be
/// confirmed at most, past the archive's listing.
const SUPERSEDED_CHECK_SYNCHRONOUS: Duration = Duration::from_secs(5);
/// The same when the flush position is what the archive holds.
const SUPERSEDED_CHECK: Duration = Duration::from_secs(30);

/// The streaming part of a session.
pub struct Stream<'a> {
    pace: Pace,
    conn: &'a mut Connection,
    writer: Option<SegmentWriter>,
    /// Checks the page headers of what arrives before it is stored.
    pages: PageChecker,
    options: &'a ReceiveOptions,
    ctx: &'a mut Context,
    timeline: TimelineId,
    /// A snapshot upload of the current segment in flight, and the position it covers.
    snapshot: Option<(Lsn, JoinHandle<anyhow::Result<()>>)>,
    /// Where this stream began: it receives nothing before.
    begun: Lsn,
    /// The end of what is written to the spool. Kept apart from the writer, which a failed
    /// completion of a segment consumes: the session still asks how far the stream came.
    written: Lsn,
    /// The end of the newest snapshot of the current segment stored (0: none).
    snapshot_end: Lsn,
    /// The end of WAL on the server, as last reported.
    server_end: Lsn,
    /// The flush positions reported on this connection.
    report: FlushReport,
    /// WAL received but not yet written: the spool's filesystem was full. Nothing more is
    /// read until it is written.
    unwritten: Bytes,
    /// While the spool is full: since when, and when to try writing again.
    out_of_space: Option<(Instant, Instant)>,
    /// Where a file an earlier run left, not read back, holds the synchronous flush position,
    /// since when, and whether that was said ([`Self::say_held`]).
    held_at: Option<(Lsn, Instant, bool)>,
    /// Since when the spool holds `--spool-max-bytes` and nothing is read, and whether that
    /// was warned about ([`spooling`]).
    at_limit: Option<(Instant, bool)>,
    /// When a full spool was last warned about: a spool that fills again within
    /// five minutes (catching up through a small spool) is logged at debug level
    /// ([`spooling`]).
    full_warned: Option<Instant>,
    /// A newer timeline the archive holds, once found: WAL the server sends past its fork
    /// from then on is a split brain's.
    superseded: Option<Fork>,
}

/// How streaming one timeline ended.
pub enum StreamEnd {
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

/// Where the server says the next timeline begins, from the result set that follows the end
/// of a timeline (`next_tli`, `next_tli_startpos`).
pub fn next_timeline(rows: &[Row], current: TimelineId) -> Result<StreamEnd, SessionError> {
    let row = rows
        .first()
        .ok_or_else(|| anyhow!("no next timeline after the end of timeline {}", current.0))?;
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
            current.0
        )
        .into());
    };
    if next <= current.0 {
        return Err(anyhow!("the server switched from timeline {} to {next}", current.0).into());
    }
    Ok(StreamEnd::Timeline {
        next: TimelineId(next),
        switch_point,
    })
}

impl<'a> Stream<'a> {
    /// A stream that has just entered CopyBoth mode, writing into `writer` what `pages`
    /// accepts.
    pub fn new(
        conn: &'a mut Connection,
        writer: SegmentWriter,
        pages: PageChecker,
        options: &'a ReceiveOptions,
        ctx: &'a mut Context,
        timeline: TimelineId,
        pace: Pace,
    ) -> Stream<'a> {
        Stream {
            pace,
            conn,
            begun: writer.start_lsn(),
            written: writer.start_lsn(),
            writer: Some(writer),
            pages,
            options,
            ctx,
            timeline,
            snapshot: None,
            snapshot_end: Lsn(0),
            server_end: Lsn(0),
            report: FlushReport::default(),
            unwritten: Bytes::new(),
            out_of_space: None,
            at_limit: None,
            held_at: None,
            full_warned: None,
            superseded: None,
        }
    }

    /// How far the archive holds the current segment, as a snapshot.
    pub fn snapshot_end(&self) -> Lsn {
        self.snapshot_end
    }

    /// Streams until the session or the timeline ends.
    pub async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<StreamEnd, SessionError> {
        let mut status = tokio::time::interval(self.pace.status_interval);
        let mut partial = self.options.partial_interval.map(tokio::time::interval);
        let mut progress = self.ctx.uploader.progress();
        let refusals = progress.borrow().refused;
        let timeout = self.options.receive_timeout;
        let mut last_message = Instant::now();
        let mut ping_sent = false;
        let every = match self.options.mode {
            Mode::Synchronous => SUPERSEDED_CHECK_SYNCHRONOUS,
            Mode::Archived => SUPERSEDED_CHECK,
        };
        // Only for the server's own timeline: one it streams below it is historic, and ends
        // at its switch point however long catching up takes.
        let mut newer = (self.timeline >= self.ctx.server_timeline)
            .then(|| SupersededWatch::start(self.ctx.cluster.clone(), self.timeline, every));
        // Once a newer timeline is known, how long the server has to end this one (a standby
        // being promoted does at once; an old primary never does).
        let mut ends_by: Option<Instant> = None;
        loop {
            if let Some(end) = self.options.endpos {
                if self.written() >= end {
                    return Ok(StreamEnd::Session(self.finish_at_endpos(end).await?));
                }
            }
            let at_limit = self.spool_bytes() >= self.ctx.spool_limit;
            self.note_spool_limit(at_limit);
            let spool_full = at_limit || self.out_of_space.is_some();
            if spool_full {
                // Nothing is read while the spool is full, so silence proves nothing.
                last_message = Instant::now();
            }
            let liveness = timeout.map(|t| last_message + if ping_sent { t } else { t / 2 });
            tokio::select! {
                _ = shutdown.changed() => return Ok(StreamEnd::Session(self.shut_down().await?)),
                message = self.conn.read_copy(), if !spool_full => {
                    last_message = Instant::now();
                    ping_sent = false;
                    match message.map_err(from_conn)? {
                        CopyMessage::Data(payload) => self.handle(payload).await?,
                        CopyMessage::Done => return self.end_of_timeline().await,
                        CopyMessage::Complete(tag) => {
                            return Ok(StreamEnd::Session(SessionEnd::ServerEnded(format!("the server ended streaming ({tag})"))));
                        }
                    }
                }
                _ = tokio::time::sleep_until(liveness.unwrap_or_else(Instant::now)), if liveness.is_some() => {
                    let timeout = timeout.expect("guarded");
                    if ping_sent {
                        let partial = self.conn.incomplete_message().map(|m| format!(": only {m} had arrived")).unwrap_or_default();
                        return Err(anyhow!("no message from the server for {}s (--receive-timeout){partial}", timeout.as_secs()).into());
                    }
                    // Silent for half the timeout: ask for a reply before giving up.
                    tracing::debug!("no message from the server for {}s: asking for a reply", (timeout / 2).as_secs());
                    self.send_status(true).await?;
                    ping_sent = true;
                }
                _ = tokio::time::sleep_until(self.out_of_space.map_or_else(Instant::now, |(_, retry)| retry)), if self.out_of_space.is_some() => {
                    let data = std::mem::take(&mut self.unwritten);
                    self.write(data).await?;
                }
                _ = status.tick() => self.send_status(false).await?,
                fork = async { newer.as_mut().expect("guarded").found().await }, if newer.is_some() && self.superseded.is_none() => {
                    self.superseded = Some(fork);
                    ends_by = Some(Instant::now() + every);
                }
                _ = tokio::time::sleep_until(ends_by.unwrap_or_else(Instant::now)), if ends_by.is_some() => {
                    let fork = self.superseded.expect("set with ends_by");
                    return Err(self.split_brain(fork, "did not end its timeline at"));
                }
                _ = async { partial.as_mut().expect("guarded").tick().await }, if partial.is_some() => {
                    self.start_snapshot().await?;
                }
                changed = progress.changed() => {
                    changed.map_err(|_| SessionError::fatal(anyhow!("the uploader stopped")))?;
                    if let Some(fatal) = progress.borrow().fatal.clone() {
                        return Err(SessionError::fatal(anyhow!(fatal)));
                    }
                    // A segment refused while this stream ran lies behind it; one refused
                    // before counts only if this stream began past it.
                    let behind = if progress.borrow().refused > refusals { self.written() } else { self.begun };
                    if let Some(segment) = self.ctx.uploader.refused_before(behind) {
                        return Err(stream_again(segment));
                    }
                    if self.options.mode == Mode::Archived {
                        self.send_status(false).await?;
                    }
                }
                done = async { (&mut self.snapshot.as_mut().expect("guarded").1).await }, if self.snapshot.is_some() => {
                    let (end, _) = self.snapshot.take().expect("guarded");
                    if self.snapshot_stored(end, done) {
                        self.send_status(false).await?;
                    }
                }
            }
        }
    }

    /// The end of a stream from a server that goes on with a timeline the archive holds a
    /// newer one of (`what` it did at the fork): an old primary left running after a failover.
    fn split_brain(&self, fork: Fork, what: &str) -> SessionError {
        tracing::warn!(
            host = %self.conn.host(),
            timeline = self.timeline.0,
            newer = fork.newer.0,
            fork = %fork.at,
            received = %self.written(),
            "the server {what} the point where the archive's timeline {} forked from its own: \
             an old primary left running after a failover (a split brain), or a restored copy \
             archiving its new timeline into this archive; nothing past the fork is confirmed, \
             and the other hosts are tried first (if that promotion was a mistake and its server \
             is gone, remove its segments and {:08X}.history from the archive)",
            fork.newer.0,
            fork.newer.0
        );
        BehindArchive::refusal(self.conn.host(), self.timeline, fork.newer)
    }

    /// Takes note of a finished snapshot upload; says whether it moved what is stored.
    fn snapshot_stored(
        &mut self,
        end: Lsn,
        done: Result<anyhow::Result<()>, tokio::task::JoinError>,
    ) -> bool {
        match done {
            // Only a snapshot of the segment still being received counts.
            Ok(Ok(())) if end > self.writer().start_lsn() => {
                self.snapshot_end = self.snapshot_end.max(end);
                true
            }
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                // A store that fails is logged once, when it starts and when it works again,
                // by the archive's health; each snapshot it refuses only at debug level.
                let store_failing = e.chain().any(|cause| {
                    cause
                        .downcast_ref::<crate::archive::Error>()
                        .is_some_and(|e| !e.is_contradiction())
                });
                if store_failing {
                    tracing::debug!("snapshot of the current segment not stored: {e:#}");
                } else {
                    tracing::warn!("snapshot of the current segment not stored: {e:#}");
                }
                false
            }
            Err(e) => {
                tracing::warn!("snapshot task: {e}");
                false
            }
        }
    }

    /// The server ended the timeline (CopyDone): answer, and read where the next one starts.
    /// What was received of the old timeline's last segment is kept by the session.
    async fn end_of_timeline(&mut self) -> Result<StreamEnd, SessionError> {
        self.conn.send_copy_done().await.map_err(from_conn)?;
        let rows = self.conn.read_results().await.map_err(from_conn)?;
        let end = next_timeline(&rows, self.timeline)?;
        if let StreamEnd::Timeline { next, switch_point } = &end {
            // As pg_receivewal: a timeline cannot begin after the WAL its parent ended with,
            // or the WAL in between would be missing from both.
            if *switch_point > self.written() {
                return Err(anyhow!(
                    "the server ended timeline {} at {}, but says timeline {next} begins at {switch_point}, past that: refusing to switch",
                    self.timeline,
                    self.written()
                )
                .into());
            }
        }
        self.sync().await?;
        Ok(end)
    }

    fn writer(&self) -> &SegmentWriter {
        self.writer
            .as_ref()
            .expect("a stream always has a current segment")
    }

    /// The end of what this stream wrote to the spool.
    pub fn written(&self) -> Lsn {
        self.written
    }

    /// Bytes in the spool: files waiting for upload, and the current segment.
    fn spool_bytes(&self) -> u64 {
        let current = u64::from(self.ctx.segment_size.bytes()) - self.writer().remaining();
        self.ctx.uploader.pending_bytes() + current
    }

    /// What is safely stored now.
    fn stored(&self) -> Stored {
        let writer = self.writer();
        Stored {
            written: writer.end_lsn(),
            synced: writer.synced_lsn(),
            segment_start: writer.start_lsn(),
            oldest_unarchived: self.ctx.uploader.oldest_outstanding(),
            // Not below where the slot kept WAL from at this session's start: files before it
            // were confirmed by an earlier run, and the slot no longer keeps what they hold.
            oldest_unverified: (self.ctx.uploader.oldest_unverified()).map(|start| {
                self.ctx
                    .slot_kept_from
                    .map_or(start, |kept| start.max(kept))
            }),
            snapshot_end: self.snapshot_end,
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), SessionError> {
        let stored = self.stored();
        if self.options.mode == Mode::Synchronous {
            self.say_held(stored.held_by_unverified());
        }
        let flushed = self.report.next(stored.flushed(self.options.mode));
        let message = status_update(self.written(), flushed, SystemTime::now(), reply_requested);
        let metrics = &self.ctx.shared.metrics;
        metrics.set_flushed(flushed.0);
        metrics.set_archived(stored.archived().0);
        metrics.set_spool_bytes(self.spool_bytes());
        self.conn.queue_copy_data(&message);
        crate::failpoint::hit(crate::failpoint::STATUS_BEFORE_SEND);
        self.conn.flush().await.map_err(from_conn)?;
        crate::failpoint::hit(crate::failpoint::STATUS_AFTER_SEND);
        Ok(())
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
                self.pages
                    .check(&data)
                    .map_err(|e| refuse_page(e, &self.conn.host().to_string()))?;
                let data = match self.options.endpos {
                    Some(end) if start.0 + data.len() as u64 > end.0 => {
                        data.slice(..(end.0.saturating_sub(start.0)) as usize)
                    }
                    _ => data,
                };
                // Known superseded: WAL the server sends past the fork now is a split brain's,
                // written and confirmed up to the fork and no further.
                if let Some(fork) = self.superseded
                    && start.0 + data.len() as u64 > fork.at.0
                {
                    let before_fork = data.slice(..(fork.at.0.saturating_sub(start.0)) as usize);
                    self.write(before_fork).await?;
                    return Err(self.split_brain(fork, "sent WAL past"));
                }
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
                    } else if self.written() >= self.server_end {
                        self.confirm_caught_up().await?;
                    }
                    self.send_status(false).await?;
                }
            }
        }
        Ok(())
    }

    /// Caught up and asked to confirm: a primary shutting down waits until the reported
    /// flush position reaches what it sent (walsender.c WalSndDone). Store the current
    /// segment as a snapshot so the archive holds everything, then the caller reports it.
    /// When the archive cannot do that in time, disconnect rather than confirm WAL that is
    /// not stored: the server then shuts down, and its slot keeps what is not archived.
    async fn confirm_caught_up(&mut self) -> Result<(), SessionError> {
        let deadline = Instant::now() + self.pace.confirm_timeout;
        // A snapshot already in flight may cover less than was received (or an earlier
        // segment): wait for it, then store one of everything.
        for _ in 0..2 {
            self.start_snapshot().await?;
            let Some((end, task)) = self.snapshot.take() else {
                break;
            };
            match tokio::time::timeout_at(deadline, task).await {
                Ok(done) => {
                    self.snapshot_stored(end, done);
                }
                Err(_elapsed) => break,
            }
            if self.snapshot_end >= self.written() {
                break;
            }
        }
        let _ = self.ctx.uploader.wait_idle(Some(deadline)).await;
        if self.stored().archived() >= self.written() {
            return Ok(());
        }
        Err(anyhow!(
            "the server asked to confirm the end of the stream at {}, but the archive did not store it within {:.1}s; disconnecting so the server can shut down (its slot keeps the WAL not archived)",
            self.written(),
            self.pace.confirm_timeout.as_secs_f64()
        )
        .into())
    }

    /// Starts storing the current segment as received so far, unless a snapshot is already
    /// in flight or stored up to here.
    async fn start_snapshot(&mut self) -> Result<(), SessionError> {
        let end = self.written();
        if self.snapshot.is_some() || end <= self.snapshot_end || end == self.writer().start_lsn() {
            return Ok(());
        }
        let (segment, path) = (self.writer().segment(), self.writer().path());
        let len = (end.0 - self.writer().start_lsn().0) as usize;
        let received = self.writer().content_crc();
        // SAFETY: what was written to the segment being received is never written again nor
        // cut off (SegmentWriter::path); the file is only renamed or removed, which leaves the
        // mapping whole.
        let map = blocking::run(move || unsafe { SequentialMap::open(&path) })
            .await
            .context("open the spool for a snapshot")?;
        let (cluster, level) = (self.ctx.cluster.clone(), self.options.compression_level);
        let task = tokio::spawn(async move {
            let encoded = blocking::run(move || {
                let encoded = readback::encode_map(map, Some(len), level, None)?;
                readback::check_crc(encoded.crc, received).map(|()| encoded)
            })
            .await
            .context("compress a snapshot")?;
            cluster
                .put_partial_snapshot(segment, end, encoded.content, encoded.envelope)
                .await?;
            tracing::debug!(%segment, %end, "stored a snapshot of the current segment");
            Ok(())
        });
        self.snapshot = Some((end, task));
        Ok(())
    }

    /// At `--endpos`: archive everything up to it, then end the session. A segment refused
    /// meanwhile is streamed again first ([`stream_again`]), and the next session ends here.
    async fn finish_at_endpos(&mut self, end: Lsn) -> Result<SessionEnd, SessionError> {
        self.sync().await?;
        self.ctx.keep_tail(self.snapshot_end).await?;
        if let Err(e) = self.ctx.drain(None).await {
            let fatal = self.ctx.uploader.progress().borrow().fatal.is_some();
            return Err(match self.ctx.uploader.refused_segments().first() {
                Some(&segment) if !fatal => stream_again(segment),
                _ => SessionError::fatal(e),
            });
        }
        self.send_status(false).await?;
        tracing::info!(%end, "reached the end position; everything up to it is archived");
        Ok(SessionEnd::EndPos)
    }

    /// On SIGTERM/SIGINT: keep what was received of the current segment (fsynced), archive
    /// what can be within `--shutdown-timeout`, make what is left durable, report once more.
    async fn shut_down(&mut self) -> Result<SessionEnd, SessionError> {
        self.sync().await?;
        self.ctx.keep_tail(self.snapshot_end).await?;
        tracing::info!("shutting down: archiving what the spool holds");
        let deadline = Instant::now() + self.options.shutdown_timeout;
        let left = self
            .ctx
            .drain(Some(deadline))
            .await
            .map_err(SessionError::fatal)?;
        self.ctx.keep_durable(left).await?;
        self.send_status(false).await?;
        super::report_left_in_spool(
            self.ctx,
            left,
            self.options.shutdown_timeout,
            self.options.mode,
        );
        Ok(SessionEnd::Shutdown)
    }
}

/// Ends a session because `segment`'s spool file did not read back as it was received (the
/// uploader refused it): not fatal, so the supervisor reconnects, and the next session's start
/// streams the segment again from the slot, which keeps it.
fn stream_again(segment: SegmentName) -> SessionError {
    anyhow!(
        "{segment} did not read back from the spool as it was received: streaming again from it"
    )
    .into()
}
