//! The end-to-end test: switch to a new WAL segment on the primary and wait for the switched
//! one to arrive in the archive, through archive_command or a receiver's slot. When it does
//! not, say why as precisely as the server's statistics allow.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::commands::HookCommand;
use super::server::{ArchiverStats, SlotFacts};
use super::{Check, CheckOptions};
use crate::archive::ClusterArchive;
use crate::wal::WalFileName;

/// How often the archive is asked for the segment.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The check `round_trip`: `pg_switch_wal()`, then the switched segment in `cluster` within
/// `options.wait`.
/// `archive_hook` is what the server's archive_command runs, for naming the archive it
/// stores into.
pub async fn run(
    client: &Client,
    cluster: &ClusterArchive,
    options: &CheckOptions,
    archive_hook: &HookCommand,
) -> Check {
    let switched = match tokio::time::timeout(options.timeout, switch(client)).await {
        Ok(Ok(name)) => name,
        Err(_) => {
            return Check::fail(
                "round_trip",
                format!(
                    "pg_switch_wal() did not return within {} s",
                    options.timeout.as_secs()
                ),
                "see the server log",
            );
        }
        Ok(Err(e)) => {
            return Check::fail(
                "round_trip",
                format!("pg_switch_wal() failed: {e:#}"),
                "see the server log",
            );
        }
    };
    let WalFileName::Segment(segment) = switched else {
        return Check::fail(
            "round_trip",
            format!("pg_walfile_name() gave {switched}, not a segment's name"),
            "a bug in walhalla or an unsupported server: report it",
        );
    };
    let started = Instant::now();
    let deadline = started + options.wait;
    loop {
        match cluster.get_verified(&switched).await {
            Ok(Some(_)) => {
                return Check::pass(
                    "round_trip",
                    format!(
                        "switched segment {segment} was in the archive after {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => {
                return Check::fail(
                    "round_trip",
                    format!("reading {segment} back from the archive failed: {e}"),
                    "run walhalla verify; check the archive's health",
                );
            }
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let waited = options.wait.as_secs();
    let detail = format!(
        "switched segment {segment} was not in {} after {waited} s",
        cluster.location()
    );
    let segment = segment.to_string();
    let diagnosing = diagnose(client, &segment, cluster, options, archive_hook);
    let hint = tokio::time::timeout(options.timeout, diagnosing)
        .await
        .unwrap_or_else(|_| "the server did not say why in time: see its log".to_owned());
    Check::fail("round_trip", detail, hint)
}

/// Makes sure the current segment holds WAL (a transaction id's commit record), so the switch
/// is a real one, then switches; the switched segment's name.
async fn switch(client: &Client) -> anyhow::Result<WalFileName> {
    client.query_one("SELECT pg_current_xact_id()", &[]).await?;
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await?;
    let name: String = row.get(0);
    name.parse().map_err(anyhow::Error::msg)
}

/// Why the segment did not arrive, from what the server says.
async fn diagnose(
    client: &Client,
    segment: &str,
    cluster: &ClusterArchive,
    options: &CheckOptions,
    named: &HookCommand,
) -> String {
    let checked = cluster.location();
    if let Some(slot) = &options.slot {
        return match SlotFacts::read(client, slot).await {
            Ok(Some(facts)) if facts.active => format!(
                "a client ({}) streams from slot {slot} (flushed up to {}) but the segment did not reach {checked}: is that receiver's --archive this one, and its log free of upload errors?",
                facts.client.as_deref().unwrap_or("unnamed"),
                facts.flush_lsn.as_deref().unwrap_or("nothing yet"),
            ),
            Ok(Some(_)) => format!(
                "nothing streams from slot {slot}: start walhalla --archive {checked} receive -S {slot} (if one runs, its log says why it does not stream)"
            ),
            Ok(None) => format!("there is no slot {slot}"),
            Err(e) => format!("could not read slot {slot}: {e:#}"),
        };
    }
    let stats = match ArchiverStats::read(client).await {
        Ok(stats) => stats,
        Err(e) => return format!("could not read pg_stat_archiver: {e:#}"),
    };
    let elsewhere = match (named.names_another_archive(checked), &named.archive) {
        (Some(true), Some(url)) => format!(" (its --archive is {url}, not {checked})"),
        _ => String::new(),
    };
    // Names of one timeline sort by position.
    let archived = stats
        .last_archived_wal
        .as_deref()
        .is_some_and(|last| last.len() >= 24 && &last[..24] >= segment);
    if archived {
        return format!(
            "PostgreSQL's archiver reports {segment} archived, but {checked} does not hold it: archive_command stores into another archive{elsewhere}"
        );
    }
    if stats.last_failed_wal.as_deref() == Some(segment) {
        return format!(
            "archive_command failed on {segment} ({} failures in all): see the server log",
            stats.failed_count
        );
    }
    format!(
        "the archiver has not archived it (last archived: {}): check archive_mode, archive_command and the server log, or wait longer (--wait)",
        stats.last_archived_wal.as_deref().unwrap_or("nothing")
    )
}
