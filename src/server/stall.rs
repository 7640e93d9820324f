//! Disconnects clients that stop reading: a response body waiting on a client's full socket
//! holds one of the few file permits, so a handful of stalled readers would block every fetch.
//! The stream records since when a write has been waiting; the connection is dropped once that
//! is longer than the limit. Idle connections between requests are not writes and are left to
//! the header read timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A stream that notes since when its writes have been waiting.
pub struct Watched<S> {
    inner: S,
    clock: Instant,
    /// Milliseconds after `clock` when a write started waiting, plus one; 0 while none waits.
    waiting_since: Arc<AtomicU64>,
}

/// Tells whether a [`Watched`] stream's writes have been stuck too long.
pub struct Watchdog {
    clock: Instant,
    waiting_since: Arc<AtomicU64>,
}

/// Wraps `inner`; the watchdog reports on it.
pub fn watch<S>(inner: S) -> (Watched<S>, Watchdog) {
    let clock = Instant::now();
    let waiting_since = Arc::new(AtomicU64::new(0));
    let watched = Watched {
        inner,
        clock,
        waiting_since: waiting_since.clone(),
    };
    (
        watched,
        Watchdog {
            clock,
            waiting_since,
        },
    )
}

impl<S> Watched<S> {
    fn note<T>(&self, poll: &Poll<T>) {
        match poll {
            Poll::Pending => {
                let now = self.clock.elapsed().as_millis() as u64 + 1;
                let _ = self.waiting_since.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => self.waiting_since.store(0, Ordering::Relaxed),
        }
    }
}

impl Watchdog {
    /// Returns once a write has been waiting longer than `limit`, checking every `every`.
    pub async fn stalled(&self, limit: Duration, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let since = self.waiting_since.load(Ordering::Relaxed);
            if since != 0 {
                let waited = self.clock.elapsed().as_millis() as u64 + 1 - since;
                if waited > limit.as_millis() as u64 {
                    return;
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_reported_one_that_reads_is_not() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut watched, watchdog) = watch(near);
        // The far end reads nothing: the second kilobyte waits.
        let writer = tokio::spawn(async move {
            watched.write_all(&[7u8; 4096]).await.unwrap();
            watched
        });
        let limit = Duration::from_secs(30);
        tokio::select! {
            _ = watchdog.stalled(limit, Duration::from_secs(1)) => {}
            _ = tokio::time::sleep(Duration::from_secs(40)) => panic!("the stall went unnoticed"),
        }
        // A reader that keeps reading is never reported.
        let reading = async {
            let mut buf = [0u8; 4096];
            far.read_exact(&mut buf).await.unwrap();
        };
        reading.await;
        let _watched = writer.await.unwrap();
        tokio::select! {
            _ = watchdog.stalled(limit, Duration::from_secs(1)) => panic!("reported after reading"),
            _ = tokio::time::sleep(Duration::from_secs(40)) => {}
        }
    }
}
