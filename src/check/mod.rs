//! `walhalla check`: is this cluster really protected? Connects to the server over SQL, reads
//! the settings that decide whether its WAL reaches the archive (or the receiver's slot),
//! probes the archive, and makes a segment travel: `pg_switch_wal()` on the primary, then the
//! switched segment in the archive within a deadline. Every check ends with a verdict and,
//! when it did not pass, a hint.
//!
//! The SQL connection is [`crate::protocol::sql`]'s.
//! - [`server`]: what the server says about itself.
//! - [`settings`]: verdicts on its settings, pure; [`commands`] reads archive_command and
//!   restore_command.
//! - [`probe`]: the archive reachable, writable, create-only; the fetch server answering.
//! - [`round_trip`]: the switched segment's journey.

mod commands;
mod probe;
mod round_trip;
mod server;
mod settings;

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::archive::{Archive, ArchiveOptions, Location};
use crate::protocol::conninfo::ConnParams;
use crate::protocol::sql;
use crate::wal::SystemId;
use server::{ArchiverStats, ServerFacts, SlotFacts};

/// What to check.
#[derive(Debug)]
pub struct CheckOptions {
    /// How to reach the server.
    pub conn: ConnParams,
    /// The receiver's slot, when a receiver (not archive_command) archives the WAL.
    pub slot: Option<String>,
    /// How long the switched segment may take to reach the archive.
    pub wait: Duration,
    /// The archive to check; when none is configured, the one archive_command names.
    pub archive: Option<Location>,
    /// The configured cluster, which must be the server's.
    pub system_id: Option<SystemId>,
    /// Deadline of each archive operation, and of connecting and reading the settings.
    pub timeout: Duration,
    /// How new objects are stored (the scratch object of the create-only check).
    pub store: crate::archive::StoreOptions,
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It holds.
    Pass,
    /// It does not: the cluster is not protected as it should be.
    Fail,
    /// It does not apply here, or could not run because of an earlier failure.
    Skip,
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// A stable name (`wal_level`, `round_trip`, ...).
    pub name: &'static str,
    /// How it ended.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it, when it did not pass.
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    fn skip(name: &'static str, why: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Skip,
            detail: why.into(),
            hint: None,
        }
    }
}

/// The server that answered.
#[derive(Debug, Serialize)]
pub struct ServerSummary {
    /// The host (or socket) reached.
    pub host: String,
    /// `server_version`.
    pub version: String,
    /// The cluster's system identifier, in decimal.
    pub system_id: String,
    /// `primary` or `standby`.
    pub role: &'static str,
}

/// Everything `check` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether every check passed or was skipped.
    pub ok: bool,
    /// The server, when it could be reached.
    pub server: Option<ServerSummary>,
    /// The archive checked, when there was one.
    pub archive: Option<String>,
    /// Where that archive was named: `configured` (--archive, WALHALLA_ARCHIVE, the config
    /// file) or `archive_command` or `restore_command` (their --archive).
    pub archive_source: Option<&'static str>,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

/// Runs every check.
pub async fn run(options: &CheckOptions) -> Report {
    let mut checks = Vec::new();
    let connected = tokio::time::timeout(options.timeout, connect(options)).await;
    let connected = match connected {
        Ok(Ok(connected)) => Some(connected),
        Ok(Err(e)) => {
            checks.push(Check::fail(
                "connection",
                format!("{e:#}"),
                "check -d (libpq's conninfo), pg_hba.conf and the password (PGPASSWORD, ~/.pgpass)",
            ));
            None
        }
        Err(_) => {
            checks.push(Check::fail(
                "connection",
                format!("no answer within {} s", options.timeout.as_secs()),
                "check that the server runs and this host reaches it",
            ));
            None
        }
    };
    let server = connected.as_ref().map(|(host, _, facts)| ServerSummary {
        host: host.clone(),
        version: facts.version.clone(),
        system_id: facts.system_id.to_string(),
        role: if facts.in_recovery {
            "standby"
        } else {
            "primary"
        },
    });
    let (location, archive_source) = match (&options.archive, &connected) {
        (Some(location), _) => (Some(location.clone()), Some("configured")),
        (None, Some((_, _, facts))) => named_archive(facts),
        (None, None) => (None, None),
    };
    if let Some((host, client, facts)) = &connected {
        let reading = server_checks(client, facts, options, location.as_ref());
        match tokio::time::timeout(options.timeout, reading).await {
            Ok(found) => {
                let tls = if facts.ssl { "over TLS" } else { "without TLS" };
                checks.push(Check::pass(
                    "connection",
                    format!(
                        "{host} {tls}: PostgreSQL {}, cluster {}",
                        facts.version, facts.system_id
                    ),
                ));
                checks.extend(found);
                // Not under the deadline of the SQL answers: the fetch server has its own.
                checks.extend(probe::fetch_server(&facts.restore_hook, options.timeout).await);
            }
            Err(_) => checks.push(Check::fail(
                "connection",
                format!(
                    "{host} did not answer about its settings within {} s",
                    options.timeout.as_secs()
                ),
                "see the server log; a longer --timeout",
            )),
        }
    }
    let archive = match &location {
        Some(location) => {
            let system_id = connected.as_ref().map(|(_, _, facts)| facts.system_id);
            let (found, archive) = archive_checks(location, options, system_id).await;
            checks.extend(found);
            archive
        }
        None if connected.is_none() => {
            checks.push(Check::skip(
                "archive_reachable",
                "no archive configured, and archive_command, which may name one, is unknown: the server could not be reached",
            ));
            None
        }
        // A standby fed by a fetch server alone (as the README shows one): the server is what
        // it reads, and the fetch_server check covers it.
        None if connected.as_ref().is_some_and(|(_, _, facts)| {
            let restore = &facts.restore_hook;
            facts.in_recovery
                && restore.runs_walhalla
                && restore.subcommand.as_deref() == Some("fetch")
                && restore.fetch_server.server.is_some()
                // A walhalla push whose archive could not be told still needs one.
                && !facts.archive_hook.runs_walhalla
        }) =>
        {
            checks.push(Check::skip(
                "archive_reachable",
                "no archive configured: this standby's restore_command reads a fetch server \
                 (see fetch_server); pass --archive URL to check the archive behind it too",
            ));
            None
        }
        None => {
            checks.push(Check::fail(
                "archive_reachable",
                "no archive configured, and neither archive_command nor restore_command names one",
                "pass --archive URL (or WALHALLA_ARCHIVE)",
            ));
            None
        }
    };
    if let Some((_, client, facts)) = &connected {
        checks.extend(round_trip(client, facts, archive.as_ref(), options).await);
    } else {
        checks.push(Check::skip("round_trip", "no connection to the server"));
    }
    Report {
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        server,
        archive: location.map(|l| l.to_string()),
        archive_source,
        checks,
    }
}

/// The archive archive_command (else restore_command) names, and which.
fn named_archive(facts: &ServerFacts) -> (Option<Location>, Option<&'static str>) {
    [
        (&facts.archive_hook, "archive_command"),
        (&facts.restore_hook, "restore_command"),
    ]
    .into_iter()
    .find_map(|(hook, source)| {
        let location = hook.archive.as_deref()?.parse().ok()?;
        Some((Some(location), Some(source)))
    })
    .unwrap_or((None, None))
}

/// The host reached, the client and the server's facts.
type Connected = (String, Client, ServerFacts);

async fn connect(options: &CheckOptions) -> anyhow::Result<Connected> {
    let connection = sql::connect(&options.conn).await?;
    let mut facts = ServerFacts::read(&connection.client).await?;
    for hook in [&mut facts.archive_hook, &mut facts.restore_hook] {
        hook.read_config_file().await;
    }
    Ok((connection.host.to_string(), connection.client, facts))
}

/// The checks of the server's settings, the archiver and the slot.
async fn server_checks(
    client: &Client,
    facts: &ServerFacts,
    options: &CheckOptions,
    location: Option<&Location>,
) -> Vec<Check> {
    let mut checks = vec![settings::wal_level(facts)];
    if let Some(wanted) = options.system_id.filter(|id| *id != facts.system_id) {
        checks.push(Check::fail(
            "system_id",
            format!("the server is cluster {}, not {wanted}", facts.system_id),
            "--system-id (or the config file) names another cluster: fix it or -d",
        ));
    }
    match &options.slot {
        Some(slot) => {
            let why = format!("walhalla receive on slot {slot:?} archives the WAL (-S)");
            checks.push(Check::skip("archive_mode", why.clone()));
            checks.push(Check::skip("archive_command", why));
            checks.extend(match SlotFacts::read(client, slot).await {
                Ok(found) => settings::slot(slot, found.as_ref()),
                Err(e) => vec![Check::fail("slot", format!("{e:#}"), "see the server log")],
            });
        }
        None => {
            checks.extend(settings::archiving(facts, location));
            if !facts.in_recovery || facts.archive_mode == "always" {
                checks.push(archiver(client, facts).await);
            }
        }
    }
    checks.push(settings::restore_command(facts, location));
    checks
}

/// The check `archiver` where archive_command would run (a primary, or archive_mode =
/// always): pg_stat_archiver, unless nothing archives and its figures are of earlier runs.
async fn archiver(client: &Client, facts: &ServerFacts) -> Check {
    if !archives_at_all(facts) {
        return Check::skip(
            "archiver",
            "nothing archives (above): pg_stat_archiver can only tell of earlier runs",
        );
    }
    match ArchiverStats::read(client).await {
        Ok(stats) => settings::archiver(&stats),
        Err(e) => Check::fail("archiver", format!("{e:#}"), "see the server log"),
    }
}

/// The archive's checks; the archive when it can be listed.
async fn archive_checks(
    location: &Location,
    options: &CheckOptions,
    system_id: Option<SystemId>,
) -> (Vec<Check>, Option<Archive>) {
    if let Location::Local(dir) = location
        && let Some((_, owner)) = crate::osuser::owner_if_root(dir)
    {
        tracing::warn!(
            "checking as root an archive that belongs to {owner}: the archive checks tell what \
             root may do there, not what PostgreSQL's user, who runs archive_command and \
             restore_command, may; run walhalla check as that user (e.g. runuser -u postgres \
             -- walhalla check …)"
        );
    }
    let archive_options = ArchiveOptions {
        timeout: options.timeout,
        deadline: None,
        create: false,
        store: options.store.clone(),
    };
    let opening = {
        let location = location.clone();
        crate::blocking::run(move || Archive::open(&location, &archive_options))
    };
    let archive = match tokio::time::timeout(options.timeout, opening).await {
        Ok(Ok(archive)) => archive,
        Ok(Err(e)) => {
            let hint = "check the archive URL; a directory must exist: push, receive and backup create it when they first run (run check again after a WAL switch), or create it owned by the user PostgreSQL runs as";
            return (
                vec![Check::fail("archive_reachable", e.to_string(), hint)],
                None,
            );
        }
        Err(_) => {
            let detail = format!(
                "opening {location} took more than {} s",
                options.timeout.as_secs()
            );
            let hint = "check the mount or the endpoint";
            return (vec![Check::fail("archive_reachable", detail, hint)], None);
        }
    };
    let (reachable, listed) = probe::reachable(&archive, system_id).await;
    if !listed {
        return (vec![reachable], None);
    }
    let mut checks = vec![reachable];
    checks.extend(probe::create_only(&archive).await);
    (checks, Some(archive))
}

/// The checks `switch_privilege` and `round_trip`.
async fn round_trip(
    client: &Client,
    facts: &ServerFacts,
    archive: Option<&Archive>,
    options: &CheckOptions,
) -> Vec<Check> {
    if facts.in_recovery {
        return vec![Check::skip(
            "round_trip",
            "the server is a standby (pg_is_in_recovery()): only the primary can switch WAL; run check against the primary",
        )];
    }
    if !facts.may_switch_wal {
        return vec![
            Check::fail(
                "switch_privilege",
                format!(
                    "role {} may not run pg_switch_wal() in database {}",
                    facts.user, facts.database
                ),
                format!(
                    "in database {} (privileges on functions are per database): GRANT EXECUTE ON \
                     FUNCTION pg_switch_wal() TO \"{}\"; (or connect as a superuser)",
                    facts.database, facts.user
                ),
            ),
            Check::skip("round_trip", "needs pg_switch_wal()"),
        ];
    }
    let privilege = Check::pass(
        "switch_privilege",
        format!("role {} may run pg_switch_wal()", facts.user),
    );
    let Some(archive) = archive else {
        return vec![
            privilege,
            Check::skip("round_trip", "the archive cannot be read"),
        ];
    };
    if let Some((why, hint)) = nothing_archives(client, facts, options).await {
        // Waiting out --wait would only confirm it.
        let trip = Check::fail("round_trip", format!("not attempted: {why}"), hint);
        return vec![privilege, trip];
    }
    let cluster = archive.cluster(facts.system_id);
    let trip = round_trip::run(client, &cluster, options, &facts.archive_hook).await;
    vec![privilege, trip]
}

/// Why no switched segment can reach the archive, when none can (what was found, and what to
/// do): nothing runs archive_command, or the slot of `-S` cannot carry WAL to a receiver.
async fn nothing_archives(
    client: &Client,
    facts: &ServerFacts,
    options: &CheckOptions,
) -> Option<(String, String)> {
    let Some(slot) = &options.slot else {
        return (!archives_at_all(facts)).then(|| {
            (
                "nothing archives this server's WAL".to_owned(),
                "fix archive_mode and archive_command (above), or stream with walhalla receive and check with -S SLOT".to_owned(),
            )
        });
    };
    // A slot that cannot be read fails the check `slot`; the segment may arrive all the same.
    let reading = SlotFacts::read(client, slot);
    let found = tokio::time::timeout(options.timeout, reading)
        .await
        .ok()?
        .ok()?;
    settings::usable_slot(slot, found.as_ref()).err()
}

/// Whether the server runs archive_command at all: archive_mode has it archive (`on` on a
/// primary, `always`) and the command is set.
fn archives_at_all(facts: &ServerFacts) -> bool {
    let mode_archives = match facts.archive_mode.as_str() {
        "always" => true,
        "on" => !facts.in_recovery,
        _ => false,
    };
    mode_archives && !facts.archive_command.trim().is_empty()
}

/// The report as a table for a person: one line per check, its hint below it.
pub fn describe(report: &Report) -> String {
    let mut out = String::new();
    if let Some(server) = &report.server {
        let _ = writeln!(
            out,
            "server   {} ({}, PostgreSQL {}, cluster {})",
            server.host, server.role, server.version, server.system_id
        );
    }
    let _ = match (&report.archive, report.archive_source) {
        (Some(archive), Some("configured") | None) => writeln!(out, "archive  {archive}\n"),
        (Some(archive), Some(source)) => writeln!(out, "archive  {archive} (named by {source})\n"),
        (None, _) => writeln!(out, "archive  none\n"),
    };
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for check in &report.checks {
        let verdict = match check.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        let _ = writeln!(out, "{:width$}  {verdict}  {}", check.name, check.detail);
        if let Some(hint) = &check.hint {
            let _ = writeln!(out, "{:width$}        hint: {hint}", "");
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    let _ = match failed {
        0 => writeln!(out, "\nevery check passed"),
        n => writeln!(out, "\n{n} of {} checks failed", report.checks.len()),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_verdict_and_hint() {
        let report = Report {
            ok: false,
            server: None,
            archive: Some("/srv/wh".into()),
            archive_source: Some("archive_command"),
            checks: vec![
                Check::pass("wal_level", "replica"),
                Check::fail("archive_mode", "off", "set archive_mode = on"),
                Check::skip("round_trip", "a standby"),
            ],
        };
        let text = describe(&report);
        assert!(
            text.starts_with("archive  /srv/wh (named by archive_command)\n"),
            "{text}"
        );
        assert!(text.contains("wal_level     PASS  replica"), "{text}");
        assert!(text.contains("archive_mode  FAIL  off\n"), "{text}");
        assert!(text.contains("hint: set archive_mode = on"), "{text}");
        assert!(text.contains("round_trip    skip  a standby"), "{text}");
        assert!(text.ends_with("1 of 3 checks failed\n"), "{text}");
    }
}
