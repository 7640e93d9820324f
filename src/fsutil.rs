//! Durable file operations: write to a temporary name beside the destination, fsync it,
//! rename it into place and fsync the directory, so a crash leaves the old state or the
//! complete new file, never a torn one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files not yet persisted or removed, so a signal handler can remove them.
static LIVE_TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

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

/// Fsyncs a directory so that the entries created or renamed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file being written under a temporary name next to its destination. Dropped without
/// [`TempFile::persist`], the temporary file is removed.
pub struct TempFile {
    file: Option<File>,
    temp_path: PathBuf,
    dest: PathBuf,
}

impl TempFile {
    /// Creates `.<name>.<pid>.walhalla-tmp` in the directory of `dest`.
    pub fn create(dest: &Path) -> io::Result<TempFile> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
        })?;
        let temp_name = format!(
            ".{}.{}.walhalla-tmp",
            name.to_string_lossy(),
            std::process::id()
        );
        let temp_path = dest.with_file_name(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)?;
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
        EarlyWriteback {
            file: self.file(),
            written: 0,
            submitted: 0,
        }
    }

    /// Flushes the data to disk, renames the file to its destination and fsyncs the directory.
    pub fn persist(mut self) -> io::Result<()> {
        let file = self.file.take().expect("present until persisted");
        file.sync_data()?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.dest)?;
        forget_temp_file(&self.temp_path);
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fsync_dir(dir)
    }
}

/// How much written data [`EarlyWriteback`] lets accumulate before starting its writeback.
pub const WRITEBACK_CHUNK_BYTES: u64 = 2 << 20;

/// Writes to a file and starts writeback of each full chunk (Linux `sync_file_range`, as
/// PostgreSQL's `pg_flush_data`). Only a hint: durability still comes from the final fsync.
pub struct EarlyWriteback<'a> {
    file: &'a mut File,
    written: u64,
    submitted: u64,
}

impl io::Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.submitted >= WRITEBACK_CHUNK_BYTES {
            start_writeback(self.file, self.submitted, self.written - self.submitted);
            self.submitted = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

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
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp_path);
            forget_temp_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
    }
}
