//! The receiver keeps its promises against real PostgreSQL: it never skips a hole in the
//! archive, stays connected to an idle primary, gets WAL it confirmed as a synchronous standby
//! into the archive when the primary dies, reports a flush position that never goes back,
//! and shuts down within its deadline while the archive is unreachable.

use std::time::{Duration, Instant};

use walhalla::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

use crate::harness::server::{metric, scrape, wait_until_listening};
use crate::harness::{
    Backend, PgCluster, Receiver, S3Server, TcpProxy, TestArchive, TestDir, Walhalla, describe,
    free_port, http, wait_for,
};
use crate::push::key_of;
use crate::receive::{
    SEGMENT, archive_end, archived, lsn, segno_of, streaming_primary, wait_archive_holds,
    wait_streaming,
};

const SLOT_RESTART: &str =
    "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walhalla'";

fn name(segno: u64) -> String {
    let size = SegmentSize::new(SEGMENT as u32).unwrap();
    SegmentName::new(TimelineId(1), SegNo(segno), size).to_string()
}

/// Writes WAL and closes `segments` segments; returns the name of the last one closed.
fn write_segments(pg: &PgCluster, segments: usize) -> String {
    let mut last = String::new();
    for _ in 0..segments {
        pg.write_rows(300);
        last = pg.switch_wal();
    }
    last
}

/// A primary that recycles WAL soon: no wal_keep_size, a small max_wal_size.
fn recycling_primary() -> PgCluster {
    let mut pg = PgCluster::init("primary");
    pg.append_conf("wal_keep_size = 0\nmax_wal_size = '32MB'\nmin_wal_size = '4MB'");
    pg.start();
    pg
}

/// Archives `segments` segments from `start` with a receiver that uses no slot (so it moves
/// none), then stops it.
fn archive_without_a_slot(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    start: Lsn,
    segments: usize,
) {
    let conninfo = pg.conninfo();
    let start = start.to_string();
    let mut receiver = Receiver::start(
        wh,
        archive,
        &[
            "-d",
            &conninfo,
            "--start-lsn",
            &start,
            "--status-interval",
            "1",
        ],
    );
    wait_streaming(pg);
    let last = write_segments(pg, segments);
    wait_archive_holds(archive, &last);
    assert!(receiver.stop().success(), "{}", receiver.log());
}

#[test]
fn a_receiver_without_a_slot_whose_wal_was_recycled_stops_saying_how_to_go_on() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = recycling_primary();
    let start = pg
        .sql("SELECT pg_current_wal_lsn()")
        .parse()
        .expect("an LSN");
    archive_without_a_slot(&wh, &archive, &pg, start, 2);
    // The segment after the archive's end, recycled.
    let next = name(archive_end(&archive).0 / SEGMENT);
    pg.churn_until_recycled(&next);

    let conninfo = pg.conninfo();
    let mut plain = Receiver::start(&wh, &archive, &["-d", &conninfo]);
    let status = plain.wait(Duration::from_secs(60)).expect("it must stop");
    let log = plain.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "the server no longer has {next}, which the archive lacks"
        )) && log.contains("start with -S NAME --create-slot"),
        "{log}"
    );

    // What it says to do: the loss is reported, and archiving goes on.
    let mut slotted = Receiver::on_slot(&wh, &archive, &conninfo, &[]);
    wait_streaming(&pg);
    let last = write_segments(&pg, 2);
    wait_for(
        "the receiver to archive again",
        Duration::from_secs(60),
        || {
            archived(&archive)
                .0
                .contains(&segno_of(&last))
                .then_some(())
        },
    );
    let log = slotted.log();
    assert!(
        log.contains("lost to the archive") && log.contains(&format!("first={next}")),
        "{log}"
    );
    assert!(slotted.stop().success(), "{log}");
}

#[test]
fn a_restarted_receiver_fills_a_hole_the_slot_still_keeps() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = recycling_primary();
    pg.sql("SELECT pg_create_physical_replication_slot('walhalla', true)");
    let reserved = lsn(&pg, SLOT_RESTART);
    let first = reserved.0 / SEGMENT;

    // Segments archived past the slot, as when uploads finished but their flush position
    // was never reported; then two of them vanish, as uploads in flight when a host is lost.
    archive_without_a_slot(&wh, &archive, &pg, reserved, 8);
    let system_id = pg.system_id();
    for hole in [first + 3, first + 4] {
        archive.remove(&key_of(system_id, &name(hole)));
    }
    assert_eq!(
        lsn(&pg, SLOT_RESTART),
        reserved,
        "nothing moved the slot yet"
    );

    // A receiver on the slot, with a fresh spool.
    let mut receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_streaming(&pg);
    let last = write_segments(&pg, 3);
    wait_archive_holds(&archive, &last);
    for _ in 0..3 {
        let restart = lsn(&pg, SLOT_RESTART);
        let end = archive_end(&archive);
        assert!(
            restart <= end,
            "slot at {restart}, archive contiguous only to {end}"
        );
        pg.write_rows(3000);
        pg.switch_wal();
        pg.sql("CHECKPOINT");
    }
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);

    // Every segment from the slot's original restart position on is archived and fetchable.
    let (segments, _) = archived(&archive);
    let newest = *segments.last().unwrap();
    let out = TestDir::new("out");
    for segno in first..=newest {
        assert!(
            segments.binary_search(&segno).is_ok(),
            "{} missing from {segments:?}\n{}",
            name(segno),
            receiver.log()
        );
        let dest = out.path().join(name(segno));
        let run = wh.run(
            &archive,
            &pg.data,
            &["fetch", &name(segno), dest.to_str().unwrap()],
        );
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    }
    assert!(
        receiver.log().contains("the archive has a hole"),
        "{}",
        receiver.log()
    );
    assert!(receiver.stop().success(), "{}", receiver.log());
}

#[test]
fn a_hole_the_server_no_longer_has_is_reported_and_streaming_goes_on() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = recycling_primary();
    let start = lsn(&pg, "SELECT pg_current_wal_lsn()");
    let first = start.0 / SEGMENT;
    archive_without_a_slot(&wh, &archive, &pg, start, 6);
    let lost = name(first + 2);
    archive.remove(&key_of(pg.system_id(), &lost));
    pg.churn_until_recycled(&lost);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &["--listen", &listen]);
    wait_until_listening(port);
    wait_for("the gap to be reported", Duration::from_secs(60), || {
        let status = http::get(port, "/status").ok()?.text();
        status.contains(&lost).then_some(status)
    });
    let log = receiver.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&lost) && l.contains("lost to the archive")),
        "no error line names {lost}:\n{log}"
    );
    let gaps = scrape(port, "walhalla_archive_gap_segments").unwrap_or(0.0);
    assert!(gaps >= 1.0, "walhalla_archive_gap_segments = {gaps}");
    // It goes on archiving what the server still has.
    wait_streaming(&pg);
    let last = write_segments(&pg, 2);
    let newest = segno_of(&last);
    wait_for("new WAL archived", Duration::from_secs(60), || {
        archived(&archive).0.contains(&newest).then_some(())
    });
}

/// The walsender serving the receiver: its pid.
fn walsender_pid(pg: &PgCluster) -> String {
    pg.sql("SELECT coalesce(max(pid)::text, '') FROM pg_stat_replication WHERE application_name = 'walhalla'")
}

#[test]
fn an_idle_primary_keeps_its_receiver_connected() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let conninfo = pg.conninfo();
    // The defaults: status every 10 s, --receive-timeout 60 s, wal_sender_timeout 60 s.
    let receiver = Receiver::start(
        &wh,
        &archive,
        &[
            "-d",
            &conninfo,
            "-S",
            "walhalla",
            "--create-slot",
            "--listen",
            &listen,
        ],
    );
    wait_streaming(&pg);
    wait_until_listening(port);
    let pid = walsender_pid(&pg);
    assert!(!pid.is_empty());
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(200) {
        std::thread::sleep(Duration::from_secs(10));
        assert_eq!(
            walsender_pid(&pg),
            pid,
            "the receiver reconnected after {:?} of an idle primary:\n{}",
            idle.elapsed(),
            receiver.log()
        );
    }
    let page = http::get(port, "/metrics").unwrap().text();
    assert_eq!(
        metric(&page, "walhalla_reconnects_total"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(metric(&page, "walhalla_connected"), Some(1.0), "{page}");
    let log = receiver.log();
    assert!(!log.contains("disconnected"), "{log}");
    assert!(
        log.contains("asking for a reply"),
        "no ping was needed?\n{log}"
    );
}

#[test]
fn an_archive_outage_on_an_idle_primary_with_a_short_sender_timeout_keeps_the_stream() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&proxy.endpoint());
    let mut pg = PgCluster::init("primary");
    // The server asks for a reply after 6 s of silence; the receiver's own status interval
    // (10 s) is longer, its pace (a third of the timeout, 4 s) shorter.
    pg.append_conf("wal_sender_timeout = '12s'");
    pg.start();
    let conninfo = pg.conninfo();
    // The default status interval (no --status-interval).
    let args = ["-d", conninfo.as_str(), "-S", "walhalla", "--create-slot"];
    let mut receiver = Receiver::start_via(&wh, &archive, env, &args);
    wait_streaming(&pg);
    let before = write_segments(&pg, 1);
    wait_archive_holds(&archive, &before);
    let pid = walsender_pid(&pg);
    assert!(!pid.is_empty());
    // WAL the archive cannot store, so the flush position stays behind what was received,
    // then nothing more from an idle primary.
    proxy.pause();
    let last = write_segments(&pg, 1);
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            walsender_pid(&pg),
            pid,
            "the stream ended after {:?} of an archive outage:\n{}",
            outage.elapsed(),
            receiver.log()
        );
    }
    let log = receiver.log();
    assert!(!log.contains("asked to confirm"), "{log}");
    // PostgreSQL's "terminating walsender process due to replication timeout".
    let server_log = pg.log();
    assert!(!server_log.contains("replication timeout"), "{server_log}");
    proxy.resume();
    wait_archive_holds(&archive, &last);
    assert_eq!(walsender_pid(&pg), pid, "{}", receiver.log());
    assert!(receiver.stop().success(), "{}", receiver.log());
}

/// A primary whose only synchronous standby is a receiver named `walhalla`.
fn synchronous_primary() -> PgCluster {
    let mut pg = PgCluster::init("primary");
    pg.append_conf("synchronous_standby_names = 'walhalla'\nsynchronous_commit = on");
    pg.start();
    pg
}

/// How many rows [`commit_confirmed_rows`] commits, as `count(*)` prints it.
const CONFIRMED_ROWS: &str = "40";

/// Commits rows into table `confirmed` one at a time: each commit returns only once the
/// synchronous receiver confirmed its flush.
fn commit_confirmed_rows(pg: &PgCluster) {
    for i in 1..=CONFIRMED_ROWS.parse::<u32>().unwrap() {
        pg.sql(&format!("INSERT INTO confirmed VALUES ({i})"));
    }
}

#[test]
fn commits_a_synchronous_receiver_confirmed_survive_the_primary() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = synchronous_primary();
    // No periodic snapshot: only what the receiver does when it loses the primary counts.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let receiver = Receiver::on_slot(
        &wh,
        &archive,
        &pg.conninfo(),
        &[
            "--synchronous",
            "--partial-interval",
            "0",
            "--listen",
            &listen,
        ],
    );
    wait_streaming(&pg);
    wait_until_listening(port);
    wait_for(
        "the receiver to be the synchronous standby",
        Duration::from_secs(30),
        || {
            (pg.sql("SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = 'walhalla'") == "sync").then_some(())
        },
    );
    pg.sql("CREATE TABLE confirmed (id int primary key)");
    let backup = crate::backup::take_backup(&wh, &archive, &pg);
    assert_eq!(backup["wal_complete"], true, "{backup}");
    // The backup's WAL comes from the archive alone.
    let mut restored = PgCluster::from_backup(&pg, "restored", "none");
    let mut through_server = PgCluster::from_backup(&pg, "through-server", "none");
    let backup_end = pg.switch_wal();
    wait_archive_holds(&archive, &backup_end);
    commit_confirmed_rows(&pg);
    let system_id = pg.system_id();
    pg.stop("immediate");
    let stopped = Instant::now();

    let snapshot = wait_for(
        "the confirmed WAL to reach the archive",
        Duration::from_secs(15),
        || {
            archive
                .keys()
                .into_iter()
                .find(|k| k.contains(&format!("{system_id}/wal/")) && k.contains(".partial."))
        },
    );
    eprintln!(
        "{snapshot} stored {:?} after the primary died",
        stopped.elapsed()
    );
    restored.recover_from_archive(&format!(
        "{} --archive {} fetch --partial %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(
        restored.sql("SELECT count(*) FROM confirmed"),
        CONFIRMED_ROWS
    );
    // walhalla restore says that a snapshot lies past the last complete segment, and with
    // --partial writes the restore_command that replays it.
    let plain = TestDir::new("plain");
    let (code, report, stderr) =
        crate::backup::restore(&wh, &archive, &plain.path().join("data"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let plain_report = report.unwrap();
    assert!(
        plain_report["snapshot_beyond"].is_array(),
        "{plain_report:#}"
    );
    let last = TestDir::new("last-resort");
    let data = last.path().join("data");
    let (code, report, stderr) = crate::backup::restore(&wh, &archive, &data, &["--partial"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = report.unwrap();
    assert!(
        report["settings"]["restore_command"]
            .as_str()
            .unwrap()
            .contains(" fetch --partial --to-end "),
        "{report:#}"
    );
    let last_resort = crate::backup::start_restored(&archive, last, data);
    assert_eq!(
        last_resort.sql("SELECT count(*) FROM confirmed"),
        CONFIRMED_ROWS
    );
    // To a position in the snapshot's segment, past the last complete one: taken, with a
    // warning, since fetch --partial serves the snapshot; recovery reaches it.
    let segment = plain_report["snapshot_beyond"][0].as_str().unwrap();
    let size =
        walhalla::wal::SegmentSize::new(backup["segment_size"].as_u64().unwrap() as u32).unwrap();
    let start = match segment.parse::<walhalla::wal::WalFileName>().unwrap() {
        walhalla::wal::WalFileName::Segment(name) => name.start_lsn(size).unwrap(),
        other => panic!("{other} is not a segment"),
    };
    let target = TestDir::new("to-a-position");
    let data = target.path().join("data");
    let at = start.to_string();
    let (code, _, stderr) = crate::backup::restore(
        &wh,
        &archive,
        &data,
        &[
            "--partial",
            "--target-lsn",
            &at,
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("lies past the archive's end"), "{stderr}");
    // Started, recovery reached the target and promoted (an unreached target is FATAL).
    let to_position = crate::backup::start_restored(&archive, target, data);
    let replayed: u64 = to_position
        .sql("SELECT count(*) FROM confirmed")
        .parse()
        .unwrap();
    assert!(replayed <= CONFIRMED_ROWS.parse::<u64>().unwrap());
    // The same last-resort recovery through the receiver's fetch server, with no archive.
    through_server.recover_from_archive(&format!(
        "{} fetch --partial --prefetch 0 --server http://127.0.0.1:{port} %f %p",
        wh.path().display()
    ));
    assert_eq!(
        through_server.sql("SELECT count(*) FROM confirmed"),
        CONFIRMED_ROWS
    );
    assert!(
        receiver.log().contains("served a snapshot"),
        "{}",
        receiver.log()
    );
    assert!(
        receiver.log().contains("keeping the end of the stream"),
        "{}",
        receiver.log()
    );
    drop(receiver);
}

#[test]
fn the_reported_flush_position_never_goes_back() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&proxy.endpoint());
    let mut pg = PgCluster::init("primary");
    pg.start();
    let receiver = Receiver::on_slot_via(
        &wh,
        &archive,
        env,
        &pg.conninfo(),
        &["--partial-interval", "1"],
    );
    wait_streaming(&pg);
    let pid = walsender_pid(&pg);
    let done = std::sync::atomic::AtomicBool::new(false);
    let samples = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(pg.sql(
                    "SELECT coalesce(flush_lsn::text, 'NULL') FROM pg_stat_replication WHERE application_name = 'walhalla'",
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        // A load, then a caught-up idle phase in which a snapshot of the current segment is
        // stored and counted.
        for _ in 0..4 {
            pg.write_rows(400);
        }
        pg.write_rows(100);
        std::thread::sleep(Duration::from_secs(4));
        // The segment completes while its upload cannot finish: what is archived falls back
        // to its start, but the snapshot already counted is still in the archive.
        proxy.pause();
        pg.switch_wal();
        std::thread::sleep(Duration::from_secs(4));
        proxy.resume();
        std::thread::sleep(Duration::from_secs(4));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    assert_eq!(walsender_pid(&pg), pid, "one connection throughout");
    let mut previous: Option<Lsn> = None;
    for sample in &samples {
        if sample == "NULL" || sample.is_empty() {
            assert!(
                previous.is_none(),
                "flush_lsn NULL after {previous:?}: {samples:?}"
            );
            continue;
        }
        let flushed: Lsn = sample.parse().unwrap();
        if let Some(previous) = previous {
            assert!(
                flushed >= previous,
                "flush_lsn went back from {previous} to {flushed}: {samples:?}"
            );
        }
        previous = Some(flushed);
    }
    let first = samples.iter().position(|s| s != "NULL" && !s.is_empty());
    assert!(
        first.is_some_and(|i| i < samples.len() / 2),
        "{samples:?}\n{}",
        receiver.log()
    );
    // It moved: through the snapshots and the switch.
    let first: Lsn = samples[first.unwrap()].parse().unwrap();
    assert!(previous.unwrap() > first, "{samples:?}");
}

#[test]
fn shutdown_during_an_archive_outage_keeps_its_deadline_and_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&proxy.endpoint());
    let mut pg = PgCluster::init("primary");
    pg.start();
    let conninfo = pg.conninfo();
    let mut receiver = Receiver::on_slot_via(
        &wh,
        &archive,
        env,
        &conninfo,
        &["--shutdown-timeout", "5", "--timeout", "5"],
    );
    wait_streaming(&pg);
    let before = write_segments(&pg, 1);
    wait_archive_holds(&archive, &before);
    proxy.pause();
    let last = write_segments(&pg, 3);
    std::thread::sleep(Duration::from_secs(2));
    let stopping = Instant::now();
    let status = receiver.stop();
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}\n{}", receiver.log());
    assert!(
        took < Duration::from_secs(12),
        "shutdown took {took:?} with --shutdown-timeout 5\n{}",
        receiver.log()
    );
    assert!(
        receiver.log().contains("left in the spool"),
        "{}",
        receiver.log()
    );
    // The next start archives what the spool kept.
    proxy.resume();
    let spool = receiver.spool.clone();
    let args = [
        "-d",
        conninfo.as_str(),
        "-S",
        "walhalla",
        "--status-interval",
        "1",
    ];
    let mut receiver = Receiver::restart(&wh, &archive, &spool, &args);
    wait_archive_holds(&archive, &last);
    assert!(receiver.stop().success(), "{}", receiver.log());
}

#[test]
fn a_permanent_archive_error_is_reported_as_one_until_it_is_fixed() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (pg, receiver) = streaming_primary(&wh, &archive, &["--listen", &listen]);
    wait_until_listening(port);
    let before = write_segments(&pg, 1);
    wait_archive_holds(&archive, &before);

    let s3 = archive.s3().expect("an S3 archive");
    s3.delete_bucket();
    let last = write_segments(&pg, 2);
    let failing = |kind: &str| {
        scrape(
            port,
            &format!("walhalla_archive_failing{{kind=\"{kind}\"}}"),
        )
    };
    wait_for(
        "uploads to fail as permanent",
        Duration::from_secs(60),
        || (failing("permanent") == Some(1.0)).then_some(()),
    );
    let status = http::get(port, "/status").unwrap().text();
    assert!(status.contains("\"permanent\": true"), "{status}");
    assert!(
        receiver
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("permanent error")),
        "{}",
        receiver.log()
    );
    // Fixed by an operator: the retries store everything, and the report clears.
    s3.create_bucket();
    wait_archive_holds(&archive, &last);
    wait_for("the failure to clear", Duration::from_secs(60), || {
        (failing("permanent") == Some(0.0) && failing("transient") == Some(0.0)).then_some(())
    });
}

#[test]
fn a_receiver_restarted_while_the_primary_is_down_archives_what_it_confirmed() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = synchronous_primary();
    let conninfo = pg.conninfo();
    let args = [
        "-d",
        conninfo.as_str(),
        "-S",
        "walhalla",
        "--create-slot",
        "--synchronous",
        "--partial-interval",
        "0",
    ];
    let mut receiver = Receiver::start(&wh, &archive, &args);
    wait_streaming(&pg);
    pg.sql("CREATE TABLE confirmed (id int primary key)");
    let mut restored = PgCluster::from_backup(&pg, "restored", "none");
    let backup_end = pg.switch_wal();
    wait_archive_holds(&archive, &backup_end);
    commit_confirmed_rows(&pg);
    // The receiver's host and the primary are lost together; the receiver comes back first,
    // with its spool, and no primary to reach.
    receiver.kill9();
    pg.stop("immediate");
    let spool = receiver.spool.clone();
    let receiver = Receiver::restart(&wh, &archive, &spool, &args);
    wait_for(
        "the confirmed WAL to reach the archive",
        Duration::from_secs(15),
        || archive.keys().into_iter().find(|k| k.contains(".partial.")),
    );
    restored.recover_from_archive(&format!(
        "{} --archive {} fetch --partial %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(
        restored.sql("SELECT count(*) FROM confirmed"),
        CONFIRMED_ROWS
    );
    assert!(
        receiver.log().contains("keeping the end of the stream"),
        "{}",
        receiver.log()
    );
}

/// The lines of `log` that report WAL lost to the archive.
fn lost_reports(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("lost to the archive"))
        .collect()
}

#[test]
fn an_invalidated_slot_reports_what_the_archive_lost_once_and_is_replaced() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = recycling_primary();
    let major = pg.sql("SHOW server_version_num").parse::<u32>().unwrap() / 10_000;
    let mut receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_streaming(&pg);
    let archived_last = write_segments(&pg, 2);
    wait_archive_holds(&archive, &archived_last);
    assert!(receiver.stop().success(), "{}", receiver.log());

    // While the receiver is down, the slot keeps more than max_slot_wal_keep_size allows:
    // PostgreSQL invalidates it and removes the WAL it kept. From then on the slot alone
    // keeps WAL for the receiver.
    let gone = invalidate_the_slot(&pg, &archived_last);
    let status = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walhalla'";

    // Without --create-slot: PostgreSQL 18 refuses the stream, and the receiver stops saying
    // what to do; 16 and 17 stream from it though it keeps nothing, and the receiver says so
    // as an error; earlier majors make it keep WAL again once streamed from.
    let conninfo = pg.conninfo();
    let plain = ["-d", &conninfo, "-S", "walhalla", "--status-interval", "1"];
    let mut receiver = Receiver::start(&wh, &archive, &plain);
    if major >= 18 {
        exits_saying_to_recreate_the_slot(&mut receiver);
    } else {
        // The run the server no longer has is reported once, whole, and archiving goes on
        // from the first segment it has.
        wait_streaming(&pg);
        let newest = segno_of(&write_segments(&pg, 2));
        wait_for(
            "new WAL archived past the gap",
            Duration::from_secs(60),
            || archived(&archive).0.contains(&newest).then_some(()),
        );
        let log = receiver.log();
        let reports = lost_reports(&log);
        assert_eq!(reports.len(), 1, "{log}");
        let segments: u64 = reports[0]
            .split("segments=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        assert!(
            reports[0].contains(&format!("first={gone}")) && segments > 1,
            "{log}"
        );
        // Said once a run, not at every reconnect (helper-79 saw it three times).
        let said = (log.lines())
            .filter(|l| l.contains(" ERROR ") && l.contains("was invalidated"))
            .count();
        assert_eq!(said, usize::from((16..=17).contains(&major)), "{log}");
        assert!(receiver.stop().success(), "{}", receiver.log());
    }

    // With --create-slot, from PostgreSQL 16 on the invalidated slot is dropped and made
    // anew; earlier majors keep it, reserving WAL again.
    let released = "SELECT active FROM pg_replication_slots WHERE slot_name = 'walhalla'";
    wait_for("the slot to be released", Duration::from_secs(30), || {
        (pg.sql(released) == "f").then_some(())
    });
    let mut receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_streaming(&pg);
    let streamed = segno_of(&write_segments(&pg, 2));
    wait_for("new WAL archived", Duration::from_secs(60), || {
        archived(&archive).0.contains(&streamed).then_some(())
    });
    assert_eq!(
        receiver.log().contains("dropped and created again"),
        major >= 16,
        "{}",
        receiver.log()
    );
    assert_ne!(pg.sql(status), "lost");
    assert!(receiver.stop().success(), "{}", receiver.log());

    // The slot keeps WAL again: what the server writes while the receiver is down, past
    // max_wal_size, is still there for it, and the archive gets all of it. (The run lost
    // before stays a hole, which each new run reports again.)
    let down_from = streamed + 1;
    write_segments(&pg, 40);
    pg.sql("CHECKPOINT");
    assert!(
        pg.data.join("pg_wal").join(name(down_from)).exists(),
        "the slot did not keep {}",
        name(down_from)
    );
    let mut receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_streaming(&pg);
    let newest = segno_of(&write_segments(&pg, 1));
    // All of it, not only the newest: parallel uploads finish in any order (CI79 met the
    // newest archived before one of the segments before it).
    let all_held = || {
        let held = archived(&archive).0;
        (down_from..=newest).all(|n| held.contains(&n))
    };
    let waited = Instant::now();
    while !all_held() && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(all_held(), "a hole after {down_from}: {}", receiver.log());
    assert!(receiver.stop().success(), "{}", receiver.log());
}

/// Invalidates slot "walhalla" of `pg` (a receiver archived `segments` segments and
/// stopped): past `max_slot_wal_keep_size`, PostgreSQL invalidates it and removes the WAL it
/// kept. Returns the first segment gone. The limit is lifted again after.
fn invalidate_the_slot(pg: &PgCluster, archived_last: &str) -> String {
    pg.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '2MB'");
    pg.sql("SELECT pg_reload_conf()");
    let status = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walhalla'";
    wait_for(
        "the slot to be invalidated",
        Duration::from_secs(120),
        || {
            write_segments(pg, 3);
            pg.sql("CHECKPOINT");
            (pg.sql(status) == "lost").then_some(())
        },
    );
    let gone = name(segno_of(archived_last) + 1);
    pg.churn_until_recycled(&gone);
    pg.sql("ALTER SYSTEM SET max_slot_wal_keep_size = -1");
    pg.sql("SELECT pg_reload_conf()");
    gone
}

/// With --create-slot, an invalidated slot is replaced even where SQL cannot ask about it (a
/// role for replication only; here a database that does not exist): from the server's
/// refusal to stream what the slot should have kept.
#[test]
fn an_invalidated_slot_is_replaced_where_sql_cannot_tell() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = recycling_primary();
    let major = pg.sql("SHOW server_version_num").parse::<u32>().unwrap() / 10_000;
    if major < 16 {
        return; // 13 to 15 make an invalidated slot keep WAL again once streamed from
    }
    let mut receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_streaming(&pg);
    let archived_last = write_segments(&pg, 2);
    wait_archive_holds(&archive, &archived_last);
    assert!(receiver.stop().success(), "{}", receiver.log());
    invalidate_the_slot(&pg, &archived_last);

    // Replication connections ignore the database; SQL ones need it.
    let no_sql = format!("{} dbname=no_such_database", pg.conninfo());
    let mut receiver = Receiver::on_slot(&wh, &archive, &no_sql, &[]);
    wait_streaming(&pg);
    let streamed = segno_of(&write_segments(&pg, 2));
    wait_for("new WAL archived", Duration::from_secs(60), || {
        archived(&archive).0.contains(&streamed).then_some(())
    });
    let first = receiver.log();
    assert!(
        first.contains("could not ask pg_replication_slots"),
        "{first}"
    );
    assert!(receiver.stop().success(), "{first}");
    // 16 and 17 streamed from the invalidated slot, which kept nothing: the server removes
    // WAL past it. The next start is refused what the slot should have kept, and replaces it
    // instead of exiting (18 refused the slot at once and replaced it then).
    write_segments(&pg, 40);
    pg.sql("CHECKPOINT");
    let mut receiver = Receiver::on_slot(&wh, &archive, &no_sql, &[]);
    wait_streaming(&pg);
    let newest = segno_of(&write_segments(&pg, 2));
    wait_for(
        "WAL archived after the slot was replaced",
        Duration::from_secs(90),
        || archived(&archive).0.contains(&newest).then_some(()),
    );
    let log = format!("{first}{}", receiver.log());
    assert!(log.contains("dropped and created again"), "{log}");
    let status = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walhalla'";
    assert_ne!(pg.sql(status), "lost", "{log}");
    assert!(receiver.stop().success(), "{log}");
}

/// That `receiver` exits 1 soon, saying to drop its slot and create it again.
fn exits_saying_to_recreate_the_slot(receiver: &mut Receiver) {
    let exit = receiver.wait(Duration::from_secs(60));
    assert_eq!(exit.and_then(|e| e.code()), Some(1), "{}", receiver.log());
    assert!(
        receiver
            .log()
            .contains("pg_drop_replication_slot('walhalla')"),
        "{}",
        receiver.log()
    );
}
