//! How the archive has been answering: for reads and for writes apart (a store may take
//! reads and refuse writes), whether it is failing, since when, with which error, and when it
//! last worked. Every operation reports here, each failed attempt as it happens, so a
//! daemon's `/status` shows an outage within seconds rather than at the end of an
//! operation's `--timeout`.
//!
//! Changes are logged once: a warning (an error when an operator must act) when operations
//! start failing or their failure becomes permanent, and a line when they work again, saying
//! how long they did not; the retries in between log at debug level only. A store that
//! flaps (a share of requests answered 503 SlowDown) would still log a pair of lines per
//! flip, so a failure that begins within [`CALM_WINDOW`] of a recovery is logged only once it
//! has lasted [`BRIEF_FAILURE`]; the brief ones in between are counted in the next line.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// After a recovery, how long new failures are taken for flapping: logged only once they last.
pub const CALM_WINDOW: Duration = Duration::from_secs(60);
/// How long a failure within [`CALM_WINDOW`] of a recovery must last to be logged.
pub const BRIEF_FAILURE: Duration = Duration::from_secs(5);

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
    /// Whether the current failure was logged (a brief one after a recovery is not).
    announced: bool,
    /// When the latest recovery was.
    recovered_at: Option<Instant>,
    /// Failures not logged since the last line that was: brief ones after a recovery.
    brief_failures: u64,
    last_error: Option<(String, SystemTime)>,
    last_success: Option<SystemTime>,
}

/// The mark an attempt takes when it begins, to report its outcome with: the failures and
/// recoveries counted by then.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    failures: u64,
    recoveries: u64,
    /// When it began: an attempt that fails is taken to have found the archive failing then,
    /// so one that gets no answer until its deadline dates the outage from its start.
    began: (SystemTime, Instant),
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
            began: (SystemTime::now(), Instant::now()),
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
        let line = state.record_failure(error, permanent, Instant::now(), attempt.began);
        log(direction, line, error);
    }

    /// The attempt marked `attempt` succeeded, or the archive answered it (a missing object
    /// is an answer).
    pub fn succeeded(&self, direction: Direction, attempt: Attempt) {
        let mut state = self.state(direction);
        if attempt.failures != state.failures {
            return;
        }
        let line = state.record_success(Instant::now());
        let error = state.last_error.as_ref().map_or("", |(e, _)| e.as_str());
        log(direction, line, error);
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

/// What a change of health logs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Line {
    /// Nothing: a retry, or the end of a failure that was not logged.
    Quiet,
    /// At debug level only: a failure began within [`CALM_WINDOW`] of a recovery.
    Brief,
    /// Failing, and retrying; `brief` failures since the last line were not logged.
    Failing {
        lasted: Option<Duration>,
        brief: u64,
    },
    /// Failing until an operator fixes the archive.
    Permanent { still: bool },
    /// Working again after `down`.
    Recovered { down: Duration, brief: u64 },
}

impl State {
    /// Takes note of a failure at `now`; says what to log.
    fn record_failure(
        &mut self,
        error: &str,
        permanent: bool,
        now: Instant,
        began: (SystemTime, Instant),
    ) -> Line {
        self.failures += 1;
        self.last_error = Some((error.to_string(), SystemTime::now()));
        let Some((_, since)) = self.failing_since else {
            // Since the failed attempt began, but not before the last recovery.
            let since = match self.recovered_at {
                Some(at) if at > began.1 => (SystemTime::now() - now.duration_since(at), at),
                _ => began,
            };
            self.failing_since = Some(since);
            self.permanent = permanent;
            let calm = self
                .recovered_at
                .is_some_and(|at| now.saturating_duration_since(at) < CALM_WINDOW);
            self.announced = permanent || !calm;
            return match (permanent, self.announced) {
                (true, _) => Line::Permanent { still: false },
                (false, true) => Line::Failing {
                    lasted: None,
                    brief: std::mem::take(&mut self.brief_failures),
                },
                (false, false) => Line::Brief,
            };
        };
        if permanent && !self.permanent {
            self.permanent = true;
            let still = self.announced;
            self.announced = true;
            return Line::Permanent { still };
        }
        let lasted = now.saturating_duration_since(since);
        if !self.announced && lasted >= BRIEF_FAILURE {
            self.announced = true;
            return Line::Failing {
                lasted: Some(lasted),
                brief: std::mem::take(&mut self.brief_failures),
            };
        }
        Line::Quiet
    }

    /// Takes note of a success at `now`; says what to log.
    fn record_success(&mut self, now: Instant) -> Line {
        self.last_success = Some(SystemTime::now());
        let Some((_, since)) = self.failing_since.take() else {
            return Line::Quiet;
        };
        self.permanent = false;
        self.recoveries += 1;
        self.recovered_at = Some(now);
        if !std::mem::take(&mut self.announced) {
            self.brief_failures += 1;
            return Line::Quiet;
        }
        Line::Recovered {
            down: now.saturating_duration_since(since),
            brief: std::mem::take(&mut self.brief_failures),
        }
    }
}

/// Logs `line` about `direction`, whose latest error is `error`.
fn log(direction: Direction, line: Line, error: &str) {
    let what = direction.label();
    let brief = |n: u64| match n {
        0 => String::new(),
        n => format!(" ({n} brief failures since the last line, not logged)"),
    };
    match line {
        Line::Quiet => {}
        Line::Brief => tracing::debug!(
            "archive {what} failing again soon after recovering, logged if it lasts {}s: {error}",
            BRIEF_FAILURE.as_secs()
        ),
        Line::Failing {
            lasted: None,
            brief: n,
        } => {
            tracing::warn!("archive {what} failing, retrying{}: {error}", brief(n));
        }
        Line::Failing {
            lasted: Some(lasted),
            brief: n,
        } => tracing::warn!(
            "archive {what} failing again for {:.1} s, retrying{}: {error}",
            lasted.as_secs_f64(),
            brief(n)
        ),
        Line::Permanent { still: false } => tracing::error!(
            "archive {what} failing, until the archive is fixed (permanent error): {error}"
        ),
        Line::Permanent { still: true } => tracing::error!(
            "archive {what} still failing, now until the archive is fixed (permanent error): {error}"
        ),
        Line::Recovered { down, brief: n } => tracing::info!(
            down_s = round_tenths(down),
            "archive {what} work again after {:.1} s{} (last error: {error})",
            down.as_secs_f64(),
            brief(n)
        ),
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

    #[test]
    fn an_attempt_that_got_no_answer_dates_the_outage_from_its_start() {
        let mut state = State::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        // An upload that hung for 60 s before its deadline: failing since it began.
        state.record_failure(
            "no answer within 60s",
            false,
            t0 + Duration::from_secs(60),
            (wall, t0),
        );
        let (since, _) = state.failing_since.expect("failing");
        assert_eq!(since, wall);
        match state.record_success(t0 + Duration::from_secs(100)) {
            Line::Recovered { down, .. } => assert_eq!(down, Duration::from_secs(100)),
            other => panic!("{other:?}"),
        }
        // Not from before the recovery, though: an attempt begun then proves nothing earlier.
        state.record_failure("503", false, t0 + Duration::from_secs(130), (wall, t0));
        let (_, since) = state.failing_since.expect("failing");
        assert_eq!(since, t0 + Duration::from_secs(100));
    }

    #[test]
    fn a_store_that_flaps_after_a_recovery_is_logged_once_a_failure_lasts() {
        let mut state = State::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s * 100);
        let began = |at: Instant| (SystemTime::now(), at);
        // The first failure is logged at once, its retries are not.
        assert_eq!(
            state.record_failure("503 SlowDown", false, at(0), began(at(0))),
            Line::Failing {
                lasted: None,
                brief: 0
            }
        );
        assert_eq!(
            state.record_failure("503", false, at(5), began(at(5))),
            Line::Quiet
        );
        assert!(matches!(
            state.record_success(at(10)),
            Line::Recovered { brief: 0, .. }
        ));
        // Flapping within the minute after that: every failure is brief, none is logged.
        for flip in 0..20 {
            let t = 20 + flip * 10;
            assert_eq!(
                state.record_failure("500", false, at(t), began(at(t))),
                Line::Brief
            );
            assert_eq!(
                state.record_failure("500", false, at(t + 3), began(at(t + 3))),
                Line::Quiet
            );
            assert_eq!(state.record_success(at(t + 5)), Line::Quiet);
        }
        // One that lasts 5 s is logged, with the count of brief ones before it.
        assert_eq!(
            state.record_failure("500", false, at(300), began(at(300))),
            Line::Brief
        );
        assert_eq!(
            state.record_failure("500", false, at(340), began(at(340))),
            Line::Quiet
        );
        assert_eq!(
            state.record_failure("500", false, at(350), began(at(350))),
            Line::Failing {
                lasted: Some(Duration::from_secs(5)),
                brief: 20
            }
        );
        assert_eq!(
            state.record_failure("500", false, at(360), began(at(360))),
            Line::Quiet
        );
        assert_eq!(
            state.record_success(at(400)),
            Line::Recovered {
                down: Duration::from_secs(10),
                brief: 0
            }
        );
        // A permanent error is logged at once, calm window or not.
        assert_eq!(
            state.record_failure("access denied", true, at(410), began(at(410))),
            Line::Permanent { still: false }
        );
        assert!(matches!(
            state.record_success(at(420)),
            Line::Recovered { .. }
        ));
        // Past the window, a failure is news again.
        assert_eq!(
            state.record_failure(
                "connection refused",
                false,
                at(420 + 600),
                began(at(420 + 600))
            ),
            Line::Failing {
                lasted: None,
                brief: 0
            }
        );
    }
}
