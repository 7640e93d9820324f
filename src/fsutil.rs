//! Durable file operations: write to a temporary name beside the destination, fsync it,
//! rename it into place and fsync the directory, so a crash leaves the old state or the
//! complete new file, never a torn one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files not yet persisted or removed, so a signal handler can remove them.
static LIVE_TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Whether `error` says a filesystem is full (`ENOSPC`) or its user's quota is used up
/// (`EDQUOT`).
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Removes every temporary file still being written; for a process about to die of a signal.
pub fn remove_live_temp_files() {
    let mut live = LIVE_TEMP_FILES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for path in live.drain(..) {
        let _ = std::fs::remove_file(path);
    }
}

fn forget_temp_file(path: &Path) {
    let mut live = LIVE_TEMP_FILES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    live.retain(|p| p != path);
}

/// The umask bits that keep other users out, and the group out too.
const PRIVATE_MASK: u32 = 0o077;
/// The umask bits that keep other users out and let the group read (as PostgreSQL's
/// `initdb -g`: files 0640, directories 0750).
const GROUP_READ_MASK: u32 = 0o027;

/// The umask walhalla runs with, given the one it inherited and the modes of the directories
/// its files go into (`roots`, see [`restrict_umask`]): never looser than `current`, never
/// granting anything to other users, and granting the group read access only when every root
/// grants its group some access (with no roots, never). The result: files 0600 and
/// directories 0700, or 0640 and 0750 beside a group-readable tree, whatever the umask was.
pub fn private_umask(current: u32, root_modes: &[u32]) -> u32 {
    let group_shared = !root_modes.is_empty() && root_modes.iter().all(|mode| mode & 0o070 != 0);
    current
        | if group_shared {
            GROUP_READ_MASK
        } else {
            PRIVATE_MASK
        }
}

/// The mode a file created now gets: `0666` less the process umask (0600, or 0640 beside a
/// group-readable tree, once [`restrict_umask`] has run).
fn fresh_file_mode() -> u32 {
    0o666 & !current_umask()
}

/// The process umask, from `/proc/self/status` (setting it to learn it would race with threads
/// creating files); [`PRIVATE_MASK`] when that cannot be read.
fn current_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .and_then(|mask| u32::from_str_radix(mask.trim(), 8).ok())
        .unwrap_or(PRIVATE_MASK)
}

/// The permission bits of `path`, or of its nearest existing ancestor when it does not
/// exist yet (where walhalla would create it). `None` when nothing on the way can be read.
pub fn nearest_existing_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) => return Some(meta.permissions().mode() & 0o7777),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
        at = match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ if at != Path::new(".") && path.is_relative() => Path::new("."),
            _ => return None,
        };
    }
}

/// Sets the process umask to [`private_umask`] of the inherited one and the modes of `roots`:
/// the directories the command creates files and folders in (a local archive, a spool, a
/// restore's destination directory), each as it is or, if missing, its nearest existing
/// ancestor. Process-wide, so it covers files that libraries create too (object_store's
/// local archive). Call it before any file is created. Returns the new umask.
pub fn restrict_umask(roots: &[PathBuf]) -> u32 {
    let modes: Vec<u32> = roots
        .iter()
        .map(|root| nearest_existing_mode(root).unwrap_or(0))
        .collect();
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let current = unsafe { libc::umask(0o077) } as u32;
    let wanted = private_umask(current, &modes);
    // SAFETY: as above.
    unsafe { libc::umask(wanted as libc::mode_t) };
    wanted
}

/// The permission bits `path` grants other users, if any (`Ok(None)` for none).
pub fn access_for_others(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    Ok((mode & 0o007 != 0).then_some(mode))
}

/// Removes every permission other users have on directory `dir`, one walhalla owns whole
/// (created by it, holding nothing but its own files, such as the prefetch cache): an older
/// version created such directories under the inherited umask. Logs what it changed.
pub fn remove_access_for_others(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = access_for_others(dir)? {
        let private = mode & !0o007;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(private))?;
        tracing::info!(
            "{}: removed other users' access (mode {mode:04o} -> {private:04o})",
            dir.display()
        );
    }
    Ok(())
}

/// Removes the file at `path`, if there is one.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`), atomically
/// (`RENAME_NOREPLACE`); on a filesystem without it, by a hard link then an unlink, after which
/// a crash in between leaves both names for the one file.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        result => result.map_err(io::Error::from),
    }
}

/// Fsyncs a directory so that the entries created or renamed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, and fsyncs each one created together with the
/// first that already existed, so the new entries survive a crash.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut existing = dir;
    while !existing.is_dir() {
        missing.push(existing);
        existing = match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for created in &missing {
        fsync_dir(created)?;
    }
    fsync_dir(existing)
}

/// Fsyncs the file at `root/relative` and every directory from its parent up to `root`.
pub fn fsync_path_within(root: &Path, relative: &Path) -> io::Result<()> {
    let path = root.join(relative);
    File::open(&path)?.sync_all()?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        fsync_dir(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// A file being written under a temporary name next to its destination. Dropped without
/// [`TempFile::persist`], the temporary file is removed.
pub struct TempFile {
    file: Option<File>,
    temp_path: PathBuf,
    dest: PathBuf,
}

impl TempFile {
    /// Creates `.<name>.walhalla-tmp` in the directory of `dest`, holding an exclusive lock on
    /// it. The name is the same for every writer of `dest`, so a writer killed half-way leaves
    /// at most one such file behind, which the next writer takes over and empties.
    pub fn create(dest: &Path) -> io::Result<TempFile> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
        })?;
        let temp_path = dest.with_file_name(format!(".{}.walhalla-tmp", name.to_string_lossy()));
        use std::os::unix::fs::PermissionsExt;
        let file = loop {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&temp_path)?;
            lock_exclusive(&file)?;
            // The lock holder before us may have renamed or removed the file we opened.
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(&temp_path) {
                Ok(at_path) if at_path.ino() == file.metadata()?.ino() => break file,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        };
        file.set_len(0)?;
        // A file taken over keeps the mode it was created with, under another umask perhaps.
        file.set_permissions(std::fs::Permissions::from_mode(fresh_file_mode()))?;
        LIVE_TEMP_FILES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(temp_path.clone());
        Ok(TempFile {
            file: Some(file),
            temp_path,
            dest: dest.to_path_buf(),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("present until persisted")
    }

    /// A writer that asks the kernel to start writing back every [`WRITEBACK_CHUNK_BYTES`]
    /// as they arrive, so the final fsync finds little left to do.
    pub fn early_writeback_writer(&mut self) -> EarlyWriteback<'_> {
        EarlyWriteback::new(self.file())
    }

    /// Flushes the data to disk, renames the file to its destination and fsyncs the directory.
    pub fn persist(self) -> io::Result<()> {
        let dest = self.dest.clone();
        self.persist_data()?;
        fsync_dir(parent_dir(&dest))
    }

    /// Flushes the data to disk and renames the file to its destination, leaving the rename
    /// itself to the next commit of the file system: for a file whose name nobody relies on
    /// after a crash (the readahead cache, which a new worker empties).
    pub fn persist_data(mut self) -> io::Result<()> {
        // On an error the temporary file is still held, and dropping it removes it.
        self.file().sync_data()?;
        // Renamed while still locked: a writer waiting for the lock then finds the name gone
        // (or another file under it) and starts afresh, instead of emptying this one.
        std::fs::rename(&self.temp_path, &self.dest)?;
        let file = self.file.take();
        forget_temp_file(&self.temp_path);
        drop(file);
        Ok(())
    }
}

/// Waits for an exclusive advisory lock on `file`, released when it is closed.
fn lock_exclusive(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_EX).map(|_| ())
}

/// Takes an exclusive advisory lock on `file` if nobody holds one: whether it did.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    flock(file, libc::LOCK_EX | libc::LOCK_NB)
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor that stays open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(error),
        }
    }
}

/// The directory a file is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs files on a thread of its own, in the order given, so that writing the next file
/// overlaps the wait for the last one's data to reach the disk. [`SyncQueue::finish`] waits
/// for every fsync and returns the first failure: only then are the files durable. At most
/// `depth` files wait (their descriptors stay open until synced).
pub struct SyncQueue {
    files: Option<std::sync::mpsc::SyncSender<(File, PathBuf)>>,
    worker: Option<std::thread::JoinHandle<Result<(), (PathBuf, io::Error)>>>,
}

impl SyncQueue {
    /// A queue of at most `depth` files waiting.
    pub fn new(depth: usize) -> io::Result<SyncQueue> {
        let (files, waiting) = std::sync::mpsc::sync_channel::<(File, PathBuf)>(depth);
        let worker = std::thread::Builder::new()
            .name("walhalla-fsync".into())
            .spawn(move || {
                let mut failed = None;
                for (file, path) in waiting {
                    if failed.is_none() {
                        if let Err(e) = file.sync_all() {
                            failed = Some((path, e));
                        }
                    }
                }
                failed.map_or(Ok(()), Err)
            })?;
        Ok(SyncQueue {
            files: Some(files),
            worker: Some(worker),
        })
    }

    /// Queues `file` (at `path`, for messages) for its fsync, waiting while the queue is full.
    pub fn push(&self, file: File, path: PathBuf) -> Result<(), (PathBuf, io::Error)> {
        let sent = self.files.as_ref().map(|f| f.send((file, path.clone())));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err((path, io::Error::other("the fsync thread stopped"))),
        }
    }

    /// Waits until every queued file is fsynced; the first that failed.
    pub fn finish(mut self) -> Result<(), (PathBuf, io::Error)> {
        self.files = None;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err((
                PathBuf::new(),
                io::Error::other("the fsync thread panicked"),
            )),
            None => Ok(()),
        }
    }
}

impl Drop for SyncQueue {
    fn drop(&mut self) {
        self.files = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// How much written data [`EarlyWriteback`] lets accumulate before starting its writeback.
pub const WRITEBACK_CHUNK_BYTES: u64 = 2 << 20;

/// Writes to a file and starts writeback of each full chunk (Linux `sync_file_range`, as
/// PostgreSQL's `pg_flush_data`). Only a hint: durability still comes from the final fsync.
pub struct EarlyWriteback<'a> {
    file: &'a mut File,
    written: u64,
    writeback: WritebackCursor,
}

impl<'a> EarlyWriteback<'a> {
    /// A writer over `file`, which is written sequentially from its start (a new file).
    pub fn new(file: &'a mut File) -> EarlyWriteback<'a> {
        EarlyWriteback {
            file,
            written: 0,
            writeback: WritebackCursor::default(),
        }
    }
}

/// How far writeback of a file written sequentially from its start was started: the one
/// place that starts it a [`WRITEBACK_CHUNK_BYTES`] chunk at a time.
#[derive(Debug, Default)]
pub struct WritebackCursor {
    submitted: u64,
}

impl WritebackCursor {
    /// The file now holds `written` bytes: starts writeback of them once a chunk has gathered.
    pub fn wrote(&mut self, file: &File, written: u64) {
        if written - self.submitted >= WRITEBACK_CHUNK_BYTES {
            start_writeback(file, self.submitted, written - self.submitted);
            self.submitted = written;
        }
    }
}

impl io::Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.writeback.wrote(self.file, self.written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to start writing back `len` bytes of `file` from `offset`, without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the call only schedules
    // writeback and its failure is harmless (the final fsync still writes everything).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Removed while still locked: a writer waiting for the lock then finds the name
            // gone and starts afresh, instead of taking over a file about to be removed.
            let _ = std::fs::remove_file(&self.temp_path);
            forget_temp_file(&self.temp_path);
            drop(file);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_temporary_file_that_cannot_take_its_name_is_removed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        // The destination is a directory: the rename fails.
        let dest = dir.path().join("RECOVERYXLOG");
        std::fs::create_dir(&dest).unwrap();
        let mut temp = super::TempFile::create(&dest).unwrap();
        temp.file().write_all(b"segment").unwrap();
        let error = temp.persist().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::IsADirectory, "{error}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["RECOVERYXLOG"], "the temporary file stayed");
    }

    #[test]
    fn a_sync_queue_syncs_every_file_before_finishing() {
        let dir = std::env::temp_dir().join(format!("walhalla-syncq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let queue = SyncQueue::new(1).unwrap();
        for n in 0..5 {
            let path = dir.join(n.to_string());
            let mut file = File::create(&path).unwrap();
            file.write_all(b"data").unwrap();
            queue.push(file, path).unwrap();
        }
        assert!(queue.finish().is_ok());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;
    use std::io::Write;

    #[test]
    fn creates_directories_durably() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
        std::fs::write(deep.join("f"), b"x").unwrap();
        fsync_path_within(dir.path(), Path::new("a/b/c/f")).unwrap();
        assert!(fsync_path_within(dir.path(), Path::new("a/missing")).is_err());
    }

    #[test]
    fn persists_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let mut t = TempFile::create(&dest).unwrap();
        t.file().write_all(b"abc").unwrap();
        drop(t);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut t = TempFile::create(&dest).unwrap();
        t.file().write_all(b"abc").unwrap();
        t.persist().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A writer killed half-way leaves its temporary file; the next one takes it over.
        std::fs::write(dir.path().join(".RECOVERYXLOG.walhalla-tmp"), b"torn").unwrap();
        let mut t = TempFile::create(&dest).unwrap();
        t.file().write_all(b"whole").unwrap();
        t.persist().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_writer_waiting_for_the_lock_never_empties_the_file_before_it_gets_its_name() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        for round in 0..200 {
            let mut first = TempFile::create(&dest).unwrap();
            first.file().write_all(b"first").unwrap();
            let second = std::thread::spawn({
                let dest = dest.clone();
                move || TempFile::create(&dest).unwrap()
            });
            // Let the second writer block on the lock.
            std::thread::sleep(std::time::Duration::from_millis(1));
            first.persist_data().unwrap();
            let second = second.join().unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), b"first", "round {round}");
            drop(second);
        }
    }

    #[test]
    fn a_taken_over_temporary_file_gets_the_mode_of_a_fresh_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let fresh = dir.path().join("fresh");
        TempFile::create(&fresh).unwrap().persist().unwrap();
        // Left by a run under a looser umask; no umask gives a fresh file execute bits.
        let stale = dir.path().join(".RECOVERYXLOG.walhalla-tmp");
        std::fs::write(&stale, b"torn").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o777)).unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        TempFile::create(&dest).unwrap().persist().unwrap();
        assert_eq!(mode(&dest), mode(&fresh), "{:04o}", mode(&dest));
        assert_eq!(mode(&fresh), fresh_file_mode());
    }

    #[test]
    fn the_umask_keeps_others_out_and_the_group_out_unless_the_tree_shares() {
        // Whatever the inherited umask, nothing for others; never looser than inherited.
        for current in [0o000, 0o002, 0o022, 0o027, 0o077, 0o277] {
            let private = private_umask(current, &[]);
            assert_eq!(private & 0o077, 0o077, "{current:o}");
            assert_eq!(private & current, current);
            let shared = private_umask(current, &[0o750, 0o2775]);
            assert_eq!(shared & 0o007, 0o007, "{current:o}");
            assert_eq!(shared & current, current);
        }
        assert_eq!(private_umask(0o022, &[0o755]), 0o027);
        assert_eq!(private_umask(0o022, &[0o700]), 0o077);
        // One root keeps its group out: so does the one umask for every root.
        assert_eq!(private_umask(0o022, &[0o750, 0o700]), 0o077);
        // PostgreSQL's own umask (initdb -g) is kept as it is.
        assert_eq!(private_umask(0o027, &[0o750]), 0o027);
        assert_eq!(private_umask(0o077, &[0o750]), 0o077);
    }

    #[test]
    fn a_missing_root_counts_as_its_nearest_existing_ancestor() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(nearest_existing_mode(&missing), Some(0o750));
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        assert_eq!(nearest_existing_mode(&missing), Some(0o700));
        assert!(nearest_existing_mode(Path::new("no/such/relative/dir")).is_some());
    }

    #[test]
    fn others_lose_access_to_a_directory_walhalla_owns() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(access_for_others(dir.path()).unwrap(), Some(0o755));
        remove_access_for_others(dir.path()).unwrap();
        assert_eq!(access_for_others(dir.path()).unwrap(), None);
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }
}
