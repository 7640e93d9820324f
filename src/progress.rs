//! A progress line on a terminal for long commands (`backup`, `restore`): bytes done, of how
//! many, the rate and the time left, redrawn twice a second on stderr. Nothing is drawn when
//! stderr is not a terminal (logs, PostgreSQL, CI).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running progress line.
pub struct Progress {
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    drawing: Option<JoinHandle<()>>,
}

impl Progress {
    /// Whether a progress line would be drawn.
    pub fn wanted() -> bool {
        std::io::stderr().is_terminal()
    }

    /// Starts drawing `what` when stderr is a terminal. Count with [`Progress::counter`];
    /// give the expected total with [`Progress::set_total`] once known.
    pub fn start(what: &'static str) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        if !Self::wanted() {
            return Progress {
                done,
                total,
                stop: None,
                drawing: None,
            };
        }
        let (stop, mut stopped) = oneshot::channel();
        let counter = done.clone();
        let expected = total.clone();
        let started = Instant::now();
        let drawing = tokio::spawn(async move {
            let every = Duration::from_millis(500);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let total = Some(expected.load(Ordering::Relaxed));
                let line = describe(
                    what,
                    counter.load(Ordering::Relaxed),
                    total,
                    started.elapsed(),
                );
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
            let _ = writeln!(std::io::stderr());
        });
        Progress {
            done,
            total,
            stop: Some(stop),
            drawing: Some(drawing),
        }
    }

    /// The expected byte count.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// The counter to add bytes to, from any thread.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Stops drawing and ends the line.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(drawing) = self.drawing.take() {
            let _ = drawing.await;
        }
    }
}

/// `what: 1.2 GiB of 2.2 GiB (54%), 180.0 MiB/s, 6 s left`.
fn describe(what: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let mut line = format!("{what}: {}", bytes(done));
    if let Some(total) = total.filter(|&t| t > 0) {
        let percent = (done as f64 * 100.0 / total as f64).min(100.0);
        line.push_str(&format!(" of {} ({percent:.0}%)", bytes(total)));
        if rate > 0.0 && total > done {
            line.push_str(&format!(
                ", {}/s, {:.0} s left",
                bytes(rate as u64),
                (total - done) as f64 / rate
            ));
            return line;
        }
    }
    line.push_str(&format!(", {}/s", bytes(rate as u64)));
    line
}

/// A byte count with a binary unit, for people (progress lines, listings).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            describe("backup", 1 << 30, Some(2 << 30), Duration::from_secs(4)),
            "backup: 1.0 GiB of 2.0 GiB (50%), 256.0 MiB/s, 4 s left"
        );
        assert_eq!(
            describe("restore", 512, None, Duration::from_secs(1)),
            "restore: 512 B, 512 B/s"
        );
    }
}
