//! What can go wrong talking to the archive, and which failures a retry may cure.

use thiserror::Error;

use super::Location;
use super::refusal::{Brief, Refusal};
use crate::envelope;
use crate::wal::SystemId;

/// What went wrong talking to the archive.
#[derive(Debug, Error)]
pub enum Error {
    /// The archive location cannot be opened (bad configuration, missing directory).
    #[error("cannot open archive {location}: {reason}")]
    Open {
        /// The configured location.
        location: Location,
        /// Why.
        reason: String,
    },
    /// The store refused or failed an operation, permanently or after retries.
    // Errors here carry their cause in the message, not as `source()`: object_store's
    // messages already include their own causes, so a chain would print them twice.
    #[error("{op} {key}: {}", Brief(error))]
    Store {
        /// What was attempted.
        op: &'static str,
        /// The object or folder.
        key: String,
        /// The store's error.
        error: object_store::Error,
    },
    /// The store refused in a way no retry will change (no such bucket, access denied, no
    /// or refused credentials): one line with what to do.
    #[error("archive {location}: {reason}")]
    Refused {
        /// The archive.
        location: Location,
        /// What kind of refusal.
        refusal: Refusal,
        /// What the store said and what to do about it.
        reason: String,
    },
    /// The store accepted a second create-only write of the same key: it may overwrite
    /// archived WAL, so walhalla does not write to it.
    #[error(
        "archive {location} does not honour create-only writes ({seen}); walhalla refuses to write to a store \
         that may overwrite archived WAL: use one that supports conditional writes (If-None-Match: *)"
    )]
    Unsafe {
        /// The archive.
        location: Location,
        /// What the probe saw.
        seen: String,
    },
    /// The operation did not finish within the deadline.
    #[error("{op} {key}: no answer within {seconds}s, {attempts} attempt(s){}", last.as_ref().map(|e| format!(" (last error: {})", Brief(e))).unwrap_or_default())]
    Timeout {
        /// What was attempted.
        op: &'static str,
        /// The object or folder.
        key: String,
        /// The time the operation was given, in seconds.
        seconds: u64,
        /// How many attempts were made.
        attempts: u32,
        /// The last transient error before the deadline, if any.
        last: Option<object_store::Error>,
    },
    /// The archive already holds different content under this name; nothing was overwritten.
    #[error(
        "{key} is already archived with different content (stored: {stored_len} bytes, crc32 {stored_crc:08x}; \
         offered: {offered_len} bytes, crc32 {offered_crc:08x}); the archived object was left unchanged"
    )]
    Conflict {
        /// The object's key.
        key: String,
        /// Length of what the archive holds.
        stored_len: u64,
        /// CRC-32 of what the archive holds.
        stored_crc: u32,
        /// Length of what was offered.
        offered_len: u64,
        /// CRC-32 of what was offered.
        offered_crc: u32,
    },
    /// The archive holds nothing at all for the cluster: a miss there is more likely a wrong
    /// location or prefix, or an unmounted directory, than the end of the WAL.
    #[error(
        "archive {location} holds nothing for cluster {system_id}: wrong location or prefix, an unmounted directory, or nothing archived yet?"
    )]
    NothingArchived {
        /// The archive.
        location: Location,
        /// The cluster.
        system_id: SystemId,
    },
    /// An archived object failed verification.
    #[error("archived object {key} is corrupt: {error}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What verification found.
        error: envelope::Error,
    },
}

impl Error {
    /// Whether retrying can cure this: a store's transient failure or a timeout. A conflict,
    /// a corrupt object, a refused permission, a missing bucket or directory will not go
    /// away by waiting.
    pub fn is_transient(&self) -> bool {
        use crate::backoff::Transient;
        match self {
            Error::Store { error, .. } => error.is_transient(),
            Error::Timeout { .. } => true,
            Error::Open { .. }
            | Error::Refused { .. }
            | Error::Unsafe { .. }
            | Error::NothingArchived { .. }
            | Error::Conflict { .. }
            | Error::Corrupt { .. } => false,
        }
    }

    /// Whether this may pass without anyone acting: a transient failure, or a refused TLS
    /// certificate (a clock not yet synchronized, a certificate being renewed, a load balancer
    /// restarting). A command reading the archive itself does not retry the latter, but a
    /// standby, which streams meanwhile, takes either for "not available", and a fetch server
    /// answers 503 for it (which a client in archive recovery asks again, until its deadline).
    pub fn may_pass(&self) -> bool {
        self.is_transient()
            || matches!(
                self,
                Error::Refused {
                    refusal: super::Refusal::Untrusted,
                    ..
                }
            )
    }

    /// Whether the archive holds something that contradicts what was offered: retrying the
    /// same write can never succeed, and going on could hide a real problem.
    pub fn is_contradiction(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Corrupt { .. })
    }
}

/// Result of archive operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why no cluster could be chosen.
#[derive(Debug, Error)]
pub enum ChoiceError {
    /// The archive holds none.
    #[error("the archive {0} holds no cluster")]
    NoCluster(String),
    /// The archive holds several and none was named.
    #[error("the archive holds {} clusters ({}); name one with --system-id (walhalla list shows each one's PostgreSQL major and newest WAL; a major upgrade by pg_upgrade starts a new cluster)", .0.len(), ids_text(.0))]
    Several(Vec<SystemId>),
    /// The cluster named is not in the archive (those it holds follow).
    #[error("the archive holds no cluster {named}; it holds {}", ids_text(.held))]
    NotHeld {
        /// The cluster named.
        named: SystemId,
        /// Those the archive holds.
        held: Vec<SystemId>,
    },
    /// Listing the archive failed.
    #[error(transparent)]
    Archive(#[from] Error),
}

/// Cluster ids for a message: comma-separated, or `none`.
fn ids_text(ids: &[SystemId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
