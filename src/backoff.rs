//! Retrying with jittered exponential backoff: the one place that decides how long to wait
//! between attempts and when to give up. Callers say which errors retrying can cure
//! ([`Transient`]); a permanent one returns at once.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with jitter, so that many clients do not retry in step.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The pause before the next attempt (between half and all of the current step); the
    /// step after it is twice as long, up to the maximum.
    pub fn next_pause(&mut self) -> Duration {
        let pause = jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Starts again from the first step (after a success worth trusting).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A pause between half and all of `backoff`.
fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    backoff.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
}

/// Whether retrying an error can help.
pub trait Transient {
    /// `true` when the same attempt may succeed later.
    fn is_transient(&self) -> bool;
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// A permanent error, or the last transient one when the deadline left no time for
    /// another attempt.
    Error(E),
    /// The deadline passed during an attempt; carries the last transient error, if any.
    Deadline(Option<E>),
}

/// Runs `attempt` until it succeeds, fails permanently, or `deadline` passes (never, when
/// `None`). `before_retry` sees each transient error and the pause that follows it (to log).
pub async fn retry<T, E, F, Fut>(
    mut backoff: Backoff,
    deadline: Option<Instant>,
    mut attempt: F,
    mut before_retry: impl FnMut(&E, Duration),
) -> Result<T, GaveUp<E>>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = None;
    loop {
        let outcome = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => return Err(GaveUp::Deadline(last)),
            },
            None => attempt().await,
        };
        let error = match outcome {
            Ok(value) => return Ok(value),
            Err(e) if !e.is_transient() => return Err(GaveUp::Error(e)),
            Err(e) => e,
        };
        let pause = backoff.next_pause();
        if deadline.is_some_and(|d| Instant::now() + pause >= d) {
            return Err(GaveUp::Error(error));
        }
        before_retry(&error, pause);
        last = Some(error);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    struct Failure(bool);

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    const STEPS: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));

    #[test]
    fn steps_double_up_to_the_maximum_and_jitter_stays_within_them() {
        let mut b = STEPS;
        for step in [1, 2, 4, 8, 8] {
            let pause = b.next_pause();
            let step = Duration::from_secs(step);
            assert!(pause >= step / 2 && pause <= step, "{pause:?} for {step:?}");
        }
        b.reset();
        assert!(b.next_pause() <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success_without_a_deadline() {
        let calls = AtomicU32::new(0);
        let mut seen = 0;
        let result = retry(
            STEPS,
            None,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=5 => Err(Failure(true)),
                    _ => Ok(7),
                }
            },
            |_, _| seen += 1,
        )
        .await;
        assert!(matches!(result, Ok(7)));
        assert_eq!((calls.load(Ordering::SeqCst), seen), (7, 6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_returns_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(
            STEPS,
            None,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Failure(false))
            },
            |_, _| {},
        )
        .await;
        assert!(matches!(result, Err(GaveUp::Error(Failure(false)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_gives_up_at_the_deadline() {
        let start = Instant::now();
        let result: Result<(), GaveUp<Failure>> = retry(
            STEPS,
            Some(start + Duration::from_secs(5)),
            std::future::pending,
            |_, _| {},
        )
        .await;
        assert!(matches!(result, Err(GaveUp::Deadline(None))));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
