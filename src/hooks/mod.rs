//! The commands PostgreSQL runs: `walhalla push %p` as `archive_command` and
//! `walhalla fetch %f %p` as `restore_command`, and the exit codes that are their contract.
//!
//! Their exit codes are a contract with PostgreSQL: see [`EXIT_CODES`], which `--help` prints.

mod fetch;
mod hole;
mod namespace;
mod prefetch;
mod promotion;
mod push;
mod sources;

pub use fetch::{FetchOptions, fetch};
pub use namespace::{NamespaceError, resolve_system_id};
pub use prefetch::run_worker as run_prefetch_worker;
pub use push::push;
pub use sources::FetchOutcome;

use anyhow::Context;
use tokio::time::Instant;

use crate::archive::{Archive, ArchiveOptions};
use crate::config::Config;

/// How long a daemon waits at start for the create-only check before leaving it to its next
/// start.
const DAEMON_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the configured archive; for a writer (`create`), first makes sure the store honours
/// create-only writes (see [`crate::archive::probe`]; a daemon that cannot reach the store
/// goes on without the check). With a `deadline` (a hook's whole run), opening and every
/// later operation end by then; without one (a daemon, a worker doing many fetches), each
/// operation has its own `--timeout`. Opening a local archive touches the file system, which
/// can hang on a dead mount: it runs on the blocking pool, under the deadline or the timeout.
pub async fn open_archive(
    config: &Config,
    create: bool,
    deadline: Option<Instant>,
) -> anyhow::Result<Archive> {
    let location_text = config.archive()?.to_string();
    let options = ArchiveOptions {
        timeout: config.timeout,
        deadline,
        create,
        store: config.store.clone(),
    };
    let location = config.archive()?.clone();
    let opening = crate::blocking::run(move || {
        if create {
            warn_of_unsafe_local_archive(&location);
        }
        Archive::open(&location, &options)
    });
    let open_by = deadline.unwrap_or_else(|| Instant::now() + config.timeout);
    let archive = match tokio::time::timeout_at(open_by, opening).await {
        Ok(archive) => archive?,
        Err(_) => {
            return Err(anyhow::anyhow!(
                "no answer within {}s",
                config.timeout.as_secs()
            ))
            .with_context(|| format!("open archive {location_text}"));
        }
    };
    if create {
        // A daemon may start while the store is down, and archives once it is back: the check
        // is left to its next start, after a short wait (a synchronous receiver's commits wait
        // for it to stream).
        let checking = archive.ensure_create_only();
        let wait = DAEMON_PROBE_WAIT.min(config.timeout);
        let checked = match deadline {
            Some(_) => checking.await,
            None => tokio::time::timeout(wait, checking)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(
                        "cannot check now that {location_text} honours create-only writes: no \
                     answer within {} s",
                        wait.as_secs()
                    );
                    Ok(())
                }),
        };
        match checked {
            Ok(()) => {}
            Err(e) if deadline.is_none() && e.is_transient() => tracing::warn!(
                "cannot check now that {location_text} honours create-only writes: {e}"
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(archive)
}

/// Warns a writer of what makes a local archive unsafe to write into:
/// - root writing into another user's archive: what it stores there is root's and private,
///   so that user (PostgreSQL's, whose archive_command, restore_command and walhalla commands
///   use the archive) cannot read it, and archiving and restores fail on it;
/// - an archive directory every user may write into: any of them can remove, rename or plant
///   objects (with the sticky bit, plant them under a cluster's name not yet used).
///
/// Checked from the archive's root only (its own subdirectories are walhalla's, created
/// private).
fn warn_of_unsafe_local_archive(location: &crate::archive::Location) {
    use std::os::unix::fs::MetadataExt;
    let crate::archive::Location::Local(dir) = location else {
        return;
    };
    let Ok(metadata) = std::fs::metadata(dir) else {
        return;
    };
    if let Some(user) = crate::osuser::root_in_others_dir(dir) {
        tracing::warn!(
            "writing as root into {}, which belongs to {user}: what root stores there, {user} \
             cannot read (archive_command, restore_command and walhalla run as {user} then fail \
             on it); run walhalla as {user} (e.g. runuser -u {user} -- walhalla …)",
            dir.display()
        );
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o002 != 0 {
        // With the sticky bit, others cannot touch what is there, only add folders: a
        // cluster's not archived yet, holding what they like.
        let risk = if mode & 0o1000 != 0 {
            "any of them can plant WAL there under a cluster not archived yet"
        } else {
            "any of them can remove, replace or plant WAL there"
        };
        tracing::warn!(
            "archive directory {} may be written by every user on this host (mode {mode:04o}): \
             {risk}; chmod o-w {}",
            dir.display(),
            dir.display()
        );
    }
}

/// The file whose presence in the data directory puts PostgreSQL in standby mode (it wins
/// over `recovery.signal`, in PostgreSQL as here).
const STANDBY_SIGNAL: &str = "standby.signal";

/// The file whose presence in the data directory starts archive recovery (without
/// `standby.signal`, not in standby mode).
const RECOVERY_SIGNAL: &str = "recovery.signal";

/// Whether PostgreSQL recovers in standby mode: `standby.signal` in the data directory, which
/// is the current directory of a restore_command and of the readahead worker it starts.
fn in_standby_mode() -> bool {
    std::path::Path::new(STANDBY_SIGNAL).exists()
}

/// The exit codes, as `walhalla --help` prints them.
pub const EXIT_CODES: &str = "\
Exit codes (the contract with PostgreSQL):
  push   0    stored durably, or already archived with identical content
  push   1    not stored: invalid file, different content already archived, archive down or
              deadline passed; PostgreSQL keeps the segment and retries
  fetch  0    the file was written complete and verified
  fetch  1    the archive (or the --server) does not have the file; recovery moves on. In
              standby mode (standby.signal) also an archive that holds nothing yet for this
              cluster, or an archive or --server that cannot be reached in time, with a
              warning: the standby streams and asks again
  fetch  255  the file cannot be delivered: corrupt object, missing bucket or directory, a
              --server that refuses; outside standby mode also an archive unreachable or
              empty for this cluster, a --server that does not answer with no archive to
              fall back to, --timeout passed (one deadline for the whole call); with
              --to-end LAST also a miss of a segment through LAST, which restore found
              archived (a hole); recovery stops instead of ending early
  any    255  usage error (a mistyped restore_command must not read as \"not found\")";

/// push: the file was not archived; PostgreSQL keeps it and retries.
pub const EXIT_PUSH_FAILED: u8 = 1;
/// fetch: the archive does not hold the file (or, in standby mode, holds nothing yet for the
/// cluster, or cannot be reached in time).
pub const EXIT_FETCH_NOT_FOUND: u8 = 1;
/// fetch: the file could not be delivered; above 125 so PostgreSQL aborts recovery instead of
/// taking the failure for the end of the archive (`wait_result_is_any_signal` in xlogarchive.c).
/// Also every usage error, of any command.
pub const EXIT_FETCH_FATAL: u8 = 255;
