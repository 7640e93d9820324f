//! Creates files, directories and symlinks beneath one directory without ever following a
//! symlink inside it: each path is walked a component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)` from a descriptor of the root, and the last component
//! is created with `O_CREAT | O_EXCL`, `mkdirat` or `symlinkat`, none of which follows a link.
//! A symlink an archive made earlier can therefore never redirect a later write, and nothing
//! is created outside the root.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::ExtractError;

/// Opening a directory met along a path: never through a symlink.
const WALK: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// The mode of a directory an entry needs but the archive has not listed (yet).
const IMPLIED_DIR_MODE: u32 = 0o700;

/// The root everything is created beneath, and the directories whose entries changed.
pub(super) struct Beneath {
    root: OwnedFd,
    root_path: PathBuf,
    /// Directories created or given a new entry, as relative paths (`""` is the root): the
    /// ones [`Beneath::sync_dirs`] makes durable.
    touched: BTreeSet<Vec<String>>,
}

impl Beneath {
    /// Opens `root`, an existing directory (itself possibly reached through a symlink: that
    /// one is the caller's choice).
    pub(super) fn open(root: &Path) -> Result<Beneath, ExtractError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(root, flags, Mode::empty())
            .map_err(|e| io_error(root.to_path_buf(), "open directory", e))?;
        Ok(Beneath {
            root: fd,
            root_path: root.to_path_buf(),
            touched: BTreeSet::new(),
        })
    }

    /// The filesystem path of `path` (relative components), for messages.
    pub(super) fn display(&self, path: &[String]) -> PathBuf {
        path.iter().fold(self.root_path.clone(), |at, c| at.join(c))
    }

    /// Creates the regular file `path` with exactly `mode`, refusing one that exists (as
    /// anything, a symlink included). Returns it with its directory, for [`Self::remove`].
    pub(super) fn create_file(
        &mut self,
        path: &[String],
        mode: u32,
    ) -> Result<(File, OwnedFd), ExtractError> {
        let (name, parents) = path.split_last().expect("a path has a last component");
        let dir = self.dir(parents)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name.as_str(), flags, Mode::from_raw_mode(mode))
            .map_err(|e| self.create_error(path, "create file", e))?;
        self.touched.insert(parents.to_vec());
        // Exactly the mode asked for, whatever the umask.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| io_error(self.display(path), "set the mode of", e))?;
        Ok((File::from(fd), dir))
    }

    /// Removes the file `path` from `dir` (as [`Self::create_file`] returned it), on a best
    /// effort: for a file that failed verification.
    pub(super) fn remove(&self, dir: &OwnedFd, path: &[String]) {
        let name = path.last().expect("a path has a last component");
        let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
    }

    /// Creates the directory `path` with exactly `mode`; one that already exists (a parent
    /// implied by an earlier entry) takes that mode, unless it is not a real directory.
    pub(super) fn make_dir(&mut self, path: &[String], mode: u32) -> Result<(), ExtractError> {
        let (name, parents) = path.split_last().expect("a path has a last component");
        let parent = self.dir(parents)?;
        let dir = self.open_or_make_dir(parent.as_fd(), path, name, mode)?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode))
            .map_err(|e| io_error(self.display(path), "set the mode of", e))
    }

    /// Creates the symlink `path` pointing at `target`, which is stored as it is and never
    /// followed here.
    pub(super) fn symlink(&mut self, path: &[String], target: &[u8]) -> Result<(), ExtractError> {
        let (name, parents) = path.split_last().expect("a path has a last component");
        let dir = self.dir(parents)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), &dir, name.as_str())
            .map_err(|e| self.create_error(path, "create symlink", e))?;
        self.touched.insert(parents.to_vec());
        Ok(())
    }

    /// Fsyncs every directory created or given an entry, deepest first, so that each entry
    /// created so far survives a crash.
    pub(super) fn sync_dirs(&mut self) -> Result<(), ExtractError> {
        let mut dirs: Vec<Vec<String>> = std::mem::take(&mut self.touched).into_iter().collect();
        dirs.sort_by_key(|dir| std::cmp::Reverse(dir.len()));
        for dir in dirs {
            let fd = self.dir(&dir)?;
            rustix::fs::fsync(&fd).map_err(|e| io_error(self.display(&dir), "fsync", e))?;
        }
        Ok(())
    }

    /// Opens the directory `path`, creating each missing component (mode 0700) and refusing
    /// to pass through anything that is not a real directory.
    fn dir(&mut self, path: &[String]) -> Result<OwnedFd, ExtractError> {
        let mut dir = self
            .root
            .try_clone()
            .map_err(|e| io_error(self.root_path.clone(), "duplicate the descriptor of", e))?;
        for depth in 1..=path.len() {
            let here = &path[..depth];
            let name = &path[depth - 1];
            dir = self.open_or_make_dir(dir.as_fd(), here, name, IMPLIED_DIR_MODE)?;
        }
        Ok(dir)
    }

    /// Opens directory `name` in `parent` (which is at `path` minus its last component),
    /// creating it with `mode` when missing.
    fn open_or_make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        path: &[String],
        name: &str,
        mode: u32,
    ) -> Result<OwnedFd, ExtractError> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                self.touched.insert(path[..path.len() - 1].to_vec());
                self.touched.insert(path.to_vec());
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(io_error(self.display(path), "create directory", e)),
        }
        rustix::fs::openat(parent, name, WALK, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => ExtractError::NotADirectory {
                path: self.display(path),
            },
            e => io_error(self.display(path), "open directory", e),
        })
    }

    fn create_error(&self, path: &[String], action: &'static str, e: Errno) -> ExtractError {
        match e {
            Errno::EXIST => ExtractError::AlreadyExists {
                path: self.display(path),
            },
            e => io_error(self.display(path), action, e),
        }
    }
}

fn io_error(path: PathBuf, action: &'static str, e: impl Into<std::io::Error>) -> ExtractError {
    ExtractError::Io {
        path,
        action,
        source: e.into(),
    }
}
