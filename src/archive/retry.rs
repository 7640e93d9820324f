//! Which store errors are worth retrying: transient failures (network, server errors, local
//! I/O errors) are retried by [`crate::backoff::retry`]; permanent ones (not found, already
//! exists, permission denied, bad configuration) return at once.

use std::time::Duration;

use crate::backoff::{Backoff, Transient};

/// The backoff of one store operation within its deadline.
pub const STORE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

impl Transient for object_store::Error {
    /// object_store reports every local I/O error other than "not found" and "already
    /// exists" as `Generic`, so the causes are read for those that waiting will not cure.
    fn is_transient(&self) -> bool {
        use std::io::ErrorKind;
        if super::Refusal::of(self).is_some() {
            return false;
        }
        if !matches!(
            self,
            object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
        ) {
            return false;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: "connection reset".into(),
        }
    }

    #[test]
    fn local_permission_errors_are_permanent() {
        let denied = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(!denied.is_transient());
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        assert!(
            full.is_transient(),
            "a full disk may be freed within the deadline"
        );
        assert!(transient().is_transient());
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(!missing.is_transient());
    }
}
