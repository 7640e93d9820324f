//! Named fail points where a test kills the receiver (SIGKILL) to prove that a crash at any
//! step of storing WAL loses nothing, or holds it there (the `fail` crate's `sleep(MS)`, which
//! blocks the thread) to force an order between its tasks that is otherwise a rare race.
//!
//! Only a build with the cargo feature `failpoints` has them: without it [`hit`] and
//! [`during`] compile to nothing, so release builds carry no fail point. With it, the
//! `FAILPOINTS` variable, read when `walhalla receive` starts ([`setup`]), configures them in
//! the `fail` crate's syntax, `POINT=ACTIONS;POINT=ACTIONS`, where the task `return` means
//! "kill the process here": `spool-before-rename=2*off->return` lets the point pass twice and
//! kills the receiver at its third hit. The kill logs one line naming the point first.

/// Spool: a segment's bytes are written, the fsync that makes them durable not yet done (in
/// the default mode, which does not fsync the spool, the point where it would be).
pub const SPOOL_BEFORE_FSYNC: &str = "spool-before-fsync";
/// Spool: a complete segment is fsynced (where the mode fsyncs), not yet renamed from
/// `.partial` to its name.
pub const SPOOL_BEFORE_RENAME: &str = "spool-before-rename";
/// Spool: a complete segment is renamed to its name, the directory not yet fsynced (where
/// the mode fsyncs).
pub const SPOOL_AFTER_RENAME: &str = "spool-after-rename";
/// Stream: a segment is complete in the spool, not yet handed to the uploader.
pub const SEGMENT_COMPLETED: &str = "segment-completed";
/// Upload: a segment or kept tail is about to be read from the spool and compressed.
pub const UPLOAD_START: &str = "upload-start";
/// Archive store: a put is under way (sent, not yet acknowledged).
pub const UPLOAD_IN_FLIGHT: &str = "upload-in-flight";
/// Upload: the archive holds the object, its spool file is not yet removed.
pub const UPLOAD_STORED: &str = "upload-stored";
/// Upload: the spool file is removed after its upload.
pub const UPLOAD_REMOVED: &str = "upload-removed";
/// Archive: a segment is archived, its time index not yet stored.
pub const TIME_INDEX_WRITE: &str = "time-index-write";
/// Stream: a status update (the flush position) is about to be sent.
pub const STATUS_BEFORE_SEND: &str = "status-before-send";
/// Stream: a status update was sent.
pub const STATUS_AFTER_SEND: &str = "status-after-send";
/// Session: the server ended a timeline, the next one's history is archived, streaming on
/// the next timeline not yet begun.
pub const TIMELINE_SWITCH: &str = "timeline-switch";
/// Restart: the spool holds WAL an earlier run left, not yet handed to the uploader.
pub const SPOOL_RECOVERY: &str = "spool-recovery";
/// Spool: the end of a stream is kept as a tail (renamed), not yet handed to the uploader.
pub const TAIL_KEPT: &str = "tail-kept";
/// Take-over: a complete segment an earlier run left is being checked (`panic` stands for a
/// bug the check meets).
pub const TAKEOVER_CHECK: &str = "takeover-check";

/// Every fail point, for checking a configuration's names.
pub const ALL: [&str; 15] = [
    SPOOL_BEFORE_FSYNC,
    SPOOL_BEFORE_RENAME,
    SPOOL_AFTER_RENAME,
    SEGMENT_COMPLETED,
    UPLOAD_START,
    UPLOAD_IN_FLIGHT,
    UPLOAD_STORED,
    UPLOAD_REMOVED,
    TIME_INDEX_WRITE,
    STATUS_BEFORE_SEND,
    STATUS_AFTER_SEND,
    TIMELINE_SWITCH,
    SPOOL_RECOVERY,
    TAIL_KEPT,
    TAKEOVER_CHECK,
];

/// The variable that configures the fail points.
pub const VARIABLE: &str = "FAILPOINTS";

#[cfg(feature = "failpoints")]
mod active {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    use super::{ALL, VARIABLE};

    /// Configures the fail points from `FAILPOINTS` (unset or empty: none). An unknown point
    /// or an action the `fail` crate cannot parse is an error.
    pub fn setup() -> Result<(), String> {
        match std::env::var(VARIABLE) {
            Ok(text) => configure(&text),
            Err(_) => Ok(()),
        }
    }

    /// Configures the fail points from `text`, in the syntax of `FAILPOINTS`.
    pub(super) fn configure(text: &str) -> Result<(), String> {
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, actions)) = entry.split_once('=') else {
                return Err(format!("{VARIABLE}: {entry:?} is not POINT=ACTIONS"));
            };
            if !ALL.contains(&name) {
                return Err(format!(
                    "{VARIABLE}: no fail point is named {name:?} (there are {})",
                    ALL.join(", ")
                ));
            }
            fail::cfg(name, actions).map_err(|e| format!("{VARIABLE}: {entry:?}: {e}"))?;
        }
        tracing::warn!("fail points configured: {text}");
        Ok(())
    }

    /// Passes fail point `point`: kills the process (SIGKILL) when its action says `return`.
    pub fn hit(point: &str) {
        if fail::eval(point, |_| ()).is_some() {
            tracing::error!(point, "fail point: killing the process (SIGKILL)");
            // SAFETY: kill(2) on this process's own pid; it does not return.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }

    /// Runs `work`, passing fail point `point` once it is under way (polled once and not
    /// finished), or when it finished at once.
    pub async fn during<F: Future>(point: &'static str, work: F) -> F::Output {
        let mut work = pin!(work);
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        hit(point);
        match first {
            Poll::Ready(output) => output,
            Poll::Pending => work.await,
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod active {
    /// Without the `failpoints` feature there is nothing to configure.
    pub fn setup() -> Result<(), String> {
        Ok(())
    }

    /// Without the `failpoints` feature a fail point is nothing.
    #[inline(always)]
    pub fn hit(_point: &str) {}

    /// Without the `failpoints` feature: `work` itself.
    #[inline(always)]
    pub fn during<F>(_point: &'static str, work: F) -> F {
        work
    }
}

pub use active::{during, hit, setup};

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_names_known_points_only() {
        let error = active::configure("no-such-point=return").unwrap_err();
        assert!(error.contains("no fail point is named"), "{error}");
        assert!(active::configure("upload-start=bogus(").is_err());
        assert!(active::configure("upload-start").is_err());
        active::configure("tail-kept=2*off").unwrap();
        hit(TAIL_KEPT);
    }
}
