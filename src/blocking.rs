//! Runs blocking work (compression, checksums, file I/O, fsync) on tokio's blocking pool,
//! keeping the caller's tracing span, so the async reactor never stalls.

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
