//! Files read through a read-only memory mapping, and what happens when a mapped page cannot
//! be read: the kernel raises SIGBUS at the access (an I/O error on the disk, or a file cut
//! short by another process), which [`exit_on_unreadable_map`] turns into a line saying so and
//! the command's failure exit code.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

/// Maps a whole file into memory, read-only: a 16 MiB segment is read without copying it into
/// a fresh heap buffer (whose page faults cost more than the copy, and which the allocator may
/// keep after it is freed).
///
/// # Safety
/// Nothing may truncate the file while the mapping lives (reading a truncated page raises
/// SIGBUS); removing its name is fine.
pub unsafe fn map_immutable_file(path: &Path) -> io::Result<bytes::Bytes> {
    use std::os::unix::fs::OpenOptionsExt;
    // Opened without waiting: a FIFO would block the open until a writer came.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if metadata.len() == 0 {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: read-only, and the caller guarantees the file keeps its length.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    Ok(bytes::Bytes::from_owner(map))
}

/// A read-only mapping of a file that is never written again, read from start to end by one
/// or more sequential passes: the pages a pass has left behind are handed back, so reading a
/// 16 MiB segment costs a few windows of memory, not the segment.
pub struct SequentialMap {
    map: memmap2::Mmap,
    /// Everything before this offset is handed back (a multiple of [`Self::WINDOW`]).
    released: std::cell::Cell<usize>,
}

impl SequentialMap {
    /// Pages are handed back a whole window at a time.
    pub const WINDOW: usize = 1 << 20;

    /// Maps the file at `path`; its pages are read in when touched.
    ///
    /// # Safety
    /// As for [`map_immutable_file`].
    pub unsafe fn open(path: &Path) -> io::Result<SequentialMap> {
        let file = File::open(path)?;
        // SAFETY: read-only, and the caller guarantees the file keeps its length.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        Ok(SequentialMap {
            map,
            released: std::cell::Cell::new(0),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Hands back the whole windows before `offset`: a pass is done with them. Touching them
    /// again is still correct (they are read back from the page cache), only slower.
    pub fn done_before(&self, offset: usize) {
        let end = (offset.min(self.map.len()) / Self::WINDOW) * Self::WINDOW;
        let start = self.released.get();
        if end <= start {
            return;
        }
        // SAFETY: a shared mapping of a file nobody writes: dropping its pages from this
        // process changes no byte anyone reads, they come back from the file on the next touch.
        let dropped = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        // Failing to hand memory back costs memory, never data: nothing to report.
        if dropped.is_ok() {
            self.released.set(end);
        }
    }

    /// Starts another pass from the beginning.
    pub fn rewind(&self) {
        self.released.set(0);
    }

    /// The mapping as a shared buffer, for a reader that seldom touches it (pages handed back
    /// stay out until read again).
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self.map)
    }
}

/// What the process prints and exits with when a mapped file cannot be read.
static UNREADABLE_MAP: OnceLock<(Box<[u8]>, u8)> = OnceLock::new();

/// Makes a mapped file that cannot be read end the process with `exit_code` after printing
/// `command`'s error message, made into a line by `line` (in the log format; it is made now,
/// so it cannot carry the time of the fault), instead of dying of SIGBUS: so `fetch` exits as
/// a failed restore_command must (above 125, never read as "not found"), and an operator reads
/// what happened. Nothing incomplete is stored under a final name: every store is written
/// under a temporary name (or as a multipart upload) and put in place only when whole. Set
/// once, before anything is mapped; a second call changes nothing. Other bus errors (a
/// hardware memory error, a misaligned access, a SIGBUS sent by `kill`) keep their default
/// action.
pub fn exit_on_unreadable_map(
    command: &str,
    exit_code: u8,
    line: impl FnOnce(&str) -> String,
) -> io::Result<()> {
    let message = format!(
        "walhalla {command}: error: a file mapped into memory could not be read (SIGBUS): an I/O \
         error on its disk, or another process cut it short while it was read; stopped there \
         (nothing incomplete is stored under its final name)"
    );
    let line = line(&message) + "\n";
    if UNREADABLE_MAP
        .set((line.into_bytes().into_boxed_slice(), exit_code))
        .is_err()
    {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is valid; the handler calls only async-signal-safe functions
    // (write, _exit, signal) and reads a value set before it was installed.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus_error as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_bus_error(signo: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let code = unsafe { (*info).si_code };
    match UNREADABLE_MAP.get() {
        Some((line, exit_code)) if code == libc::BUS_ADRERR => {
            // SAFETY: write and _exit are async-signal-safe; `line` lives for the process.
            unsafe {
                libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len());
                libc::_exit(c_int::from(*exit_code));
            }
        }
        // The default action: returning re-runs a faulting access, which now takes it; a
        // signal that no access raised (sent by `kill`, si_code <= 0) is raised again.
        // SAFETY: signal and raise are async-signal-safe.
        _ => unsafe {
            libc::signal(signo, libc::SIG_DFL);
            if code <= 0 {
                libc::raise(signo);
            }
        },
    }
}

/// This process's resident kB of the mapping that starts at `start` (from /proc/self/smaps).
#[cfg(test)]
pub(crate) fn resident_kb(start: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let header = format!("{:x}-", start as usize);
    let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&header));
    lines.next().expect("the mapping is listed");
    let rss = lines.find(|line| line.starts_with("Rss:")).unwrap();
    rss.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("000000010000000000000001");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path, a plain call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        // SAFETY: nothing is mapped.
        let refused = unsafe { map_immutable_file(&fifo) }.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput, "{refused}");
    }

    #[test]
    fn a_sequential_map_hands_back_the_windows_a_pass_has_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let content: Vec<u8> = (0..3 * SequentialMap::WINDOW as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        // SAFETY: nothing else touches the file.
        let map = unsafe { SequentialMap::open(&path).unwrap() };
        let start = map.bytes().as_ptr();
        assert_eq!(map.bytes(), &content[..]);
        assert_eq!(resident_kb(start), 3 * 1024, "every page read");
        // Half way into the third window: the first two go.
        map.done_before(2 * SequentialMap::WINDOW + 4096);
        assert_eq!(resident_kb(start), 1024);
        map.done_before(SequentialMap::WINDOW);
        assert_eq!(resident_kb(start), 1024, "nothing comes back by itself");
        // A second pass reads the same bytes and hands them back again.
        map.rewind();
        assert_eq!(map.bytes(), &content[..]);
        assert_eq!(resident_kb(start), 3 * 1024);
        map.done_before(usize::MAX);
        assert_eq!(
            resident_kb(start),
            0,
            "the end of the file ends the last window"
        );
    }

    #[test]
    fn a_mapped_file_cut_short_exits_with_a_line_and_the_exit_code_not_a_signal() {
        const CHILD: &str = "WALHALLA_TEST_UNREADABLE_MAP";
        if let Some(dir) = std::env::var_os(CHILD) {
            // The child: a page past the end of a file cut short under its mapping.
            let json = |message: &str| {
                crate::logging::error_line(crate::logging::LogFormat::Json, message, None)
            };
            exit_on_unreadable_map("push", 42, json).unwrap();
            let path = Path::new(&dir).join("segment");
            std::fs::write(&path, vec![7u8; 2 * 4096]).unwrap();
            // SAFETY: not safe, on purpose: the file is cut short while mapped.
            let map = unsafe { SequentialMap::open(&path).unwrap() };
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
            let byte = std::hint::black_box(map.bytes())[4096];
            panic!("read {byte} from a page past the end of the file");
        }
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "mapped::tests::a_mapped_file_cut_short_exits_with_a_line_and_the_exit_code_not_a_signal",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(
            child.status.code(),
            Some(42),
            "{:?}: {stderr}",
            child.status
        );
        // One line of JSON, as the other log lines under `--log-format json`.
        let line = stderr.lines().last().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(line).expect(&stderr);
        assert_eq!(json["level"], "ERROR", "{line}");
        let message = json["fields"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(
                "walhalla push: error: a file mapped into memory could not be read (SIGBUS)"
            ),
            "{line}"
        );
    }
}
