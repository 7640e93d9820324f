//! The daemon's measurements: lock-free counters and gauges the receiver and the server update,
//! and one [`Snapshot`] of them that `/metrics` renders as Prometheus text and `/status` as
//! JSON, so both always say the same thing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::archive::HealthReport;

mod prometheus;

/// Upper bounds, in seconds, of the fetch latency histogram's buckets.
const FETCH_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What went wrong, for `walhalla_errors_total{kind=…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connecting to or talking with the server failed.
    Connection,
    /// The server sent something unexpected, or a session failed otherwise.
    Protocol,
    /// The archive refused or failed an operation.
    Archive,
    /// Reading or writing the local spool failed.
    Spool,
    /// A fetch request could not be answered.
    Fetch,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::Connection,
        ErrorKind::Protocol,
        ErrorKind::Archive,
        ErrorKind::Spool,
        ErrorKind::Fetch,
    ];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Archive => "archive",
            ErrorKind::Spool => "spool",
            ErrorKind::Fetch => "fetch",
        }
    }
}

/// Where a served file came from, for `walhalla_fetch_hits_total{source=…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchSource {
    /// The receiver's spool: complete, not yet archived.
    Spool,
    /// The archive.
    Archive,
}

impl FetchSource {
    const ALL: [FetchSource; 2] = [FetchSource::Spool, FetchSource::Archive];

    /// The name used in metrics and response headers.
    pub fn label(self) -> &'static str {
        match self {
            FetchSource::Spool => "spool",
            FetchSource::Archive => "archive",
        }
    }
}

/// The live measurements; share one through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    connected: AtomicU64,
    timeline: AtomicU64,
    received_lsn: AtomicU64,
    flushed_lsn: AtomicU64,
    archived_lsn: AtomicU64,
    server_end_lsn: AtomicU64,
    /// Unix time in milliseconds when the receiver last had all the server had sent (0: never).
    caught_up_at_ms: AtomicU64,
    received_bytes: AtomicU64,
    archived_bytes: AtomicU64,
    archived_segments: AtomicU64,
    upload_queue: AtomicU64,
    spool_bytes: AtomicU64,
    /// Unix time in milliseconds the oldest segment waiting for upload was queued (0: none).
    oldest_unarchived_ms: AtomicU64,
    reconnects: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    fetch_requests: AtomicU64,
    fetch_hits: [AtomicU64; FetchSource::ALL.len()],
    fetch_misses: AtomicU64,
    fetch_buckets: [AtomicU64; FETCH_BUCKETS.len()],
    fetch_seconds_micros: AtomicU64,
    /// What the receiver was started with; unset where no receiver runs.
    receiver: OnceLock<ReceiverSettings>,
    /// The server the receiver last streamed from.
    upstream_host: Mutex<Option<String>>,
    /// The segment the receiver archived last, and when.
    last_archived: Mutex<Option<(String, SystemTime)>>,
    /// Why the receiver's last session ended or failed to start, and when.
    last_disconnect: Mutex<Option<(String, SystemTime)>>,
    /// Holes in the archive that the receiver could not fill.
    archive_gaps: Mutex<Vec<ArchiveGap>>,
    /// What the last survey of the archive found.
    coverage: Mutex<Option<Coverage>>,
}

/// What the daemon's last survey of the archive found: its holes and restorable window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Coverage {
    /// When the survey ran (Unix seconds).
    pub checked_at: f64,
    /// Missing segments that break the restorable window or leave a backup unrestorable
    /// (without backups: every gap in a timeline's WAL).
    pub gap_segments: u64,
    /// The oldest point a restore can reach on the newest timeline's path (the oldest
    /// restorable backup's stop time, Unix seconds), if any.
    pub window_start: Option<f64>,
    /// The newest archived commit a restore can reach on that path (Unix seconds), when the
    /// segment index tells it.
    pub window_end: Option<f64>,
    /// The end of the window as a position ("X/Y").
    pub window_end_lsn: Option<String>,
}

/// What a receiver was started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceiverSettings {
    /// The replication slot, if any.
    pub slot: Option<String>,
    /// `archived` (flush = in the archive) or `synchronous` (flush = in the spool).
    pub mode: &'static str,
}

/// Segments missing from the archive that the server no longer has: WAL lost to the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchiveGap {
    /// The first missing segment.
    pub first: String,
    /// The last missing segment.
    pub last: String,
    /// How many segments are missing.
    pub segments: u64,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .max(1)
}

impl Metrics {
    /// Whether a replication session is streaming now; returns whether one was.
    pub fn set_connected(&self, connected: bool) -> bool {
        self.connected.swap(u64::from(connected), Ordering::Relaxed) == 1
    }

    /// The timeline being streamed.
    pub fn set_timeline(&self, timeline: u32) {
        self.timeline.store(u64::from(timeline), Ordering::Relaxed);
    }

    /// WAL written to the spool up to `lsn`, `bytes` more of it than before.
    pub fn received(&self, lsn: u64, bytes: u64) {
        self.received_lsn.store(lsn, Ordering::Relaxed);
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.note_caught_up();
    }

    /// The server's end of WAL, as it last reported it.
    pub fn set_server_end(&self, lsn: u64) {
        self.server_end_lsn.fetch_max(lsn, Ordering::Relaxed);
        self.note_caught_up();
    }

    /// A new stream starts at `lsn`: positions may go back (a new timeline's fork).
    pub fn stream_started(&self, lsn: u64) {
        self.received_lsn.store(lsn, Ordering::Relaxed);
        self.server_end_lsn.store(lsn, Ordering::Relaxed);
        self.note_caught_up();
    }

    fn note_caught_up(&self) {
        if self.received_lsn.load(Ordering::Relaxed) >= self.server_end_lsn.load(Ordering::Relaxed)
        {
            self.caught_up_at_ms
                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
    }

    /// The flush position last reported to the server.
    pub fn set_flushed(&self, lsn: u64) {
        self.flushed_lsn.store(lsn, Ordering::Relaxed);
    }

    /// Everything before `lsn` is archived.
    pub fn set_archived(&self, lsn: u64) {
        self.archived_lsn.store(lsn, Ordering::Relaxed);
    }

    /// A receiver runs here, with `settings`.
    pub fn receiver_started(&self, settings: ReceiverSettings) {
        let _ = self.receiver.set(settings);
    }

    /// The receiver connected to `host`.
    pub fn set_upstream(&self, host: String) {
        *locked(&self.upstream_host) = Some(host);
    }

    /// Segment `name`, of `bytes` original bytes, was archived.
    pub fn segment_archived(&self, name: String, bytes: u64) {
        self.archived_segments.fetch_add(1, Ordering::Relaxed);
        self.archived_bytes.fetch_add(bytes, Ordering::Relaxed);
        *locked(&self.last_archived) = Some((name, SystemTime::now()));
    }

    /// Segments waiting for upload, and when the oldest of them was queued.
    pub fn set_upload_queue(&self, segments: usize, oldest_queued: Option<SystemTime>) {
        self.upload_queue.store(segments as u64, Ordering::Relaxed);
        self.oldest_unarchived_ms
            .store(oldest_queued.map_or(0, unix_ms), Ordering::Relaxed);
    }

    /// Bytes of WAL in the spool.
    pub fn set_spool_bytes(&self, bytes: u64) {
        self.spool_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The receiver's session ended, or failed to start, for `why`.
    pub fn disconnected(&self, why: String) {
        *locked(&self.last_disconnect) = Some((why, SystemTime::now()));
    }

    /// The receiver reconnected.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Something failed.
    pub fn error(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("listed");
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A fetch request was answered after `took`: served from `source`, or not found (`None`).
    pub fn fetch_answered(&self, source: Option<FetchSource>, took: Duration) {
        self.fetch_requests.fetch_add(1, Ordering::Relaxed);
        match source {
            Some(source) => {
                let i = FetchSource::ALL.iter().position(|s| *s == source);
                self.fetch_hits[i.expect("listed")].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.fetch_misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        let seconds = took.as_secs_f64();
        if let Some(i) = FETCH_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.fetch_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.fetch_seconds_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a hole in the archive that cannot be filled any more.
    pub fn archive_gap(&self, gap: ArchiveGap) {
        let mut gaps = locked(&self.archive_gaps);
        if !gaps.contains(&gap) {
            gaps.push(gap);
        }
    }

    /// A fetch request failed.
    pub fn fetch_failed(&self) {
        self.fetch_requests.fetch_add(1, Ordering::Relaxed);
        self.error(ErrorKind::Fetch);
    }

    /// Publishes what a survey of the archive found.
    pub fn set_coverage(&self, coverage: Coverage) {
        *locked(&self.coverage) = Some(coverage);
    }

    /// The values now.
    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = unix_ms(SystemTime::now());
        let age = |ms: u64| (ms != 0).then(|| now.saturating_sub(ms) as f64 / 1000.0);
        let received = get(&self.received_lsn);
        let server_end = get(&self.server_end_lsn);
        let mut cumulative = 0;
        Snapshot {
            connected: get(&self.connected) == 1,
            timeline: get(&self.timeline) as u32,
            received_lsn: received,
            flushed_lsn: get(&self.flushed_lsn),
            archived_lsn: get(&self.archived_lsn),
            server_end_lsn: server_end,
            replication_lag_bytes: server_end.saturating_sub(received),
            replication_lag_seconds: if received >= server_end {
                0.0
            } else {
                age(get(&self.caught_up_at_ms)).unwrap_or(0.0)
            },
            received_bytes: get(&self.received_bytes),
            archived_bytes: get(&self.archived_bytes),
            archived_segments: get(&self.archived_segments),
            upload_queue_segments: get(&self.upload_queue),
            spool_bytes: get(&self.spool_bytes),
            oldest_unarchived_age_seconds: age(get(&self.oldest_unarchived_ms)).unwrap_or(0.0),
            reconnects: get(&self.reconnects),
            receiver: self.receiver.get().cloned(),
            upstream_host: locked(&self.upstream_host).clone(),
            last_archived: locked(&self.last_archived)
                .as_ref()
                .map(|(name, at)| (name.clone(), unix_ms(*at) as f64 / 1000.0)),
            last_disconnect: locked(&self.last_disconnect)
                .as_ref()
                .map(|(why, at)| (why.clone(), unix_ms(*at) as f64 / 1000.0)),
            archive_reads: HealthReport::default(),
            archive_writes: HealthReport::default(),
            archive_gaps: locked(&self.archive_gaps).clone(),
            coverage: locked(&self.coverage).clone(),
            errors: ErrorKind::ALL
                .iter()
                .zip(&self.errors)
                .map(|(k, n)| (k.label(), get(n)))
                .collect(),
            fetch: FetchSnapshot {
                requests: get(&self.fetch_requests),
                hits: FetchSource::ALL
                    .iter()
                    .zip(&self.fetch_hits)
                    .map(|(s, n)| (s.label(), get(n)))
                    .collect(),
                misses: get(&self.fetch_misses),
                seconds_sum: get(&self.fetch_seconds_micros) as f64 / 1e6,
                buckets: FETCH_BUCKETS
                    .iter()
                    .zip(&self.fetch_buckets)
                    .map(|(bound, n)| {
                        cumulative += get(n);
                        (*bound, cumulative)
                    })
                    .collect(),
            },
        }
    }
}

/// The measurements at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// A replication session is streaming.
    pub connected: bool,
    /// The timeline being streamed (0 before the first session).
    pub timeline: u32,
    /// WAL written to the spool up to here.
    pub received_lsn: u64,
    /// The flush position last reported to the server.
    pub flushed_lsn: u64,
    /// Everything before here is archived.
    pub archived_lsn: u64,
    /// The server's end of WAL as last reported.
    pub server_end_lsn: u64,
    /// WAL the server has that the receiver does not yet.
    pub replication_lag_bytes: u64,
    /// Seconds since the receiver last had everything the server had sent.
    pub replication_lag_seconds: f64,
    /// WAL bytes received.
    pub received_bytes: u64,
    /// Original bytes of the segments archived.
    pub archived_bytes: u64,
    /// Segments archived.
    pub archived_segments: u64,
    /// Segments waiting for upload.
    pub upload_queue_segments: u64,
    /// Bytes of WAL in the spool.
    pub spool_bytes: u64,
    /// Seconds the oldest segment waiting for upload has waited.
    pub oldest_unarchived_age_seconds: f64,
    /// Reconnections after a session ended.
    pub reconnects: u64,
    /// What the receiver was started with; `None` where no receiver runs.
    pub receiver: Option<ReceiverSettings>,
    /// The server the receiver last streamed from.
    pub upstream_host: Option<String>,
    /// The segment the receiver archived last, and when (Unix seconds).
    pub last_archived: Option<(String, f64)>,
    /// Why the receiver's last session ended or failed to start, and when (Unix seconds).
    pub last_disconnect: Option<(String, f64)>,
    /// How the archive's reads have been going (filled in by the daemon's shared state).
    pub archive_reads: HealthReport,
    /// How the archive's writes have been going.
    pub archive_writes: HealthReport,
    /// Holes in the archive the receiver could not fill (WAL the archive will never have).
    pub archive_gaps: Vec<ArchiveGap>,
    /// What the last survey of the archive found (none yet: `null`).
    pub coverage: Option<Coverage>,
    /// Failures by kind.
    pub errors: Vec<(&'static str, u64)>,
    /// The fetch server's requests.
    pub fetch: FetchSnapshot,
}

/// The fetch server's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct FetchSnapshot {
    /// Requests for WAL files.
    pub requests: u64,
    /// Files served, by source.
    #[serde(serialize_with = "as_object")]
    pub hits: Vec<(&'static str, u64)>,
    /// Requests for files nobody has.
    pub misses: u64,
    /// Total seconds spent answering.
    pub seconds_sum: f64,
    /// Cumulative counts of answers within each bound, in seconds.
    pub buckets: Vec<(f64, u64)>,
}

/// Labelled counts as a JSON object (`{"archive": 0, …}`) rather than a list of pairs.
pub(crate) fn as_object<S: serde::Serializer>(
    pairs: &[(&'static str, u64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (label, count) in pairs {
        map.serialize_entry(label, count)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::default();
        m.fetch_answered(Some(FetchSource::Archive), Duration::from_millis(3));
        m.fetch_answered(Some(FetchSource::Spool), Duration::from_millis(30));
        m.fetch_answered(None, Duration::from_secs(100));
        let s = m.snapshot();
        assert_eq!(s.fetch.requests, 3);
        assert_eq!(s.fetch.misses, 1);
        let at = |bound: f64| s.fetch.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!((at(0.001), at(0.005), at(0.05), at(10.0)), (0, 1, 2, 2));
        let text = s.to_prometheus();
        assert!(text.contains("walhalla_fetch_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("walhalla_fetch_duration_seconds_count 3\n"));
        assert!(text.contains("walhalla_fetch_hits_total{source=\"spool\"} 1\n"));
    }

    #[test]
    fn a_server_without_a_receiver_exports_no_receiver_metrics() {
        let page = Metrics::default().snapshot().to_prometheus();
        for receivers in [
            "walhalla_connected",
            "walhalla_timeline",
            "walhalla_received_lsn",
        ] {
            assert!(!page.contains(receivers), "{receivers}: {page}");
        }
        assert!(page.contains("walhalla_fetch_requests_total 0"), "{page}");
    }

    #[test]
    fn failing_reads_and_writes_are_gauges_of_their_own() {
        let mut s = Metrics::default().snapshot();
        s.archive_reads.failing = true;
        let page = s.to_prometheus();
        for line in [
            "walhalla_archive_reads_failing{kind=\"transient\"} 1\n",
            "walhalla_archive_reads_failing{kind=\"permanent\"} 0\n",
            "walhalla_archive_failing{kind=\"transient\"} 0\n",
        ] {
            assert!(page.contains(line), "{line}: {page}");
        }
        s.archive_writes = s.archive_reads.clone();
        s.archive_writes.permanent = true;
        let page = s.to_prometheus();
        assert!(
            page.contains("walhalla_archive_failing{kind=\"permanent\"} 1\n"),
            "{page}"
        );
    }

    #[test]
    fn lag_is_what_the_server_has_beyond_what_was_received() {
        let m = Metrics::default();
        m.stream_started(1000);
        m.set_server_end(5000);
        m.received(3000, 2000);
        let s = m.snapshot();
        assert_eq!(s.replication_lag_bytes, 2000);
        assert_eq!(s.received_bytes, 2000);
        m.received(5000, 2000);
        assert_eq!(m.snapshot().replication_lag_bytes, 0);
        assert!(m.snapshot().replication_lag_seconds < 1.0);
    }
}
