//! The spool: a local directory where received WAL lands before it is archived.
//!
//! - `SEGMENT.partial`: the segment being received, written sequentially from its start.
//! - `SEGMENT`: a complete segment, renamed (fsynced first where the mode asks, see below),
//!   waiting for its upload; it is deleted once the archive holds it.
//! - `SEGMENT.partial.END`: a kept tail, the bytes of a segment from its start to `END` (16 hex
//!   digits) that a stream had received when it ended; it is archived as a receiver snapshot
//!   and then deleted. A stream that ends for any reason (lost connection, crash, shutdown,
//!   a timeline's end) leaves its `.partial` to be kept this way, so WAL whose flush was
//!   confirmed in `--synchronous` mode reaches the archive and is never truncated first.
//! - `SEGMENT.damaged`, `SEGMENT.partial.END.damaged`: a file that did not read back as
//!   received, never archived but kept until the archive holds its segment (see `aside.rs`):
//!   in `--synchronous` mode it may be the only copy of the WAL before its damage.
//! - `walhalla.spool`: the system identifier of the cluster the spool belongs to, so a spool is
//!   never shared by two clusters.
//! - `walhalla.spool.unsynced`: present while segments may have been written without fsync
//!   (see below): the boot they were written in.
//!
//! How durable the segments are depends on the mode ([`open`]). In `--synchronous` mode the
//! flush position a receiver reports is what the spool holds, so each segment is fsynced as it
//! completes (and earlier on request). In the default mode the flush position is what the
//! archive holds: the slot keeps everything past it on the server, and the spool only has to
//! survive the receiver's process, not the host. Its segments are then left to the page
//! cache, which a process kill does not lose and which an upload usually deletes before the
//! kernel writes it out. A spool found written that way in an earlier boot may hold torn
//! files: its segments are discarded (never archived) and streamed again from the server.
//! A filesystem that fails under a live receiver (an error that turns it read-only) can lose
//! unsynced writes too: in either mode the uploader archives a file only once it reads back as
//! received (the stream's CRC-32 of each segment, see `receiver::readback`), and otherwise
//! has it streamed again.
//!
//! A receiver holds its spool for as long as it runs ([`open`]): a second receiver given the
//! same spool (two receivers of one cluster share the default one) is refused, instead of
//! taking the first one's files for an earlier run's and archiving, keeping or removing them
//! under its feet. The hold is an abstract Unix socket named for the spool (`hold.rs`), not a
//! lock file: an open file in the spool would keep its filesystem from being unmounted for a
//! repair while the receiver waits for it.
//!
//! Streaming restarts at the start of a segment (the slot keeps that segment on the server),
//! so a kept tail is never appended to; it only serves a last-resort recovery.
//! The functions here block: call them through [`crate::blocking::run`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod aside;
mod hold;

use aside::{ASIDE_SUFFIX, DAMAGED_SUFFIX, damaged_copy_of, put_back_aside};
pub use aside::{
    SetAside, is_complete_copy, keep_valid_prefix, remove_damaged, set_aside_damaged,
    set_aside_damaged_if,
};

use crate::failpoint;
use crate::fsutil::{WritebackCursor, fsync_dir, remove_if_present};
use crate::wal::{
    LONG_HEADER_BYTES, LongPageHeader, Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId,
    WalFileName,
};

const MARKER: &str = "walhalla.spool";
/// See the module documentation.
const UNSYNCED: &str = "walhalla.spool.unsynced";
/// Linux's identifier of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const PARTIAL_SUFFIX: &str = ".partial";

/// What a spool directory holds.
#[derive(Debug, Default)]
pub struct SpoolContents {
    /// Complete segments not yet archived, oldest first (by timeline, then position).
    pub complete: Vec<SegmentName>,
    /// The newest segment that was being received, if any.
    pub partial: Option<SegmentName>,
    /// Kept tails not yet archived: the segment and the end of what it holds.
    pub tails: Vec<(SegmentName, Lsn)>,
    /// Names that begin like a WAL file's (24 hexadecimal digits) but name none walhalla
    /// writes (timeline 0, say): left alone.
    pub unknown: Vec<String>,
    /// Damaged copies ([`set_aside_damaged`]): the segment each is a copy of, and its path.
    pub damaged: Vec<(SegmentName, PathBuf)>,
}

/// Opens (creating) the spool at `dir` for cluster `system_id`: holds it for this process (a
/// spool another process holds is refused; see the module documentation), refuses a spool of
/// another cluster, checks that the directory is writable, and warns when other users can
/// enter it.
/// Then settles what an earlier run wrote without fsync (see the module documentation) and
/// says whether this run's segments are to be fsynced: when `durable` is asked for, and when
/// the boot cannot be told (no `/proc`).
pub fn open(dir: &Path, system_id: SystemId, durable: bool) -> io::Result<bool> {
    if dir.exists() && !dir.is_dir() {
        return Err(not_a_directory());
    }
    std::fs::create_dir_all(dir)?;
    hold::hold(dir)?;
    // Created now, it is private (see fsutil::restrict_umask); an older version's spool may
    // not be, and it is the user's to change.
    if let Some(mode) = crate::fsutil::access_for_others(dir)? {
        tracing::warn!(
            "spool {} is accessible to other users (mode {mode:04o}): they can read the WAL \
             it holds; run chmod o-rwx on it",
            dir.display()
        );
    }
    match marked_for(dir)? {
        Some(owner) if owner == system_id.to_string() => {}
        Some(owner) => {
            // The callers name the spool.
            return Err(io::Error::other(format!(
                "it belongs to cluster {owner}, not {system_id}: a spool holds one cluster's \
                 WAL; give this cluster a --spool of its own"
            )));
        }
        None => {
            let temp = dir.join(format!("{MARKER}.tmp"));
            std::fs::write(&temp, format!("{system_id}\n"))?;
            File::open(&temp)?.sync_all()?;
            std::fs::rename(&temp, dir.join(MARKER))?;
            fsync_dir(dir)?;
        }
    }
    // Writable? (The marker may predate a permissions change.)
    let probe = dir.join(".walhalla-write-probe");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)?;
    put_back_aside(dir)?;
    let boot = std::fs::read_to_string(BOOT_ID).ok();
    settle_unsynced(dir, boot.as_deref().map(str::trim), durable)
}

/// Removes the spool `dir` with what it holds, unless a process (this one too) holds it: it
/// is held first, so that no process starts using it while it goes. Returns whether it was removed.
/// For spools nothing needs once their process is gone (a killed backup's).
pub fn remove_unless_held(dir: &Path) -> io::Result<bool> {
    if hold::held_here(dir)? {
        return Ok(false);
    }
    match hold::hold(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::remove_dir_all(dir)?;
    Ok(true)
}

/// Whether `dir` is still the spool [`open`] made for `system_id`: a directory holding its
/// marker. `false` when the marker is missing (a directory made anew) or names another
/// cluster; an error when `dir` is gone or not a directory.
pub fn still_open(dir: &Path, system_id: SystemId) -> io::Result<bool> {
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(not_a_directory());
    }
    Ok(marked_for(dir)?.is_some_and(|owner| owner == system_id.to_string()))
}

/// The cluster the spool `dir` is marked for, as its marker says (`None`: no marker).
fn marked_for(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn not_a_directory() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotADirectory,
        "exists and is not a directory",
    )
}

/// Settles the segments an earlier run left without fsync, in boot `boot` (`None`: unknown),
/// and records whether this run leaves its own so; returns whether this run fsyncs.
fn settle_unsynced(dir: &Path, boot: Option<&str>, durable: bool) -> io::Result<bool> {
    let marker = dir.join(UNSYNCED);
    let written_in = match std::fs::read_to_string(&marker) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    // What an earlier run left unsynced is whole in this boot's page cache, and may be torn
    // after a restart of the host (or when the boot cannot be told).
    match (&written_in, boot) {
        (Some(earlier), Some(now)) if earlier == now => {
            if !durable {
                return Ok(false);
            }
            sync_segments(dir)?;
        }
        (Some(earlier), _) => {
            let discarded = discard_segments(dir)?;
            if discarded > 0 {
                tracing::warn!(
                    "spool {}: {discarded} segment file(s) written without fsync before the \
                     host restarted (boot {earlier}) discarded, not archived: they may be torn; \
                     streaming fetches them again from the slot",
                    dir.display()
                );
            }
        }
        (None, _) => {}
    }
    // This run leaves its segments to the page cache only when it may, when it can tell a
    // restart of the host, and when no fsynced segment waits in the spool (one a synchronous
    // run left): a restart would discard that one with the rest.
    let unsynced = boot.is_some() && !durable && (written_in.is_some() || !holds_segments(dir)?);
    match boot {
        Some(now) if unsynced => {
            let temp = dir.join(format!("{UNSYNCED}.tmp"));
            std::fs::write(&temp, format!("{now}\n"))?;
            File::open(&temp)?.sync_all()?;
            std::fs::rename(&temp, &marker)?;
        }
        _ if written_in.is_some() => std::fs::remove_file(&marker)?,
        _ => return Ok(true),
    }
    // Durable before any segment is written unsynced, or after all are synced.
    fsync_dir(dir)?;
    Ok(!unsynced)
}

/// Whether the spool holds a complete segment or a `.partial`.
fn holds_segments(dir: &Path) -> io::Result<bool> {
    let contents = scan(dir)?;
    Ok(!contents.complete.is_empty() || contents.partial.is_some())
}

/// Fsyncs the complete segments and the `.partial` (kept tails were fsynced when kept).
fn sync_segments(dir: &Path) -> io::Result<()> {
    let contents = scan(dir)?;
    let partial = contents
        .partial
        .map(|s| dir.join(format!("{s}{PARTIAL_SUFFIX}")));
    for path in contents
        .complete
        .iter()
        .map(|&s| complete_path(dir, s))
        .chain(partial)
    {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        match File::open(&path) {
            Ok(file) => file.sync_all().map_err(named)?,
            // Archived and removed meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Not this process's to read (its mode changed): the start reads every file back
            // before it counts it, and one that does not read back is not counted, so a file
            // this cannot fsync must not keep the receiver from starting or stopping.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::warn!(
                file = %path.display(),
                "cannot open a spool file to fsync it ({e}): left as it is; it is archived \
                 once it can be read and reads back as received"
            ),
            Err(e) => return Err(named(e)),
        }
    }
    fsync_dir(dir)
}

/// Makes what the spool holds durable and the spool an fsynced one again (see the module
/// documentation): for a receiver that stops with segments left, so that a restart of the
/// host keeps them for the next start to archive.
pub fn make_durable(dir: &Path) -> io::Result<()> {
    sync_segments(dir)?;
    match std::fs::remove_file(dir.join(UNSYNCED)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fsync_dir(dir)
}

/// Removes the complete segments and the `.partial` files; returns how many. Kept tails stay:
/// each was fsynced before it got its name.
fn discard_segments(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(Ok(WalFileName::Segment(_) | WalFileName::Partial(_))) =
            name.to_str().map(str::parse::<WalFileName>)
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The cluster a spool belongs to, if it was opened before.
pub fn owner(dir: &Path) -> Option<SystemId> {
    std::fs::read_to_string(dir.join(MARKER))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The segment size of the WAL an earlier run left in the spool, read from the first page of
/// one of its files (every spool file starts at a segment's start); `None` when it holds no
/// WAL, or none that can tell.
pub fn segment_size(dir: &Path) -> io::Result<Option<SegmentSize>> {
    use std::io::Read;
    let contents = scan(dir)?;
    let files = contents
        .partial
        .map(|s| dir.join(format!("{s}{PARTIAL_SUFFIX}")))
        .into_iter()
        .chain(
            contents
                .tails
                .iter()
                .map(|&(s, end)| tail_path(dir, s, end)),
        )
        .chain(contents.complete.iter().map(|&s| complete_path(dir, s)));
    for path in files {
        let mut head = [0u8; LONG_HEADER_BYTES];
        let read = File::open(&path).and_then(|mut f| f.read_exact(&mut head));
        if read.is_ok() {
            if let Some(size) = LongPageHeader::parse(&head)
                .ok()
                .and_then(|h| h.segment_size().ok())
            {
                return Ok(Some(size));
            }
        }
    }
    Ok(None)
}

/// Lists the spool's segments, of every timeline.
pub fn scan(dir: &Path) -> io::Result<SpoolContents> {
    let mut contents = SpoolContents::default();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        match name.parse::<WalFileName>() {
            Ok(WalFileName::Segment(s)) => contents.complete.push(s),
            Ok(WalFileName::Partial(s)) => {
                contents.partial = contents.partial.max(Some(s));
            }
            _ => {
                if let Some(tail) = parse_tail_name(name) {
                    contents.tails.push(tail);
                } else if let Some(segment) = damaged_copy_of(name) {
                    contents.damaged.push((segment, dir.join(name)));
                } else if name.parse::<WalFileName>().is_err()
                    && !name.ends_with(ASIDE_SUFFIX)
                    && !name.ends_with(DAMAGED_SUFFIX)
                    && name.len() >= 24
                    && name.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit)
                {
                    contents.unknown.push(name.to_owned());
                }
            }
        }
    }
    contents.complete.sort();
    contents.tails.sort();
    contents.unknown.sort();
    contents.damaged.sort();
    Ok(contents)
}

/// Parses `SEGMENT.partial.END`, the name of a kept tail.
fn parse_tail_name(name: &str) -> Option<(SegmentName, Lsn)> {
    let (segment, end) = name.split_once(&format!("{PARTIAL_SUFFIX}."))?;
    let Ok(WalFileName::Segment(segment)) = segment.parse::<WalFileName>() else {
        return None;
    };
    if end.len() != 16 || !end.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((segment, Lsn(u64::from_str_radix(end, 16).ok()?)))
}

/// The path of a kept tail.
pub fn tail_path(dir: &Path, segment: SegmentName, end: Lsn) -> PathBuf {
    dir.join(format!("{segment}{PARTIAL_SUFFIX}.{:016X}", end.0))
}

/// Keeps what the last stream received of its segment: fsyncs the `.partial` file and renames
/// it durably to `SEGMENT.partial.END`, to be archived as a snapshot. An empty one is removed.
/// Returns the kept tail, if there was one.
pub fn keep_tail(dir: &Path, size: SegmentSize) -> io::Result<Option<(SegmentName, Lsn)>> {
    let Some(segment) = scan(dir)?.partial else {
        return Ok(None);
    };
    let Some(start) = segment.start_lsn(size) else {
        return Ok(None);
    };
    let path = dir.join(format!("{segment}{PARTIAL_SUFFIX}"));
    let file = File::open(&path)?;
    file.sync_all()?;
    let length = file.metadata()?.len().min(u64::from(size.bytes()));
    drop(file);
    if length == 0 {
        std::fs::remove_file(&path)?;
        fsync_dir(dir)?;
        return Ok(None);
    }
    let end = Lsn(start.0 + length);
    std::fs::rename(&path, tail_path(dir, segment, end))?;
    fsync_dir(dir)?;
    failpoint::hit(failpoint::TAIL_KEPT);
    Ok(Some((segment, end)))
}

/// How many bytes of a kept tail's file are the tail: those up to its end.
pub fn tail_len(segment: SegmentName, end: Lsn, size: SegmentSize) -> io::Result<usize> {
    let start = segment
        .start_lsn(size)
        .ok_or_else(|| io::Error::other(format!("{segment} is not a segment of this size")))?;
    Ok(end.0.saturating_sub(start.0) as usize)
}

/// Removes a kept tail once the archive holds it.
pub fn remove_tail(dir: &Path, segment: SegmentName, end: Lsn) -> io::Result<()> {
    remove_if_present(&tail_path(dir, segment, end))
}

/// Whether `error` says the spool's filesystem is full (`ENOSPC`) or its user's quota is used
/// up (`EDQUOT`): a condition that passes once files are archived or space is freed, for the
/// stream to wait out rather than fail on.
pub use crate::fsutil::is_out_of_space;

/// The path of a complete segment in the spool.
pub fn complete_path(dir: &Path, segment: SegmentName) -> PathBuf {
    dir.join(segment.to_string())
}

/// Which file `path` names now (its device and inode), to tell whether it was replaced
/// since; `None` when it names none.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let found = std::fs::metadata(path).ok()?;
    Some((found.dev(), found.ino()))
}

/// Removes a segment once the archive holds it.
pub fn remove_complete(dir: &Path, segment: SegmentName) -> io::Result<()> {
    remove_if_present(&complete_path(dir, segment))
}

/// The segment being received: `SEGMENT.partial`, written from the segment's start.
pub struct SegmentWriter {
    file: File,
    dir: PathBuf,
    segment: SegmentName,
    segno: SegNo,
    size: SegmentSize,
    written: u64,
    synced: u64,
    /// CRC-32 of the bytes written, for the uploader to check what it reads back.
    crc: crc32fast::Hasher,
    /// Whether the segment is fsynced (see the module documentation).
    durable: bool,
    /// Writeback started as the segment fills (a hint to the kernel, see [`SegmentWriter::write`]).
    writeback: WritebackCursor,
}

impl SegmentWriter {
    /// Starts receiving segment `segno` of `timeline`, discarding any older `.partial` file;
    /// `durable` as [`open`] said.
    pub fn create(
        dir: &Path,
        timeline: TimelineId,
        segno: SegNo,
        size: SegmentSize,
        durable: bool,
    ) -> io::Result<SegmentWriter> {
        let segment = SegmentName::new(timeline, segno, size);
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(Ok(WalFileName::Partial(stale))) =
                name.to_str().map(str::parse::<WalFileName>)
            {
                std::fs::remove_file(dir.join(format!("{stale}{PARTIAL_SUFFIX}")))?;
            }
        }
        let path = dir.join(format!("{segment}{PARTIAL_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        if durable {
            fsync_dir(dir)?;
        }
        Ok(SegmentWriter {
            file,
            dir: dir.to_path_buf(),
            segment,
            segno,
            size,
            written: 0,
            synced: 0,
            crc: crc32fast::Hasher::new(),
            durable,
            writeback: WritebackCursor::default(),
        })
    }

    /// The segment's name.
    pub fn segment(&self) -> SegmentName {
        self.segment
    }

    /// Bytes of the segment still to receive.
    pub fn remaining(&self) -> u64 {
        u64::from(self.size.bytes()) - self.written
    }

    /// The position of the segment's first byte.
    pub fn start_lsn(&self) -> Lsn {
        self.segno.start_lsn(self.size)
    }

    /// The position just past the last byte written.
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.segno.start_lsn(self.size).0 + self.written)
    }

    /// The position just past the last byte made durable.
    pub fn synced_lsn(&self) -> Lsn {
        Lsn(self.segno.start_lsn(self.size).0 + self.synced)
    }

    /// Appends bytes; the caller never passes more than [`SegmentWriter::remaining`].
    ///
    /// Writes are positional, at the end of what was written: when one fails part way (a
    /// full filesystem), what did reach the file is cut off again, and writing the same bytes
    /// once there is room lands them where they belong, never a second copy after the first.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.len() as u64 <= self.remaining());
        if let Err(e) = self.file.write_all_at(bytes, self.written) {
            // Best effort: cut off what did reach the file (the stream's own bytes, so a kept
            // tail that still holds them is not wrong either).
            let _ = self.file.set_len(self.written);
            return Err(e);
        }
        self.written += bytes.len() as u64;
        self.crc.update(bytes);
        // Writeback starts as the segment fills, so the fsync that completes it (which the
        // stream waits for) finds little left to write.
        if self.durable {
            self.writeback.wrote(&self.file, self.written);
        }
        Ok(())
    }

    /// The CRC-32 of everything written (the envelope's checksum, see
    /// [`crate::envelope`]): what reading the file back must give.
    pub fn content_crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Makes everything written durable (nothing to do for a segment that is not fsynced).
    /// What is fsynced counts only while the file is still the spool's: one removed or moved
    /// away (the spool deleted or renamed while the receiver runs) is an error, and nothing
    /// more is counted durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.synced < self.written {
            failpoint::hit(failpoint::SPOOL_BEFORE_FSYNC);
            if self.durable {
                self.file.sync_data()?;
                self.check_still_in_the_spool()?;
                self.synced = self.written;
            }
        }
        Ok(())
    }

    /// Whether the file written is still the one at its name in the spool.
    fn check_still_in_the_spool(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let path = self.path();
        let open = self.file.metadata()?;
        let named = std::fs::metadata(&path).ok();
        // The same inode; or, where a filesystem reports another device for the path than for
        // the open file (overlayfs on older kernels), a file still linked, of the same length.
        if named.is_some_and(|named| {
            (named.dev(), named.ino()) == (open.dev(), open.ino())
                || (named.dev() != open.dev() && open.nlink() > 0 && named.len() == open.len())
        }) {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "{} was removed or replaced while being written (the spool deleted, moved or \
             unmounted?): what it held is not counted as stored",
            path.display()
        )))
    }

    /// The file being written. What was written to it is never written again nor cut off
    /// (a failed write cuts back only its own bytes); the file is only renamed or removed.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}{PARTIAL_SUFFIX}", self.segment))
    }

    /// Completes the segment: fsync, rename to its final name, fsync the directory (for a
    /// durable segment; else the rename alone).
    pub fn finish(mut self) -> io::Result<SegmentName> {
        debug_assert_eq!(self.remaining(), 0);
        self.sync()?;
        failpoint::hit(failpoint::SPOOL_BEFORE_RENAME);
        std::fs::rename(self.path(), complete_path(&self.dir, self.segment))?;
        failpoint::hit(failpoint::SPOOL_AFTER_RENAME);
        if self.durable {
            fsync_dir(&self.dir)?;
        }
        Ok(self.segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;

    #[test]
    fn segments_complete_durably_and_scan_back() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), SystemId(9), true).unwrap();
        let refused = open(dir.path(), SystemId(10), true)
            .expect_err("another cluster's spool must be refused")
            .to_string();
        // The caller names the spool; the hint names the way out.
        assert!(
            refused.starts_with("it belongs to cluster 9, not 10") && refused.contains("--spool"),
            "{refused}"
        );
        let size = SegmentSize::new(MIB).unwrap();
        let mut w = SegmentWriter::create(dir.path(), TimelineId(1), SegNo(3), size, true).unwrap();
        w.write(&vec![1u8; MIB as usize]).unwrap();
        assert_eq!(w.end_lsn(), Lsn(4 * u64::from(MIB)));
        let done = w.finish().unwrap();
        let mut w = SegmentWriter::create(dir.path(), TimelineId(1), SegNo(4), size, true).unwrap();
        w.write(b"abc").unwrap();
        assert_eq!(std::fs::read(w.path()).unwrap(), b"abc");
        let contents = scan(dir.path()).unwrap();
        assert_eq!(contents.complete, vec![done]);
        assert_eq!(contents.partial, Some(w.segment()));
        // A new timeline's segment replaces the old .partial.
        let w2 = SegmentWriter::create(dir.path(), TimelineId(2), SegNo(4), size, true).unwrap();
        assert_eq!(scan(dir.path()).unwrap().partial, Some(w2.segment()));
        remove_complete(dir.path(), done).unwrap();
        assert!(scan(dir.path()).unwrap().complete.is_empty());
        // Names like WAL that no cluster writes are listed apart; walhalla's own are not.
        for name in ["000000000000000000000005", "00000001000000000000000G.x"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let contents = scan(dir.path()).unwrap();
        assert_eq!(contents.unknown, ["000000000000000000000005"]);
        assert!(contents.complete.is_empty());
    }

    #[test]
    fn a_refused_copy_is_set_aside_only_while_its_path_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let size = SegmentSize::new(MIB).unwrap();
        let segment = SegmentName::new(TimelineId(1), SegNo(7), size);
        let path = complete_path(dir.path(), segment);
        let kept = dir.path().join(format!("{segment}.damaged"));
        let write = |content: &[u8]| {
            // As the stream completes a segment: a new file renamed over the path.
            let temp = dir.path().join("new");
            std::fs::write(&temp, content).unwrap();
            std::fs::rename(&temp, &path).unwrap();
            file_identity(&path).unwrap()
        };
        let damaged = write(b"damaged");
        let _received_again = write(b"good");
        let set_aside = |identity| set_aside_damaged_if(dir.path(), segment, identity).unwrap();
        assert_eq!(set_aside(damaged), SetAside::Replaced);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"good",
            "the new copy is kept"
        );
        assert!(!kept.exists());
        let damaged = write(b"damaged");
        assert_eq!(set_aside(damaged), SetAside::Kept(kept.clone()));
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"damaged",
            "the copy is kept"
        );
        assert_eq!(set_aside(damaged), SetAside::Gone);
        // Damaged copies are listed apart, never as segments to archive.
        let tail = dir
            .path()
            .join(format!("{segment}.partial.0000000000780000.damaged"));
        std::fs::write(&tail, b"damaged tail").unwrap();
        let contents = scan(dir.path()).unwrap();
        assert_eq!(contents.damaged, [(segment, kept.clone()), (segment, tail)]);
        assert!(contents.complete.is_empty() && contents.tails.is_empty());
        assert!(contents.unknown.is_empty());
        // A copy an earlier try or run left aside is put back, by the next try or at open.
        // (The removed file's inode may be the new one's: another identity stands for it.)
        let aside = dir.path().join(format!("{segment}{ASIDE_SUFFIX}"));
        std::fs::write(&aside, b"good").unwrap();
        assert_eq!(set_aside((0, 0)), SetAside::Replaced);
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        std::fs::rename(&path, &aside).unwrap();
        open(dir.path(), SystemId(9), true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert!(!aside.exists());
        // One whose segment has a file again is the older copy: kept as a damaged one, beside
        // the first (never over it: either may hold more of the WAL).
        std::fs::write(&aside, b"older").unwrap();
        open(dir.path(), SystemId(9), true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert_eq!(std::fs::read(&kept).unwrap(), b"damaged");
        let second = dir.path().join(format!("{segment}.damaged.2"));
        assert_eq!(std::fs::read(&second).unwrap(), b"older");
        // The refused file an earlier try left aside, a copy received again at the path: the
        // aside one is kept, the new one left alone.
        std::fs::write(&aside, b"refused").unwrap();
        let refused = file_identity(&aside).unwrap();
        assert_eq!(
            set_aside(refused),
            SetAside::Kept(dir.path().join(format!("{segment}.damaged.3")))
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        let contents = scan(dir.path()).unwrap();
        assert_eq!(contents.damaged.len(), 4, "{:?}", contents.damaged);
        assert!(contents.unknown.is_empty());
        remove_damaged(&kept).unwrap();
        remove_damaged(&kept).unwrap();
        assert!(!kept.exists());
    }

    #[test]
    fn a_file_removed_or_moved_while_written_is_not_counted_durable() {
        let size = SegmentSize::new(MIB).unwrap();
        for how in ["remove", "move"] {
            let root = tempfile::tempdir().unwrap();
            let spool = root.path().join("spool");
            std::fs::create_dir(&spool).unwrap();
            let mut w = SegmentWriter::create(&spool, TimelineId(1), SegNo(3), size, true).unwrap();
            w.write(b"abc").unwrap();
            w.sync().unwrap();
            let synced = w.synced_lsn();
            match how {
                "remove" => std::fs::remove_dir_all(&spool).unwrap(),
                _ => std::fs::rename(&spool, root.path().join("moved")).unwrap(),
            }
            w.write(b"def").unwrap();
            let error = w.sync().expect_err(how).to_string();
            assert!(error.contains("was removed or replaced"), "{how}: {error}");
            assert_eq!(w.synced_lsn(), synced, "{how}");
        }
    }

    /// A spool written by a default-mode run in boot `boot`: one complete segment, a kept
    /// tail and a `.partial`, none of them fsynced but the tail.
    fn unsynced_spool(dir: &Path, boot: &str) -> (SegmentName, (SegmentName, Lsn)) {
        open(dir, SystemId(9), true).unwrap();
        assert!(!settle_unsynced(dir, Some(boot), false).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join(UNSYNCED)).unwrap(),
            format!("{boot}\n")
        );
        let size = SegmentSize::new(MIB).unwrap();
        let mut w = SegmentWriter::create(dir, TimelineId(1), SegNo(3), size, false).unwrap();
        w.write(&vec![1u8; MIB as usize]).unwrap();
        let complete = w.finish().unwrap();
        let mut w = SegmentWriter::create(dir, TimelineId(1), SegNo(4), size, false).unwrap();
        w.write(b"kept").unwrap();
        drop(w);
        let tail = keep_tail(dir, size).unwrap().expect("a tail");
        let mut w = SegmentWriter::create(dir, TimelineId(1), SegNo(5), size, false).unwrap();
        w.write(b"received").unwrap();
        w.sync().unwrap();
        assert_eq!(w.synced_lsn(), w.start_lsn(), "nothing fsynced");
        (complete, tail)
    }

    #[test]
    fn segments_written_without_fsync_before_the_host_restarted_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (_, tail) = unsynced_spool(dir.path(), "boot-a");
        // Another boot: the page cache that held them is gone, they may be torn.
        assert!(!settle_unsynced(dir.path(), Some("boot-b"), false).unwrap());
        let contents = scan(dir.path()).unwrap();
        assert!(contents.complete.is_empty(), "{contents:?}");
        assert_eq!(contents.partial, None);
        assert_eq!(contents.tails, vec![tail], "a kept tail was fsynced");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(UNSYNCED)).unwrap(),
            "boot-b\n"
        );
        // A synchronous run after a restart discards them too, and fsyncs from then on.
        let dir = tempfile::tempdir().unwrap();
        unsynced_spool(dir.path(), "boot-a");
        assert!(settle_unsynced(dir.path(), Some("boot-b"), true).unwrap());
        assert!(scan(dir.path()).unwrap().complete.is_empty());
        assert!(!dir.path().join(UNSYNCED).exists());
    }

    #[test]
    fn segments_written_without_fsync_in_this_boot_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (complete, tail) = unsynced_spool(dir.path(), "boot-a");
        let kept = |dir: &Path| {
            let contents = scan(dir).unwrap();
            assert_eq!(contents.complete, vec![complete]);
            assert_eq!(contents.tails, vec![tail]);
            assert!(contents.partial.is_some());
        };
        // The receiver's process ended, the host did not restart: the page cache holds them.
        assert!(!settle_unsynced(dir.path(), Some("boot-a"), false).unwrap());
        kept(dir.path());
        // A synchronous run keeps them, fsynced, and the spool is durable again.
        assert!(settle_unsynced(dir.path(), Some("boot-a"), true).unwrap());
        kept(dir.path());
        assert!(!dir.path().join(UNSYNCED).exists());
        assert!(settle_unsynced(dir.path(), Some("boot-b"), true).unwrap());
        kept(dir.path());
    }

    #[test]
    fn fsynced_segments_a_synchronous_run_left_are_never_discarded() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), SystemId(9), true).unwrap();
        let size = SegmentSize::new(MIB).unwrap();
        let mut w = SegmentWriter::create(dir.path(), TimelineId(1), SegNo(3), size, true).unwrap();
        w.write(&vec![1u8; MIB as usize]).unwrap();
        let complete = w.finish().unwrap();
        // A default run while it waits: fsyncs too, and leaves no mark a restart would act on.
        assert!(settle_unsynced(dir.path(), Some("boot-a"), false).unwrap());
        assert!(!dir.path().join(UNSYNCED).exists());
        assert!(settle_unsynced(dir.path(), Some("boot-b"), false).unwrap());
        assert_eq!(scan(dir.path()).unwrap().complete, vec![complete]);
        // Once it is archived, the next default run leaves its segments unsynced.
        remove_complete(dir.path(), complete).unwrap();
        assert!(!settle_unsynced(dir.path(), Some("boot-b"), false).unwrap());
    }

    #[test]
    fn a_receiver_stopping_with_segments_left_makes_them_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (complete, tail) = unsynced_spool(dir.path(), "boot-a");
        make_durable(dir.path()).unwrap();
        assert!(!dir.path().join(UNSYNCED).exists());
        assert!(settle_unsynced(dir.path(), Some("boot-b"), false).unwrap());
        let contents = scan(dir.path()).unwrap();
        assert_eq!(contents.complete, vec![complete]);
        assert_eq!(contents.tails, vec![tail]);
    }

    #[test]
    fn without_a_boot_identifier_the_spool_is_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), SystemId(9), true).unwrap();
        assert!(settle_unsynced(dir.path(), None, false).unwrap());
        assert!(!dir.path().join(UNSYNCED).exists());
        #[cfg(target_os = "linux")]
        {
            assert!(
                !open(dir.path(), SystemId(9), false).unwrap(),
                "Linux tells the boot"
            );
            assert!(dir.path().join(UNSYNCED).exists());
        }
    }

    #[test]
    fn a_kept_tail_holds_what_was_received_and_survives_the_next_stream() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), SystemId(9), true).unwrap();
        let size = SegmentSize::new(MIB).unwrap();
        assert_eq!(
            keep_tail(dir.path(), size).unwrap(),
            None,
            "nothing to keep"
        );
        let mut w = SegmentWriter::create(dir.path(), TimelineId(1), SegNo(7), size, true).unwrap();
        w.write(b"confirmed bytes").unwrap();
        drop(w);
        let (segment, end) = keep_tail(dir.path(), size).unwrap().expect("a tail");
        assert_eq!(end, Lsn(7 * u64::from(MIB) + 15));
        // The next stream of the same segment truncates nothing that was kept.
        let w = SegmentWriter::create(dir.path(), TimelineId(1), SegNo(7), size, true).unwrap();
        let contents = scan(dir.path()).unwrap();
        assert_eq!(contents.tails, vec![(segment, end)]);
        assert_eq!(contents.partial, Some(w.segment()));
        let kept = std::fs::read(tail_path(dir.path(), segment, end)).unwrap();
        assert_eq!(
            &kept[..tail_len(segment, end, size).unwrap()],
            b"confirmed bytes"
        );
        remove_tail(dir.path(), segment, end).unwrap();
        assert!(scan(dir.path()).unwrap().tails.is_empty());
        // An empty .partial is not kept.
        drop(w);
        assert_eq!(keep_tail(dir.path(), size).unwrap(), None);
        assert_eq!(scan(dir.path()).unwrap().partial, None);
    }
}
