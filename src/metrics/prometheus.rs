//! `/metrics`: a [`Snapshot`] in the Prometheus text exposition format.

use std::fmt::Write as _;

use super::Snapshot;
use crate::archive::HealthReport;

impl Snapshot {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP walhalla_{name} {help}");
            let _ = writeln!(out, "# TYPE walhalla_{name} {kind}");
            for (suffix, value) in samples {
                let _ = writeln!(out, "walhalla_{name}{suffix} {value}");
            }
        };
        let one = |value: String| vec![(String::new(), value)];
        let gauges: [(&str, &str, String); 14] = [
            (
                "connected",
                "1 while a replication session streams",
                u64::from(self.connected).to_string(),
            ),
            (
                "timeline",
                "Timeline being streamed",
                self.timeline.to_string(),
            ),
            (
                "received_lsn",
                "WAL written to the spool up to this position (bytes)",
                self.received_lsn.to_string(),
            ),
            (
                "flushed_lsn",
                "Flush position last reported to the server (bytes)",
                self.flushed_lsn.to_string(),
            ),
            (
                "archived_lsn",
                "Everything before this position is archived (bytes)",
                self.archived_lsn.to_string(),
            ),
            (
                "server_wal_end_lsn",
                "The server's end of WAL as last reported (bytes)",
                self.server_end_lsn.to_string(),
            ),
            (
                "replication_lag_bytes",
                "WAL the server has and the receiver has not",
                self.replication_lag_bytes.to_string(),
            ),
            (
                "replication_lag_seconds",
                "Seconds since the receiver last had all the server sent",
                self.replication_lag_seconds.to_string(),
            ),
            (
                "upload_queue_segments",
                "Complete segments waiting for upload",
                self.upload_queue_segments.to_string(),
            ),
            (
                "spool_bytes",
                "Bytes of WAL in the local spool",
                self.spool_bytes.to_string(),
            ),
            (
                "oldest_unarchived_segment_age_seconds",
                "Seconds the oldest segment waiting for upload has waited",
                self.oldest_unarchived_age_seconds.to_string(),
            ),
            (
                "received_bytes_total",
                "WAL bytes received",
                self.received_bytes.to_string(),
            ),
            (
                "archived_bytes_total",
                "Original bytes of the segments archived",
                self.archived_bytes.to_string(),
            ),
            (
                "archived_segments_total",
                "Segments archived",
                self.archived_segments.to_string(),
            ),
        ];
        // The receiver's measurements, where one runs: zeros from `walhalla serve` alone would
        // read as a receiver that is down (an alert on walhalla_connected == 0, say).
        if self.receiver.is_some() {
            for (name, help, value) in gauges {
                let kind = if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                metric(name, kind, help, &one(value));
            }
            metric(
                "archive_gap_segments",
                "gauge",
                "Segments missing from the archive that the server no longer has",
                &one(self
                    .archive_gaps
                    .iter()
                    .map(|g| g.segments)
                    .sum::<u64>()
                    .to_string()),
            );
            metric(
                "reconnects_total",
                "counter",
                "Reconnections after a session ended",
                &one(self.reconnects.to_string()),
            );
        }
        if let Some(coverage) = &self.coverage {
            metric(
                "archive_gaps",
                "gauge",
                "Missing segments that break the restorable window, at the last survey",
                &one(coverage.gap_segments.to_string()),
            );
            let times = [
                (
                    "restorable_window_start_seconds",
                    "Oldest time a restore can reach on the newest timeline (Unix seconds)",
                    coverage.window_start,
                ),
                (
                    "restorable_window_end_seconds",
                    "Newest archived commit a restore can reach on the newest timeline (Unix seconds)",
                    coverage.window_end,
                ),
                (
                    "archive_survey_timestamp_seconds",
                    "When the archive was last surveyed (Unix seconds)",
                    Some(coverage.checked_at),
                ),
            ];
            for (name, help, value) in times {
                if let Some(value) = value {
                    metric(name, "gauge", help, &one(value.to_string()));
                }
            }
        }
        let failing = |health: &HealthReport| {
            [("transient", false), ("permanent", true)].map(|(kind, permanent)| {
                let on = health.failing && health.permanent == permanent;
                (format!("{{kind=\"{kind}\"}}"), u64::from(on).to_string())
            })
        };
        metric(
            "archive_failing",
            "gauge",
            "1 while uploads fail, by kind: transient (retried) or permanent (an operator must act)",
            &failing(&self.archive_writes),
        );
        metric(
            "archive_reads_failing",
            "gauge",
            "1 while reads of the archive fail (fetches, listings), by kind: transient or permanent",
            &failing(&self.archive_reads),
        );
        let labelled = |label: &str, pairs: &[(&str, u64)]| {
            pairs
                .iter()
                .map(|(k, n)| (format!("{{{label}=\"{k}\"}}"), n.to_string()))
                .collect::<Vec<_>>()
        };
        metric(
            "errors_total",
            "counter",
            "Failures by kind",
            &labelled("kind", &self.errors),
        );
        let fetch = &self.fetch;
        metric(
            "fetch_requests_total",
            "counter",
            "Requests for WAL files",
            &one(fetch.requests.to_string()),
        );
        metric(
            "fetch_hits_total",
            "counter",
            "WAL files served, by source",
            &labelled("source", &fetch.hits),
        );
        metric(
            "fetch_misses_total",
            "counter",
            "Requests for files nobody has",
            &one(fetch.misses.to_string()),
        );
        let mut histogram: Vec<(String, String)> = fetch
            .buckets
            .iter()
            .map(|(bound, n)| (format!("_bucket{{le=\"{bound}\"}}"), n.to_string()))
            .collect();
        let answered = fetch.hits.iter().map(|(_, n)| n).sum::<u64>() + fetch.misses;
        histogram.push(("_bucket{le=\"+Inf\"}".into(), answered.to_string()));
        histogram.push(("_sum".into(), fetch.seconds_sum.to_string()));
        histogram.push(("_count".into(), answered.to_string()));
        metric(
            "fetch_duration_seconds",
            "histogram",
            "Time to answer a fetch request",
            &histogram,
        );
        out
    }
}
