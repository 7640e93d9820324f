//! How the archive has been answering: for reads and for writes apart (a store may take
//! reads and refuse writes), whether it is failing, since when, with which error, and when it
//! last worked. Every operation reports here, each failed attempt as it happens, so a
//! daemon's `/status` shows an outage within seconds rather than at the end of an
//! operation's `--timeout`.
//!
//! Changes are logged once: a warning (an error when an operator must act) when operations
//! start failing or their failure becomes permanent, and a line when they work again, saying
//! how long they did not; the retries in between log at debug level only.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Which operations: reads (get, list) or writes (store, delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Reading objects and listing folders.
    Read,
    /// Storing and deleting objects.
    Write,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Read => "reads",
            Direction::Write => "writes",
        }
    }
}

/// The health of an archive's reads and writes; shared by every clone of the archive.
#[derive(Debug, Default)]
pub struct Health {
    reads: Mutex<State>,
    writes: Mutex<State>,
}

/// One direction's record.
#[derive(Debug, Default)]
struct State {
    /// Counts failures: an attempt that began before the latest failure proves nothing by
    /// succeeding (it may have been answered before the outage began).
    failures: u64,
    /// Counts recoveries: an attempt that began before the latest recovery proves nothing by
    /// failing (an operation that gave up at its deadline after the archive came back).
    recoveries: u64,
    /// While failing: since when (for the record, and to say how long it lasted).
    failing_since: Option<(SystemTime, Instant)>,
    permanent: bool,
    last_error: Option<(String, SystemTime)>,
    last_success: Option<SystemTime>,
}

/// The mark an attempt takes when it begins, to report its outcome with: the failures and
/// recoveries counted by then.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    failures: u64,
    recoveries: u64,
}

impl Health {
    fn state(&self, direction: Direction) -> std::sync::MutexGuard<'_, State> {
        let state = match direction {
            Direction::Read => &self.reads,
            Direction::Write => &self.writes,
        };
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An attempt begins.
    pub fn begin(&self, direction: Direction) -> Attempt {
        let state = self.state(direction);
        Attempt {
            failures: state.failures,
            recoveries: state.recoveries,
        }
    }

    /// The attempt marked `attempt` failed with `error`; `permanent` when waiting will not
    /// cure it. Ignored when the archive recovered after the attempt began.
    pub fn failed(&self, direction: Direction, attempt: Attempt, error: &str, permanent: bool) {
        let mut state = self.state(direction);
        if attempt.recoveries != state.recoveries {
            tracing::debug!(
                "archive {} failure of an attempt older than the recovery: {error}",
                direction.label()
            );
            return;
        }
        let now = SystemTime::now();
        state.failures += 1;
        state.last_error = Some((error.to_string(), now));
        let what = direction.label();
        match state.failing_since {
            None => {
                state.failing_since = Some((now, Instant::now()));
                state.permanent = permanent;
                if permanent {
                    tracing::error!(
                        "archive {what} failing, until the archive is fixed (permanent error): {error}"
                    );
                } else {
                    tracing::warn!("archive {what} failing, retrying: {error}");
                }
            }
            Some(_) if permanent && !state.permanent => {
                state.permanent = true;
                tracing::error!(
                    "archive {what} still failing, now until the archive is fixed (permanent error): {error}"
                );
            }
            Some(_) => {}
        }
    }

    /// The attempt marked `attempt` succeeded, or the archive answered it (a missing object
    /// is an answer).
    pub fn succeeded(&self, direction: Direction, attempt: Attempt) {
        let mut state = self.state(direction);
        if attempt.failures != state.failures {
            return;
        }
        state.last_success = Some(SystemTime::now());
        if let Some((_, since)) = state.failing_since.take() {
            let down = since.elapsed();
            let error = state.last_error.as_ref().map_or("", |(e, _)| e.as_str());
            tracing::info!(
                down_s = round_tenths(down),
                "archive {} work again after {:.1} s (last error: {error})",
                direction.label(),
                down.as_secs_f64()
            );
            state.permanent = false;
            state.recoveries += 1;
        }
    }

    /// The record of `direction` now.
    pub fn report(&self, direction: Direction) -> HealthReport {
        let state = self.state(direction);
        HealthReport {
            failing: state.failing_since.is_some(),
            permanent: state.failing_since.is_some() && state.permanent,
            failing_since: state.failing_since.map(|(at, _)| unix_seconds(at)),
            last_error: state.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: state.last_error.as_ref().map(|(_, at)| unix_seconds(*at)),
            last_success_at: state.last_success.map(unix_seconds),
        }
    }
}

fn round_tenths(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1000.0)
}

/// One direction's health at one moment; times in Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HealthReport {
    /// The latest attempts fail.
    pub failing: bool,
    /// The failure needs an operator (permission denied, no such bucket), not time.
    pub permanent: bool,
    /// When the current failure began.
    pub failing_since: Option<f64>,
    /// The latest error, also after recovery.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<f64>,
    /// When an operation last succeeded.
    pub last_success_at: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_since_the_first_failure_until_a_later_attempt_succeeds() {
        let health = Health::default();
        let before = health.begin(Direction::Write);
        health.succeeded(Direction::Write, before);
        assert!(!health.report(Direction::Write).failing);

        let early = health.begin(Direction::Write);
        health.failed(Direction::Write, early, "connection refused", false);
        let first = health.report(Direction::Write);
        assert!(first.failing && !first.permanent, "{first:?}");
        health.failed(Direction::Write, early, "connection reset", false);
        let second = health.report(Direction::Write);
        assert_eq!(second.failing_since, first.failing_since);
        assert_eq!(second.last_error.as_deref(), Some("connection reset"));

        // An attempt begun before the failure proves nothing.
        health.succeeded(Direction::Write, early);
        assert!(health.report(Direction::Write).failing);
        // Reads are apart.
        assert!(!health.report(Direction::Read).failing);

        health.failed(Direction::Write, early, "access denied", true);
        assert!(health.report(Direction::Write).permanent);

        let later = health.begin(Direction::Write);
        health.succeeded(Direction::Write, later);
        let after = health.report(Direction::Write);
        assert!(!after.failing && !after.permanent, "{after:?}");
        assert_eq!(after.failing_since, None);
        assert_eq!(after.last_error.as_deref(), Some("access denied"));
        assert!(after.last_success_at >= after.last_error_at, "{after:?}");

        // An operation begun during the outage that gives up after the recovery is stale.
        health.failed(Direction::Write, early, "no answer within 5s", false);
        assert!(!health.report(Direction::Write).failing);
        let fresh = health.begin(Direction::Write);
        health.failed(Direction::Write, fresh, "connection refused", false);
        assert!(health.report(Direction::Write).failing);
    }
}
