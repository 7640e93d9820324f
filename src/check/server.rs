//! What the server says about itself over SQL: identity, role, the settings that decide
//! whether its WAL reaches the archive, the archiver's statistics and a replication slot.

use anyhow::Context;
use tokio_postgres::Client;

use super::commands::HookCommand;
use crate::wal::SystemId;

/// The server's identity and archiving settings.
#[derive(Debug)]
pub struct ServerFacts {
    /// `pg_control_system().system_identifier`.
    pub system_id: SystemId,
    /// `server_version` as the server spells it.
    pub version: String,
    /// `pg_is_in_recovery()`: a standby (or an instance being restored).
    pub in_recovery: bool,
    /// `wal_level`.
    pub wal_level: String,
    /// `archive_mode`.
    pub archive_mode: String,
    /// `archive_command`.
    pub archive_command: String,
    /// `restore_command`.
    pub restore_command: String,
    /// What `archive_command` runs.
    pub archive_hook: HookCommand,
    /// What `restore_command` runs.
    pub restore_hook: HookCommand,
    /// Whether the connected role may run `pg_switch_wal()`.
    pub may_switch_wal: bool,
    /// The connected role.
    pub user: String,
    /// The database connected to (a function's privileges are granted per database).
    pub database: String,
    /// Whether this connection is encrypted (`pg_stat_ssl`).
    pub ssl: bool,
}

/// `pg_stat_archiver`, as text.
#[derive(Debug, Default)]
pub struct ArchiverStats {
    /// The last file archive_command archived successfully.
    pub last_archived_wal: Option<String>,
    /// The last file archive_command failed on.
    pub last_failed_wal: Option<String>,
    /// When it failed, as the server prints it.
    pub last_failed_time: Option<String>,
    /// Failures since the statistics were reset.
    pub failed_count: i64,
    /// Whether the last attempt failed (the last failure is newer than the last success).
    pub failing: bool,
}

/// A replication slot and the walsender streaming from it.
#[derive(Debug)]
pub struct SlotFacts {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// Whether a walsender streams from it now.
    pub active: bool,
    /// The application_name of the client streaming from it.
    pub client: Option<String>,
    /// `pg_replication_slots.wal_status`: `reserved` or `extended` while it keeps its WAL,
    /// `unreserved` when the next checkpoint may remove some (past `max_slot_wal_keep_size`),
    /// `lost` once invalidated (also when PostgreSQL 17's `invalidation_reason` says so, since
    /// an invalidated slot a client streams from reads `unreserved`); none for a slot that
    /// never reserved WAL.
    pub wal_status: Option<String>,
    /// WAL bytes between the server's position and what the slot keeps.
    pub lag_bytes: Option<i64>,
    /// `pg_stat_replication.flush_lag` in seconds (none when the client is idle).
    pub lag_seconds: Option<f64>,
    /// What the client has reported as flushed.
    pub flush_lsn: Option<String>,
}

impl ServerFacts {
    /// Asks the server.
    pub async fn read(client: &Client) -> anyhow::Result<ServerFacts> {
        let row = client
            .query_one(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
                 current_setting('server_version'), pg_is_in_recovery(), \
                 current_setting('wal_level'), current_setting('archive_mode'), \
                 current_setting('archive_command'), current_setting('restore_command'), \
                 has_function_privilege('pg_switch_wal()', 'EXECUTE'), current_user::text, \
                 coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
                 current_database()::text",
                &[],
            )
            .await
            .context("read the server's settings")?;
        let system_id: String = row.get(0);
        let (archive_command, restore_command): (String, String) = (row.get(5), row.get(6));
        Ok(ServerFacts {
            system_id: system_id.parse().map_err(anyhow::Error::msg)?,
            version: row.get(1),
            in_recovery: row.get(2),
            wal_level: row.get(3),
            archive_mode: row.get(4),
            archive_hook: HookCommand::parse(&archive_command),
            restore_hook: HookCommand::parse(&restore_command),
            archive_command,
            restore_command,
            may_switch_wal: row.get(7),
            user: row.get(8),
            ssl: row.get(9),
            database: row.get(10),
        })
    }
}

impl ArchiverStats {
    /// Reads `pg_stat_archiver`.
    pub async fn read(client: &Client) -> anyhow::Result<ArchiverStats> {
        let row = client
            .query_one(
                "SELECT last_archived_wal, last_failed_wal, last_failed_time::text, failed_count, \
                 coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
                 FROM pg_stat_archiver",
                &[],
            )
            .await
            .context("read pg_stat_archiver")?;
        Ok(ArchiverStats {
            last_archived_wal: row.get(0),
            last_failed_wal: row.get(1),
            last_failed_time: row.get(2),
            failed_count: row.get(3),
            failing: row.get(4),
        })
    }
}

impl SlotFacts {
    /// Reads slot `name`; `None` when there is no such slot.
    pub async fn read(client: &Client, name: &str) -> anyhow::Result<Option<SlotFacts>> {
        let row = client
            .query_opt(
                "SELECT s.slot_type, s.active, r.application_name, \
                 CASE WHEN to_jsonb(s) ->> 'invalidation_reason' IS NOT NULL THEN 'lost' \
                 ELSE s.wal_status END, \
                 ((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                   ELSE pg_current_wal_lsn() END) - s.restart_lsn)::bigint, \
                 extract(epoch FROM r.flush_lag)::float8, r.flush_lsn::text \
                 FROM pg_replication_slots s \
                 LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = $1",
                &[&name],
            )
            .await
            .with_context(|| format!("read replication slot {name:?}"))?;
        Ok(row.map(|row| SlotFacts {
            slot_type: row.get(0),
            active: row.get(1),
            client: row.get(2),
            wal_status: row.get(3),
            lag_bytes: row.get(4),
            lag_seconds: row.get(5),
            flush_lsn: row.get(6),
        }))
    }
}
