//! `walhalla receive` against real PostgreSQL: byte-identical archives, the slot held back to
//! what is archived, synchronous standby, restarts of the primary, authentication, TLS, and
//! the fatal cases.

use std::time::Duration;

use walhalla::wal::{Lsn, SegNo, SegmentSize, WalFileName};

use crate::harness::{
    Backend, PgCluster, Receiver, TestArchive, TestDir, Walhalla, describe, wait_for,
    wait_for_explained,
};
use crate::push::key_of;

pub const SEGMENT: u64 = 1 << 20;

/// The complete segments in the archive, sorted, and the end of the newest receiver snapshot
/// of each segment.
pub fn archived(archive: &TestArchive) -> (Vec<u64>, Vec<(u64, u64)>) {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    let size = SegmentSize::new(SEGMENT as u32).unwrap();
    for key in archive.keys() {
        let file = key.rsplit('/').next().unwrap().trim_end_matches(".zst");
        if let Some((name, end)) = file.split_once(".partial.") {
            if let Ok(WalFileName::Segment(s)) = name.parse::<WalFileName>() {
                snapshots.push((
                    s.segno(size).unwrap().0,
                    u64::from_str_radix(end, 16).unwrap(),
                ));
            }
        } else if let Ok(WalFileName::Segment(s)) = file.parse::<WalFileName>() {
            segments.push(s.segno(size).unwrap().0);
        }
    }
    segments.sort();
    (segments, snapshots)
}

/// Everything before this position is in the archive (contiguous from its first segment, or
/// from the start of the first segment snapshotted when none is complete yet: a receiver confirms
/// what a snapshot holds when the server asks for a reply).
pub fn archive_end(archive: &TestArchive) -> Lsn {
    let (segments, snapshots) = archived(archive);
    let Some(&first) = segments.first() else {
        let first = snapshots.iter().map(|&(segment, _)| segment).min();
        let end = snapshots
            .iter()
            .filter(|&&(segment, _)| Some(segment) == first)
            .map(|&(_, end)| end)
            .max();
        return Lsn(end.unwrap_or(0));
    };
    let mut next = first;
    while segments.binary_search(&next).is_ok() {
        next += 1;
    }
    let snapshot = snapshots
        .iter()
        .filter(|(s, _)| *s == next)
        .map(|(_, end)| *end)
        .max();
    Lsn(snapshot.unwrap_or(next * SEGMENT))
}

/// Every segment from the first archived to the newest is there.
pub fn assert_contiguous(archive: &TestArchive) {
    let (segments, _) = archived(archive);
    let (first, newest) = (segments[0], *segments.last().unwrap());
    assert_eq!(
        segments.len() as u64,
        newest - first + 1,
        "a gap in {segments:?}"
    );
}

pub fn lsn(pg: &PgCluster, query: &str) -> Lsn {
    pg.sql(query).parse().expect("an LSN")
}

/// A started primary and a receiver streaming from it into `archive` on slot "walhalla", with
/// `extra` arguments.
pub fn streaming_primary(
    wh: &Walhalla,
    archive: &TestArchive,
    extra: &[&str],
) -> (PgCluster, Receiver) {
    let mut pg = PgCluster::init("primary");
    pg.start();
    let receiver = Receiver::on_slot(wh, archive, &pg.conninfo(), extra);
    wait_streaming(&pg);
    (pg, receiver)
}

pub fn wait_streaming(pg: &PgCluster) {
    wait_for("the receiver to stream", Duration::from_secs(60), || {
        (pg.receiver_state() == "streaming").then_some(())
    });
}

/// The segment number of a segment's name.
pub fn segno_of(segment: &str) -> u64 {
    let size = SegmentSize::new(SEGMENT as u32).unwrap();
    match segment.parse::<WalFileName>() {
        Ok(WalFileName::Segment(s)) => s.segno(size).unwrap().0,
        other => panic!("{segment}: {other:?}"),
    }
}

pub fn wait_archive_holds(archive: &TestArchive, segment: &str) {
    let target = segno_of(segment);
    wait_for_explained(
        &format!("{segment} in the archive"),
        Duration::from_secs(120),
        || (archive_end(archive) >= Lsn((target + 1) * SEGMENT)).then_some(()),
        || format!(", which holds {}", describe_runs(&archived(archive).0)),
    );
}

/// Segment numbers as runs of consecutive ones ("0x3-0x1f, 0x21-0x40"), so that a hole shows.
fn describe_runs(segments: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &segno in segments {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == segno => *end = segno,
            _ => runs.push((segno, segno)),
        }
    }
    let runs: Vec<String> = runs.iter().map(|(a, b)| format!("{a:#x}-{b:#x}")).collect();
    if runs.is_empty() {
        "no segment".to_string()
    } else {
        runs.join(", ")
    }
}

/// A receiver on slot "walhalla" (created) of `pg`, with `extra` arguments, once streaming.
fn streaming_receiver(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    extra: &[&str],
) -> Receiver {
    let receiver = Receiver::on_slot(wh, archive, &pg.conninfo(), extra);
    wait_streaming(pg);
    receiver
}

fn receiver_archives_every_byte(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let reference = TestDir::new("reference");
    let mut pg = PgCluster::init("primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = 'cp %p {}/%f'\nwal_keep_size = '1GB'",
        reference.path().display()
    ));
    pg.start();
    let mut receiver = streaming_receiver(&wh, &archive, &pg, &[]);
    let slot_lsn = || {
        lsn(
            &pg,
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walhalla'",
        )
    };
    let reserved = slot_lsn();
    let mut last = String::new();
    for _ in 0..6 {
        pg.write_rows(2000);
        last = pg.switch_wal();
        // The slot never passes what the archive holds (sample the slot first: the archive
        // only grows).
        let restart = slot_lsn();
        let end = archive_end(&archive);
        assert!(
            restart <= end.max(reserved),
            "slot at {restart} but the archive ends at {end}"
        );
    }
    wait_archive_holds(&archive, &last);
    pg.wait_archived(&last);
    wait_for(
        "the slot to advance with the archive",
        Duration::from_secs(30),
        || {
            let restart = slot_lsn();
            assert!(
                restart <= archive_end(&archive).max(reserved),
                "slot at {restart} past the archive"
            );
            (restart > reserved).then_some(())
        },
    );

    let (segments, _) = archived(&archive);
    assert!(segments.len() >= 6, "{segments:?}");
    let system_id = pg.system_id();
    let out = TestDir::new("out");
    let size = SegmentSize::new(SEGMENT as u32).unwrap();
    for &segno in &segments {
        let name =
            walhalla::wal::SegmentName::new(walhalla::wal::TimelineId(1), SegNo(segno), size)
                .to_string();
        let dest = out.path().join(&name);
        let run = wh.run(
            &archive,
            &pg.data,
            &["fetch", &name, dest.to_str().unwrap()],
        );
        assert_eq!(
            run.status.code(),
            Some(0),
            "fetch {name}: {}",
            describe(&run)
        );
        let expected = std::fs::read(reference.path().join(&name)).unwrap();
        assert!(
            std::fs::read(&dest).unwrap() == expected,
            "{name} differs from the server's"
        );
    }
    assert!(archive.object(&key_of(system_id, &last)).is_some());
    let status = receiver.stop();
    assert!(
        status.success(),
        "SIGTERM must end the receiver cleanly: {status:?}\n{}",
        receiver.log()
    );
    // Each complete segment's time index is stored before its upload counts as done.
    let keys = archive.keys();
    for &segno in &segments {
        let segment =
            walhalla::wal::SegmentName::new(walhalla::wal::TimelineId(1), SegNo(segno), size);
        let system_id = walhalla::wal::SystemId(system_id);
        let key = walhalla::archive::index_key(&Default::default(), system_id, segment).to_string();
        assert!(keys.contains(&key), "no {key}: {keys:?}");
    }
}

#[test]
fn receiver_archives_every_byte_local() {
    receiver_archives_every_byte(Backend::Local);
}

#[test]
fn receiver_archives_every_byte_s3() {
    receiver_archives_every_byte(Backend::S3);
}

#[test]
fn synchronous_standby() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.append_conf("synchronous_standby_names = 'walhalla'");
    pg.start();
    let mut receiver = streaming_receiver(&wh, &archive, &pg, &["--synchronous"]);
    // Commits succeed: the receiver confirms each flush.
    let (ok, _, stderr) = pg.sql_output(
        "SET statement_timeout = '30s'; CREATE TABLE t AS SELECT 1 AS x; INSERT INTO t VALUES (2)",
    );
    assert!(ok && !stderr.contains("canceling wait"), "{stderr}");
    assert_eq!(
        pg.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walhalla'"),
        "sync"
    );
    // A commit that must wait for the synchronous standby: it does (statement_timeout does
    // not cover that wait, so the waiting backend is seen in pg_stat_activity, then
    // cancelled).
    let commit_waits = |value: u32| {
        let waiting = std::thread::scope(|scope| {
            let insert = scope.spawn(|| pg.sql_output(&format!("INSERT INTO t VALUES ({value})")));
            let pid = wait_for(
                "a commit waiting for the synchronous standby",
                Duration::from_secs(30),
                || {
                    let pid = pg.sql("SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
                    (pid != "0").then_some(pid)
                },
            );
            pg.sql(&format!("SELECT pg_cancel_backend({pid})"));
            insert.join().unwrap()
        });
        assert!(
            waiting
                .2
                .contains("canceling wait for synchronous replication"),
            "{waiting:?}"
        );
    };
    // The spool removed under the running receiver (helper-49): what it writes next is not
    // stored, so it is not confirmed.
    std::fs::remove_dir_all(&receiver.spool).unwrap();
    commit_waits(3);
    let status = receiver.stop();
    assert!(status.success(), "{status:?}");
    let log = receiver.log();
    assert!(
        log.contains("was removed or replaced while being written")
            && log.contains("the spool is gone"),
        "{log}"
    );
    // Without it, a commit waits for it.
    commit_waits(4);
    // A receiver named there but run without --synchronous is warned at its start.
    let mut plain = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_for("the warning", Duration::from_secs(30), || {
        let log = plain.log();
        (log.contains("WARN") && log.contains("but it runs without --synchronous")).then_some(())
    });
    assert!(plain.stop().success());
}

#[test]
fn primary_restarts_leave_no_gap() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let mut receiver = streaming_receiver(&wh, &archive, &pg, &[]);
    pg.write_rows(1000);
    let first = pg.switch_wal();
    for mode in ["fast", "immediate"] {
        pg.write_rows(1000);
        // pg_ctl stop waits for the receiver to confirm everything sent: it must not hang.
        pg.stop(mode);
        pg.start();
        wait_streaming(&pg);
        pg.write_rows(1000);
        pg.switch_wal();
    }
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    let (segments, _) = archived(&archive);
    let size = SegmentSize::new(SEGMENT as u32).unwrap();
    let segno = |name: &str| match name.parse::<WalFileName>() {
        Ok(WalFileName::Segment(s)) => s.segno(size).unwrap().0,
        other => panic!("{other:?}"),
    };
    let wanted: Vec<u64> = (segno(&first)..=segno(&last)).collect();
    let missing: Vec<u64> = wanted
        .iter()
        .filter(|s| segments.binary_search(s).is_err())
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "segments missing from the archive: {missing:?} (archived {segments:?})"
    );
    assert!(
        receiver.log().contains("reconnecting"),
        "{}",
        receiver.log()
    );
    assert!(receiver.stop().success());
}

/// The pauses the receiver logged before reconnecting, in seconds, in order.
fn reconnect_pauses(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|line| line.split("reconnecting in ").nth(1))
        .filter_map(|rest| rest.split('s').next()?.parse().ok())
        .collect()
}

/// A stream that received WAL and then broke is resumed at the first step of the backoff, not
/// at the step the failed attempts before it reached (helper-71: 7.5 s after a short session
/// that followed a failover's failed attempts).
#[test]
fn a_stream_that_received_wal_resets_the_reconnect_backoff() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let mut receiver = streaming_receiver(&wh, &archive, &pg, &[]);
    pg.stop("immediate");
    // Failed attempts grow the backoff: the third pause is drawn from the 4 s step.
    wait_for("three failed attempts", Duration::from_secs(60), || {
        (reconnect_pauses(&receiver.log()).len() >= 3).then_some(())
    });
    pg.start();
    wait_streaming(&pg);
    pg.write_rows(100);
    let written = pg.switch_wal();
    wait_archive_holds(&archive, &written);
    let before = reconnect_pauses(&receiver.log()).len();
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'walhalla'");
    let pause = wait_for("the receiver to reconnect", Duration::from_secs(60), || {
        reconnect_pauses(&receiver.log()).get(before).copied()
    });
    // The first step is 1 s (jittered down to half); without the reset it would be 4 s or more.
    assert!(pause <= 1.0, "paused {pause}s: {}", receiver.log());
    wait_streaming(&pg);
    assert!(receiver.stop().success());
}

/// Waits for a receiver expected to stop on its own with a fatal error; returns its log.
pub(crate) fn fails_at_once(mut receiver: Receiver) -> String {
    let status = receiver
        .wait(Duration::from_secs(60))
        .expect("a fatal problem must stop the receiver");
    assert_eq!(status.code(), Some(1), "{}", receiver.log());
    receiver.log()
}

#[test]
fn fatal_problems_stop_the_receiver() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let conninfo = pg.conninfo();

    let log = fails_at_once(Receiver::start(
        &wh,
        &archive,
        &["-d", &conninfo, "-S", "nosuchslot"],
    ));
    assert!(log.contains("\"nosuchslot\" does not exist"), "{log}");
    assert!(!log.contains("without a replication slot"), "{log}");

    let mismatch = [
        "-d",
        &conninfo,
        "-S",
        "s",
        "--create-slot",
        "--system-id",
        "12345",
    ];
    let log = fails_at_once(Receiver::start(&wh, &archive, &mismatch));
    assert!(log.contains("belongs to cluster"), "{log}");

    // A spool that cannot be created: its parent is a file.
    let blocker = TestDir::new("blocker");
    let file = blocker.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let args = ["-d", &conninfo, "-S", "s", "--create-slot"];
    let log = fails_at_once(Receiver::restart(&wh, &archive, &file.join("spool"), &args));
    assert!(log.contains("spool"), "{log}");
}

#[test]
fn authentication_methods_and_wrong_passwords() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    // First matching line wins: each user gets its own method.
    let hba = pg.data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host replication u_scram 127.0.0.1/32 scram-sha-256\nhost replication u_md5 127.0.0.1/32 md5\n\
             host replication u_password 127.0.0.1/32 password\n{original}"
        ),
    )
    .unwrap();
    pg.start();
    pg.sql("SET password_encryption = 'scram-sha-256'; CREATE ROLE u_scram LOGIN REPLICATION PASSWORD 'secret-s'");
    pg.sql(
        "SET password_encryption = 'md5'; CREATE ROLE u_md5 LOGIN REPLICATION PASSWORD 'secret-m'",
    );
    pg.sql("CREATE ROLE u_password LOGIN REPLICATION PASSWORD 'secret-p'");

    let wrong = format!(
        "host=127.0.0.1 port={} user=u_scram password=wrong",
        pg.port
    );
    let log = fails_at_once(Receiver::start(
        &wh,
        &archive,
        &["-d", &wrong, "-S", "s", "--create-slot"],
    ));
    assert!(log.contains("password authentication failed"), "{log}");

    for (user, password) in [
        ("u_scram", "secret-s"),
        ("u_md5", "secret-m"),
        ("u_password", "secret-p"),
    ] {
        let end = pg.sql("SELECT pg_current_wal_lsn()");
        let conninfo = format!("postgresql://{user}:{password}@127.0.0.1:{}/", pg.port);
        let slot = format!("slot_{user}");
        let mut receiver = Receiver::start(
            &wh,
            &archive,
            &[
                "-d",
                &conninfo,
                "-S",
                &slot,
                "--create-slot",
                "--endpos",
                &end,
            ],
        );
        let status = receiver
            .wait(Duration::from_secs(60))
            .expect("--endpos must end the receiver");
        assert!(status.success(), "{user}: {status:?}\n{}", receiver.log());
        assert!(
            !receiver.log().contains(password),
            "the password leaked into the log"
        );
    }
}

#[test]
fn streams_over_tls_with_sslmode_require() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    let (_pki, ca) = pg.enable_tls();
    pg.start();
    let conninfo = format!("{} sslmode=require", pg.conninfo());
    let mut receiver = Receiver::start(
        &wh,
        &archive,
        &["-d", &conninfo, "-S", "walhalla", "--create-slot"],
    );
    wait_streaming(&pg);
    let ssl = pg.sql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) WHERE r.application_name = 'walhalla'",
    );
    assert_eq!(ssl, "t", "the replication connection is not encrypted");
    assert!(receiver.stop().success());

    // verify-full: the chain to the CA and the server's name are checked.
    let conninfo = format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.conninfo(),
        ca.display()
    );
    let end = pg.sql("SELECT pg_current_wal_lsn()");
    let mut receiver = Receiver::start(
        &wh,
        &archive,
        &["-d", &conninfo, "-S", "walhalla", "--endpos", &end],
    );
    let status = receiver
        .wait(Duration::from_secs(60))
        .expect("--endpos must end the receiver");
    assert!(status.success(), "{}", receiver.log());
}

#[test]
fn killed_receivers_leave_an_archive_that_restores() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let conninfo = pg.conninfo();
    let args = [
        "-d",
        conninfo.as_str(),
        "-S",
        "walhalla",
        "--create-slot",
        "--status-interval",
        "1",
    ];
    let mut receiver = Receiver::start(&wh, &archive, &args);
    wait_streaming(&pg);
    pg.write_rows(100);
    // All WAL of the restore must come from the archive: no WAL in the backup.
    let mut restored = PgCluster::from_backup(&pg, "restored", "none");
    let spool = receiver.spool.clone();
    let stop_load = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            while !stop_load.load(std::sync::atomic::Ordering::Relaxed) {
                pg.write_rows(500);
                pg.switch_wal();
            }
        });
        for round in 0..5u64 {
            // A pseudo-random moment between 0.3 and 1.5 s into the load.
            use std::hash::{BuildHasher, RandomState};
            let jitter = RandomState::new().hash_one(round) % 1200;
            std::thread::sleep(Duration::from_millis(300 + jitter));
            receiver.kill9();
            receiver = Receiver::restart(&wh, &archive, &spool, &args);
        }
        stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap();
    });
    pg.write_rows(100);
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    assert!(receiver.stop().success(), "{}", receiver.log());

    assert_contiguous(&archive);

    restored.recover_from_archive(&format!(
        "{} --archive {} fetch %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(restored.table_fingerprint(), pg.table_fingerprint());
}

#[test]
fn a_spool_limit_below_two_segments_is_raised_not_a_stall() {
    // 512 kB of spool for 1 MiB segments: a stream that stopped reading there could never
    // complete a segment, and nothing would be archived again.
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let mut receiver = streaming_receiver(&wh, &archive, &pg, &["--spool-max-bytes", "512kB"]);
    let mut last = String::new();
    for _ in 0..3 {
        pg.write_rows(2000);
        last = pg.switch_wal();
    }
    wait_archive_holds(&archive, &last);
    assert_contiguous(&archive);
    assert!(receiver.stop().success(), "{}", receiver.log());
    let log = receiver.log();
    assert!(
        log.contains(
            "--spool-max-bytes 512.0 KiB is less than two of this cluster's 1.0 MiB WAL segments"
        ) && log.contains("the spool may hold 2.0 MiB instead"),
        "{log}"
    );
}

#[test]
fn an_archive_outage_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = crate::harness::TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = crate::harness::S3Server::env_for(&proxy.endpoint());
    let mut pg = PgCluster::init("primary");
    pg.start();
    let conninfo = pg.conninfo();
    let args = [
        "-d",
        conninfo.as_str(),
        "-S",
        "walhalla",
        "--create-slot",
        "--spool-max-bytes",
        "3MB",
        "--timeout",
        "5",
    ];
    let mut receiver = Receiver::start_via(&wh, &archive, env, &args);
    wait_streaming(&pg);
    pg.write_rows(500);
    let before = pg.switch_wal();
    wait_archive_holds(&archive, &before);

    // 30 s without the archive, under load: the spool fills to its limit, the receiver stops
    // reading, and the slot keeps the rest on the primary.
    proxy.pause();
    let outage = std::time::Instant::now();
    let mut last = before.clone();
    while outage.elapsed() < Duration::from_secs(30) {
        pg.write_rows(1000);
        last = pg.switch_wal();
        std::thread::sleep(Duration::from_millis(500));
    }
    let restart = lsn(
        &pg,
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walhalla'",
    );
    assert!(
        restart <= archive_end(&archive),
        "the slot moved past the archive during the outage"
    );
    proxy.resume();
    wait_archive_holds(&archive, &last);

    assert_contiguous(&archive);
    let peak = receiver.peak_rss_kb().expect("the receiver is running");
    eprintln!(
        "receiver peak RSS through a 30 s archive outage: {} MiB",
        peak / 1024
    );
    assert!(receiver.stop().success(), "{}", receiver.log());
    // Noticed, and its end too, a line each however many retries it took. A brief failure soon
    // after the archive came back is a DEBUG line ("failing again soon after recovering"), not a
    // second warning, so only warnings count.
    let log = receiver.log();
    let count = |level: &str, message: &str| {
        log.lines()
            .filter(|l| l.contains(level) && l.contains(message))
            .count()
    };
    assert_eq!(
        count(" WARN ", "archive writes failing, retrying"),
        1,
        "{log}"
    );
    // The stream paused at --spool-max-bytes, and said so, and when it read again.
    assert!(
        count(" WARN ", "the spool holds --spool-max-bytes") >= 1
            && count(" INFO ", "the spool has room again") >= 1,
        "{log}"
    );
    assert_eq!(
        count(" INFO ", "archive writes work again after"),
        1,
        "{log}"
    );
}

#[test]
fn a_spool_copy_of_an_archived_segment_damaged_inside_its_pages_is_dropped_not_a_contradiction() {
    // A filesystem repaired after an error (e2fsck) can bring back a segment the receiver had
    // archived and removed, with other bytes inside its pages: the page headers are right, the
    // records are not. The archive's copy was checked against what was received when it was
    // stored; the spool's is dropped, and the receiver goes on. (Before, the two differed and
    // the uploader stopped on the contradiction.)
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, mut receiver) = streaming_primary(&wh, &archive, &[]);
    let conninfo = pg.conninfo();
    // After a switch, the next segment starts with a record of its own, not the rest of one.
    pg.switch_wal();
    pg.write_rows(300);
    let damaged = pg.switch_wal();
    wait_archive_holds(&archive, &damaged);
    assert!(receiver.stop().success(), "{}", receiver.log());

    let stored = archive
        .object(&key_of(pg.system_id(), &damaged))
        .expect("the segment is archived");
    let mut content = zstd::decode_all(&stored[..]).expect("an archived object is zstd");
    for byte in &mut content[48..112] {
        *byte ^= 0xff; // inside the first records, after the page header
    }
    let copy = receiver.spool.join(&damaged);
    std::fs::write(&copy, &content).unwrap();
    crate::harness::give_tree_to_pg(&copy);

    let args = ["-d", &conninfo, "-S", "walhalla", "--status-interval", "1"];
    let mut restarted = Receiver::restart(&wh, &archive, &receiver.spool, &args);
    pg.write_rows(300);
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    assert_contiguous(&archive);
    assert!(!copy.exists(), "the damaged copy stayed in the spool");
    assert_eq!(
        archive.object(&key_of(pg.system_id(), &damaged)),
        Some(stored),
        "the archived segment changed"
    );
    let log = restarted.log();
    assert!(
        log.contains("the spool's copy is damaged") && log.contains("invalid WAL at"),
        "{log}"
    );
    assert!(!log.contains("different content"), "{log}");
    assert!(restarted.stop().success(), "{log}");
}

#[test]
fn a_second_receiver_is_refused_the_spool_of_a_running_one() {
    // Two receivers of one cluster share the default spool unless told otherwise. Before the
    // hold, the second took the first one's segment in progress for an earlier run's and
    // archived it as a snapshot; the first then found its file gone and reported WAL lost.
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, mut first) = streaming_primary(&wh, &archive, &[]);
    let conninfo = pg.conninfo();
    pg.write_rows(300);
    let before = pg.switch_wal();
    wait_archive_holds(&archive, &before);
    pg.write_rows(100); // a segment in progress in the first one's spool

    let args = ["-d", &conninfo, "-S", "second", "--create-slot"];
    let mut second = Receiver::restart(&wh, &archive, &first.spool, &args);
    let status = second
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the second receiver runs on: {}", second.log()));
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{log}");
    // It names the first one's process.
    let holder = first.pid().expect("the first receiver runs");
    assert!(
        log.contains(&format!("another walhalla receive uses it (pid {holder})")),
        "{log}"
    );

    // The first goes on as if nothing happened.
    pg.write_rows(300);
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    assert_contiguous(&archive);
    assert!(first.stop().success(), "{}", first.log());
    let log = first.log();
    for sign in ["did not give back", "lost", "disconnected"] {
        assert!(!log.contains(sign), "{sign:?} in {log}");
    }
    // A shutdown that archived everything says so once it has.
    let shutting_down = log.find("shutting down: archiving what the spool holds");
    let stopped = log.find("stopped: everything received is archived");
    assert!(shutting_down.is_some() && stopped > shutting_down, "{log}");
}

#[test]
fn a_spool_removed_while_running_is_waited_for_and_nothing_is_lost() {
    use std::os::unix::fs::DirBuilderExt;
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, mut receiver) = streaming_primary(&wh, &archive, &[]);
    pg.write_rows(300);
    let before = pg.switch_wal();
    wait_archive_holds(&archive, &before);

    // The spool's directory disappears (an unmounted filesystem, a mistaken rm) while WAL
    // keeps coming: the receiver says why it waits, once, and keeps running.
    let away = receiver.spool.with_extension("away");
    std::fs::rename(&receiver.spool, &away).unwrap();
    pg.write_rows(300);
    let last = pg.switch_wal();
    const WAITING: &str = "waiting for it to come back";
    wait_for(
        "the receiver to say it waits for its spool",
        Duration::from_secs(60),
        || receiver.log().contains(WAITING).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(receiver.wait(Duration::ZERO), None, "{}", receiver.log());
    let log = receiver.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(WAITING))
        .count();
    assert_eq!(warnings, 1, "{log}");

    // Back as an empty directory (a new filesystem mounted there): it is made a spool again,
    // and what the slot kept is streamed again and archived, no hole.
    let fresh = receiver.spool.with_extension("fresh");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&fresh)
        .unwrap();
    crate::harness::give_tree_to_pg(&fresh);
    std::fs::rename(&fresh, &receiver.spool).unwrap();
    wait_archive_holds(&archive, &last);
    assert_contiguous(&archive);
    assert!(
        receiver.spool.join("walhalla.spool").exists(),
        "the spool was not marked again:\n{}",
        receiver.log()
    );
    assert!(receiver.stop().success(), "{}", receiver.log());
}

#[test]
fn the_demo_streams_backs_up_and_restores_and_keeps_its_logs_when_asked() {
    let wh = Walhalla::install();
    let run = std::process::Command::new(wh.path())
        .args(["demo", "--keep"])
        .output()
        .expect("run walhalla demo");
    assert!(run.status.success(), "{}", describe(&run));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.contains("state=streaming"), "{out}");
    assert!(
        out.contains("rows on the restored server: 100000 (the primary has 0)"),
        "the point-in-time restore did not bring the rows back:\n{out}"
    );
    assert!(
        out.contains("== what this showed") && out.contains("== next"),
        "{out}"
    );
    assert!(
        !out.contains("removing"),
        "--keep, yet it says it removes:\n{out}"
    );
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("== kept "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no kept directory named:\n{out}"));
    let kept = std::path::Path::new(kept);
    for log in ["receiver.log", "primary.log", "restored.log"] {
        let text = std::fs::read_to_string(kept.join(log)).unwrap_or_default();
        assert!(
            !text.is_empty(),
            "{log} is missing or empty in {}",
            kept.display()
        );
    }
    assert!(
        std::fs::read_to_string(kept.join("receiver.log"))
            .unwrap()
            .contains("streaming"),
        "the receiver's log does not show it streaming"
    );
    std::fs::remove_dir_all(kept).expect("remove the kept demo");

    let run = std::process::Command::new(wh.path())
        .arg("demo")
        .output()
        .expect("run walhalla demo");
    assert!(run.status.success(), "{}", describe(&run));
    let out = String::from_utf8_lossy(&run.stdout);
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("== removing "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("the demo does not say it removes its directory:\n{out}"));
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo did not clean up {dir}"
    );
}

#[test]
fn a_receiver_without_a_slot_warns_at_start() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let receiver = Receiver::start(&wh, &archive, &["-d", &pg.conninfo()]);
    wait_for("the warning", Duration::from_secs(30), || {
        let log = receiver.log();
        (log.contains("WARN") && log.contains("streaming without a replication slot (-S)"))
            .then_some(())
    });
}
