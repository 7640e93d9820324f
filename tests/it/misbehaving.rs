//! `walhalla receive` against a misbehaving walsender: a scripted server on loopback
//! ([`FakeWalsender`]) that plays real WAL of a real cluster and then does what no healthy
//! server does. Whatever it does, the receiver ends the connection (or exits 1 for what
//! retrying cannot cure) with an error that names the fault, never panics, archives only
//! bytes equal to the real WAL and nothing past the fault, and never reports a flush
//! position the archive did not hold when the report arrived.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walhalla::wal::{Lsn, WalFileName};

use crate::harness::real_wal::{self, RealWal, SEGMENT_BYTES};
use crate::harness::walsender::{
    FakeWalsender, Identity, Probe, Script, Walsender, message, xlog_data,
};
use crate::harness::{Backend, Receiver, TestArchive, Walhalla, wait_for};
use crate::receive::archived;

/// A test's archive, the fake server and the receiver streaming from it.
struct Setup {
    archive: Arc<TestArchive>,
    fake: FakeWalsender,
    receiver: Receiver,
    _wh: Walhalla,
}

/// Starts the fake with `identity` and `script`, and a receiver on it with `extra` flags.
fn start(identity: Identity, script: Script, extra: &[&str]) -> Setup {
    let wh = Walhalla::install();
    let archive = Arc::new(TestArchive::new(Backend::Local));
    let probe: Probe = {
        let archive = archive.clone();
        Arc::new(move || held(&archive, real_wal::primary().start()))
    };
    let fake = FakeWalsender::start(identity, probe, script);
    let mut args = vec!["-d".to_string(), fake.conninfo()];
    args.extend(["--status-interval".into(), "1".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let receiver = Receiver::start(&wh, &archive, &args);
    Setup {
        archive,
        fake,
        receiver,
        _wh: wh,
    }
}

/// How far the archive holds the WAL of a receiver that started streaming at `start` on an
/// empty archive: through every complete segment from there, then the newest snapshot of
/// the next one. (What lies before `start` is not the receiver's to archive.)
fn held(archive: &TestArchive, start: Lsn) -> Lsn {
    let (segments, snapshots) = archived(archive);
    let mut next = start.0 / SEGMENT_BYTES;
    while segments.binary_search(&next).is_ok() {
        next += 1;
    }
    let snapshot = snapshots
        .iter()
        .filter(|(s, _)| *s == next)
        .map(|(_, end)| *end);
    Lsn(snapshot.max().unwrap_or(0).max(next * SEGMENT_BYTES))
}

/// A script that streams the real WAL from where the receiver asks up to `until` (nothing
/// when it asks for more), then plays `fault` and waits for the receiver to hang up.
fn after_real_wal(until: Lsn, fault: impl Fn(&mut Walsender) + Send + Sync + 'static) -> Script {
    let wal = real_wal::primary();
    Arc::new(move |ws: &mut Walsender| {
        let Some((start, _)) = ws.answer_until_start() else {
            return;
        };
        ws.copy_both();
        if start < until {
            ws.stream(wal, start, until);
            // Caught up: asks the receiver to confirm, so it stores what it has and reports.
            ws.keepalive_and_wait_reply(until);
        }
        fault(ws);
        ws.wait_for_close(Duration::from_secs(30));
    })
}

impl Setup {
    /// Waits until the receiver's log says `needle` (for transient faults: having
    /// reconnected at least once after it), returns the log.
    fn wait_log(&self, needle: &str, reconnected: bool) -> String {
        wait_for(
            &format!("{needle:?} in the receiver log"),
            Duration::from_secs(90),
            || {
                let log = self.receiver.log();
                let again = !reconnected || self.fake.connections() >= 2;
                (log.contains(needle) && again).then_some(log)
            },
        )
    }

    /// For a transient fault: the log names it (after a reconnection when `reconnected`),
    /// the receiver still runs and stops cleanly, and the archive holds only real WAL up to
    /// `limit`.
    fn recovers_from(&mut self, needle: &str, reconnected: bool, limit: Lsn) {
        self.wait_log(needle, reconnected);
        let log = self.stop_cleanly();
        assert_clear(&log, needle);
        self.assert_archive_real_until(real_wal::primary(), limit);
    }

    /// For a transient fault: the receiver still runs, and stops cleanly when asked.
    fn stop_cleanly(&mut self) -> String {
        assert!(
            self.receiver.wait(Duration::ZERO).is_none(),
            "a transient fault ended the receiver: {}",
            self.receiver.log()
        );
        let status = self.receiver.stop();
        let log = self.receiver.log();
        assert!(status.success(), "{status:?}: {log}");
        log
    }

    /// For a permanent fault: the receiver exits 1 on its own, soon.
    fn exits_with_1(&mut self) -> String {
        let status = self
            .receiver
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("still running: {}", self.receiver.log()));
        let log = self.receiver.log();
        assert_eq!(status.code(), Some(1), "{log}");
        log
    }

    /// Every object the archive holds is the real WAL, none reaches past `limit`, and no
    /// status update reported more than the archive held.
    fn assert_archive_real_until(&self, wal: &RealWal, limit: Lsn) {
        for key in self.archive.keys() {
            let file = key
                .rsplit('/')
                .next()
                .expect("a name")
                .trim_end_matches(".zst");
            let (name, end) = match file.split_once(".partial.") {
                Some((name, end)) => (name, Some(u64::from_str_radix(end, 16).expect("hex"))),
                None => (file, None),
            };
            let Ok(WalFileName::Segment(segment)) = name.parse::<WalFileName>() else {
                continue;
            };
            let size = walhalla::wal::SegmentSize::new(SEGMENT_BYTES as u32).expect("size");
            let begin = segment.start_lsn(size).expect("in range");
            let content = walhalla::envelope::decode(&self.archive.object(&key).expect("object"))
                .expect("a valid envelope");
            let end = Lsn(end.unwrap_or(begin.0 + SEGMENT_BYTES));
            assert!(
                end <= limit,
                "{key} reaches {end}, past the fault at {limit}"
            );
            let stored = (end.0 - begin.0) as usize;
            assert!(
                content.len() >= stored,
                "{key} holds {} bytes",
                content.len()
            );
            assert!(
                content[..stored] == *wal.between(begin, end),
                "{key} differs from the WAL the server sent"
            );
            assert!(
                content[stored..].iter().all(|&b| b == 0),
                "{key} holds bytes past {end}"
            );
        }
        let flushed = self.fake.assert_flush_never_ahead_of_archive();
        if limit > wal.start() {
            assert!(flushed > Lsn(0), "no flush position reported");
        }
    }
}

/// No panic, and the line naming the fault; and every confirmation the server asked for
/// while caught up was given (a local archive stores a snapshot in well under 10 s).
fn assert_clear(log: &str, needle: &str) {
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("did not store it within"), "{log}");
    assert!(log.contains(needle), "no {needle:?} in {log}");
}

fn seg(n: u64) -> Lsn {
    real_wal::primary().segment_start(n)
}

#[test]
fn a_truncated_message_then_eof_is_named_and_retried() {
    let until = Lsn(seg(1).0 + 3 * 8192);
    let script = after_real_wal(until, move |ws| {
        let mut truncated = message(b'd', &xlog_data(until, until, &[7; 5000]));
        truncated.truncate(2000);
        ws.send(&truncated);
        ws.hang_up();
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    let needle = "in the middle of a message: 2000 bytes of a 'd' message of 5030 bytes";
    s.recovers_from(needle, true, until);
}

#[test]
fn an_oversized_message_length_is_refused() {
    let script = after_real_wal(seg(1), |ws| {
        let mut huge = vec![b'd'];
        huge.extend_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
        huge.extend_from_slice(&[0; 64]);
        ws.send(&huge);
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    let needle = "announced a 'd' message of 2147483633 bytes, more than the 64 MiB";
    s.wait_log(needle, true);
    let log = s.stop_cleanly();
    assert_clear(&log, needle);
    s.assert_archive_real_until(real_wal::primary(), seg(1));
}

#[test]
fn xlogdata_before_copy_both_is_a_protocol_violation() {
    let wal = real_wal::primary();
    let script: Script = Arc::new(move |ws: &mut Walsender| {
        let Some((start, _)) = ws.answer_until_start() else {
            return;
        };
        ws.stream(wal, start, Lsn(start.0 + 8192));
        ws.wait_for_close(Duration::from_secs(30));
    });
    let mut s = start(Identity::of(wal), script, &[]);
    let needle = "expected CopyBothResponse or the next timeline, got CopyData";
    s.wait_log(needle, true);
    let log = s.stop_cleanly();
    assert_clear(&log, needle);
    s.assert_archive_real_until(wal, wal.start());
}

#[test]
fn a_malformed_xlogdata_or_keepalive_is_named() {
    let until = Lsn(seg(1).0 + 8192);
    let connection = Arc::new(AtomicUsize::new(0));
    let script = after_real_wal(until, move |ws| {
        // The first connection gets a short XLogData, the others a short keepalive.
        if connection.fetch_add(1, Ordering::Relaxed) == 0 {
            ws.copy_data(b"w\x00\x00\x00\x00\x01");
        } else {
            ws.copy_data(b"k\x00\x00\x00");
        }
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    s.wait_log(
        "XLogData message of 6 bytes is too short or malformed",
        true,
    );
    let needle = "keepalive message of 4 bytes is too short or malformed";
    s.recovers_from(needle, true, until);
}

/// After WAL up to a point, real WAL sent from `jumped_to` instead is refused, naming both
/// positions; nothing from there is stored.
fn an_lsn_jump_is_refused(jumped_to: impl Fn(Lsn) -> Lsn + Send + Sync + 'static) {
    let until = Lsn(seg(1).0 + 5 * 8192);
    let to = jumped_to(until);
    let script = after_real_wal(until, move |ws| {
        ws.stream(real_wal::primary(), to, Lsn(to.0 + 8192));
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    let needle = format!("the server sent WAL from {to}, expected {until}");
    s.recovers_from(&needle, true, until);
}

#[test]
fn an_lsn_jumping_backwards_is_refused() {
    an_lsn_jump_is_refused(|until| Lsn(until.0 - 8192));
}

#[test]
fn an_lsn_jumping_forwards_over_a_hole_is_refused() {
    an_lsn_jump_is_refused(|until| Lsn(until.0 + 8192));
}

#[test]
fn a_timeline_change_without_a_history_file_is_retried() {
    let switch = Lsn(seg(1).0 + 4 * 8192);
    let script = after_real_wal(switch, move |ws| {
        ws.end_timeline(2, switch);
        // The receiver asks for 00000002.history, which this server lacks.
        ws.answer_until_start();
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    let needle = "has no history file for timeline 2 (00000002.history); retrying";
    s.wait_log(needle, true);
    wait_for("a second attempt", Duration::from_secs(60), || {
        (s.receiver.log().matches(needle).count() >= 2).then_some(())
    });
    let log = s.stop_cleanly();
    assert_clear(&log, needle);
    assert!(!log.contains("timeline switch"), "{log}");
    s.assert_archive_real_until(real_wal::primary(), switch);
}

#[test]
fn a_next_timeline_starting_past_the_wal_sent_is_refused() {
    let end = Lsn(seg(1).0 + 4 * 8192);
    let timelines = Arc::new(Mutex::new(Vec::new()));
    let asked = timelines.clone();
    let wal = real_wal::primary();
    let script: Script = Arc::new(move |ws: &mut Walsender| {
        let Some((start, timeline)) = ws.answer_until_start() else {
            return;
        };
        asked.lock().unwrap().push(timeline);
        ws.copy_both();
        ws.stream(wal, start.min(end), end);
        ws.end_timeline(2, seg(2));
        ws.wait_for_close(Duration::from_secs(30));
    });
    let mut identity = Identity::of(wal);
    identity
        .histories
        .insert(2, format!("1\t{}\tno recovery target specified\n", seg(2)));
    let mut s = start(identity, script, &[]);
    let needle = format!(
        "the server ended timeline 1 at {end}, but says timeline 2 begins at {}, past that: refusing to switch",
        seg(2)
    );
    s.wait_log(&needle, true);
    let log = s.stop_cleanly();
    assert_clear(&log, &needle);
    assert!(
        timelines.lock().unwrap().iter().all(|&t| t == 1),
        "streamed timeline 2"
    );
    s.assert_archive_real_until(wal, end);
}

#[test]
fn another_system_id_than_the_archives_is_fatal() {
    let wal = real_wal::primary();
    let mut identity = Identity::of(wal);
    identity.system_id = real_wal::other_cluster().system_id.to_string();
    let script = after_real_wal(seg(1), |_| {});
    let expected = wal.system_id.to_string();
    let mut s = start(identity, script, &["--system-id", &expected]);
    let log = s.exits_with_1();
    let needle = format!(
        "belongs to cluster {}, but this receiver archives cluster {expected} (from --system-id, or from the --spool an earlier run left); point --dbname at a server of cluster {expected}",
        real_wal::other_cluster().system_id
    );
    assert_clear(&log, &needle);
    s.assert_archive_real_until(wal, wal.start());
}

/// A server whose `wal_segment_size` is `shown` makes the receiver exit 1 at once, naming it.
fn an_impossible_segment_size_is_fatal(shown: &str) {
    let mut identity = Identity::of(real_wal::primary());
    identity.segment_size = shown.into();
    let mut s = start(identity, after_real_wal(seg(1), |_| {}), &[]);
    let log = s.exits_with_1();
    assert_clear(&log, &format!("wal_segment_size \"{shown}\""));
    assert!(
        log.contains("no PostgreSQL server has this setting"),
        "{log}"
    );
    assert_eq!(s.fake.connections(), 1, "retried: {log}");
    s.assert_archive_real_until(real_wal::primary(), real_wal::primary().start());
}

#[test]
fn a_segment_size_that_is_not_a_power_of_two_is_fatal() {
    an_impossible_segment_size_is_fatal("3MB");
}

#[test]
fn a_segment_size_out_of_range_is_fatal() {
    an_impossible_segment_size_is_fatal("2GB");
}

#[test]
fn an_identify_system_answer_with_a_malformed_field_names_it() {
    let mut identity = Identity::of(real_wal::primary());
    identity.xlogpos = "nowhere".into();
    let mut s = start(identity, after_real_wal(seg(1), |_| {}), &[]);
    let needle = "IDENTIFY_SYSTEM returned an invalid xlogpos: invalid LSN \"nowhere\"";
    s.wait_log(needle, true);
    let log = s.stop_cleanly();
    assert_clear(&log, needle);
    s.assert_archive_real_until(real_wal::primary(), real_wal::primary().start());
}

#[test]
fn a_stall_mid_message_ends_the_connection_after_the_receive_timeout() {
    let until = Lsn(seg(1).0 + 2 * 8192);
    let script = after_real_wal(until, move |ws| {
        let mut half = message(
            b'd',
            &xlog_data(
                until,
                until,
                real_wal::primary().between(until, Lsn(until.0 + 8192)),
            ),
        );
        half.truncate(3000);
        ws.send(&half);
        std::thread::sleep(Duration::from_secs(12));
    });
    let mut s = start(
        Identity::of(real_wal::primary()),
        script,
        &["--receive-timeout", "4"],
    );
    let needle = "no message from the server for 4s (--receive-timeout): only 3000 bytes of a 'd' message of 8222 bytes had arrived";
    s.recovers_from(needle, false, until);
}

#[test]
fn wal_of_another_cluster_in_the_stream_is_refused_and_fatal() {
    let other = real_wal::other_cluster();
    let script = after_real_wal(seg(1), move |ws| {
        let (from, to) = (other.segment_start(1), other.segment_start(2));
        ws.xlog(seg(1), other.between(from, to));
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    let log = s.exits_with_1();
    let needle = format!(
        "the segment at {} belongs to cluster {}, not to cluster {}",
        seg(1),
        other.system_id,
        real_wal::primary().system_id
    );
    assert_clear(&log, &needle);
    assert!(log.contains("refusing WAL of another cluster"), "{log}");
    s.assert_archive_real_until(real_wal::primary(), seg(1));
}

#[test]
fn an_error_response_mid_stream_is_reported_and_retried() {
    let until = Lsn(seg(1).0 + 6 * 8192 + 100);
    let script = after_real_wal(until, |ws| {
        ws.error(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        );
    });
    let mut s = start(Identity::of(real_wal::primary()), script, &[]);
    let needle = "terminating connection due to administrator command (SQLSTATE 57P01)";
    s.recovers_from(needle, true, until);
}
