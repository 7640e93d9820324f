//! PostgreSQL's backup manifest (`backup_manifest`, PostgreSQL 13+): the list of every file a
//! base backup holds, with its size and checksum, the WAL the backup needs, and a SHA-256 of
//! the manifest itself.
//!
//! The format is JSON, one file per line (PostgreSQL's `backup_manifest.c` writes it; its
//! `parse_manifest.c` reads it):
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 2,
//! "System-Identifier": 7714621217156175694,
//! "Files": [
//! { "Path": "backup_label", "Size": 225, "Last-Modified": "…", "Checksum-Algorithm": "CRC32C", "Checksum": "65da9325" },
//! { "Encoded-Path": "6261…", "Size": 3, "Last-Modified": "…" },
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/900028", "End-LSN": "0/900120" }
//! ],
//! "Manifest-Checksum": "da22…"}
//! ```
//!
//! - Version 1 (PostgreSQL 13 to 16) or 2 (17 and later, which adds `System-Identifier`).
//! - A path that is not valid UTF-8 (or every path, with `pg_basebackup
//!   --manifest-force-encode`) is written hex-encoded as `Encoded-Path`.
//! - `Checksum` is hex; CRC-32C is its 4 bytes in the server's native order, little-endian
//!   on every platform PostgreSQL is built for in practice (`pg_checksum_final` copies the
//!   `uint32` as it lies in memory).
//! - `Manifest-Checksum` is the SHA-256 of every byte up to and including the newline that
//!   ends the line before the last, so the manifest must end with a newline and hold at least
//!   two lines (`verify_manifest_checksum` in `parse_manifest.c`).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::digest::DynDigest;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use thiserror::Error;

use crate::wal::Lsn;

/// Why a backup manifest was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The bytes cannot hold a manifest checksum (too few lines, no final newline).
    #[error("backup manifest {0}")]
    Framing(&'static str),
    /// Not JSON, or not the fields and types of a backup manifest.
    #[error("backup manifest is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// The manifest's SHA-256 is not the one it records: damaged or edited.
    #[error(
        "backup manifest checksum mismatch: it records {expected}, its content hashes to {actual}"
    )]
    ChecksumMismatch {
        /// The checksum the manifest records (as written).
        expected: String,
        /// The SHA-256 of the covered bytes, hex.
        actual: String,
    },
    /// A checksum algorithm PostgreSQL does not define.
    #[error(
        "backup manifest entry {path:?}: unknown checksum algorithm {name:?} \
         (known: NONE, CRC32C, SHA224, SHA256, SHA384, SHA512)"
    )]
    UnknownAlgorithm {
        /// The file whose entry names it.
        path: String,
        /// The algorithm's name as written.
        name: String,
    },
    /// Anything else wrong with the manifest's content: the message says what and where.
    #[error("backup manifest {0}")]
    Invalid(String),
}

/// A parsed, checksum-verified backup manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The format version: 1 (PostgreSQL 13 to 16) or 2 (17 and later).
    pub version: u32,
    /// The cluster's system identifier, recorded from version 2 on.
    pub system_id: Option<u64>,
    /// Every file of the backup, in the manifest's order.
    pub files: Vec<ManifestFile>,
    /// The WAL a restore of this backup must replay to become consistent.
    pub wal_ranges: Vec<WalRange>,
    /// Position of each path in `files`.
    index: HashMap<String, usize>,
}

impl Manifest {
    /// The entry for `path` (relative to the data directory, `/`-separated, as the manifest
    /// writes it: `base/5/1259`, `pg_tblspc/16384/PG_18_202506291/5/16385`).
    pub fn file(&self, path: &str) -> Option<&ManifestFile> {
        let indexed = self.index.get(path).and_then(|&i| self.files.get(i));
        match indexed {
            Some(file) if file.path == path => Some(file),
            // `files` is public: if it was edited since parsing, the index may be stale.
            _ => self.files.iter().find(|file| file.path == path),
        }
    }
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory, `/`-separated (decoded from `Encoded-Path` when
    /// the manifest hex-encodes it).
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// The file's checksum; `None` when the backup was taken with `MANIFEST_CHECKSUMS NONE`.
    pub checksum: Option<Checksum>,
}

/// A file checksum as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    /// How it was computed.
    pub algorithm: ChecksumAlgorithm,
    /// The digest bytes, as [`FileChecksummer::finish`] returns them.
    pub value: Vec<u8>,
}

/// The checksum algorithms of `BASE_BACKUP ... MANIFEST_CHECKSUMS` (PostgreSQL's
/// `pg_checksum_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[doc(alias = "pg_checksum_type")]
pub enum ChecksumAlgorithm {
    /// No checksum: only sizes are recorded.
    None,
    /// CRC-32C (Castagnoli), PostgreSQL's default.
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Every algorithm, in PostgreSQL's order.
    pub const ALL: [ChecksumAlgorithm; 6] = [
        ChecksumAlgorithm::None,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Sha224,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha384,
        ChecksumAlgorithm::Sha512,
    ];

    /// The name PostgreSQL writes (`CRC32C`, `SHA256`, …).
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::None => "NONE",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha224 => "SHA224",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha384 => "SHA384",
            ChecksumAlgorithm::Sha512 => "SHA512",
        }
    }

    /// The algorithm of that name, ignoring case as PostgreSQL does (`pg_checksum_parse_type`).
    pub fn from_name(name: &str) -> Option<ChecksumAlgorithm> {
        Self::ALL
            .into_iter()
            .find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
    }

    /// Length of the digest in bytes (0 for `NONE`).
    pub fn digest_bytes(self) -> usize {
        match self {
            ChecksumAlgorithm::None => 0,
            ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Sha224 => 28,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Sha384 => 48,
            ChecksumAlgorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stretch of WAL on one timeline that a restore of the backup must replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    /// The timeline.
    pub timeline: u32,
    /// Where the range starts.
    pub start: Lsn,
    /// Where it ends.
    pub end: Lsn,
}

/// Computes a file's manifest checksum piece by piece, as the file streams past.
pub struct FileChecksummer {
    state: ChecksumState,
}

enum ChecksumState {
    None,
    /// The CRC-32C of the bytes so far (finalized form, as `crc32c_append` takes it).
    Crc32c(u32),
    Sha(Box<dyn DynDigest>),
}

impl FileChecksummer {
    /// A checksummer for `algorithm`, having seen nothing yet.
    pub fn new(algorithm: ChecksumAlgorithm) -> FileChecksummer {
        let state = match algorithm {
            ChecksumAlgorithm::None => ChecksumState::None,
            ChecksumAlgorithm::Crc32c => ChecksumState::Crc32c(0),
            ChecksumAlgorithm::Sha224 => ChecksumState::Sha(Box::new(Sha224::new())),
            ChecksumAlgorithm::Sha256 => ChecksumState::Sha(Box::new(Sha256::new())),
            ChecksumAlgorithm::Sha384 => ChecksumState::Sha(Box::new(Sha384::new())),
            ChecksumAlgorithm::Sha512 => ChecksumState::Sha(Box::new(Sha512::new())),
        };
        FileChecksummer { state }
    }

    /// Adds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            ChecksumState::None => {}
            ChecksumState::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            ChecksumState::Sha(digest) => digest.update(data),
        }
    }

    /// The checksum of everything added, as the manifest records it: empty for `NONE`, the
    /// CRC-32C little-endian, the SHA-2 digest as is.
    pub fn finish(self) -> Vec<u8> {
        match self.state {
            ChecksumState::None => Vec::new(),
            ChecksumState::Crc32c(crc) => crc.to_le_bytes().to_vec(),
            ChecksumState::Sha(digest) => digest.finalize().into_vec(),
        }
    }
}

/// Parses a backup manifest and verifies its `Manifest-Checksum`.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let covered = checksummed_prefix(bytes)?;
    let raw: RawManifest = serde_json::from_slice(bytes)?;
    let actual = hex(&Sha256::digest(covered));
    if !raw.checksum.eq_ignore_ascii_case(&actual) {
        return Err(ManifestError::ChecksumMismatch {
            expected: raw.checksum,
            actual,
        });
    }
    let system_id = match (raw.version, raw.system_id) {
        (1, None) => None,
        (2, Some(id)) => Some(id),
        (1, Some(_)) => {
            return Err(ManifestError::Invalid(
                "version 1 has a System-Identifier, which only version 2 records".into(),
            ));
        }
        (2, None) => {
            return Err(ManifestError::Invalid(
                "version 2 lacks its System-Identifier".into(),
            ));
        }
        (version, _) => {
            return Err(ManifestError::Invalid(format!(
                "version {version} is not one walhalla reads (1 or 2)"
            )));
        }
    };
    let mut files = Vec::with_capacity(raw.files.len());
    let mut index = HashMap::with_capacity(raw.files.len());
    for raw_file in raw.files {
        let file = raw_file.into_file()?;
        if index.insert(file.path.clone(), files.len()).is_some() {
            return Err(ManifestError::Invalid(format!(
                "lists {:?} twice",
                file.path
            )));
        }
        files.push(file);
    }
    let wal_ranges = raw
        .wal_ranges
        .into_iter()
        .map(RawWalRange::into_range)
        .collect::<Result<_, _>>()?;
    Ok(Manifest {
        version: raw.version,
        system_id,
        files,
        wal_ranges,
        index,
    })
}

/// The bytes `Manifest-Checksum` covers: everything before the last line.
fn checksummed_prefix(bytes: &[u8]) -> Result<&[u8], ManifestError> {
    let Some((&b'\n', body)) = bytes.split_last() else {
        return Err(ManifestError::Framing("does not end with a newline"));
    };
    match body.iter().rposition(|&b| b == b'\n') {
        Some(end_of_penultimate) => Ok(&bytes[..=end_of_penultimate]),
        None => Err(ManifestError::Framing("has fewer than two lines")),
    }
}

/// Lowercase hex of `bytes`, as PostgreSQL writes checksums.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The bytes of a hex string (either case), or `None` if it is not one.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier")]
    system_id: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges")]
    wal_ranges: Vec<RawWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Last-Modified")]
    _last_modified: Option<IgnoredAny>,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

impl RawFile {
    fn into_file(self) -> Result<ManifestFile, ManifestError> {
        let path = match (self.path, self.encoded_path) {
            (Some(path), None) => path,
            (None, Some(encoded)) => decode_path(&encoded)?,
            (Some(path), Some(_)) => {
                return Err(ManifestError::Invalid(format!(
                    "entry {path:?} has both a Path and an Encoded-Path"
                )));
            }
            (None, None) => {
                return Err(ManifestError::Invalid(
                    "has an entry with neither Path nor Encoded-Path".into(),
                ));
            }
        };
        let checksum = file_checksum(&path, self.algorithm, self.checksum)?;
        Ok(ManifestFile {
            path,
            size: self.size,
            checksum,
        })
    }
}

fn decode_path(encoded: &str) -> Result<String, ManifestError> {
    let bytes = unhex(encoded).ok_or_else(|| {
        ManifestError::Invalid(format!("Encoded-Path {encoded:?} is not hexadecimal"))
    })?;
    // Paths are kept as Rust strings; PostgreSQL data directories hold only ASCII names
    // unless someone put a stray file there.
    String::from_utf8(bytes).map_err(|_| {
        ManifestError::Invalid(format!(
            "Encoded-Path {encoded:?} is not UTF-8, which walhalla cannot restore"
        ))
    })
}

fn file_checksum(
    path: &str,
    algorithm: Option<String>,
    text: Option<String>,
) -> Result<Option<Checksum>, ManifestError> {
    let invalid = |problem: String| ManifestError::Invalid(format!("entry {path:?}: {problem}"));
    let algorithm = match algorithm {
        Some(name) => {
            ChecksumAlgorithm::from_name(&name).ok_or_else(|| ManifestError::UnknownAlgorithm {
                path: path.to_owned(),
                name,
            })?
        }
        None => ChecksumAlgorithm::None,
    };
    let text = text.filter(|text| !text.is_empty());
    let text = match (algorithm, text) {
        (ChecksumAlgorithm::None, None) => return Ok(None),
        (ChecksumAlgorithm::None, Some(_)) => {
            return Err(invalid("has a Checksum but no Checksum-Algorithm".into()));
        }
        (_, None) => return Err(invalid(format!("has no {algorithm} Checksum"))),
        (_, Some(text)) => text,
    };
    let value = unhex(&text)
        .filter(|value| value.len() == algorithm.digest_bytes())
        .ok_or_else(|| {
            invalid(format!(
                "{algorithm} checksum {text:?} is not {} hexadecimal digits",
                2 * algorithm.digest_bytes()
            ))
        })?;
    Ok(Some(Checksum { algorithm, value }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

impl RawWalRange {
    fn into_range(self) -> Result<WalRange, ManifestError> {
        let lsn = |text: &str| {
            text.parse::<Lsn>()
                .map_err(|e| ManifestError::Invalid(format!("WAL range: {e}")))
        };
        Ok(WalRange {
            timeline: self.timeline,
            start: lsn(&self.start)?,
            end: lsn(&self.end)?,
        })
    }
}

/// Manifests made up for tests, with a correct `Manifest-Checksum`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A manifest `pg_basebackup` 18 wrote (CRC-32C, a tablespace with OID 16384).
    pub(crate) const PG18_CRC32C: &[u8] = include_bytes!("testdata/pg18-crc32c.backup_manifest");
    /// A manifest `pg_basebackup` wrote for PostgreSQL 13 (version 1, SHA-256, tablespace 16384).
    pub(crate) const PG13_SHA256: &[u8] = include_bytes!("testdata/pg13-sha256.backup_manifest");
    /// The top-level fields of a version-1 manifest that come before `Files`.
    pub(crate) const VERSION_1: &str = r#""PostgreSQL-Backup-Manifest-Version": 1,"#;

    /// The text of a manifest: `head` (the top-level fields before `Files`, each followed by
    /// a comma), the `files` and `wal_ranges` objects, and the checksum line.
    pub(crate) fn text(head: &str, files: &[&str], wal_ranges: &[&str]) -> Vec<u8> {
        let body = format!(
            "{{ {head}\n\"Files\": [\n{}\n],\n\"WAL-Ranges\": [\n{}\n],\n",
            files.join(",\n"),
            wal_ranges.join(",\n")
        );
        let checksum = hex(&Sha256::digest(&body));
        format!("{body}\"Manifest-Checksum\": \"{checksum}\"}}\n").into_bytes()
    }

    /// The text of a version-2 manifest listing `files` (path and content) with `algorithm`.
    pub(crate) fn manifest_text(algorithm: ChecksumAlgorithm, files: &[(&str, &[u8])]) -> Vec<u8> {
        let entries: Vec<String> = files
            .iter()
            .map(|(path, content)| {
                let mut checksummer = FileChecksummer::new(algorithm);
                checksummer.update(content);
                let checksum = match algorithm {
                    ChecksumAlgorithm::None => String::new(),
                    _ => format!(
                        ", \"Checksum-Algorithm\": \"{algorithm}\", \"Checksum\": \"{}\"",
                        hex(&checksummer.finish())
                    ),
                };
                format!(
                    "{{ \"Path\": {}, \"Size\": {}{checksum} }}",
                    serde_json::to_string(path).expect("a string serializes"),
                    content.len()
                )
            })
            .collect();
        let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
        text(
            r#""PostgreSQL-Backup-Manifest-Version": 2, "System-Identifier": 7714621217156175694,"#,
            &entries,
            &[r#"{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }"#],
        )
    }

    /// A parsed version-2 manifest listing `files` with CRC-32C checksums.
    pub(crate) fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        parse(&manifest_text(ChecksumAlgorithm::Crc32c, files)).expect("a valid manifest")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    const PG18_ENCODED: &[u8] = include_bytes!("testdata/pg18-encoded.backup_manifest");
    const PG18_VERSION_FILE: &[u8] = include_bytes!("testdata/pg18-PG_VERSION");
    const PG13_VERSION_FILE: &[u8] = include_bytes!("testdata/pg13-PG_VERSION");

    fn message(bytes: &[u8]) -> String {
        parse(bytes).expect_err("refused").to_string()
    }

    /// How many file entries a manifest has, counted on its raw lines.
    fn raw_entries(bytes: &[u8]) -> usize {
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| line.starts_with(b"{ \"Path\"") || line.starts_with(b"{ \"Encoded"))
            .count()
    }

    #[test]
    fn parses_a_postgresql_18_manifest() {
        let manifest = parse(PG18_CRC32C).unwrap();
        assert_eq!(manifest.version, 2);
        assert_eq!(manifest.system_id, Some(7714621217156175694));
        assert_eq!(manifest.files.len(), raw_entries(PG18_CRC32C));
        assert_eq!(
            manifest.wal_ranges,
            [WalRange {
                timeline: 1,
                start: "0/2000028".parse().unwrap(),
                end: "0/2000120".parse().unwrap(),
            }]
        );
        let control = manifest.file("global/pg_control").unwrap();
        assert_eq!(control.size, 8192);
        assert_eq!(
            control.checksum.as_ref().unwrap().algorithm,
            ChecksumAlgorithm::Crc32c
        );
        let tablespace_file = manifest
            .file("pg_tblspc/16384/PG_18_202506291/5/16385")
            .unwrap();
        assert_eq!(tablespace_file.size, 8192);
        assert!(manifest.file("pg_wal").is_none());
        assert!(manifest.file("backup_manifest").is_none());
    }

    #[test]
    fn parses_a_postgresql_13_manifest_of_version_1() {
        let manifest = parse(PG13_SHA256).unwrap();
        assert_eq!(manifest.version, 1);
        assert_eq!(manifest.system_id, None);
        assert_eq!(manifest.files.len(), raw_entries(PG13_SHA256));
        assert_eq!(manifest.wal_ranges.len(), 1);
        assert!(manifest.files.iter().all(|file| {
            file.checksum.as_ref().map(|c| (c.algorithm, c.value.len()))
                == Some((ChecksumAlgorithm::Sha256, 32))
        }));
    }

    #[test]
    fn decodes_encoded_paths() {
        // pg_basebackup --manifest-force-encode: every path hex-encoded.
        let manifest = parse(PG18_ENCODED).unwrap();
        assert!(PG18_ENCODED.windows(8).all(|w| w != b"\"Path\": "));
        assert_eq!(manifest.files.len(), raw_entries(PG18_ENCODED));
        for path in [
            "backup_label",
            "PG_VERSION",
            "global/pg_control",
            "base/5/1259",
        ] {
            assert!(manifest.file(path).is_some(), "{path}");
        }
        // The same cluster's other backup lists the same paths.
        let plain = parse(PG18_CRC32C).unwrap();
        let mut encoded_paths: Vec<_> = manifest.files.iter().map(|f| &f.path).collect();
        let mut plain_paths: Vec<_> = plain.files.iter().map(|f| &f.path).collect();
        encoded_paths.sort();
        plain_paths.sort();
        assert_eq!(encoded_paths, plain_paths);

        let encoded = |hex: &str| {
            let file = format!(r#"{{ "Encoded-Path": "{hex}", "Size": 0 }}"#);
            text(VERSION_1, &[&file], &[])
        };
        assert_eq!(parse(&encoded("612f62")).unwrap().files[0].path, "a/b");
        for (hex, problem) in [
            ("612", "not hexadecimal"),
            ("zz", "not hexadecimal"),
            ("ff", "not UTF-8"),
        ] {
            let message = message(&encoded(hex));
            assert!(message.contains(problem), "{message}");
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_fails() {
        let last_line_start = PG18_CRC32C[..PG18_CRC32C.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let step = PG18_CRC32C.len() / 301;
        for at in (0..PG18_CRC32C.len()).step_by(step).chain([
            last_line_start - 1,
            last_line_start + 25,
            PG18_CRC32C.len() - 1,
        ]) {
            let mut damaged = PG18_CRC32C.to_vec();
            damaged[at] ^= 0x01;
            let error = parse(&damaged).expect_err("a damaged manifest is refused");
            // Inside the checksummed text, a change that keeps the JSON valid is caught by
            // the checksum; the rest breaks the JSON or the checksum text itself.
            if at < last_line_start && serde_json::from_slice::<RawManifest>(&damaged).is_ok() {
                assert!(
                    matches!(error, ManifestError::ChecksumMismatch { .. }),
                    "byte {at}: {error}"
                );
            }
        }
        // A digit of a size: still valid JSON, so only the checksum can tell.
        let text = String::from_utf8(PG18_CRC32C.to_vec()).unwrap();
        let edited = text.replacen("\"Size\": 8192", "\"Size\": 8193", 1);
        assert!(matches!(
            parse(edited.as_bytes()),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn framing_follows_postgresql() {
        assert!(message(b"{}").contains("newline"));
        assert!(message(b"{}\n").contains("two lines"));
        let mut no_final_newline = PG18_CRC32C.to_vec();
        no_final_newline.pop();
        assert!(message(&no_final_newline).contains("newline"));
        // The checksum may be written in either case.
        let text = String::from_utf8(PG18_CRC32C.to_vec()).unwrap();
        let (body, last) = text[..text.len() - 1].rsplit_once('\n').unwrap();
        let upper = format!(
            "{body}\n{}\n",
            last.to_uppercase()
                .replace("MANIFEST-CHECKSUM", "Manifest-Checksum")
        );
        assert!(parse(upper.as_bytes()).is_ok());
    }

    #[test]
    fn unknown_algorithm_is_named() {
        let file =
            r#"{ "Path": "base/1/1", "Size": 1, "Checksum-Algorithm": "MD5", "Checksum": "00" }"#;
        let text = text(VERSION_1, &[file], &[]);
        match parse(&text) {
            Err(ManifestError::UnknownAlgorithm { path, name }) => {
                assert_eq!((path.as_str(), name.as_str()), ("base/1/1", "MD5"));
            }
            other => panic!("{other:?}"),
        }
        assert!(message(&text).contains("unknown checksum algorithm \"MD5\""));
        // Names are matched without regard to case, as PostgreSQL does.
        assert_eq!(
            ChecksumAlgorithm::from_name("sha512"),
            Some(ChecksumAlgorithm::Sha512)
        );
    }

    #[test]
    fn refuses_inconsistent_entries() {
        let file = |fields: &str| text(VERSION_1, &[&format!("{{ {fields} }}")], &[]);
        for (fields, problem) in [
            (r#""Size": 1"#, "neither Path nor Encoded-Path"),
            (r#""Path": "a", "Encoded-Path": "61", "Size": 1"#, "both"),
            (r#""Path": "a""#, "missing field `Size`"),
            (r#""Path": "a", "Size": -1"#, "invalid value"),
            (
                r#""Path": "a", "Size": 1, "Mode": 1"#,
                "unknown field `Mode`",
            ),
            (
                r##""Path": "a", "Size": 1, "Checksum": "00""##,
                "no Checksum-Algorithm",
            ),
            (
                r#""Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C""#,
                "no CRC32C Checksum",
            ),
            (
                r##""Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "0011""##,
                "not 8 hexadecimal digits",
            ),
            (
                r##""Path": "a", "Size": 1, "Checksum-Algorithm": "SHA256", "Checksum": "xy""##,
                "not 64 hexadecimal digits",
            ),
        ] {
            let text = file(fields);
            assert!(
                message(&text).contains(problem),
                "{fields}: {}",
                message(&text)
            );
        }
        let twice = text(
            VERSION_1,
            &[
                r#"{ "Path": "a", "Size": 1 }"#,
                r#"{ "Path": "a", "Size": 2 }"#,
            ],
            &[],
        );
        assert!(message(&twice).contains("lists \"a\" twice"));
        let without_checksum = parse(&file(r#""Path": "a", "Size": 7"#)).unwrap();
        assert_eq!(without_checksum.files[0].checksum, None);
    }

    #[test]
    fn refuses_unknown_versions_and_misplaced_system_ids() {
        let header = |head: &str| text(head, &[], &[]);
        let v3 = header(r#""PostgreSQL-Backup-Manifest-Version": 3,"#);
        assert!(message(&v3).contains("version 3"));
        let v2 = header(r#""PostgreSQL-Backup-Manifest-Version": 2,"#);
        assert!(message(&v2).contains("lacks its System-Identifier"));
        let v1 = header(r#""PostgreSQL-Backup-Manifest-Version": 1, "System-Identifier": 5,"#);
        assert!(message(&v1).contains("only version 2"));
        let range = r#"{ "Timeline": 1, "Start-LSN": "0/1", "End-LSN": "1" }"#;
        let bad_lsn = text(VERSION_1, &[], &[range]);
        assert!(message(&bad_lsn).contains("invalid LSN \"1\""));
    }

    #[test]
    fn checksummer_matches_postgresql_for_a_real_file() {
        // PG_VERSION from the base.tar of the backups that made these manifests.
        for (manifest, content, algorithm) in [
            (PG18_CRC32C, PG18_VERSION_FILE, ChecksumAlgorithm::Crc32c),
            (PG13_SHA256, PG13_VERSION_FILE, ChecksumAlgorithm::Sha256),
        ] {
            let expected = parse(manifest).unwrap().file("PG_VERSION").unwrap().clone();
            assert_eq!(expected.size, content.len() as u64);
            let mut checksummer = FileChecksummer::new(algorithm);
            for byte in content.chunks(1) {
                checksummer.update(byte);
            }
            let checksum = expected.checksum.unwrap();
            assert_eq!(checksum.algorithm, algorithm);
            assert_eq!(checksummer.finish(), checksum.value, "{algorithm}");
        }
    }

    #[test]
    fn checksummer_digests_have_their_lengths_and_are_incremental() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for algorithm in ChecksumAlgorithm::ALL {
            let mut whole = FileChecksummer::new(algorithm);
            whole.update(&data);
            let whole = whole.finish();
            let mut pieces = FileChecksummer::new(algorithm);
            for piece in data.chunks(4093) {
                pieces.update(piece);
            }
            assert_eq!(pieces.finish(), whole, "{algorithm}");
            assert_eq!(whole.len(), algorithm.digest_bytes(), "{algorithm}");
        }
        // CRC-32C's check value ("123456789" → 0xE3069283), little-endian as PostgreSQL writes.
        let mut crc = FileChecksummer::new(ChecksumAlgorithm::Crc32c);
        crc.update(b"123456789");
        assert_eq!(crc.finish(), [0x83, 0x92, 0x06, 0xe3]);
    }

    #[test]
    fn lookup_survives_edits_to_the_public_list() {
        let mut manifest = manifest(&[("a", b"1"), ("b", b"22")]);
        manifest.files.swap(0, 1);
        assert_eq!(manifest.file("a").unwrap().size, 1);
        assert_eq!(manifest.file("b").unwrap().size, 2);
        manifest.files.pop();
        assert_eq!(manifest.file("a"), None);
    }
}
