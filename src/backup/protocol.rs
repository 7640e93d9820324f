//! The `BASE_BACKUP` replication command, pure: the command text for each major version and
//! the typed CopyData messages of PostgreSQL 15 and later. Which parts a response has, and
//! in which order, is in the protocol chapter ("Streaming Replication Protocol") and in
//! src/backend/backup/basebackup.c (basebackup_copy.c for the message formats).

use bytes::{Buf, Bytes};
use thiserror::Error;

/// What the backup asks of the server.
#[derive(Clone, Debug)]
pub struct BackupRequest {
    /// The label stored in `backup_label`.
    pub label: String,
    /// Checkpoint at once (`CHECKPOINT 'fast'`) instead of spreading it.
    pub fast: bool,
    /// Ask the server to estimate the sizes first, for a progress display. Costs a scan of
    /// the data directory before the first byte.
    pub progress: bool,
    /// Have the server compress the tar streams with zstd at this level (15 and later).
    pub server_zstd: Option<i32>,
}

/// The first major version with the parenthesized option syntax and the typed CopyData
/// messages; before it, one CopyOut per tablespace and one for the manifest.
pub const TYPED_MESSAGES_SINCE: u32 = 15;

/// The command for a server of major version `major`. WAL is not included (it is archived),
/// the server does not wait for its archiving (walhalla checks the archive itself), a
/// manifest with CRC-32C checksums is included, and tablespaces are described in a
/// `tablespace_map` file (so a restore can move them) instead of as symbolic links.
pub fn command(major: u32, request: &BackupRequest) -> String {
    let label = quote(&request.label);
    if major >= TYPED_MESSAGES_SINCE {
        let mut options = vec![format!("LABEL {label}")];
        if request.progress {
            options.push("PROGRESS".into());
        }
        let checkpoint = if request.fast { "fast" } else { "spread" };
        options.push(format!("CHECKPOINT '{checkpoint}'"));
        options.extend(
            [
                "WAIT false",
                "MANIFEST 'yes'",
                "MANIFEST_CHECKSUMS 'CRC32C'",
                "TABLESPACE_MAP",
            ]
            .map(String::from),
        );
        if let Some(level) = request.server_zstd {
            options.push("COMPRESSION 'zstd'".into());
            options.push(format!("COMPRESSION_DETAIL 'level={level}'"));
        }
        format!("BASE_BACKUP ({})", options.join(", "))
    } else {
        let mut command = format!("BASE_BACKUP LABEL {label}");
        if request.progress {
            command.push_str(" PROGRESS");
        }
        if request.fast {
            command.push_str(" FAST");
        }
        command.push_str(" NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP");
        command
    }
}

/// `text` as a string literal of the replication grammar (standard-conforming: quotes doubled).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A CopyData message of a PostgreSQL 15+ `BASE_BACKUP` stream.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyPayload {
    /// A new archive begins: its file name (`base.tar`, `OID.tar`) and the tablespace's
    /// location (empty for the data directory).
    NewArchive {
        /// The archive's name.
        name: String,
        /// The tablespace's directory on the server; empty for the main data directory.
        location: String,
    },
    /// The manifest follows.
    Manifest,
    /// Bytes of the current archive or of the manifest.
    Data(Bytes),
    /// Bytes done so far, when progress was asked for.
    Progress(u64),
}

/// A malformed CopyData message.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed BASE_BACKUP message: {0}")]
pub struct PayloadError(String);

/// Decodes one CopyData payload of a PostgreSQL 15+ backup stream.
pub fn parse_payload(mut payload: Bytes) -> Result<CopyPayload, PayloadError> {
    if payload.is_empty() {
        return Err(PayloadError("empty CopyData".into()));
    }
    let kind = payload.get_u8();
    match kind {
        b'n' => {
            let name = take_cstring(&mut payload)?;
            let location = take_cstring(&mut payload)?;
            if !payload.is_empty() {
                return Err(PayloadError(
                    "trailing bytes after a new-archive message".into(),
                ));
            }
            Ok(CopyPayload::NewArchive { name, location })
        }
        b'm' if payload.is_empty() => Ok(CopyPayload::Manifest),
        b'd' => Ok(CopyPayload::Data(payload)),
        b'p' if payload.len() == 8 => Ok(CopyPayload::Progress(payload.get_u64())),
        other => Err(PayloadError(format!(
            "unknown message type {:?} of {} bytes",
            char::from(other),
            payload.len() + 1
        ))),
    }
}

fn take_cstring(payload: &mut Bytes) -> Result<String, PayloadError> {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| PayloadError("unterminated string".into()))?;
    let text = payload.split_to(end);
    payload.advance(1);
    String::from_utf8(text.to_vec()).map_err(|_| PayloadError("string is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(label: &str) -> BackupRequest {
        BackupRequest {
            label: label.into(),
            fast: true,
            progress: false,
            server_zstd: None,
        }
    }

    #[test]
    fn commands_per_version() {
        assert_eq!(
            command(15, &request("nightly")),
            "BASE_BACKUP (LABEL 'nightly', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', \
             MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP)"
        );
        assert_eq!(
            command(14, &request("it's")),
            "BASE_BACKUP LABEL 'it''s' FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' \
             TABLESPACE_MAP"
        );
        let slow = BackupRequest {
            fast: false,
            progress: true,
            ..request("x")
        };
        assert!(command(18, &slow).contains("PROGRESS, CHECKPOINT 'spread'"));
        assert_eq!(
            command(13, &slow),
            "BASE_BACKUP LABEL 'x' PROGRESS NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' \
             TABLESPACE_MAP"
        );
        let compressed = BackupRequest {
            server_zstd: Some(5),
            ..request("x")
        };
        assert!(
            command(16, &compressed)
                .ends_with(", COMPRESSION 'zstd', COMPRESSION_DETAIL 'level=5')")
        );
    }

    #[test]
    fn payloads() {
        let parse = |bytes: &[u8]| parse_payload(Bytes::copy_from_slice(bytes));
        assert_eq!(
            parse(b"nbase.tar\0\0"),
            Ok(CopyPayload::NewArchive {
                name: "base.tar".into(),
                location: String::new()
            })
        );
        assert_eq!(
            parse(b"n16385.tar\0/srv/ts\0"),
            Ok(CopyPayload::NewArchive {
                name: "16385.tar".into(),
                location: "/srv/ts".into()
            })
        );
        assert_eq!(parse(b"m"), Ok(CopyPayload::Manifest));
        assert_eq!(
            parse(b"dabc"),
            Ok(CopyPayload::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(
            parse(&[b'p', 0, 0, 0, 0, 0, 0, 1, 0]),
            Ok(CopyPayload::Progress(256))
        );
        for bad in [
            &b""[..],
            b"nbase.tar",
            b"nbase.tar\0\0x",
            b"p\0",
            b"mx",
            b"z",
            b"n\xff\0\0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
