//! What makes a file acceptable to archive under its name: a segment's first page must be the
//! start of that segment, a history file must parse, a backup history file must name its own
//! start position. Pure; the archive_command hook and the fuzzers call it.

use thiserror::Error;

use super::{
    LongPageHeader, Lsn, PageHeaderError, SegNo, SegmentName, SegmentSize, SystemId, WalFileName,
    parse_history,
};

/// Why a file's content does not fit its name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValidationError {
    /// A segment's first page does not match.
    #[error(transparent)]
    Page(#[from] PageHeaderError),
    /// A timeline history file does not parse.
    #[error("invalid timeline history: {0}")]
    History(String),
    /// A backup history file does not describe a backup that started where its name says.
    #[error("invalid backup history file: {0}")]
    Backup(String),
    /// A segment of another cluster.
    #[error("the segment belongs to cluster {found}, not {expected}")]
    OtherCluster {
        /// The system identifier in the segment.
        found: SystemId,
        /// The cluster it was meant for.
        expected: SystemId,
    },
}

/// What validation learned about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileFacts {
    /// The system identifier the content carries (segments only).
    pub system_id: Option<SystemId>,
}

impl FileFacts {
    /// Refuses a segment of another cluster than `expected`.
    pub fn check_cluster(&self, expected: SystemId) -> Result<(), ValidationError> {
        match self.system_id {
            Some(found) if found != expected => {
                Err(ValidationError::OtherCluster { found, expected })
            }
            _ => Ok(()),
        }
    }
}

/// Checks that `content` is a plausible file named `name`. The tail of a `.partial` segment
/// is not checked: PostgreSQL leaves whatever the recycled file held there.
pub fn validate_file(name: &WalFileName, content: &[u8]) -> Result<FileFacts, ValidationError> {
    match *name {
        WalFileName::Segment(segment) | WalFileName::Partial(segment) => {
            validate_segment_head(segment, content, content.len() as u64)
        }
        WalFileName::History(timeline) => {
            parse_history(timeline, content).map_err(ValidationError::History)?;
            Ok(FileFacts { system_id: None })
        }
        WalFileName::Backup { segment, offset } => {
            check_backup_file(segment, offset, content).map_err(ValidationError::Backup)?;
            Ok(FileFacts { system_id: None })
        }
    }
}

/// Checks a segment known by its first bytes (at least the long page header) and its length.
pub fn validate_segment_head(
    segment: SegmentName,
    head: &[u8],
    length: u64,
) -> Result<FileFacts, ValidationError> {
    let header = LongPageHeader::parse(head)?;
    header.check_segment(segment, length)?;
    Ok(FileFacts {
        system_id: Some(header.system_id),
    })
}

/// The first line of a backup history file is `START WAL LOCATION: X/X (file NAME)`; the
/// position must lie at `offset` inside segment `NAME` for some valid segment size.
fn check_backup_file(segment: SegmentName, offset: u32, content: &[u8]) -> Result<(), String> {
    // Only the first line is read: later ones hold the user's LABEL in any encoding.
    let first = content.split(|&b| b == b'\n').next().unwrap_or_default();
    let first =
        std::str::from_utf8(first).map_err(|_| "the first line is not ASCII text".to_string())?;
    let rest = first
        .strip_prefix("START WAL LOCATION: ")
        .ok_or_else(|| format!("expected a START WAL LOCATION line, found {first:?}"))?;
    let (lsn, file) = rest
        .split_once(" (file ")
        .and_then(|(lsn, file)| Some((lsn.parse::<Lsn>().ok()?, file.strip_suffix(')')?)))
        .ok_or_else(|| format!("cannot read the start location in {first:?}"))?;
    if file != segment.to_string() {
        return Err(format!(
            "it describes a backup that started in {file}, not in {segment}"
        ));
    }
    let matches_name = SegmentSize::all().any(|size| {
        let bytes = u64::from(size.bytes());
        SegmentName::new(segment.timeline, SegNo::containing(lsn, size), size) == segment
            && lsn.0 % bytes == u64::from(offset)
    });
    if !matches_name {
        return Err(format!(
            "its start location {lsn} is not at offset {offset:08X} of {segment}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::tests::header_bytes;

    #[test]
    fn segments_carry_their_system_id() {
        let mut content = header_bytes(1, 3 << 20, 77, 1 << 20);
        content.resize(1 << 20, 0);
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let facts = validate_file(&name, &content).unwrap();
        assert_eq!(facts.system_id, Some(SystemId(77)));
        let wrong: WalFileName = "000000010000000000000004".parse().unwrap();
        assert!(matches!(
            validate_file(&wrong, &content),
            Err(ValidationError::Page(_))
        ));
    }

    #[test]
    fn backup_files_must_name_their_start() {
        let name: WalFileName = "000000010000000000000002.00000028.backup".parse().unwrap();
        let good = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n";
        assert!(validate_file(&name, good).is_ok());
        let latin1_label =
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: caf\xe9\n";
        assert!(validate_file(&name, latin1_label).is_ok());
        let other_offset = b"START WAL LOCATION: 0/2000060 (file 000000010000000000000002)\n";
        assert!(validate_file(&name, other_offset).is_err());
        let other_file = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000003)\n";
        assert!(validate_file(&name, other_file).is_err());
        assert!(validate_file(&name, b"hello").is_err());
    }

    #[test]
    fn history_files_must_parse() {
        let name: WalFileName = "00000002.history".parse().unwrap();
        assert!(validate_file(&name, b"1\t0/3000000\tno recovery target specified\n").is_ok());
        assert!(validate_file(&name, b"garbage").is_err());
    }
}
