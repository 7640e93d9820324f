//! Jittered backoff for retries, so that many clients do not retry in step.

use std::time::Duration;

/// A pause between half and all of `backoff`.
pub fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    backoff.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
}
