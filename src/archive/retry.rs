//! Retries of store operations within a deadline: transient failures (network, server errors,
//! local I/O errors) are retried with jittered exponential backoff; permanent ones (not found,
//! already exists, permission denied, bad configuration) return at once.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a store operation finally failed.
#[derive(Debug)]
pub enum Failure {
    /// The store answered with an error that retrying will not change, or the last transient
    /// error when the deadline left no time for another attempt.
    Store(object_store::Error),
    /// The deadline passed; carries the last transient error, if an attempt had failed.
    DeadlineExceeded(Option<object_store::Error>),
}

/// Whether retrying `error` can help. object_store reports every local I/O error other than
/// "not found" and "already exists" as `Generic`, so the causes are read for those that
/// waiting will not cure.
pub fn is_transient(error: &object_store::Error) -> bool {
    use std::io::ErrorKind;
    if !matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    ) {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let permanent = matches!(
                io.kind(),
                ErrorKind::PermissionDenied
                    | ErrorKind::ReadOnlyFilesystem
                    | ErrorKind::NotADirectory
                    | ErrorKind::IsADirectory
            );
            return !permanent;
        }
        cause = e.source();
    }
    true
}

/// Runs `attempt` until it succeeds, fails permanently, or `deadline` passes.
pub async fn retry<T, F, Fut>(deadline: Instant, what: &str, mut attempt: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut last = None;
    loop {
        let error = match tokio::time::timeout_at(deadline, attempt()).await {
            Err(_elapsed) => return Err(Failure::DeadlineExceeded(last)),
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if !is_transient(&e) => return Err(Failure::Store(e)),
            Ok(Err(e)) => e,
        };
        let pause = crate::backoff::jittered(backoff);
        if Instant::now() + pause >= deadline {
            return Err(Failure::Store(error));
        }
        tracing::warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
        last = Some(error);
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: "connection reset".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result = retry(Instant::now() + Duration::from_secs(30), "get", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(transient()),
                _ => Ok(7),
            }
        })
        .await;
        assert!(matches!(result, Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn local_permission_errors_are_permanent() {
        let denied = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(!is_transient(&denied));
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        assert!(
            is_transient(&full),
            "a full disk may be freed within the deadline"
        );
        assert!(is_transient(&transient()));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_return_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> =
            retry(Instant::now() + Duration::from_secs(30), "get", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(object_store::Error::NotFound {
                    path: "x".into(),
                    source: "gone".into(),
                })
            })
            .await;
        assert!(matches!(
            result,
            Err(Failure::Store(object_store::Error::NotFound { .. }))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_store_gives_up_at_the_deadline() {
        let start = Instant::now();
        let result: Result<(), _> =
            retry(start + Duration::from_secs(5), "put", std::future::pending).await;
        assert!(matches!(result, Err(Failure::DeadlineExceeded(None))));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
