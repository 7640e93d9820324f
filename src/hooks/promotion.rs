//! What restore_command is asked as recovery ends in a promotion, when the archive may be out
//! of reach.
//!
//! PostgreSQL removes `standby.signal` and `recovery.signal` once recovery has ended, and only
//! then asks restore_command for the parent timeline's history file, to copy it into the new
//! timeline's (`writeTimeLineHistory` in timeline.c). When restore_command has none, it takes
//! the copy in `pg_wal`, and with none there either it writes a history that forgets the
//! parent's own ancestors. So a request there must not fail hard when `pg_wal` holds the file:
//! a fetch that cannot reach its sources and exits above 125 stops the promotion with FATAL,
//! and the server shuts down.
//!
//! Two things keep a promotion independent of the archive:
//! - once recovery has ended, a history file that `pg_wal` holds (and timeline 1's, which
//!   does not exist) is answered "not here" at once, so PostgreSQL copies its own
//!   ([`copied_from_pg_wal`]); history files are immutable, so that copy is the archive's;
//! - a history file restored for recovery is kept in `pg_wal` under its name
//!   ([`keep_in_pg_wal`]), as PostgreSQL keeps those it restores when it switches timeline,
//!   since it does not keep the one its recovery starts on.

use std::io::Write as _;
use std::path::Path;

use crate::fsutil;
use crate::wal::WalFileName;

/// The name PostgreSQL gives `%p` when it restores a history file (xlogarchive.c).
const RECOVERY_HISTORY: &str = "RECOVERYHISTORY";

/// Whether `dest` is where PostgreSQL's recovery restores a history file: `RECOVERYHISTORY`.
fn for_recovery(dest: &Path) -> bool {
    dest.file_name().is_some_and(|n| n == RECOVERY_HISTORY)
}

/// Whether PostgreSQL asks for `name` (to `dest`) after its recovery ended, for a file it
/// copies from `pg_wal` when restore_command has none, and `pg_wal` holds it (or it is
/// timeline 1's, which no cluster has). The data directory is the current directory.
pub fn copied_from_pg_wal(name: &WalFileName, dest: &Path) -> bool {
    let WalFileName::History(timeline) = name else {
        return false;
    };
    let recovery_ended = Path::new("PG_VERSION").is_file()
        && !Path::new(super::STANDBY_SIGNAL).exists()
        && !Path::new(RECOVERY_SIGNAL).exists();
    recovery_ended
        && for_recovery(dest)
        && (timeline.0 == 1 || fsutil::parent_dir(dest).join(name.to_string()).is_file())
}

/// The file whose presence in the data directory starts archive recovery.
const RECOVERY_SIGNAL: &str = "recovery.signal";

/// Keeps a copy of history file `name`, just restored to `dest` for recovery, in `pg_wal`
/// (`dest`'s directory) under its own name, unless one is there: written whole under a
/// temporary name, made durable, then linked in place, so a copy there is always complete
/// and one PostgreSQL wrote meanwhile stays.
pub fn keep_in_pg_wal(name: &WalFileName, dest: &Path) -> std::io::Result<()> {
    if !matches!(name, WalFileName::History(_)) || !for_recovery(dest) {
        return Ok(());
    }
    let kept = fsutil::parent_dir(dest).join(name.to_string());
    if kept.exists() {
        return Ok(());
    }
    let content = std::fs::read(dest)?;
    let mut copy = fsutil::TempFile::create(&kept)?;
    copy.file().write_all(&content)?;
    copy.persist_unless_there().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_history_file_is_kept_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join(RECOVERY_HISTORY);
        let name: WalFileName = "00000002.history".parse().unwrap();
        std::fs::write(&dest, "1\t0/3000000\tno recovery target specified\n").unwrap();
        keep_in_pg_wal(&name, &dest).unwrap();
        let kept = dir.path().join("00000002.history");
        assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&dest).unwrap());
        // One there already (PostgreSQL's own) stays as it is.
        std::fs::write(&kept, "theirs").unwrap();
        keep_in_pg_wal(&name, &dest).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"theirs");
        // Segments, and files restored elsewhere than for recovery, are not kept.
        let elsewhere = dir.path().join("by-hand");
        std::fs::write(&elsewhere, "x").unwrap();
        let three: WalFileName = "00000003.history".parse().unwrap();
        keep_in_pg_wal(&three, &elsewhere).unwrap();
        assert!(!dir.path().join("00000003.history").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with("-tmp")),
            "no temporary file left: {names:?}"
        );
    }
}
