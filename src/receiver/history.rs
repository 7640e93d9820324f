//! A timeline's history file, asked of the server (`TIMELINE_HISTORY`) and archived before
//! any segment of that timeline, so that the archive can follow the switch.

use anyhow::{Context as _, anyhow};
use bytes::Bytes;

use super::probe::UNDEFINED_FILE;
use super::session::{SessionError, from_conn};
use crate::archive::ClusterArchive;
use crate::blocking;
use crate::envelope::Encoder;
use crate::protocol::connection::{Connection, Error as ConnError};
use crate::protocol::conninfo::HostAddr;
use crate::wal::{HistoryEntry, TimelineId, WalFileName, parse_history};

/// Archives the history file of `timeline` as the server has it (before any segment of that
/// timeline), and returns its entries.
pub async fn archive_history(
    conn: &mut Connection,
    cluster: &ClusterArchive,
    timeline: TimelineId,
) -> Result<Vec<HistoryEntry>, SessionError> {
    let rows = conn
        .simple_query_raw(&format!("TIMELINE_HISTORY {}", timeline.0))
        .await
        .map_err(|e| history_missing(e, timeline, conn.host()))?;
    let name = WalFileName::History(timeline);
    let (file, content) = match rows
        .first()
        .map(|r| (r.first().cloned().flatten(), r.get(1).cloned().flatten()))
    {
        Some((Some(file), Some(content))) => (file, content),
        _ => return Err(anyhow!("TIMELINE_HISTORY {} returned no file", timeline.0).into()),
    };
    if file != name.to_string().as_bytes() {
        return Err(anyhow!(
            "TIMELINE_HISTORY {} returned a file named {:?}",
            timeline.0,
            String::from_utf8_lossy(&file)
        )
        .into());
    }
    let entries = parse_history(timeline, &content)
        .map_err(|e| anyhow!("{name} from {}: {e}", conn.host()))?;
    let content = Bytes::from(content);
    let encoded = content.clone();
    let envelope = blocking::run(move || {
        Encoder::new(crate::envelope::DEFAULT_LEVEL, 1).and_then(|mut e| e.encode(&encoded))
    })
    .await
    .context("compress a history file")?;
    cluster
        .put(&name, content, envelope)
        .await
        .map_err(|e| match e.is_contradiction() {
            true => SessionError::fatal(e.into()),
            false => e.into(),
        })?;
    Ok(entries)
}

/// A failed TIMELINE_HISTORY. A server without the file (SQLSTATE 58P01) may be a standby
/// that has not received it yet, or a server restored without it: ask again later, since
/// going on without the history would leave the archive unable to follow the switch.
fn history_missing(error: ConnError, timeline: TimelineId, host: &HostAddr) -> SessionError {
    if error.server_error().map(|e| e.code.as_str()) != Some(UNDEFINED_FILE) {
        return from_conn(error);
    }
    SessionError::from(anyhow!(error).context(format!(
        "{host} has no history file for timeline {timeline} ({}); retrying: the archive needs it before any WAL of that timeline",
        WalFileName::History(timeline)
    )))
}
