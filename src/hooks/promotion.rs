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
//! So once recovery has ended, a history file that `pg_wal` holds (and timeline 1's, which
//! does not exist) is answered "not here" at once, and PostgreSQL copies its own
//! ([`copied_from_pg_wal`]); history files are immutable, so that copy is the archive's.
//! PostgreSQL keeps in `pg_wal` every history file its recovery reads (`readTimeLineHistory`,
//! `restoreTimeLineHistoryFiles`), so the parent's is normally there.

use std::path::Path;

use crate::wal::WalFileName;

/// The `%p` PostgreSQL gives restore_command for a history file, relative to the data
/// directory (`XLOGDIR "/RECOVERYHISTORY"` in xlogarchive.c): a fetch by hand to anywhere else
/// is never taken for PostgreSQL's.
const RECOVERY_HISTORY: &str = "pg_wal/RECOVERYHISTORY";

/// Whether PostgreSQL, in data directory `data`, asks for `name` (to `dest`, relative to
/// `data`) after its recovery ended, for a file it copies from `pg_wal` when restore_command
/// has none, and `pg_wal` holds it; or asks for timeline 1's, which no cluster has.
pub fn copied_from_pg_wal(data: &Path, name: &WalFileName, dest: &Path) -> bool {
    let WalFileName::History(timeline) = name else {
        return false;
    };
    let recovery_ended = data.join("PG_VERSION").is_file()
        && !data.join(super::STANDBY_SIGNAL).exists()
        && !data.join(super::RECOVERY_SIGNAL).exists();
    // Timeline 1's whatever `%p` (a restore_command that fetches elsewhere, then copies):
    // no cluster has it, so "not here" is the answer anyway.
    recovery_ended
        && (timeline.0 == 1
            || (dest == Path::new(RECOVERY_HISTORY)
                && data.join("pg_wal").join(name.to_string()).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_history_file_pg_wal_holds_after_recovery_is_left_to_postgresql() {
        let data = tempfile::tempdir().unwrap();
        let data = data.path();
        std::fs::create_dir(data.join("pg_wal")).unwrap();
        std::fs::write(data.join("PG_VERSION"), "17\n").unwrap();
        std::fs::write(
            data.join("pg_wal/00000002.history"),
            "1\t0/3000000\treason\n",
        )
        .unwrap();
        let dest = Path::new("pg_wal/RECOVERYHISTORY");
        let name = |text: &str| text.parse::<WalFileName>().unwrap();
        let asked = |n: &str, dest: &Path| copied_from_pg_wal(data, &name(n), dest);
        // Recovery ended (no signal file): the parent's history pg_wal holds, and timeline 1's.
        assert!(asked("00000002.history", dest));
        assert!(asked("00000001.history", dest));
        // One pg_wal lacks: asked of the archive, whose failure must stop the promotion.
        assert!(!asked("00000003.history", dest));
        // Not to PostgreSQL's pg_wal/RECOVERYHISTORY (a fetch by hand), or a segment: asked
        // of the archive.
        assert!(!asked("00000002.history", Path::new("/tmp/x")));
        assert!(!asked(
            "00000002.history",
            Path::new("/tmp/RECOVERYHISTORY")
        ));
        // Timeline 1's is nobody's, wherever it is to go.
        assert!(asked("00000001.history", Path::new("/tmp/x")));
        assert!(!asked(
            "000000020000000000000003",
            Path::new("pg_wal/RECOVERYXLOG")
        ));
        // Still recovering: asked of the archive.
        for signal in ["standby.signal", "recovery.signal"] {
            std::fs::write(data.join(signal), "").unwrap();
            assert!(!asked("00000002.history", dest), "{signal}");
            std::fs::remove_file(data.join(signal)).unwrap();
        }
        // Not a data directory.
        std::fs::remove_file(data.join("PG_VERSION")).unwrap();
        assert!(!asked("00000002.history", dest));
    }
}
