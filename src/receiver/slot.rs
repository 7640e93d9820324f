//! The physical replication slot: make sure it exists (creating it when asked) and read where
//! it keeps WAL from, which is what the receiver last reported as flushed.

use anyhow::anyhow;

use super::session::{SessionError, from_conn};
use crate::protocol::connection::Connection;
use crate::wal::Lsn;

/// What [`ensure_slot`] found.
#[derive(Clone, Copy, Debug)]
pub struct SlotFound {
    /// Where the slot keeps WAL from, when the server says (PostgreSQL 15 and later).
    pub restart: Option<Lsn>,
    /// Whether this call created it.
    pub created: bool,
}

/// Makes sure the slot exists (creating it when asked) and says where it keeps WAL from.
pub async fn ensure_slot(
    conn: &mut Connection,
    slot: &str,
    create: bool,
) -> Result<SlotFound, SessionError> {
    if conn.server_major_version().unwrap_or(0) >= 15 {
        let rows = conn
            .simple_query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
            .await
            .map_err(from_conn)?;
        let row = rows
            .first()
            .ok_or_else(|| anyhow!("READ_REPLICATION_SLOT returned no row"))?;
        match row.first().cloned().flatten().as_deref() {
            Some("physical") => {
                let restart = row
                    .get(1)
                    .cloned()
                    .flatten()
                    .and_then(|l| l.parse::<Lsn>().ok());
                return Ok(SlotFound {
                    restart,
                    created: false,
                });
            }
            Some(other) => {
                return Err(SessionError::fatal(anyhow!(
                    "slot \"{slot}\" is a {other} slot, not a physical one"
                )));
            }
            None if !create => {
                return Err(SessionError::fatal(anyhow!(
                    "replication slot \"{slot}\" does not exist on {}: create it or pass --create-slot",
                    conn.host()
                )));
            }
            None => {}
        }
    } else if !create {
        // Before PostgreSQL 15 a missing slot shows when streaming starts (SQLSTATE 42704).
        return Ok(SlotFound {
            restart: None,
            created: false,
        });
    }
    let created = match conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => {
            tracing::info!(slot, host = %conn.host(), "created replication slot");
            true
        }
        Err(e) if e.server_error().is_some_and(|s| s.code == "42710") => false, // created meanwhile
        Err(e) => return Err(from_conn(e)),
    };
    // A physical slot's creation reports no position (0/0): read the one it reserved.
    let mut restart = None;
    if conn.server_major_version().unwrap_or(0) >= 15 {
        let rows = conn
            .simple_query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
            .await
            .map_err(from_conn)?;
        restart = rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|l| l.parse().ok());
    }
    Ok(SlotFound { restart, created })
}

/// Creates a temporary physical slot that keeps WAL from the server's current redo position
/// on; the server drops it when this connection ends.
pub async fn create_temporary_slot(conn: &mut Connection, slot: &str) -> Result<(), SessionError> {
    conn.simple_query(&format!(
        "CREATE_REPLICATION_SLOT \"{slot}\" TEMPORARY PHYSICAL RESERVE_WAL"
    ))
    .await
    .map_err(from_conn)?;
    tracing::info!(slot, host = %conn.host(), "created temporary replication slot");
    Ok(())
}
