//! Replication commands with a one-row answer that every client of a server asks first:
//! which cluster and timeline it serves (IDENTIFY_SYSTEM) and its WAL segment size.

use thiserror::Error;

use super::connection::{Connection, Error as ConnError, Row};
use crate::wal::{Lsn, SegmentSize, SystemId, TimelineId};

/// A command failed, or its answer made no sense.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The connection or the server failed.
    #[error(transparent)]
    Connection(#[from] ConnError),
    /// The server answered something walhalla cannot read.
    #[error("{0}")]
    Answer(String),
    /// The server's answer is well-formed but names a setting no PostgreSQL server can have:
    /// asking again cannot help.
    #[error("{0}")]
    Impossible(String),
}

/// What IDENTIFY_SYSTEM says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster.
    pub system_id: SystemId,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current WAL position (flush position on a primary, replay on a standby).
    pub lsn: Lsn,
}

/// IDENTIFY_SYSTEM: the cluster, the server's timeline and its current WAL position.
pub async fn identify_system(conn: &mut Connection) -> Result<Identity, CommandError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| CommandError::Answer("IDENTIFY_SYSTEM returned no row".into()))?;
    parse_identity(row)
}

/// Reads IDENTIFY_SYSTEM's row: `systemid`, `timeline`, `xlogpos` (then `dbname`, unused).
pub fn parse_identity(row: &Row) -> Result<Identity, CommandError> {
    let field = |i: usize, name: &str| {
        row.get(i).cloned().flatten().ok_or_else(|| {
            CommandError::Answer(format!("IDENTIFY_SYSTEM returned no {name} (column {i})"))
        })
    };
    let wrong = |name: &str, why: String| {
        CommandError::Answer(format!("IDENTIFY_SYSTEM returned an invalid {name}: {why}"))
    };
    let system_id: SystemId = field(0, "systemid")?
        .parse()
        .map_err(|why| wrong("systemid", why))?;
    let timeline = field(1, "timeline")?;
    let timeline = timeline
        .parse()
        .ok()
        .filter(|&t| t != 0)
        .map(TimelineId)
        .ok_or_else(|| {
            wrong(
                "timeline",
                format!("{timeline:?} is not a positive 32-bit number"),
            )
        })?;
    let lsn: Lsn = field(2, "xlogpos")?
        .parse()
        .map_err(|why| wrong("xlogpos", why))?;
    Ok(Identity {
        system_id,
        timeline,
        lsn,
    })
}

/// The server's WAL segment size (`SHOW wal_segment_size`).
pub async fn segment_size(conn: &mut Connection) -> Result<SegmentSize, CommandError> {
    let text = conn.show("wal_segment_size").await?;
    parse_segment_size(&text).map_err(CommandError::Impossible)
}

/// The server's WAL page size in bytes (`SHOW wal_block_size`): a power of two from 1 kB to
/// 64 kB.
pub async fn block_size(conn: &mut Connection) -> Result<u32, CommandError> {
    let text = conn.show("wal_block_size").await?;
    text.parse::<u32>()
        .ok()
        .filter(|b| b.is_power_of_two() && (1024..=65536).contains(b))
        .ok_or_else(|| {
            CommandError::Impossible(format!(
                "wal_block_size {text:?} is not a power of two from 1024 to 65536"
            ))
        })
}

/// Reads a size as `SHOW wal_segment_size` prints it (`16MB`, `1GB`, `1024kB`).
pub fn parse_segment_size(text: &str) -> Result<SegmentSize, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &text[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in wal_segment_size {text:?}"
            ));
        }
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("wal_segment_size {text:?} is not a size"))?;
    u32::try_from(bytes)
        .ok()
        .and_then(SegmentSize::new)
        .ok_or_else(|| format!("wal_segment_size {text:?} is not a power of two from 1 MB to 1 GB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_segment_size_as_the_server_shows_it() {
        assert_eq!(parse_segment_size("16MB").unwrap().bytes(), 16 << 20);
        assert_eq!(parse_segment_size("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(parse_segment_size("1024kB").unwrap().bytes(), 1 << 20);
        for bad in ["", "MB", "3MB", "2TB", "16 MB", "-1MB", "17179869185GB"] {
            assert!(parse_segment_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
