//! What an interrupted upload leaves in a local archive. object_store's local store writes
//! each object to `NAME#N` first and links it to `NAME` once complete; a process killed in
//! between (SIGKILL, the SIGQUIT PostgreSQL sends its archive_command at an immediate
//! shutdown, a crash) leaves `NAME#N` behind. Listings never show such a file, so nothing else
//! would ever find it: `verify` reports them and `prune` removes them once settled.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{ClusterArchive, Location};

/// How long a staging file must have gone unwritten to count as left behind: an upload in
/// progress writes its file continually, and none waits this long between writes.
pub const SETTLED: Duration = Duration::from_secs(3600);

/// A staging file an interrupted upload left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

impl ClusterArchive {
    /// The staging files under this cluster's folder of a local archive not written for
    /// `settled`, sorted by path; none for an object store (whose uploads leave nothing
    /// visible). Runs on the blocking pool.
    pub async fn staging_leftovers(&self, settled: Duration) -> std::io::Result<Vec<Leftover>> {
        let Location::Local(root) = self.location() else {
            return Ok(Vec::new());
        };
        let folder = root.join(self.system_id().to_string());
        crate::blocking::run(move || {
            let mut found = Vec::new();
            collect(&folder, SystemTime::now(), settled, &mut found)?;
            found.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(found)
        })
        .await
    }
}

/// Removes `leftovers` that are still settled (a file already gone, or written since, is
/// left alone). Runs on the blocking pool.
pub async fn remove(leftovers: Vec<Leftover>, settled: Duration) -> std::io::Result<()> {
    crate::blocking::run(move || {
        for leftover in &leftovers {
            let still = std::fs::symlink_metadata(&leftover.path)
                .is_ok_and(|m| m.is_file() && idle(&m, SystemTime::now()) >= settled);
            if !still {
                continue;
            }
            match std::fs::remove_file(&leftover.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("remove {}: {e}", leftover.path.display()),
                    ));
                }
            }
        }
        Ok(())
    })
    .await
}

/// Walks `dir` (symbolic links are not followed) for settled staging files.
fn collect(
    dir: &Path,
    now: SystemTime,
    settled: Duration,
    found: &mut Vec<Leftover>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("read {}: {e}", dir.display()),
            ));
        }
    };
    // An upload may link its staging file away at any moment: what vanished is skipped.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let path = entry.path();
        if kind.is_dir() {
            collect(&path, now, settled, found)?;
        } else if kind.is_file() && is_staging_name(&entry.file_name().to_string_lossy()) {
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            if idle(&metadata, now) >= settled {
                found.push(Leftover {
                    path,
                    bytes: metadata.len(),
                });
            }
        }
    }
    Ok(())
}

/// How long since the file was last written. walhalla stores objects whole (object_store's
/// `put`), which writes the staging file and links it at once, so a staging file that has not
/// changed for [`SETTLED`] belongs to no upload in progress.
fn idle(metadata: &std::fs::Metadata, now: SystemTime) -> Duration {
    metadata
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default()
}

/// Whether `name` is a staging file's: a name, `#`, and digits (object_store's own rule for
/// the files its listings leave out).
pub(super) fn is_staging_name(name: &str) -> bool {
    name.split_once('#').is_some_and(|(stem, suffix)| {
        !stem.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_a_name_a_hash_and_digits() {
        assert!(is_staging_name("000000010000000000000003.zst#2"));
        assert!(is_staging_name("backup.json.zst#17"));
        for name in [
            "000000010000000000000003.zst",
            "a.zst#",
            "a.zst#1x",
            "#3",
            "a#b#c",
            "a#b#3",
        ] {
            assert!(!is_staging_name(name), "{name}");
        }
    }

    #[test]
    fn only_settled_staging_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let group = dir.path().join("wal/0000000100000000");
        std::fs::create_dir_all(&group).unwrap();
        let old = group.join("000000010000000000000003.zst#1");
        let young = group.join("000000010000000000000004.zst#2");
        std::fs::write(&old, b"left").unwrap();
        std::fs::write(&young, b"being written").unwrap();
        std::fs::write(group.join("000000010000000000000003.zst"), b"stored").unwrap();
        let hour_ago = SystemTime::now() - SETTLED - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();

        let mut found = Vec::new();
        collect(dir.path(), SystemTime::now(), SETTLED, &mut found).unwrap();
        assert_eq!(
            found,
            vec![Leftover {
                path: old.clone(),
                bytes: 4
            }]
        );
        let mut all = Vec::new();
        collect(dir.path(), SystemTime::now(), Duration::ZERO, &mut all).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        collect(
            &dir.path().join("absent"),
            SystemTime::now(),
            SETTLED,
            &mut all,
        )
        .unwrap();
        assert_eq!(all.len(), 2);
    }
}
