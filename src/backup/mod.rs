//! Base backups: `walhalla backup` streams one from the server into the archive, in pieces of
//! its tar streams, beside the server's manifest and walhalla's metadata.

pub mod catalog;
pub mod label;
pub mod manifest;
pub mod meta;
pub mod protocol;
pub mod take;
mod upload;
pub mod wal;

use meta::BackupMeta;

/// One line about a backup, for a person.
pub fn describe(meta: &BackupMeta) -> String {
    let state = if meta.is_complete() {
        "complete".to_string()
    } else {
        format!(
            "INCOMPLETE: WAL segment {} never reached the archive",
            meta.wal_missing.as_deref().unwrap_or("?")
        )
    };
    format!(
        "backup {} ({}): {} to {} on timeline {}, {} MiB stored of {} MiB, {state}",
        meta.id,
        meta.label,
        meta.start_lsn,
        meta.stop_lsn,
        meta.stop_timeline,
        meta.stored_bytes >> 20,
        meta.size() >> 20,
    )
}
