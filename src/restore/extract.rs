//! Unpacks one tar archive of a base backup (`base.tar`, a tablespace's `<oid>.tar`) into a
//! directory, checking every regular file against the backup manifest as it is written, and
//! leaving everything durable.
//!
//! PostgreSQL writes ustar archives of regular files, directories and symlinks (`basebackup.c`,
//! `src/port/tar.c`). Anything else is refused, and so is any name that would land outside
//! the destination: absolute paths, `..`, and paths through a symlink (even one the same
//! archive created: nothing is ever opened through a symlink, see `beneath`).
//!
//! Every regular file must be listed in the manifest with the same size and checksum, except
//! those PostgreSQL's backups legitimately carry unlisted, as `pg_verifybackup` ignores them:
//! `pg_wal/…` (WAL segments fetched with the backup are not listed; their `archive_status`
//! files and timeline histories are, and are checked), `backup_manifest`,
//! `postgresql.auto.conf`, `recovery.signal` and `standby.signal` (which `pg_basebackup -R`
//! adds). Those are written unchecked. Listed files are checked whatever their name.
//!
//! Symlinks are created as the archive gives them (`pg_tblspc/<oid>` pointing at the
//! tablespace's location when the backup has no `tablespace_map`): nothing here follows them,
//! but PostgreSQL will once started on the result.

mod beneath;
mod check;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::backup::manifest::{ChecksumAlgorithm, FileChecksummer, Manifest, ManifestFile, hex};
use crate::fsutil::{EarlyWriteback, SyncQueue, create_dir_all_durable};
use beneath::Beneath;
pub use check::check;

/// Files written and waiting for their fsync at most: the fsyncs run on a thread of their
/// own while the next files are written.
const SYNCS_WAITING: usize = 64;

/// Bytes read from the archive and written at a time: memory stays bounded whatever the size
/// of a file.
const COPY_BUFFER_BYTES: usize = 256 * 1024;
/// Buffer for the archive's small reads (headers); larger reads bypass it.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Paths a backup may hold without listing them (prefixes of whole components), as
/// `pg_verifybackup` ignores them by default.
const MAY_BE_UNLISTED: [&str; 5] = [
    "backup_manifest",
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// One archive to unpack.
#[derive(Clone, Copy, Debug)]
pub struct Extract<'a> {
    /// Where the archive goes: the data directory for `base.tar`, the tablespace's directory
    /// for `<oid>.tar`. Created if missing, under the process umask (see
    /// [`crate::fsutil::restrict_umask`]); the caller guarantees it holds nothing the archive
    /// holds: no existing file is ever overwritten, and no symlink inside it followed (so a
    /// `pg_wal` symlink to another disk is made after extracting).
    pub dest: &'a Path,
    /// What turns a name in the archive into a manifest path: `""` for the base archive,
    /// `"pg_tblspc/<oid>/"` for a tablespace's.
    pub manifest_prefix: &'a str,
    /// The backup's manifest.
    pub manifest: &'a Manifest,
}

/// What an archive held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The manifest path of every regular file written, in archive order (unlisted ones such
    /// as WAL segments included).
    pub files: Vec<String>,
    /// The bytes of those files.
    pub bytes: u64,
}

/// Why an archive could not be unpacked. The destination then holds part of it: restore again
/// into an empty directory. A file that failed its checks has been removed, so no file there
/// looks complete without being so. An underlying error is the source, not part of the
/// message: shown with its chain (`{:#}`), it appears once.
#[derive(Debug, Error)]
pub enum ExtractError {
    /// The archive could not be read: the reader failed or the tar structure is damaged.
    #[error("{path}: reading the archive")]
    Archive {
        /// The entry being read, or the destination when between entries.
        path: String,
        /// What failed.
        source: io::Error,
    },
    /// The archive stopped without tar's end-of-archive marker: it was cut short.
    #[error("{}: the archive ends without its end-of-archive marker (truncated)", path.display())]
    Truncated {
        /// The destination.
        path: PathBuf,
    },
    /// A file's data stopped before the size its header gives.
    #[error("{path}: the archive ends after {read} of the file's {size} bytes")]
    ShortFile {
        /// The file's manifest path.
        path: String,
        /// Bytes there were.
        read: u64,
        /// Bytes the tar header announced.
        size: u64,
    },
    /// A name that is absolute, climbs out with `..`, is empty or not UTF-8.
    #[error("{path:?}: refused: {reason}")]
    UnsafePath {
        /// The name as the archive gives it.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An entry of a kind a backup does not hold: hard links, devices, FIFOs, …
    #[error("{path}: {kind} entries are refused (only files, directories and symlinks)")]
    Unsupported {
        /// The entry's manifest path.
        path: String,
        /// What it is.
        kind: String,
    },
    /// A regular file the manifest does not list.
    #[error("{path}: in the archive but not in the backup manifest")]
    NotInManifest {
        /// Its manifest path.
        path: String,
    },
    /// A file whose size is not the manifest's.
    #[error("{path}: {actual} bytes in the archive, {expected} in the backup manifest")]
    SizeMismatch {
        /// Its manifest path.
        path: String,
        /// The manifest's size.
        expected: u64,
        /// The archive's.
        actual: u64,
    },
    /// A file whose content does not have the manifest's checksum (it was removed).
    #[error(
        "{path}: {algorithm} checksum {actual} does not match the backup manifest's {expected}"
    )]
    ChecksumMismatch {
        /// Its manifest path.
        path: String,
        /// The algorithm.
        algorithm: ChecksumAlgorithm,
        /// The manifest's checksum, hex.
        expected: String,
        /// The written content's, hex.
        actual: String,
    },
    /// Something already exists where the archive puts an entry.
    #[error("{}: already exists; restore into an empty directory", path.display())]
    AlreadyExists {
        /// Where.
        path: PathBuf,
    },
    /// A path passes through a symlink or a file: writing there could leave the destination.
    #[error("{}: is a symlink or not a directory; refusing to write through it", path.display())]
    NotADirectory {
        /// The component that is not a real directory.
        path: PathBuf,
    },
    /// The filesystem refused.
    #[error("{action} {}", path.display())]
    Io {
        /// What was acted on.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Unpacks the tar archive `reader` streams into `job.dest`, verifying each regular file
/// against the manifest while writing it, then fsyncs every directory it changed. Files are
/// created new, mode 0600 (0640 when the archive's mode lets the group read), directories
/// 0700 (0750 likewise); every file is fsynced (on a thread of its own, while the next ones
/// are written) before this returns; modification times are not kept.
/// The archive must end with tar's end-of-archive marker, as PostgreSQL 15+ sends it and
/// `pg_basebackup` writes it (`BASE_BACKUP` on PostgreSQL 13 and 14 sends each archive
/// without it: the two 512-byte zero blocks must be appended when storing it).
///
/// Blocking: run it off the reactor.
pub fn extract(reader: impl Read, job: &Extract) -> Result<Extracted, ExtractError> {
    create_dir_all_durable(job.dest).map_err(|source| ExtractError::Io {
        path: job.dest.to_path_buf(),
        action: "create directory",
        source,
    })?;
    let mut tree = Beneath::open(job.dest)?;
    let whole = |source| ExtractError::Archive {
        path: job.dest.display().to_string(),
        source,
    };
    let mut archive = open_tar(reader);
    let syncs = SyncQueue::new(SYNCS_WAITING).map_err(|source| ExtractError::Io {
        path: job.dest.to_path_buf(),
        action: "start the fsync thread",
        source,
    })?;
    let synced = |(path, source)| ExtractError::Io {
        path,
        action: "fsync",
        source,
    };
    let mut extracted = Extracted::default();
    let mut buffer = vec![0; COPY_BUFFER_BYTES];
    for entry in archive.entries().map_err(whole)? {
        let mut entry = entry.map_err(whole)?;
        let Some(name) = EntryName::parse(&entry.path_bytes(), job.manifest_prefix)? else {
            continue; // the destination itself (`./`)
        };
        let header = entry.header();
        let mode = header.mode().map_err(|source| name.archive_error(source))?;
        match header.entry_type() {
            tar::EntryType::Regular => {
                let size = entry.size();
                let listed = listed_file(job.manifest, &name, size)?;
                let (mut file, dir) = tree.create_file(&name.components, file_mode(mode))?;
                let file_path = tree.display(&name.components);
                let written = write_verified(
                    &mut entry,
                    &mut file,
                    &file_path,
                    &name,
                    listed,
                    &mut buffer,
                );
                if let Err(e) = written {
                    tree.remove(&dir, &name.components);
                    return Err(e);
                }
                syncs.push(file, file_path).map_err(synced)?;
                extracted.bytes += size;
                extracted.files.push(name.manifest_path);
            }
            tar::EntryType::Directory => tree.make_dir(&name.components, dir_mode(mode))?,
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().filter(|t| !t.is_empty());
                let target = target.ok_or_else(|| ExtractError::UnsafePath {
                    path: name.manifest_path.clone(),
                    reason: "a symlink without a target",
                })?;
                tree.symlink(&name.components, &target)?;
            }
            other => {
                return Err(ExtractError::Unsupported {
                    path: name.manifest_path,
                    kind: entry_kind(other),
                });
            }
        }
    }
    if archive.into_inner().into_inner().ended {
        return Err(ExtractError::Truncated {
            path: job.dest.to_path_buf(),
        });
    }
    syncs.finish().map_err(synced)?;
    tree.sync_dirs()?;
    Ok(extracted)
}

/// The manifest paths of `manifest` that no archive wrote (`written` gathers
/// [`Extracted::files`] of every archive of the backup): a restore is complete only when
/// this is empty.
pub fn missing<'m>(manifest: &'m Manifest, written: &HashSet<String>) -> Vec<&'m str> {
    manifest
        .files
        .iter()
        .map(|file| file.path.as_str())
        .filter(|path| !written.contains(*path))
        .collect()
}

/// An entry's name: where it goes under the destination and its manifest path.
struct EntryName {
    /// Normal components only (no `.`, `..` or empty ones).
    components: Vec<String>,
    /// The manifest prefix followed by the components joined with `/`.
    manifest_path: String,
}

impl EntryName {
    /// The name of a tar entry, or `None` for the destination itself; refuses names that
    /// would leave it.
    fn parse(raw: &[u8], manifest_prefix: &str) -> Result<Option<EntryName>, ExtractError> {
        let unsafe_path = |reason| ExtractError::UnsafePath {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|_| unsafe_path("not UTF-8"))?;
        if text.starts_with('/') {
            return Err(unsafe_path("an absolute path"));
        }
        let mut components = Vec::new();
        for component in text.split('/') {
            match component {
                "" | "." => {}
                ".." => return Err(unsafe_path("a `..` component")),
                normal => components.push(normal.to_owned()),
            }
        }
        if components.is_empty() {
            return Ok(None);
        }
        let manifest_path = format!("{manifest_prefix}{}", components.join("/"));
        Ok(Some(EntryName {
            components,
            manifest_path,
        }))
    }

    fn archive_error(&self, source: io::Error) -> ExtractError {
        ExtractError::Archive {
            path: self.manifest_path.clone(),
            source,
        }
    }
}

/// The manifest's entry for a regular file of `size` bytes, which must give that size;
/// `None` for one that may go unlisted.
fn listed_file<'m>(
    manifest: &'m Manifest,
    name: &EntryName,
    size: u64,
) -> Result<Option<&'m ManifestFile>, ExtractError> {
    let path = &name.manifest_path;
    match manifest.file(path) {
        Some(listed) if listed.size != size => Err(ExtractError::SizeMismatch {
            path: path.clone(),
            expected: listed.size,
            actual: size,
        }),
        Some(listed) => Ok(Some(listed)),
        None if may_be_unlisted(path) => Ok(None),
        None => Err(ExtractError::NotInManifest { path: path.clone() }),
    }
}

fn may_be_unlisted(path: &str) -> bool {
    MAY_BE_UNLISTED.iter().any(|unlisted| {
        path.strip_prefix(unlisted)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Copies a file's data from the archive into `file` (new, at `file_path`), checking it
/// against `listed` as it passes and starting its writeback; the caller fsyncs it.
fn write_verified<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &mut File,
    file_path: &Path,
    name: &EntryName,
    listed: Option<&ManifestFile>,
    buffer: &mut [u8],
) -> Result<(), ExtractError> {
    let mut writer = EarlyWriteback::new(file);
    copy_verified(entry, &mut writer, name, listed, buffer, |source| {
        ExtractError::Io {
            path: file_path.to_path_buf(),
            action: "write",
            source,
        }
    })
}

/// Copies an entry's data into `out`, checking its length against the tar header and its
/// content against `listed`'s checksum; `write_error` describes a failed write.
fn copy_verified<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    out: &mut impl Write,
    name: &EntryName,
    listed: Option<&ManifestFile>,
    buffer: &mut [u8],
    write_error: impl Fn(io::Error) -> ExtractError,
) -> Result<(), ExtractError> {
    let path = &name.manifest_path;
    let size = entry.size();
    let expected = listed.and_then(|listed| listed.checksum.as_ref());
    let mut checksummer = expected.map(|expected| FileChecksummer::new(expected.algorithm));
    let mut read = 0;
    loop {
        let n = match entry.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(name.archive_error(source)),
        };
        if let Some(checksummer) = &mut checksummer {
            checksummer.update(&buffer[..n]);
        }
        out.write_all(&buffer[..n]).map_err(&write_error)?;
        read += n as u64;
    }
    if read != size {
        return Err(ExtractError::ShortFile {
            path: path.clone(),
            read,
            size,
        });
    }
    if let (Some(expected), Some(checksummer)) = (expected, checksummer) {
        let actual = checksummer.finish();
        if actual != expected.value {
            return Err(ExtractError::ChecksumMismatch {
                path: path.clone(),
                algorithm: expected.algorithm,
                expected: hex(&expected.value),
                actual: hex(&actual),
            });
        }
    }
    Ok(())
}

/// 0640 when the archive lets the group read, else 0600.
fn file_mode(archived: u32) -> u32 {
    if archived & 0o040 != 0 { 0o640 } else { 0o600 }
}

/// 0750 when the archive lets the group read, else 0700.
fn dir_mode(archived: u32) -> u32 {
    if archived & 0o040 != 0 { 0o750 } else { 0o700 }
}

fn entry_kind(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char | tar::EntryType::Block => "device file".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        other => format!("tar type {:?}", char::from(other.as_byte())),
    }
}

/// The caller's reader, noting whether it reached its end: a tar archive that ends with its
/// end-of-archive marker is read no further than the marker.
/// A tar reader over `reader` that notes whether the stream ended before tar's end marker.
fn open_tar<R: Read>(reader: R) -> tar::Archive<BufReader<EndWatch<R>>> {
    let watched = EndWatch {
        inner: reader,
        ended: false,
    };
    tar::Archive::new(BufReader::with_capacity(READ_BUFFER_BYTES, watched))
}

struct EndWatch<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> Read for EndWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ended |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{self, testing};
    use std::os::unix::fs::PermissionsExt;

    const PG18_TABLESPACE: &[u8] = include_bytes!("testdata/pg18-crc32c-16384.tar");
    const PG13_TABLESPACE: &[u8] = include_bytes!("testdata/pg13-sha256-16384.tar");

    /// A tar archive built in memory, entry by entry.
    struct Archive(tar::Builder<Vec<u8>>);

    impl Archive {
        fn new() -> Archive {
            Archive(tar::Builder::new(Vec::new()))
        }

        /// Appends an entry whose name is `name` byte for byte (no checks, unlike `set_path`).
        fn raw(mut self, name: &str, kind: tar::EntryType, mode: u32, data: &[u8]) -> Archive {
            let mut header = tar::Header::new_ustar();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Archive {
            self.raw(name, tar::EntryType::Regular, 0o600, data)
        }

        fn dir(self, name: &str, mode: u32) -> Archive {
            self.raw(name, tar::EntryType::Directory, mode, b"")
        }

        fn symlink(mut self, name: &str, target: &str) -> Archive {
            let mut header = tar::Header::new_ustar();
            header.set_path(name).unwrap();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_link_name_literal(target).unwrap();
            header.set_mode(0o777);
            header.set_size(0);
            header.set_cksum();
            self.0.append(&header, &[][..]).unwrap();
            self
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn run(archive: &[u8], dest: &Path, manifest: &Manifest) -> Result<Extracted, ExtractError> {
        run_prefixed(archive, dest, "", manifest)
    }

    fn run_prefixed(
        archive: &[u8],
        dest: &Path,
        manifest_prefix: &str,
        manifest: &Manifest,
    ) -> Result<Extracted, ExtractError> {
        let job = Extract {
            dest,
            manifest_prefix,
            manifest,
        };
        extract(archive, &job)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// Every path under `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(at) = pending.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
                if path.is_dir() && !path.is_symlink() {
                    pending.push(path);
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn extracts_files_directories_and_symlinks() {
        let manifest = testing::manifest(&[
            ("PG_VERSION", b"18\n"),
            ("base/5/1259", &[7; 8192]),
            ("global/1262", &[2; 8192]),
            ("global/pg_control", &[1; 8192]),
        ]);
        let archive = Archive::new()
            .file("PG_VERSION", b"18\n")
            .dir("base/", 0o750)
            .dir("./base/5/", 0o700)
            .raw("base/5/1259", tar::EntryType::Regular, 0o640, &[7; 8192])
            .dir("pg_tblspc/", 0o700)
            .symlink("pg_tblspc/16384", "/srv/tablespaces/ts1")
            .file("pg_wal/000000010000000000000002", &[0; 4096])
            .file("standby.signal", b"")
            // A directory listed after a file in it (not PostgreSQL's order) gets its mode.
            .file("global/1262", &[2; 8192])
            .dir("global/", 0o750)
            .bytes();
        let dest = tempfile::tempdir().unwrap();
        let data = dest.path().join("data");
        let extracted = run(&archive, &data, &manifest).unwrap();
        assert_eq!(
            extracted.files,
            [
                "PG_VERSION",
                "base/5/1259",
                "pg_wal/000000010000000000000002",
                "standby.signal",
                "global/1262"
            ]
        );
        assert_eq!(extracted.bytes, 3 + 8192 + 4096 + 8192);
        assert_eq!(std::fs::read(data.join("PG_VERSION")).unwrap(), b"18\n");
        assert_eq!(std::fs::read(data.join("base/5/1259")).unwrap(), [7; 8192]);
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc/16384")).unwrap(),
            Path::new("/srv/tablespaces/ts1")
        );
        assert_eq!(mode(&data.join("PG_VERSION")), 0o600);
        assert_eq!(mode(&data.join("base/5/1259")), 0o640);
        assert_eq!(mode(&data.join("base")), 0o750);
        assert_eq!(mode(&data.join("base/5")), 0o700);
        assert_eq!(mode(&data.join("global")), 0o750);
        // A directory the archive never lists is made private.
        assert_eq!(mode(&data.join("pg_wal")), 0o700);

        let written: HashSet<String> = extracted.files.into_iter().collect();
        assert_eq!(missing(&manifest, &written), ["global/pg_control"]);
    }

    #[test]
    fn extracts_postgresql_tablespace_archives() {
        for (manifest, archive) in [
            (testing::PG18_CRC32C, PG18_TABLESPACE),
            (testing::PG13_SHA256, PG13_TABLESPACE),
        ] {
            let manifest = manifest::parse(manifest).unwrap();
            let dest = tempfile::tempdir().unwrap();
            let extracted =
                run_prefixed(archive, dest.path(), "pg_tblspc/16384/", &manifest).unwrap();
            let listed: Vec<&str> = manifest
                .files
                .iter()
                .map(|file| file.path.as_str())
                .filter(|path| path.starts_with("pg_tblspc/16384/"))
                .collect();
            assert_eq!(extracted.files, listed);
            assert_eq!(extracted.bytes, 8192);
            let all: HashSet<String> = manifest
                .files
                .iter()
                .map(|file| file.path.clone())
                .filter(|path| !path.starts_with("pg_tblspc/"))
                .chain(extracted.files)
                .collect();
            assert!(missing(&manifest, &all).is_empty());
        }
    }

    #[test]
    fn a_corrupted_file_is_named_and_removed() {
        // In PostgreSQL's own archive: a flipped byte in the table's page (past the three
        // 512-byte headers of two directories and the file).
        let manifest = manifest::parse(testing::PG18_CRC32C).unwrap();
        let mut archive = PG18_TABLESPACE.to_vec();
        archive[3 * 512 + 100] ^= 0x20;
        let dest = tempfile::tempdir().unwrap();
        let error = run_prefixed(&archive, dest.path(), "pg_tblspc/16384/", &manifest).unwrap_err();
        let ExtractError::ChecksumMismatch {
            path,
            algorithm,
            expected,
            actual,
        } = &error
        else {
            panic!("{error}");
        };
        assert_eq!(path, "pg_tblspc/16384/PG_18_202506291/5/16385");
        assert_eq!(*algorithm, ChecksumAlgorithm::Crc32c);
        assert_eq!(
            expected,
            &hex(&manifest
                .file(path)
                .unwrap()
                .checksum
                .as_ref()
                .unwrap()
                .value)
        );
        assert_ne!(expected, actual);
        let message = error.to_string();
        assert!(message.contains(path) && message.contains(expected) && message.contains(actual));
        assert_eq!(tree(dest.path()), ["PG_18_202506291", "PG_18_202506291/5"]);
    }

    #[test]
    fn a_size_mismatch_is_refused_before_writing() {
        let manifest = testing::manifest(&[("PG_VERSION", b"18\n")]);
        let archive = Archive::new().file("PG_VERSION", b"18\n\n").bytes();
        let dest = tempfile::tempdir().unwrap();
        match run(&archive, dest.path(), &manifest) {
            Err(ExtractError::SizeMismatch {
                path,
                expected,
                actual,
            }) => assert_eq!((path.as_str(), expected, actual), ("PG_VERSION", 3, 4)),
            other => panic!("{other:?}"),
        }
        assert!(tree(dest.path()).is_empty());
    }

    #[test]
    fn names_that_leave_the_destination_are_refused() {
        let manifest = testing::manifest(&[("escape", b"x")]);
        for name in [
            "../escape",
            "base/../../escape",
            "/escape",
            "/tmp/escape",
            "..",
        ] {
            let parent = tempfile::tempdir().unwrap();
            let dest = parent.path().join("data");
            for kind in [tar::EntryType::Regular, tar::EntryType::Directory] {
                let archive = Archive::new().raw(name, kind, 0o600, b"").bytes();
                match run(&archive, &dest, &manifest) {
                    Err(ExtractError::UnsafePath { path, .. }) => assert_eq!(path, name),
                    other => panic!("{name}: {other:?}"),
                }
            }
            assert_eq!(tree(parent.path()), ["data"], "{name}");
        }
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        let manifest = testing::manifest(&[
            ("link/evil", b"x"),
            ("link/deeper/evil", b"x"),
            ("link", b"x"),
        ]);
        for (second, expected) in [
            ("link/evil", "not a directory"),
            ("link/deeper/evil", "not a directory"),
            ("link", "already exists"),
        ] {
            let dest = tempfile::tempdir().unwrap();
            let archive = Archive::new()
                .symlink("link", target)
                .file(second, b"x")
                .bytes();
            let error = run(&archive, dest.path(), &manifest).unwrap_err();
            assert!(error.to_string().contains(expected), "{second}: {error}");
            let archive = Archive::new()
                .symlink("link", target)
                .dir(second, 0o700)
                .bytes();
            let error = run(&archive, tempfile::tempdir().unwrap().path(), &manifest).unwrap_err();
            assert!(
                matches!(error, ExtractError::NotADirectory { .. }),
                "{second}: {error}"
            );
        }
        assert!(tree(outside.path()).is_empty());
    }

    #[test]
    fn unlisted_files_are_refused_unless_postgresql_leaves_them_out() {
        let manifest = testing::manifest(&[("PG_VERSION", b"18\n")]);
        for name in ["base/5/99999", "pg_wal_other", "pg_tblspc/1/pg_wal/x"] {
            let archive = Archive::new().file(name, b"x").bytes();
            match run(&archive, tempfile::tempdir().unwrap().path(), &manifest) {
                Err(ExtractError::NotInManifest { path }) => assert_eq!(path, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // In a tablespace's archive the manifest path carries the prefix.
        let archive = Archive::new().file("pg_wal/x", b"x").bytes();
        let dest = tempfile::tempdir().unwrap();
        let error = run_prefixed(&archive, dest.path(), "pg_tblspc/1/", &manifest).unwrap_err();
        assert!(
            error.to_string().contains("pg_tblspc/1/pg_wal/x"),
            "{error}"
        );
        for name in [
            "pg_wal/000000010000000000000002",
            "pg_wal/archive_status/000000010000000000000002.done",
            "backup_manifest",
            "postgresql.auto.conf",
            "recovery.signal",
            "standby.signal",
        ] {
            let archive = Archive::new().file(name, b"x").bytes();
            run(&archive, tempfile::tempdir().unwrap().path(), &manifest).unwrap();
        }
        // Listed, they are checked like any other file.
        let manifest = testing::manifest(&[("postgresql.auto.conf", b"a = 1\n")]);
        let archive = Archive::new()
            .file("postgresql.auto.conf", b"a = 2\n")
            .bytes();
        let error = run(&archive, tempfile::tempdir().unwrap().path(), &manifest).unwrap_err();
        assert!(
            matches!(error, ExtractError::ChecksumMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn links_devices_and_fifos_are_refused() {
        let manifest = testing::manifest(&[]);
        for (kind, named) in [
            (tar::EntryType::Link, "hard link"),
            (tar::EntryType::Char, "device file"),
            (tar::EntryType::Block, "device file"),
            (tar::EntryType::Fifo, "FIFO"),
            (tar::EntryType::XGlobalHeader, "tar type 'g'"),
        ] {
            let archive = Archive::new().raw("base/odd", kind, 0o600, b"").bytes();
            let error = run(&archive, tempfile::tempdir().unwrap().path(), &manifest).unwrap_err();
            assert!(
                matches!(&error, ExtractError::Unsupported { path, .. } if path == "base/odd"),
                "{error}"
            );
            assert!(error.to_string().contains(named), "{error}");
        }
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let manifest = testing::manifest(&[("PG_VERSION", b"18\n")]);
        let archive = Archive::new().file("PG_VERSION", b"18\n").bytes();
        let dest = tempfile::tempdir().unwrap();
        run(&archive, dest.path(), &manifest).unwrap();
        let error = run(&archive, dest.path(), &manifest).unwrap_err();
        assert!(
            matches!(error, ExtractError::AlreadyExists { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_truncated_archive_is_refused() {
        let manifest = manifest::parse(testing::PG18_CRC32C).unwrap();
        // Without its two zero blocks: every entry is whole, but the end marker is missing.
        let whole = PG18_TABLESPACE.len()
            - PG18_TABLESPACE
                .iter()
                .rev()
                .take_while(|&&b| b == 0)
                .count();
        let end_of_data = whole.next_multiple_of(512);
        let dest = tempfile::tempdir().unwrap();
        let error = run_prefixed(
            &PG18_TABLESPACE[..end_of_data],
            dest.path(),
            "pg_tblspc/16384/",
            &manifest,
        )
        .unwrap_err();
        assert!(matches!(error, ExtractError::Truncated { .. }), "{error}");
        // Cut inside the file: the part written is removed.
        let dest = tempfile::tempdir().unwrap();
        let error = run_prefixed(
            &PG18_TABLESPACE[..3 * 512 + 5000],
            dest.path(),
            "pg_tblspc/16384/",
            &manifest,
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                ExtractError::ShortFile {
                    read: 5000,
                    size: 8192,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(tree(dest.path()), ["PG_18_202506291", "PG_18_202506291/5"]);
        let error = run(b"", tempfile::tempdir().unwrap().path(), &manifest).unwrap_err();
        assert!(matches!(error, ExtractError::Truncated { .. }), "{error}");
    }

    /// Bytes that are cheap to make again and hard to mistake for each other.
    fn generated(at: u64) -> u8 {
        (at.wrapping_mul(2654435761) >> 13) as u8
    }

    /// A tar stream of one big generated file, made as it is read; halfway through the data
    /// it notes how much of the file is already on disk.
    struct BigArchive {
        header: Vec<u8>,
        size: u64,
        at: u64,
        file: PathBuf,
        on_disk_at_half: Option<u64>,
    }

    impl Read for BigArchive {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let header = self.header.len() as u64;
            let total = header + self.size + 1024;
            let n = buf.len().min((total - self.at) as usize);
            for (i, byte) in buf[..n].iter_mut().enumerate() {
                let at = self.at + i as u64;
                *byte = match at {
                    _ if at < header => self.header[at as usize],
                    _ if at < header + self.size => generated(at - header),
                    _ => 0,
                };
            }
            self.at += n as u64;
            if self.on_disk_at_half.is_none() && self.at > header + self.size / 2 {
                self.on_disk_at_half = Some(std::fs::metadata(&self.file).map_or(0, |m| m.len()));
            }
            Ok(n)
        }
    }

    #[test]
    fn big_files_stream_through() {
        const SIZE: u64 = 20 << 20;
        let mut checksummer = FileChecksummer::new(ChecksumAlgorithm::Crc32c);
        let mut chunk = vec![0; 1 << 20];
        for start in (0..SIZE).step_by(chunk.len()) {
            for (i, byte) in chunk.iter_mut().enumerate() {
                *byte = generated(start + i as u64);
            }
            checksummer.update(&chunk);
        }
        let file = format!(
            r#"{{ "Path": "base/5/16385", "Size": {SIZE}, "Checksum-Algorithm": "CRC32C", "Checksum": "{}" }}"#,
            hex(&checksummer.finish())
        );
        let manifest = manifest::parse(&testing::text(testing::VERSION_1, &[&file], &[])).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("base/5/16385").unwrap();
        header.set_size(SIZE);
        header.set_mode(0o600);
        header.set_cksum();
        let dest = tempfile::tempdir().unwrap();
        let mut archive = BigArchive {
            header: header.as_bytes().to_vec(),
            size: SIZE,
            at: 0,
            file: dest.path().join("base/5/16385"),
            on_disk_at_half: None,
        };
        let job = Extract {
            dest: dest.path(),
            manifest_prefix: "",
            manifest: &manifest,
        };
        let extracted = extract(&mut archive, &job).unwrap();
        assert_eq!(extracted.bytes, SIZE);
        assert_eq!(std::fs::metadata(&archive.file).unwrap().len(), SIZE);
        // Written while it was read, never gathered first.
        let slack = (COPY_BUFFER_BYTES + READ_BUFFER_BYTES) as u64;
        assert!(archive.on_disk_at_half.unwrap() >= SIZE / 2 - slack);
    }

    #[test]
    fn missing_lists_unwritten_manifest_files() {
        let manifest = testing::manifest(&[("a", b""), ("b/c", b""), ("d", b"")]);
        let written: HashSet<String> = ["a".to_owned(), "x".to_owned()].into();
        assert_eq!(missing(&manifest, &written), ["b/c", "d"]);
    }
}
