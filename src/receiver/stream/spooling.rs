//! Writing the stream into the spool: segments completed there are handed to the uploader,
//! and a full filesystem, or a spool at `--spool-max-bytes`, stops reading from the server
//! until there is room (backpressure: the slot keeps the WAL), with status updates going on
//! meanwhile.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use tokio::time::Instant;

use super::Stream;
use crate::blocking;
use crate::receiver::Mode;
use crate::receiver::readback::Expect;
use crate::receiver::session::SessionError;
use crate::spool::{self, SegmentWriter};
use crate::wal::{Lsn, SegNo};

/// How long after a warning that the spool is full the next ones are logged at debug level.
const FULL_AGAIN_QUIET: Duration = Duration::from_secs(300);
/// How long a spool file an earlier run left holds the synchronous flush position before
/// that is said ([`Stream::say_held`]).
const HELD_SAID_AFTER: Duration = Duration::from_secs(10);
/// How often a write the full spool refused is tried again.
const SPACE_RETRY: Duration = Duration::from_secs(1);

impl Stream<'_> {
    /// Writes WAL into the spool, completing segments as they fill. When the spool's
    /// filesystem is full, keeps what is not written for later and stops reading from the
    /// server (see [`Stream::out_of_space`]).
    pub(super) async fn write(&mut self, mut data: Bytes) -> Result<(), SessionError> {
        while !data.is_empty() {
            let take = (self.writer().remaining() as usize).min(data.len());
            let chunk = data.slice(..take);
            let writer = self.writer.take().expect("current segment");
            let bytes = chunk.len() as u64;
            let (writer, result) = write_off_reactor(writer, chunk).await;
            match result {
                Ok(()) => data = data.slice(take..),
                Err(e) if spool::is_out_of_space(&e) => {
                    self.writer = Some(writer);
                    self.out_of_space(&e, data);
                    return Ok(());
                }
                Err(e) => {
                    self.writer = Some(writer);
                    return Err(anyhow!(e).context("write to the spool").into());
                }
            }
            if let Some((since, _)) = self.out_of_space.take() {
                let message = format!(
                    "the spool has room again after {:.1} s: reading from the server again",
                    since.elapsed().as_secs_f64()
                );
                match self.full_warned {
                    Some(warned) if warned == since => tracing::info!("{message}"),
                    _ => tracing::debug!("{message}"),
                }
            }
            self.written = writer.end_lsn();
            self.ctx.shared.metrics.received(writer.end_lsn().0, bytes);
            if writer.remaining() > 0 {
                self.writer = Some(writer);
                continue;
            }
            let next = SegNo(writer.end_lsn().0 / u64::from(self.ctx.segment_size.bytes()));
            let (dir, timeline, size, durable) = (
                self.ctx.spool.clone(),
                self.timeline,
                self.ctx.segment_size,
                self.ctx.durable_spool,
            );
            let received = writer.content_crc();
            let (done, next) = blocking::run(move || -> std::io::Result<_> {
                let done = writer.finish()?;
                Ok((
                    done,
                    SegmentWriter::create(&dir, timeline, next, size, durable),
                ))
            })
            .await
            .context("complete a segment in the spool")?;
            self.snapshot_end = Lsn(0);
            tracing::debug!(segment = %done, "segment complete");
            crate::failpoint::hit(crate::failpoint::SEGMENT_COMPLETED);
            // No waiting here: the spool limit, checked before each read, is the backpressure.
            // Handed over even when the next segment cannot be started.
            self.ctx
                .uploader
                .enqueue(done, Expect::Crc(received))
                .map_err(|e| SessionError::fatal(anyhow!(e)))?;
            self.writer = Some(next.context("start the next segment in the spool")?);
        }
        Ok(())
    }

    /// Says when the spool reaches `--spool-max-bytes` (`at_limit`), so that reading pauses, and
    /// when it reads again: a line each. In `--synchronous` mode commits waiting on this
    /// receiver wait meanwhile, so the pause must not be silent; one within five minutes of
    /// the last warning (catching up through a small spool) is logged at debug level, like a
    /// full filesystem.
    pub(super) fn note_spool_limit(&mut self, at_limit: bool) {
        match (at_limit, self.at_limit) {
            (true, None) => {
                let now = Instant::now();
                let waiting = match self.options.mode {
                    Mode::Synchronous => "; synchronous commits waiting on this receiver wait too",
                    Mode::Archived => "",
                };
                let message = format!(
                    "the spool holds --spool-max-bytes ({} bytes) of WAL not yet archived: not \
                     reading from the server until uploads make room (the slot keeps the \
                     WAL){waiting}",
                    self.ctx.spool_limit
                );
                let warn = self
                    .full_warned
                    .is_none_or(|warned| now.duration_since(warned) >= FULL_AGAIN_QUIET);
                if warn {
                    tracing::warn!("{message}");
                    self.full_warned = Some(now);
                } else {
                    tracing::debug!("{message}");
                }
                self.at_limit = Some((now, warn));
            }
            (false, Some((since, warned))) => {
                self.at_limit = None;
                let paused_s = since.elapsed().as_secs();
                if warned {
                    tracing::info!(
                        paused_s,
                        "the spool has room again: reading from the server"
                    );
                } else {
                    tracing::debug!(
                        paused_s,
                        "the spool has room again: reading from the server"
                    );
                }
            }
            _ => {}
        }
    }

    /// Says where a spool file an earlier run left, not read back yet, holds the synchronous
    /// flush position (`held`), once it has for [`HELD_SAID_AFTER`] (receiving such a segment
    /// again holds it briefly), and when it no longer does: commits waiting on this receiver
    /// wait meanwhile, which must not be silent.
    pub(super) fn say_held(&mut self, held: Option<Lsn>) {
        let now = Instant::now();
        match (held, self.held_at) {
            (Some(at), Some((was, since, said))) if at == was => {
                if !said && now.duration_since(since) >= HELD_SAID_AFTER {
                    tracing::warn!(
                        flush_held_at = %at,
                        "a spool file an earlier run left has not read back (see the warnings \
                         about it): the flush position is held, so synchronous commits \
                         waiting on this receiver wait until it reads back, or is refused and \
                         received again"
                    );
                    self.held_at = Some((at, since, true));
                }
            }
            (Some(at), _) => self.held_at = Some((at, now, false)),
            (None, Some((_, since, true))) => {
                tracing::info!(
                    held_s = now.duration_since(since).as_secs(),
                    "the flush position is no longer held by a spool file"
                );
                self.held_at = None;
            }
            (None, _) => self.held_at = None,
        }
    }

    /// The spool's filesystem is full: keeps `unwritten` to write again in [`SPACE_RETRY`]
    /// and reads nothing from the server until then. Status updates go on, so the server
    /// keeps the connection, and its slot keeps the WAL: backpressure, nothing lost.
    fn out_of_space(&mut self, error: &std::io::Error, unwritten: Bytes) {
        self.unwritten = unwritten;
        let since = match self.out_of_space {
            Some((since, _)) => since,
            None => {
                let now = Instant::now();
                let message = format!(
                    "spool full ({error}): not reading from the server until there is room, \
                     trying every {}s; the slot keeps the WAL on the server",
                    SPACE_RETRY.as_secs()
                );
                match self.full_warned {
                    Some(warned) if now.duration_since(warned) < FULL_AGAIN_QUIET => {
                        tracing::debug!("{message}")
                    }
                    _ => {
                        tracing::warn!(
                            "{message} (filling again within {}s is logged at debug level)",
                            FULL_AGAIN_QUIET.as_secs()
                        );
                        self.full_warned = Some(now);
                    }
                }
                now
            }
        };
        self.out_of_space = Some((since, Instant::now() + SPACE_RETRY));
    }

    /// Fsyncs the current segment; the stream keeps its writer whatever the outcome.
    pub(super) async fn sync(&mut self) -> Result<(), SessionError> {
        let mut writer = self.writer.take().expect("current segment");
        let (writer, synced) = blocking::run(move || {
            let synced = writer.sync();
            (writer, synced)
        })
        .await;
        self.writer = Some(writer);
        synced.context("fsync the spool")?;
        Ok(())
    }
}

/// Writes `chunk` to the spool without stalling the reactor. A write to the page cache is
/// short but may block (dirty-page throttling, a slow disk): on the daemon's multi-thread
/// runtime the worker thread hands its other tasks over and writes in place, which costs no
/// thread hand-off per message as the blocking pool does (one XLogData message is at most
/// 128 KiB, so a busy primary sends thousands a second); elsewhere the blocking pool writes.
async fn write_off_reactor(
    mut writer: SegmentWriter,
    chunk: Bytes,
) -> (SegmentWriter, std::io::Result<()>) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        let result = tokio::task::block_in_place(|| writer.write(&chunk));
        return (writer, result);
    }
    blocking::run(move || {
        let result = writer.write(&chunk);
        (writer, result)
    })
    .await
}
