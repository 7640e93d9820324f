//! `GET /status`: the daemon's state as JSON, one section per part that runs here
//! (`receiver`, `server`, `archive`), and [`describe_status`], the same for a person
//! (`walhalla status`). Positions are in PostgreSQL's `X/X` notation, times in Unix seconds.
//! The README documents the shape field by field.

use std::time::Duration;

use serde::Serialize;

use crate::archive::HealthReport;
use crate::daemon::Shared;
use crate::metrics::{ArchiveGap, Coverage, FetchSnapshot, Snapshot};
use crate::progress::bytes;
use crate::wal::Lsn;

/// How long `/status` waits for the archive's listing: an archive that does not answer
/// must not keep the answer from saying so.
const LISTING_TIMEOUT: Duration = Duration::from_secs(3);

/// What `GET /status` answers.
#[derive(Debug, Serialize)]
pub(super) struct Status {
    version: &'static str,
    /// The cluster served, once known.
    system_id: Option<String>,
    /// Failures by kind since the start.
    #[serde(serialize_with = "crate::metrics::as_object")]
    errors: Vec<(&'static str, u64)>,
    /// Present where a receiver runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    receiver: Option<ReceiverStatus>,
    /// Present where a fetch server runs (always, when asked over HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ServerStatus>,
    /// Present where the daemon has an archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<ArchiveStatus>,
}

/// The receiver's section.
#[derive(Debug, Serialize)]
struct ReceiverStatus {
    upstream_host: Option<String>,
    slot: Option<String>,
    mode: &'static str,
    connected: bool,
    timeline: u32,
    spool: Option<String>,
    server_wal_end_lsn: String,
    received_lsn: String,
    flushed_lsn: String,
    archived_lsn: String,
    replication_lag_bytes: u64,
    replication_lag_seconds: f64,
    unarchived_bytes: u64,
    upload_queue_segments: u64,
    oldest_unarchived_age_seconds: f64,
    spool_bytes: u64,
    received_bytes: u64,
    archived_bytes: u64,
    archived_segments: u64,
    last_archived_segment: Option<String>,
    last_archived_at: Option<f64>,
    reconnects: u64,
    /// Why the last session ended or failed to start, and when: kept while streaming again.
    last_disconnect_reason: Option<String>,
    last_disconnect_at: Option<f64>,
    gaps: Vec<ArchiveGap>,
}

/// The fetch server's section.
#[derive(Debug, Serialize)]
struct ServerStatus {
    listen: String,
    tls: bool,
    fetch: FetchSnapshot,
}

/// The archive's section.
#[derive(Debug, Serialize)]
struct ArchiveStatus {
    location: String,
    writes: HealthReport,
    reads: HealthReport,
    newest_segment: Option<String>,
    newest_segment_stored_at: Option<f64>,
    newest_segments: Vec<String>,
    listing_error: Option<String>,
    survey: Option<Coverage>,
}

/// The status now; lists the served cluster's newest segments.
pub(super) async fn report(shared: &Shared) -> Status {
    let served = shared.served();
    let (newest, listing_error) = match served {
        Some(cluster) => {
            let listing = cluster.archive.newest_segments_with_info();
            match tokio::time::timeout(LISTING_TIMEOUT, listing).await {
                Ok(Ok(newest)) => (newest, None),
                Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                Err(_) => (
                    Vec::new(),
                    Some(format!(
                        "the archive did not list within {} s",
                        LISTING_TIMEOUT.as_secs()
                    )),
                ),
            }
        }
        None => (Vec::new(), None),
    };
    // After the listing, which may take seconds: the answer says how things are now.
    let snapshot = shared.snapshot();
    let archive = shared.archive().map(|archive| ArchiveStatus {
        location: archive.location().to_string(),
        writes: snapshot.archive_writes.clone(),
        reads: snapshot.archive_reads.clone(),
        newest_segment: newest.last().map(|(s, _)| s.to_string()),
        newest_segment_stored_at: newest
            .last()
            .and_then(|(_, info)| info.modified)
            .map(|t| t.as_millisecond() as f64 / 1000.0),
        newest_segments: newest.iter().map(|(s, _)| s.to_string()).collect(),
        listing_error,
        survey: snapshot.coverage.clone(),
    });
    let receiver = snapshot.receiver.as_ref().map(|settings| ReceiverStatus {
        upstream_host: snapshot.upstream_host.clone(),
        slot: settings.slot.clone(),
        mode: settings.mode,
        connected: snapshot.connected,
        timeline: snapshot.timeline,
        spool: served.and_then(|c| c.spool.as_ref().map(|p| p.display().to_string())),
        server_wal_end_lsn: Lsn(snapshot.server_end_lsn).to_string(),
        received_lsn: Lsn(snapshot.received_lsn).to_string(),
        flushed_lsn: Lsn(snapshot.flushed_lsn).to_string(),
        archived_lsn: Lsn(snapshot.archived_lsn).to_string(),
        replication_lag_bytes: snapshot.replication_lag_bytes,
        replication_lag_seconds: snapshot.replication_lag_seconds,
        unarchived_bytes: snapshot.received_lsn.saturating_sub(snapshot.archived_lsn),
        upload_queue_segments: snapshot.upload_queue_segments,
        oldest_unarchived_age_seconds: snapshot.oldest_unarchived_age_seconds,
        spool_bytes: snapshot.spool_bytes,
        received_bytes: snapshot.received_bytes,
        archived_bytes: snapshot.archived_bytes,
        archived_segments: snapshot.archived_segments,
        last_archived_segment: snapshot.last_archived.as_ref().map(|(s, _)| s.clone()),
        last_archived_at: snapshot.last_archived.as_ref().map(|(_, at)| *at),
        reconnects: snapshot.reconnects,
        last_disconnect_reason: snapshot
            .last_disconnect
            .as_ref()
            .map(|(why, _)| why.clone()),
        last_disconnect_at: snapshot.last_disconnect.as_ref().map(|(_, at)| *at),
        gaps: snapshot.archive_gaps.clone(),
    });
    let Snapshot { errors, fetch, .. } = snapshot;
    Status {
        version: env!("CARGO_PKG_VERSION"),
        system_id: served.map(|c| c.archive.system_id().to_string()),
        errors,
        receiver,
        server: shared.server().map(|facts| ServerStatus {
            listen: facts.listen.to_string(),
            tls: facts.tls,
            fetch,
        }),
        archive,
    }
}

/// A server's `/status` for a person: a few lines per section.
pub fn describe_status(status: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(format!("{label:<26}{value}").trim_end());
        out.push('\n');
    };
    line("cluster", text(&status["system_id"]));
    line("version", text(&status["version"]));
    let receiver = &status["receiver"];
    if receiver.is_object() {
        line("receiver", String::new());
        describe_receiver(receiver, &mut line);
    }
    let server = &status["server"];
    if server.is_object() {
        line("server", String::new());
        let tls = if server["tls"] == true { " (TLS)" } else { "" };
        line(
            "  listening on",
            format!("{}{tls}", text(&server["listen"])),
        );
        let fetch = &server["fetch"];
        let hits = |source: &str| fetch["hits"][source].as_u64().unwrap_or(0);
        line(
            "  fetch requests",
            format!(
                "{} ({} from the spool, {} from the archive, {} missing)",
                fetch["requests"],
                hits("spool"),
                hits("archive"),
                fetch["misses"]
            ),
        );
    }
    let archive = &status["archive"];
    if archive.is_object() {
        line("archive", text(&archive["location"]));
        describe_archive(archive, &mut line);
    }
    let errors: Vec<String> = status["errors"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let errors = if errors.is_empty() {
        "none".to_string()
    } else {
        errors.join(", ")
    };
    line("errors since start", errors);
    out
}

fn describe_receiver(receiver: &serde_json::Value, line: &mut impl FnMut(&str, String)) {
    let number = |key: &str| receiver[key].as_f64().unwrap_or(0.0);
    let slot = match receiver["slot"].as_str() {
        Some(slot) => format!("slot {slot}"),
        None => "no slot".to_string(),
    };
    let streaming = if receiver["connected"] == true {
        format!("streaming timeline {}", receiver["timeline"])
    } else {
        "not connected".to_string()
    };
    line(
        "  upstream",
        format!("{}, {slot}, {streaming}", text(&receiver["upstream_host"])),
    );
    if let (false, Some(why)) = (
        receiver["connected"] == true,
        receiver["last_disconnect_reason"].as_str(),
    ) {
        line(
            "  why not connected",
            format!("{why}, {}", time(&receiver["last_disconnect_at"])),
        );
    }
    line(
        "  mode",
        format!("{} (flush = in the {})", text(&receiver["mode"]), {
            if receiver["mode"] == "synchronous" {
                "spool"
            } else {
                "archive"
            }
        }),
    );
    line("  spool", text(&receiver["spool"]));
    line(
        "  positions",
        format!(
            "server {}, received {}, flushed {}, archived {}",
            text(&receiver["server_wal_end_lsn"]),
            text(&receiver["received_lsn"]),
            text(&receiver["flushed_lsn"]),
            text(&receiver["archived_lsn"])
        ),
    );
    // Measured against the server's end as last reported: while not connected nothing tells
    // how far the server went since, so a lag of 0 would be a guess.
    let lag = format!(
        "{}, {:.1} s",
        bytes(number("replication_lag_bytes") as u64),
        number("replication_lag_seconds")
    );
    line(
        "  replication lag",
        if receiver["connected"] == true {
            lag
        } else {
            format!("unknown while not connected ({lag} when last connected)")
        },
    );
    line(
        "  not yet archived",
        format!(
            "{}; {} segments queued, the oldest for {:.1} s",
            bytes(number("unarchived_bytes") as u64),
            number("upload_queue_segments"),
            number("oldest_unarchived_age_seconds")
        ),
    );
    let last = match receiver["last_archived_segment"].as_str() {
        Some(segment) => format!("{segment} at {}", time(&receiver["last_archived_at"])),
        None => "none yet".to_string(),
    };
    line("  last archived", last);
    line(
        "  archived",
        format!(
            "{} segments, {}; {} reconnects",
            number("archived_segments"),
            bytes(number("archived_bytes") as u64),
            number("reconnects")
        ),
    );
    for gap in receiver["gaps"].as_array().into_iter().flatten() {
        line(
            "  ARCHIVE GAP (WAL lost)",
            format!(
                "{}..{} ({} segments)",
                text(&gap["first"]),
                text(&gap["last"]),
                gap["segments"]
            ),
        );
    }
}

fn describe_archive(archive: &serde_json::Value, line: &mut impl FnMut(&str, String)) {
    for (label, key) in [("  writes", "writes"), ("  reads", "reads")] {
        line(label, describe_health(&archive[key]));
    }
    let newest = match archive["newest_segment"].as_str() {
        Some(segment) => format!(
            "{segment}, stored {}",
            time(&archive["newest_segment_stored_at"])
        ),
        None => "none".to_string(),
    };
    line("  newest segment", newest);
    if let Some(error) = archive["listing_error"].as_str() {
        line("  listing failed", error.to_string());
    }
    if let Some(survey) = archive["survey"].as_object() {
        // Of the last survey, which a prune or a backup since has not changed yet: the
        // window's line says when it was, or without a window the next line does.
        let window = match (
            survey["window_start"].as_f64(),
            survey["window_end_lsn"].as_str(),
        ) {
            (Some(_), Some(end)) => {
                let from = time(&survey["window_start"]);
                let surveyed = time(&survey["checked_at"]);
                Some(match survey["window_end"].as_f64() {
                    Some(_) => format!(
                        "from {from} to {end}, last commit {}; surveyed {surveyed}",
                        time(&survey["window_end"])
                    ),
                    None => format!("from {from} to {end}; surveyed {surveyed}"),
                })
            }
            _ => None,
        };
        let missing = match window {
            Some(_) => survey["gap_segments"].to_string(),
            None => format!(
                "{} (surveyed {})",
                survey["gap_segments"],
                time(&survey["checked_at"])
            ),
        };
        line(
            "  restorable window",
            window.unwrap_or_else(|| {
                "none at the last survey: no backup could be restored then (walhalla list \
                 reads the archive now)"
                    .to_string()
            }),
        );
        line("  missing segments", missing);
    }
}

/// `ok (last success …)` or `FAILING since … (permanent: …): error`.
fn describe_health(health: &serde_json::Value) -> String {
    let last_success = match health["last_success_at"].as_f64() {
        Some(_) => format!("last success {}", time(&health["last_success_at"])),
        None => "no success yet".to_string(),
    };
    if health["failing"] != true {
        return format!("ok, {last_success}");
    }
    let kind = if health["permanent"] == true {
        "permanent: fix the archive"
    } else {
        "retrying"
    };
    format!(
        "FAILING since {} ({kind}), {last_success}: {}",
        time(&health["failing_since"]),
        text(&health["last_error"])
    )
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Unix seconds as a UTC time to the second, with how long ago.
fn time(value: &serde_json::Value) -> String {
    let Some(at) = value
        .as_f64()
        .and_then(|t| jiff::Timestamp::from_millisecond((t * 1000.0) as i64).ok())
    else {
        return "-".to_string();
    };
    let ago = jiff::Timestamp::now()
        .duration_since(at)
        .as_secs_f64()
        .max(0.0);
    format!("{} ({ago:.0} s ago)", at.strftime("%Y-%m-%d %H:%M:%S UTC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ErrorKind, FetchSource, ReceiverSettings};

    #[tokio::test]
    async fn sections_appear_where_their_part_runs() {
        let shared = Shared::default();
        let json = serde_json::to_value(report(&shared).await).unwrap();
        for section in ["receiver", "server", "archive"] {
            assert!(json.get(section).is_none(), "{json}");
        }
        shared.metrics.receiver_started(ReceiverSettings {
            slot: Some("walhalla".into()),
            mode: "archived",
        });
        shared.metrics.set_upstream("db1:5432".into());
        shared
            .metrics
            .segment_archived("000000010000000000000003".into(), 16 << 20);
        let json = serde_json::to_value(report(&shared).await).unwrap();
        let receiver = &json["receiver"];
        assert_eq!(receiver["upstream_host"], "db1:5432", "{json}");
        assert_eq!(receiver["slot"], "walhalla", "{json}");
        assert_eq!(
            receiver["last_archived_segment"],
            "000000010000000000000003"
        );
        assert!(
            receiver["last_archived_at"].as_f64().unwrap() > 1.7e9,
            "{json}"
        );
        assert!(json.get("server").is_none(), "{json}");
        let text = describe_status(&json);
        assert!(text.contains("slot walhalla"), "{text}");
        assert!(!text.contains("listening on"), "{text}");
        assert!(!text.contains("why not connected"), "{text}");
        let lag = |text: &str| {
            let line = text.lines().find(|l| l.contains("replication lag"));
            line.map(str::to_string).unwrap_or_default()
        };
        assert!(lag(&text).contains("unknown while not connected"), "{text}");

        let why = "db1 is on timeline 1 but the archive already holds timeline 2";
        shared.metrics.disconnected(why.into());
        let json = serde_json::to_value(report(&shared).await).unwrap();
        assert_eq!(json["receiver"]["last_disconnect_reason"], why, "{json}");
        let text = describe_status(&json);
        assert!(
            text.lines()
                .any(|l| l.starts_with("  why not connected") && l.contains(why)),
            "{text}"
        );
        // Streaming again: the reason stays in the JSON, and the text no longer shows it.
        shared.metrics.set_connected(true);
        let json = serde_json::to_value(report(&shared).await).unwrap();
        assert_eq!(json["receiver"]["last_disconnect_reason"], why, "{json}");
        let text = describe_status(&json);
        assert!(!text.contains("why not connected"), "{text}");
        assert!(lag(&text).contains("0 B, 0.0 s"), "{text}");
        assert!(!lag(&text).contains("unknown"), "{text}");
    }

    #[tokio::test]
    async fn labelled_counts_are_json_objects() {
        let shared = Shared::default();
        shared.metrics.error(ErrorKind::Archive);
        shared
            .metrics
            .fetch_answered(Some(FetchSource::Spool), Duration::from_millis(3));
        shared.server_started(crate::daemon::ServerFacts {
            listen: "127.0.0.1:7480".parse().unwrap(),
            tls: false,
        });
        let json = serde_json::to_value(report(&shared).await).unwrap();
        assert_eq!(json["errors"]["archive"], 1, "{json}");
        assert_eq!(json["server"]["fetch"]["hits"]["spool"], 1, "{json}");
    }

    #[test]
    fn the_restorable_window_names_its_last_commit_when_known() {
        let window = |end: serde_json::Value| {
            let archive = serde_json::json!({
                "survey": {
                    "window_start": 1.8e9, "window_end_lsn": "0/1D000000", "window_end": end,
                    "gap_segments": 0, "checked_at": 1.8e9,
                },
            });
            let mut said = String::new();
            describe_archive(&archive, &mut |label: &str, value: String| {
                if label.trim() == "restorable window" {
                    said = value;
                }
            });
            said
        };
        let known = window(serde_json::json!(1.8e9 + 60.0));
        assert!(known.starts_with("from 2027-"), "{known}");
        assert!(
            known.contains(" to 0/1D000000, last commit 2027-"),
            "{known}"
        );
        assert!(
            known.contains("; surveyed 2027-01-15 08:00:00 UTC"),
            "{known}"
        );
        let unknown = window(serde_json::Value::Null);
        assert!(unknown.contains(" to 0/1D000000; surveyed "), "{unknown}");
    }

    #[test]
    fn a_failing_archive_reads_as_failing() {
        let health = serde_json::json!({
            "failing": true, "permanent": false, "failing_since": 1.8e9,
            "last_error": "store k: connection refused", "last_error_at": 1.8e9,
            "last_success_at": null,
        });
        let line = describe_health(&health);
        assert!(line.starts_with("FAILING since 2027-"), "{line}");
        assert!(line.ends_with("connection refused"), "{line}");
    }
}
