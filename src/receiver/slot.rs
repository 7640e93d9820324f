//! The physical replication slot: make sure it exists (creating it when asked) and read where
//! it keeps WAL from, which is what the receiver last reported as flushed; and, from
//! PostgreSQL 16 on, replace one the server invalidated, which keeps nothing however long it
//! is streamed from.

use std::time::Duration;

use anyhow::anyhow;

use super::session::{SessionError, from_conn};
use crate::protocol::connection::Connection;
use crate::protocol::conninfo::{ConnParams, HostAddr};
use crate::protocol::sql;
use crate::wal::{Lsn, SystemId};

/// How long asking `pg_replication_slots` may take, connecting included.
const SQL_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What a run learned of its slot ([`session_slot`], [`ensure_usable_slot`]).
#[derive(Debug, Default)]
pub struct SlotWatch {
    /// A session of this run found the slot: created again later, it was dropped.
    seen: bool,
    /// This run warned that the slot keeps no WAL.
    warned_empty: bool,
    /// This run said that the slot was invalidated (PostgreSQL 16 and 17, streamed on).
    said_invalidated: bool,
    /// `pg_replication_slots` gave a clear answer this run.
    checked: bool,
    /// This run said that it could not ask.
    warned: bool,
    /// The host whose server refused to stream what the slot should have kept: the slot
    /// there is replaced at the next session that reaches it, with `--create-slot`.
    replace_on: Option<HostAddr>,
}

impl SlotWatch {
    /// The server on `host` refused to stream what the slot should have kept (removed WAL,
    /// or 18's refusal of an invalidated slot): invalidated, whatever SQL could tell.
    fn replace_on(&mut self, host: HostAddr) {
        self.replace_on = Some(host);
    }
}

/// The slot a session streams from, and how it is had.
#[derive(Clone, Copy)]
pub struct SlotRequest<'a> {
    /// How to reach the server over SQL, to ask `pg_replication_slots`.
    pub params: &'a ConnParams,
    /// The slot's name.
    pub name: &'a str,
    /// Whether it is created when missing, and replaced when invalidated (`--create-slot`).
    pub create: bool,
    /// The cluster it must belong to.
    pub system_id: SystemId,
}

/// The slot for one session ([`ensure_usable_slot`]), with what its state means for the
/// archive said once a run: created again after this run found it (dropped, or another server
/// behind the address), or keeping no WAL (invalidated, or never used), WAL the server removed
/// meanwhile is reported lost. Returns where it keeps WAL from, when the server says.
pub async fn session_slot(
    conn: &mut Connection,
    request: SlotRequest<'_>,
    watch: &mut SlotWatch,
) -> Result<Option<Lsn>, SessionError> {
    let found = ensure_usable_slot(conn, request, watch).await?;
    let slot = request.name;
    let host = conn.host();
    if found.created && watch.seen {
        tracing::warn!(
            slot,
            %host,
            "the replication slot was gone (dropped, or this is another server) and is created \
             again: WAL the server removed meanwhile and the archive lacks is reported as lost"
        );
    }
    let reads_position = conn.server_major_version().unwrap_or(0) >= 15;
    if found.restart.is_none() && reads_position && !watch.warned_empty {
        tracing::warn!(
            slot,
            %host,
            "the replication slot keeps no WAL (invalidated by max_slot_wal_keep_size, or never \
             used): WAL the server has removed since and the archive lacks is reported as lost"
        );
        watch.warned_empty = true;
    }
    watch.seen = true;
    Ok(found.restart)
}

/// The server on `host` refused `command` (`error`): it no longer has WAL the slot should
/// have kept, or (PostgreSQL 18) refuses the invalidated slot. With `create`, the next
/// session replaces the slot on that host; without, the run ends with what to do.
pub fn keeps_no_more(
    error: SessionError,
    command: &str,
    host: &HostAddr,
    slot: &str,
    create: bool,
    watch: &mut SlotWatch,
) -> SessionError {
    if create {
        // The server's refusal tells what SQL may not have (a role for replication only).
        watch.replace_on(host.clone());
        return SessionError {
            fatal: false,
            error: error.error.context(format!(
                "{command} on {host}: the slot no longer keeps WAL (invalidated by \
                 max_slot_wal_keep_size); with --create-slot it is dropped and created again at \
                 the next connection"
            )),
        };
    }
    SessionError::fatal(error.error.context(format!(
        "{command} on {host}: the slot no longer keeps WAL (invalidated by \
         max_slot_wal_keep_size: wal_status 'lost' in pg_replication_slots). Drop it (SELECT \
         pg_drop_replication_slot('{slot}')) and start again with --create-slot: what the \
         archive lacks is then reported as lost"
    )))
}

/// [`ensure_slot`], then, from PostgreSQL 16 on, a slot the server invalidated (past
/// `max_slot_wal_keep_size`) is found by asking `pg_replication_slots` over SQL, since the
/// replication protocol does not tell: it keeps no WAL, and unlike PostgreSQL 13 to 15, 16
/// and 17 do not make it keep any again when a client streams from it (18 refuses it). It is
/// asked at every session until a clear answer, and again whenever the slot reports no
/// position (a slot streamed from reports one again). With `create`, it is dropped and
/// created anew; without, 16 and 17 stream on with an error logged, and 18 refuses the
/// stream with what to do. When SQL cannot ask (a role or pg_hba.conf for replication only),
/// a warning says so once, and with `create` the slot is replaced once the server refuses to
/// stream what it should have kept ([`SlotWatch::replace_on`]).
async fn ensure_usable_slot(
    conn: &mut Connection,
    request: SlotRequest<'_>,
    watch: &mut SlotWatch,
) -> Result<SlotFound, SessionError> {
    let SlotRequest {
        params,
        name: slot,
        create,
        system_id,
    } = request;
    let found = ensure_slot(conn, slot, create).await?;
    let host = conn.host().clone();
    if create && !found.created && watch.replace_on.as_ref() == Some(&host) {
        watch.replace_on = None;
        return replace(conn, slot, &host, watch).await;
    }
    let major = conn.server_major_version().unwrap_or(0);
    if found.created || major < 16 || (watch.checked && found.restart.is_some()) {
        return Ok(found);
    }
    let seen = Seen {
        system_id,
        restart: found.restart,
        major,
    };
    match invalidated(params, &host, slot, &seen).await {
        Ok(false) => {
            watch.checked = true;
            // Valid again (replaced by the operator): a later invalidation is said again.
            watch.said_invalidated = false;
            Ok(found)
        }
        Ok(true) if create => replace(conn, slot, &host, watch).await,
        // The server refuses it when streaming starts, and the error says what to do.
        Ok(true) if major >= 18 => Ok(found),
        Ok(true) if watch.said_invalidated => {
            tracing::debug!(slot, %host, "the replication slot is still invalidated");
            Ok(found)
        }
        Ok(true) => {
            watch.checked = true;
            watch.said_invalidated = true;
            tracing::error!(
                slot,
                %host,
                "the replication slot was invalidated (by max_slot_wal_keep_size): it keeps no \
                 WAL, and streaming from it does not change that on PostgreSQL 16 and 17, so the \
                 server may remove WAL before it is archived; streaming on. Drop it (SELECT \
                 pg_drop_replication_slot('{slot}')) and start again with --create-slot, or pass \
                 --create-slot and walhalla does so"
            );
            Ok(found)
        }
        Err(why) if !watch.warned => {
            watch.warned = true;
            tracing::warn!(
                slot,
                %host,
                "could not ask pg_replication_slots whether the slot was invalidated, which from \
                 PostgreSQL 16 on only SQL tells ({why}); asked again at the next connection"
            );
            Ok(found)
        }
        Err(why) => {
            tracing::debug!(slot, %host, "could not ask pg_replication_slots: {why}");
            Ok(found)
        }
    }
}

/// Drops slot `slot`, invalidated, and creates it again.
async fn replace(
    conn: &mut Connection,
    slot: &str,
    host: &HostAddr,
    watch: &mut SlotWatch,
) -> Result<SlotFound, SessionError> {
    conn.simple_query(&format!("DROP_REPLICATION_SLOT \"{slot}\""))
        .await
        .map_err(from_conn)?;
    tracing::warn!(
        slot,
        %host,
        "the replication slot was invalidated (by max_slot_wal_keep_size) and kept no WAL, \
         which streaming from it does not change from PostgreSQL 16 on: dropped and created \
         again; WAL the server removed meanwhile and the archive lacks is reported as lost"
    );
    let again = ensure_slot(conn, slot, true).await?;
    watch.checked = true;
    Ok(SlotFound {
        created: false,
        ..again
    })
}

/// What the replication connection said: the server's cluster, the slot's position, the
/// server's major version.
struct Seen {
    system_id: SystemId,
    restart: Option<Lsn>,
    major: u32,
}

/// Whether slot `slot` on `host` was invalidated, over an ordinary SQL connection to that
/// host; `Err` says why there is no clear answer: SQL could not ask, another server answered
/// (the host name resolved elsewhere: another cluster, or the slot elsewhere), or on 16 the
/// slot is held by a process, which makes an invalidated slot read `unreserved`.
async fn invalidated(
    params: &ConnParams,
    host: &HostAddr,
    slot: &str,
    seen: &Seen,
) -> Result<bool, String> {
    // 17 names the reason; on 16 `lost` is the sign, unless a process holds the slot.
    let invalidated = if seen.major >= 17 {
        "s.invalidation_reason IS NOT NULL"
    } else {
        "s.wal_status = 'lost'"
    };
    let query = format!(
        "SELECT {invalidated}, s.active_pid IS NOT NULL, s.restart_lsn::text, \
         c.system_identifier::text FROM pg_control_system() c \
         JOIN pg_replication_slots s ON s.slot_name = $1"
    );
    let asking = async {
        let client = sql::connect_to_host(params, host).await?;
        let row = client.query_opt(&query, &[&slot]).await?;
        anyhow::Ok(row.map(|row| {
            let state: (Option<bool>, bool, Option<String>, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            state
        }))
    };
    let answer = match tokio::time::timeout(SQL_TIMEOUT, asking).await {
        Ok(answer) => answer.map_err(|e| format!("{e:#}"))?,
        Err(_) => return Err(format!("no answer within {} s", SQL_TIMEOUT.as_secs())),
    };
    let Some((invalidated, held, restart, system_id)) = answer else {
        return Err("the slot is not in pg_replication_slots there".into());
    };
    let restart: Option<Lsn> = restart.and_then(|lsn| lsn.parse().ok());
    if system_id.parse::<SystemId>().ok() != Some(seen.system_id) || restart != seen.restart {
        return Err(format!(
            "another server answered over SQL (system {system_id}, slot at {}), not the one \
             streaming (system {}, slot at {})",
            restart.map_or("none".into(), |l| l.to_string()),
            seen.system_id,
            seen.restart.map_or("none".into(), |l| l.to_string())
        ));
    }
    if held && seen.major < 17 {
        return Err("a process holds the slot, so its wal_status does not tell".into());
    }
    Ok(invalidated.unwrap_or(false))
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
