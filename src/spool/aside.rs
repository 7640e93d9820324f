//! Spool files set aside. A file that did not read back as received is never archived, but
//! it is not removed either: in `--synchronous` mode the server may have recycled its WAL,
//! and then the file is the only copy of what it holds up to its damage. It is kept as
//! `NAME.damaged` ([`DAMAGED_SUFFIX`]), next to its name, until the archive holds its segment.
//! While a refused complete segment's file is being told apart from a copy received again
//! meanwhile ([`set_aside_damaged_if`]), it is named `SEGMENT.aside` ([`ASIDE_SUFFIX`]).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{complete_path, file_identity, parse_tail_name, tail_len, tail_path};
use crate::fsutil::{fsync_dir, rename_no_replace};
use crate::wal::{Lsn, SegmentName, SegmentSize, WalFileName};

/// Suffix of a refused segment's file while [`set_aside_damaged_if`] tells which file it is.
pub(super) const ASIDE_SUFFIX: &str = ".aside";
/// Suffix of a damaged copy: a refused file kept, never archived.
pub(super) const DAMAGED_SUFFIX: &str = ".damaged";

/// What became of a refused complete segment's file ([`set_aside_damaged_if`]).
#[derive(Debug, PartialEq, Eq)]
pub enum SetAside {
    /// Kept as a damaged copy, at this path.
    Kept(PathBuf),
    /// Nothing set aside: no file was found under the path or its aside name (set aside by
    /// an earlier try).
    Gone,
    /// The path names another file (the segment received again), left in place.
    Replaced,
}

/// Keeps the file at `path` (a complete segment's or a kept tail's), refused, as a damaged
/// copy: renamed durably to the first free damaged-copy name (`NAME.damaged`, then
/// `NAME.damaged.2`...), never over another copy. Returns its path.
pub fn set_aside_damaged(path: &Path) -> io::Result<PathBuf> {
    set_aside_as_damaged(path, path)
}

/// Renames `file` durably to the first free damaged-copy name of the file at `path`
/// (`NAME.damaged`, then `NAME.damaged.2`...): never over another copy, which may hold more
/// of the WAL before its damage. Returns its new path.
fn set_aside_as_damaged(file: &Path, path: &Path) -> io::Result<PathBuf> {
    for n in 1..=MAX_COPIES {
        let damaged = damaged_path(path, n);
        match rename_no_replace(file, &damaged) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    fsync_dir(dir)?;
                }
                return Ok(damaged);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{MAX_COPIES} damaged copies of {} are in the spool already: remove those no longer \
         needed",
        path.display()
    )))
}

/// Damaged copies of one file kept at most.
const MAX_COPIES: u32 = 100;

/// Sets complete segment `segment`'s file aside as a damaged copy ([`set_aside_damaged`]) only
/// if it is the file `identity` names ([`file_identity`]): the file is renamed aside first,
/// atomically, so that a copy received again and renamed in meanwhile is never taken for the
/// damaged one; one found aside instead is put back, unless the path names a newer copy
/// (then it is kept as a damaged copy too). A file an earlier try left aside is dealt with
/// first, and no rename replaces a file.
pub fn set_aside_damaged_if(
    dir: &Path,
    segment: SegmentName,
    identity: (u64, u64),
) -> io::Result<SetAside> {
    let path = complete_path(dir, segment);
    let aside = dir.join(format!("{segment}{ASIDE_SUFFIX}"));
    if file_identity(&aside).is_none() {
        match rename_no_replace(&path, &aside) {
            Err(e)
                if e.kind() != io::ErrorKind::NotFound
                    && e.kind() != io::ErrorKind::AlreadyExists =>
            {
                return Err(e);
            }
            _ => {}
        }
    }
    match file_identity(&aside) {
        None => Ok(SetAside::Gone),
        Some(found) if found == identity => {
            Ok(SetAside::Kept(set_aside_as_damaged(&aside, &path)?))
        }
        Some(_) => {
            put_back(&aside, &path)?;
            Ok(SetAside::Replaced)
        }
    }
}

/// Puts `aside` back at `path`, unless `path` names a file again (a newer copy): then `aside`
/// is the older copy, kept as a damaged one.
fn put_back(aside: &Path, path: &Path) -> io::Result<()> {
    match rename_no_replace(aside, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            set_aside_as_damaged(aside, path).map(|_| ())
        }
        result => result,
    }
}

/// The path of damaged copy `n` (from 1) of the file at `path`.
fn damaged_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(DAMAGED_SUFFIX);
    if n > 1 {
        name.push(format!(".{n}"));
    }
    PathBuf::from(name)
}

/// Whether `copy` is a damaged copy of complete segment `segment`'s file (not of a kept
/// tail's).
pub fn is_complete_copy(copy: &Path, segment: SegmentName) -> bool {
    let complete = format!("{segment}{DAMAGED_SUFFIX}");
    copy.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n == complete
            || n.strip_prefix(&complete)
                .is_some_and(|n| n.starts_with('.'))
    })
}

/// The segment a damaged copy named `name` (of a complete segment or of a kept tail) is a
/// copy of; `None` for other names.
pub(super) fn damaged_copy_of(name: &str) -> Option<SegmentName> {
    let kept = name.strip_suffix(DAMAGED_SUFFIX).or_else(|| {
        let (kept, n) = name.rsplit_once('.')?;
        n.parse::<u32>().ok()?;
        kept.strip_suffix(DAMAGED_SUFFIX)
    })?;
    match kept.parse::<WalFileName>() {
        Ok(WalFileName::Segment(segment)) => Some(segment),
        _ => parse_tail_name(kept).map(|(segment, _)| segment),
    }
}

/// Keeps the bytes of damaged copy `copy` of complete segment `segment` up to `end` (where its
/// valid WAL ends) as a kept tail, `SEGMENT.partial.END`, to be archived as a snapshot: fsynced
/// under a temporary name, then renamed durably. A tail already there with that end is left.
pub fn keep_valid_prefix(
    dir: &Path,
    copy: &Path,
    segment: SegmentName,
    end: Lsn,
    size: SegmentSize,
) -> io::Result<()> {
    let tail = tail_path(dir, segment, end);
    if tail.exists() {
        return Ok(());
    }
    let len = tail_len(segment, end, size)? as u64;
    // Hidden from the spool's scan; removed if this fails, overwritten by a later try if a
    // crash left it.
    let temp = dir.join(format!(".{segment}.prefix.tmp"));
    let written = (|| {
        let mut out = File::create(&temp)?;
        let copied = io::copy(&mut File::open(copy)?.take(len), &mut out)?;
        if copied != len {
            return Err(io::Error::other(format!(
                "{} holds {copied} of {len} bytes",
                copy.display()
            )));
        }
        out.sync_all()?;
        drop(out);
        std::fs::rename(&temp, &tail)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// Removes a damaged copy, once the archive holds its segment.
pub fn remove_damaged(path: &Path) -> io::Result<()> {
    crate::fsutil::remove_if_present(path)
}

/// Puts back a segment's file an earlier run stopped with aside ([`set_aside_damaged_if`]),
/// to be checked like any it left; one whose segment has a file again is the older copy,
/// kept as a damaged one.
pub(super) fn put_back_aside(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(segment) = name.to_str().and_then(|n| n.strip_suffix(ASIDE_SUFFIX)) else {
            continue;
        };
        let Ok(WalFileName::Segment(segment)) = segment.parse::<WalFileName>() else {
            continue;
        };
        put_back(&dir.join(&name), &complete_path(dir, segment))?;
    }
    Ok(())
}
