//! Runs blocking work (compression, checksums, file I/O, fsync) on tokio's blocking pool,
//! keeping the caller's tracing span, so the async reactor never stalls; and catches a panic
//! in a check over bytes from outside ([`catching_panic`]).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

/// Runs `f` on the blocking pool and returns its result; a panic in `f` resumes in the caller.
pub async fn run<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

thread_local! {
    /// Set while [`catching_panic`] runs on this thread.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic in it into `Err` with the panic's message: for a check over bytes
/// from outside (a file an earlier run left), where a bug such bytes meet must fail that
/// check, not the process. The process's panic hook, which otherwise ends the process, lets
/// such a panic unwind to here ([`panic_is_caught`]).
pub fn catching_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Whether a panic on this thread is caught by [`catching_panic`]: a panic hook should then
/// report it and return, not end the process.
pub fn panic_is_caught() -> bool {
    CATCHING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_an_error_with_its_message_and_only_inside() {
        assert!(!panic_is_caught());
        let caught = catching_panic(|| {
            assert!(panic_is_caught());
            panic!("bad bytes at {}", 7)
        });
        assert_eq!(caught, Err::<(), _>("bad bytes at 7".into()));
        assert!(!panic_is_caught());
        assert_eq!(catching_panic(|| 5), Ok(5));
    }
}
