//! The directories a restore writes: checked before a byte is written ([`Destination::check`]),
//! made empty and private ([`Destination::prepare`]), and emptied again when the restore fails
//! ([`remove_partial`]). Blocking: run these off the reactor.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::fsutil;

/// A directory a restore writes into.
#[derive(Clone, Debug)]
pub(super) struct Destination {
    /// Where.
    pub(super) dir: PathBuf,
    /// What it is.
    role: Role,
    /// Whether `--force` was given.
    force: bool,
    /// Its permission bits before the restore, when it existed (else a failed restore
    /// removes it; if it did, they are put back).
    mode_before: Option<u32>,
}

/// What a destination is, which decides what `--force` may do to it.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// The new data directory (`--to`).
    DataDirectory,
    /// A tablespace's directory named with `--tablespace-map`.
    MappedTablespace(u32),
    /// A tablespace's location on the backed-up server, which may be that server's own: never
    /// emptied.
    OriginalTablespace(u32),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::DataDirectory => f.write_str("the data directory"),
            Role::MappedTablespace(oid) => write!(f, "tablespace {oid}"),
            Role::OriginalTablespace(oid) => write!(f, "tablespace {oid}, where it was"),
        }
    }
}

impl Destination {
    /// The data directory, `--to`.
    pub(super) fn data_directory(dir: PathBuf, force: bool) -> Destination {
        Destination {
            mode_before: mode_of(&dir),
            dir,
            role: Role::DataDirectory,
            force,
        }
    }

    /// Tablespace `oid`'s directory, `mapped` there with `--tablespace-map` or else at its
    /// original location.
    pub(super) fn tablespace(oid: u32, dir: PathBuf, mapped: bool, force: bool) -> Destination {
        let role = if mapped {
            Role::MappedTablespace(oid)
        } else {
            Role::OriginalTablespace(oid)
        };
        Destination {
            mode_before: mode_of(&dir),
            dir,
            role,
            force,
        }
    }

    /// Whether `--force` may empty it.
    fn may_empty(&self) -> bool {
        self.force && !matches!(self.role, Role::OriginalTablespace(_))
    }

    /// Refuses a directory that is, or directly holds, the data directory of a running server,
    /// whatever `--force` says (a `--to` or `--tablespace-map` mistyped as a live cluster's
    /// directory or its parent), and a directory that holds anything unless it may be emptied.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        let dir = self.dir.display();
        if let Some((data, pid)) = running_server_in(&self.dir)? {
            bail!(
                "{} is the data directory of a running PostgreSQL server (postmaster.pid names \
                 process {pid}, which is alive); stop it first, or restore elsewhere",
                data.display()
            );
        }
        let holds_something = match std::fs::read_dir(&self.dir) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).with_context(|| format!("read {dir}")),
        };
        if holds_something && self.may_empty() {
            if let Some((data, pid)) = running_server_using(&self.dir)? {
                bail!(
                    "{dir} holds, or lies in, files of the running PostgreSQL server in {} (its \
                     data directory, WAL or a tablespace; postmaster.pid names process {pid}, \
                     which is alive), so --force does not empty it; restore elsewhere",
                    data.display()
                );
            }
        }
        if !holds_something || self.may_empty() {
            return Ok(());
        }
        match self.role {
            Role::OriginalTablespace(oid) => bail!(
                "{dir}, tablespace {oid}'s location on the backed-up server, is not empty (it \
                 may be that server's own, so --force never empties it); give the tablespace \
                 an empty directory with --tablespace-map {oid}=DIR"
            ),
            Role::DataDirectory | Role::MappedTablespace(_) => bail!(
                "{dir} is not empty; restore into an empty directory, or add --force to empty \
                 it first"
            ),
        }
    }

    /// Makes the directory an empty one only its owner can enter (emptied when it may be).
    pub(super) fn prepare(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        if dir.exists() {
            if self.may_empty() {
                empty_directory(dir).with_context(|| format!("empty {}", dir.display()))?;
            }
        } else {
            fsutil::create_dir_all_durable(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))
    }
}

/// Refuses a destination that is, holds or lies in the local archive at `archive`, whatever
/// `--force` says: emptying it would delete the archive, and a failed restore removes what it
/// wrote there.
pub(super) fn refuse_the_archive(destination: &Destination, archive: &Path) -> anyhow::Result<()> {
    let (Some(dir), Some(archive)) = (resolved(&destination.dir), resolved(archive)) else {
        return Ok(());
    };
    if dir.starts_with(&archive) || archive.starts_with(&dir) {
        bail!(
            "{} is, holds or lies in the archive at {}; restore elsewhere (--force never \
             empties an archive)",
            destination.dir.display(),
            archive.display()
        );
    }
    Ok(())
}

/// Refuses destinations that are, hold or lie in one another (`..` and symbolic links
/// resolved): two tablespaces in one directory, or one in the data directory, would be written
/// over each other, and emptied by each other's `--force`.
pub(super) fn refuse_overlaps(destinations: &[Destination]) -> anyhow::Result<()> {
    let resolved: Vec<(&Destination, PathBuf)> = destinations
        .iter()
        .map(|d| (d, resolved(&d.dir).unwrap_or_else(|| d.dir.clone())))
        .collect();
    for (i, (a, a_dir)) in resolved.iter().enumerate() {
        for (b, b_dir) in &resolved[i + 1..] {
            if a_dir.starts_with(b_dir) || b_dir.starts_with(a_dir) {
                bail!(
                    "{} ({}) and {} ({}) would share {}: give each its own directory",
                    a.dir.display(),
                    a.role,
                    b.dir.display(),
                    b.role,
                    a_dir.min(b_dir).display()
                );
            }
        }
    }
    Ok(())
}

/// `path` with its nearest existing ancestor's symbolic links resolved, and the rest as given:
/// where the path is or would be created. `None` when no ancestor can be resolved.
fn resolved(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    if let Ok(real) = absolute.canonicalize() {
        return Some(real);
    }
    // Not there yet: `..` and `.` are taken as written, then the existing part resolved.
    let mut lexical = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            std::path::Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Some(rest.iter().rev().fold(real, |at, part| at.join(part)));
        }
        rest.push(existing.file_name()?);
        existing = existing.parent()?;
    }
}

/// A running server's data directory that is `dir` or directly in it, with its postmaster's
/// pid ([`running_postmaster`]).
fn running_server_in(dir: &Path) -> anyhow::Result<Option<(PathBuf, i32)>> {
    if let Some(pid) = running_postmaster(dir)? {
        return Ok(Some((dir.to_path_buf(), pid)));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("read {}", dir.display()))?
            .path();
        if path.is_dir() && !path.is_symlink() {
            if let Some(pid) = running_postmaster(&path)? {
                return Ok(Some((path, pid)));
            }
        }
    }
    Ok(None)
}

/// A running server whose data directory, WAL directory (`pg_wal` linked elsewhere) or one of
/// whose tablespaces lies in `dir` (or is `dir`, or holds it): its data directory and
/// postmaster's pid. Servers are found by their processes' working
/// directory, which is the data directory (PostgreSQL changes to it at start); only those of
/// the users whose processes this one may inspect, on Linux.
fn running_server_using(dir: &Path) -> anyhow::Result<Option<(PathBuf, i32)>> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(None);
    };
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Ok(None);
    };
    let mut seen = std::collections::HashSet::new();
    for process in processes.flatten() {
        let name = process.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        // Processes of other users (and ones gone meanwhile) cannot be read: skipped.
        let Ok(data) = std::fs::read_link(process.path().join("cwd")) else {
            continue;
        };
        if !seen.insert(data.clone()) {
            continue;
        }
        let Some(pid) = running_postmaster(&data).ok().flatten() else {
            continue;
        };
        let tablespaces = std::fs::read_dir(data.join("pg_tblspc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|link| link.path());
        let used = std::iter::once(data.clone())
            .chain(std::iter::once(data.join("pg_wal")))
            .chain(tablespaces)
            .filter_map(|path| path.canonicalize().ok());
        for path in used {
            if path.starts_with(&dir) || dir.starts_with(&path) {
                return Ok(Some((data, pid)));
            }
        }
    }
    Ok(None)
}

/// The process a data directory's `postmaster.pid` names, when it is alive: PostgreSQL's own
/// test of a lock file (`CreateLockFile` in miscinit.c), a signal 0 to the pid it holds. A
/// stale file whose pid was reused by another process reads as alive, as it does for
/// PostgreSQL, which then refuses to start too.
fn running_postmaster(data: &Path) -> anyhow::Result<Option<i32>> {
    let path = data.join("postmaster.pid");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    // A standalone backend writes its pid negated.
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<i32>().ok())
        .map(i32::abs)
        .filter(|&pid| pid > 0)
    else {
        return Ok(None);
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    Ok(alive.then_some(pid))
}

/// Removes everything in `dir`, not following symbolic links.
fn empty_directory(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Removes what a failed restore wrote (the destinations were empty or new, or emptied), and
/// the directories it created.
pub(super) fn remove_partial(destinations: &[Destination]) {
    use std::os::unix::fs::PermissionsExt;
    for destination in destinations {
        let _ = empty_directory(&destination.dir);
        match destination.mode_before {
            // A mount point, say, keeps the mode it had (1777 for a scratch file system).
            Some(mode) => {
                let _ = std::fs::set_permissions(
                    &destination.dir,
                    std::fs::Permissions::from_mode(mode),
                );
            }
            None => {
                let _ = std::fs::remove_dir(&destination.dir);
            }
        }
    }
}

/// The permission bits of `dir`, when it exists.
fn mode_of(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    dir.metadata().ok().map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed restore into a directory that existed (a mount point, say) empties it and
    /// puts its mode back; one it created goes.
    #[test]
    fn a_failed_restore_leaves_an_existing_directory_as_it_found_it() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let mount = root.path().join("scratch");
        std::fs::create_dir(&mount).unwrap();
        std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let new = root.path().join("new");
        let destinations = [
            Destination::data_directory(mount.clone(), false),
            Destination::data_directory(new.clone(), false),
        ];
        for destination in &destinations {
            destination.prepare().unwrap();
            std::fs::write(destination.dir.join("PG_VERSION"), "18\n").unwrap();
        }
        assert_eq!(mode_of(&mount), Some(0o700));
        remove_partial(&destinations);
        assert_eq!(mode_of(&mount), Some(0o1777));
        assert_eq!(std::fs::read_dir(&mount).unwrap().count(), 0);
        assert!(!new.exists());
    }

    #[test]
    fn destinations_that_share_a_directory_are_refused_however_written() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("link")).unwrap();
        let at = |parts: &str| dir.path().join(parts);
        let refused = |destinations: &[Destination]| {
            refuse_overlaps(destinations)
                .map_err(|e| e.to_string())
                .unwrap_err()
        };
        let data_dir = Destination::data_directory(data.clone(), false);
        let space = |oid, path: PathBuf| Destination::tablespace(oid, path, true, false);
        // Inside the data directory through `..`, or through a symbolic link to it.
        let error = refused(&[data_dir.clone(), space(16384, at("other/../data/ts"))]);
        assert!(
            error.contains("the data directory") && error.contains("tablespace 16384"),
            "{error}"
        );
        refused(&[data_dir.clone(), space(16384, at("link/ts"))]);
        // Two tablespaces in one directory, one written with a trailing `.`.
        let error = refused(&[
            data_dir.clone(),
            space(16384, at("ts")),
            Destination::tablespace(16385, at("ts/."), false, false),
        ]);
        assert!(error.contains("tablespace 16385, where it was"), "{error}");
        // Apart, even when one's name begins with the other's.
        refuse_overlaps(&[data_dir, space(16384, at("ts")), space(16385, at("ts2"))]).unwrap();
    }

    #[test]
    fn the_archive_is_never_a_destination_even_with_force() {
        let root = tempfile::tempdir().unwrap();
        let archive = root.path().join("archive");
        std::fs::create_dir_all(archive.join("7000/wal")).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&archive, &link).unwrap();
        for dir in [
            archive.clone(),
            root.path().to_path_buf(),
            archive.join("7000"),
            archive.join("new/data"),
            root.path().join("missing/../archive/new"),
            link.join("7000"),
            root.path().join("archive/../archive"),
        ] {
            let destination = Destination::data_directory(dir.clone(), true);
            let error = refuse_the_archive(&destination, &archive)
                .expect_err(&format!("{} accepted", dir.display()))
                .to_string();
            assert!(
                error.contains("is, holds or lies in the archive"),
                "{error}"
            );
        }
        for dir in [root.path().join("data"), root.path().join("archive2")] {
            let destination = Destination::tablespace(16384, dir, true, true);
            refuse_the_archive(&destination, &archive).unwrap();
        }
    }

    #[test]
    fn the_data_directory_of_a_running_server_is_refused_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        // This process stands for the postmaster.
        let pid_file = data.join("postmaster.pid");
        std::fs::write(
            &pid_file,
            format!("{}\n{}\n", std::process::id(), data.display()),
        )
        .unwrap();
        let error = Destination::data_directory(data.clone(), true)
            .check()
            .unwrap_err()
            .to_string();
        assert!(error.contains("running PostgreSQL server"), "{error}");
        // Nor its parent, nor as a tablespace's directory.
        let error = Destination::data_directory(dir.path().to_path_buf(), true)
            .check()
            .unwrap_err()
            .to_string();
        assert!(error.contains("running PostgreSQL server"), "{error}");
        let error = Destination::tablespace(16384, data.clone(), true, true)
            .check()
            .unwrap_err()
            .to_string();
        assert!(error.contains("running PostgreSQL server"), "{error}");

        // A pid no process has (above the kernel's pid_max): stale, so --force may empty it.
        std::fs::write(&pid_file, "2147483647\n").unwrap();
        Destination::data_directory(data.clone(), true)
            .check()
            .unwrap();
        let error = Destination::data_directory(data, false)
            .check()
            .unwrap_err()
            .to_string();
        assert!(error.contains("add --force"), "{error}");
    }

    #[test]
    fn a_running_servers_tablespace_is_not_emptied_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let (data, space) = (dir.path().join("srv/data"), dir.path().join("space"));
        std::fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        std::fs::create_dir_all(space.join("PG_15_202209061/5")).unwrap();
        std::os::unix::fs::symlink(&space, data.join("pg_tblspc/16384")).unwrap();
        // A process working in the data directory stands for the postmaster.
        let mut server = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&data)
            .spawn()
            .unwrap();
        std::fs::write(data.join("postmaster.pid"), format!("{}\n", server.id())).unwrap();
        let error = Destination::tablespace(16384, space.clone(), true, true).check();
        let as_data = Destination::data_directory(space.join("PG_15_202209061"), true).check();
        // Nor a directory further up from the data directory than its parent.
        let above = Destination::data_directory(dir.path().to_path_buf(), true).check();
        server.kill().unwrap();
        server.wait().unwrap();
        let error = error.unwrap_err().to_string();
        assert!(
            error.contains("files of the running PostgreSQL server"),
            "{error}"
        );
        assert!(as_data.is_err(), "a folder inside it is refused too");
        assert!(above.is_err(), "and a grandparent of the data directory");
        // Once that server is down, --force may empty it.
        Destination::tablespace(16384, space, true, true)
            .check()
            .unwrap();
    }

    #[test]
    fn a_tablespace_original_location_is_never_emptied_and_the_hint_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_15_202209061"), "").unwrap();
        let original = Destination::tablespace(16384, dir.path().to_path_buf(), false, true);
        let error = original.check().unwrap_err().to_string();
        assert!(
            error.contains("--tablespace-map 16384=DIR") && !error.contains("add --force"),
            "{error}"
        );
        Destination::tablespace(16384, dir.path().to_path_buf(), true, true)
            .check()
            .unwrap();
    }
}
