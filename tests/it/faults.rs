//! Faults injected end to end under pgbench load on a real primary. After each, the archive
//! is compared byte for byte with the primary's WAL, a copy recovered from a base backup
//! through `walhalla fetch` alone must equal the primary, and the test records its row of
//! the results table (`tests/faults/table.sh`).

use std::time::{Duration, Instant};

use crate::harness::faults::{self, Damage, FaultRow, PgBench};
use crate::harness::{
    Backend, FaultyS3, PgCluster, Receiver, S3Server, SpoolFs, TcpProxy, TestArchive, Walhalla,
    wait_for,
};
use crate::receive::{segno_of, wait_archive_holds, wait_streaming};

/// A primary with pgbench's tables that keeps all its WAL, a receiver streaming it into
/// `archive`, and a base backup without WAL taken before the load (not started).
pub(crate) fn primary_with_receiver(
    wh: &Walhalla,
    archive: &TestArchive,
    extra: &[&str],
) -> (PgCluster, Receiver, PgCluster) {
    primary_with(|pg| Receiver::on_slot(wh, archive, &pg.conninfo(), extra))
}

/// Like [`primary_with_receiver`], with whatever `start` starts for the primary: a receiver
/// (with what it goes through) that streams on slot "walhalla".
pub(crate) fn primary_with<T>(start: impl FnOnce(&PgCluster) -> T) -> (PgCluster, T, PgCluster) {
    let mut pg = PgCluster::init("primary");
    faults::keep_all_wal(&pg);
    pg.start();
    let receiver = start(&pg);
    wait_streaming(&pg);
    PgBench::init(&pg);
    let copy = PgCluster::from_backup(&pg, "restored", "none");
    (pg, receiver, copy)
}

/// A receiver for `pg` that reaches the S3 `archive` through a proxy the test controls, with
/// `--timeout 3` and `extra`.
fn receiver_behind_a_proxy(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    extra: &[&str],
) -> (Receiver, TcpProxy) {
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&proxy.endpoint());
    let args: Vec<&str> = ["--timeout", "3"].iter().chain(extra).copied().collect();
    let receiver = Receiver::on_slot_via(wh, archive, env, &pg.conninfo(), &args);
    (receiver, proxy)
}

/// How long, from `since` (the end of a fault), until the archive holds everything `pg` has
/// written by now.
pub(crate) fn caught_up(archive: &TestArchive, pg: &PgCluster, since: Instant) -> Duration {
    let written = pg.switch_wal();
    wait_archive_holds(archive, &written);
    since.elapsed()
}

/// Ends the load, compares the archive and recovers the copy ([`settle_and_compare`]), then
/// records `row` with what that found and fails unless nothing was lost or corrupted.
pub(crate) fn settle_and_record(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    load: PgBench,
    first: &str,
    copy: PgCluster,
    row: FaultRow,
) {
    let damage = settle_and_compare(wh, archive, pg, load, first, copy);
    FaultRow { damage, ..row }.record_and_assert_whole();
}

/// Fails unless the receiver's log holds each of `says` (what happened, in its words: `why`
/// otherwise), and unless it then stops cleanly.
fn assert_logged(mut receiver: Receiver, says: &[&str], why: &str) {
    let log = receiver.log();
    for text in says {
        assert!(log.contains(text), "{why} ({text:?} missing): {log}");
    }
    assert!(receiver.stop().success(), "{log}");
}

/// How many lines of `log` above debug level contain `text`.
fn lines_with(log: &str, text: &str) -> usize {
    log.lines()
        .filter(|line| {
            !line.contains(" DEBUG ") && !line.contains(" TRACE ") && line.contains(text)
        })
        .count()
}

/// The segment the primary writes now.
pub(crate) fn current_segment(pg: &PgCluster) -> String {
    pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
}

/// Ends the load, waits until the archive holds everything the primary wrote, compares it
/// from `first` on, and recovers `copy` through `fetch` alone: its data must equal the
/// primary's. Returns what the comparison found.
pub(crate) fn settle_and_compare(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    load: PgBench,
    first: &str,
    mut copy: PgCluster,
) -> Damage {
    load.stop();
    let last = pg.switch_wal();
    wait_archive_holds(archive, &last);
    let damage = faults::compare_with_server(wh, archive, pg, first, &last);
    copy.set_env(archive.env());
    copy.recover_from_archive(&format!(
        "{} --archive {} fetch %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(faults::fingerprint(&copy), faults::fingerprint(pg));
    damage
}

#[test]
fn the_primary_killed_under_load_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let (mut pg, mut receiver, copy) = primary_with_receiver(&wh, &archive, &[]);
    let first = current_segment(&pg);
    let tries = 3;
    let mut recovery = Duration::ZERO;
    for _ in 0..tries {
        let load = PgBench::start(&pg, 2);
        std::thread::sleep(Duration::from_secs(2));
        pg.stop("immediate");
        load.stop();
        pg.start();
        recovery = recovery.max(caught_up(&archive, &pg, Instant::now()));
    }
    let load = PgBench::start(&pg, 2);
    std::thread::sleep(Duration::from_secs(1));
    let damage = settle_and_compare(&wh, &archive, &pg, load, &first, copy);
    FaultRow {
        fault: "primary killed (immediate shutdown) and restarted",
        test: "faults::the_primary_killed_under_load_loses_nothing",
        tries,
        damage,
        recovery,
    }
    .record_and_assert_whole();
    let log = receiver.log();
    assert!(
        log.contains("reconnecting"),
        "no line says the primary went away: {log}"
    );
    assert!(receiver.stop().success(), "{log}");
}

#[test]
fn the_s3_server_killed_mid_upload_and_restarted_loses_nothing() {
    let wh = Walhalla::install();
    let mut archive = TestArchive::on_s3(S3Server::start_recorded("walhalla-it"));
    let (pg, receiver, copy) = primary_with_receiver(&wh, &archive, &[]);
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    let tries = 2;
    let mut recovery = Duration::ZERO;
    for _ in 0..tries {
        // Under load a segment is being stored at any moment.
        std::thread::sleep(Duration::from_secs(3));
        let s3 = archive.s3_mut().expect("an S3 archive");
        s3.kill9();
        std::thread::sleep(Duration::from_secs(5));
        let replayed = s3.restart();
        assert!(replayed > 0, "moto recorded nothing");
        recovery = recovery.max(caught_up(&archive, &pg, Instant::now()));
    }
    let row = FaultRow {
        fault: "S3 server killed (SIGKILL) mid-upload, restarted with its objects",
        test: "faults::the_s3_server_killed_mid_upload_and_restarted_loses_nothing",
        tries,
        damage: Damage::default(),
        recovery,
    };
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    assert_logged(
        receiver,
        &["archive writes failing", "archive writes work again"],
        "no line says the store went away and came back",
    );
}

#[test]
fn an_s3_server_slower_than_the_timeout_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let (pg, (receiver, proxy), copy) =
        primary_with(|pg| receiver_behind_a_proxy(&wh, &archive, pg, &[]));
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    std::thread::sleep(Duration::from_secs(2));
    // Every piece either way waits 4 s: no store operation ends within --timeout 3.
    proxy.set_delay(Duration::from_secs(4));
    std::thread::sleep(Duration::from_secs(20));
    proxy.set_delay(Duration::ZERO);
    let recovery = caught_up(&archive, &pg, Instant::now());
    let row = FaultRow {
        fault: "S3 slower than --timeout (4 s per read, 3 s timeout) for 20 s",
        test: "faults::an_s3_server_slower_than_the_timeout_loses_nothing",
        tries: 1,
        damage: Damage::default(),
        recovery,
    };
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    assert_logged(
        receiver,
        &["archive writes failing", "archive writes work again"],
        "no line says the store was too slow",
    );
}

#[test]
fn s3_answering_500_and_503_loses_nothing_and_logs_calmly() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let faulty = FaultyS3::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&faulty.endpoint());
    let (pg, receiver, copy) =
        primary_with(|pg| Receiver::on_slot_via(&wh, &archive, env, &pg.conninfo(), &[]));
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    std::thread::sleep(Duration::from_secs(2));
    // Two requests of every three: 500 InternalError and 503 SlowDown in turn.
    faulty.fail(2, 3);
    std::thread::sleep(Duration::from_secs(30));
    faulty.fail(0, 1);
    let recovery = caught_up(&archive, &pg, Instant::now());
    let (requests, injected) = faulty.counts();
    let row = FaultRow {
        fault: "S3 answering 500 InternalError / 503 SlowDown to 2 requests of 3 for 30 s",
        test: "faults::s3_answering_500_and_503_loses_nothing_and_logs_calmly",
        tries: u32::try_from(injected).expect("a count"),
        damage: Damage::default(),
        recovery,
    };
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    assert!(injected >= 10, "{injected} errors of {requests} requests");
    let log = receiver.log();
    assert!(
        log.contains("SlowDown") && log.contains("InternalError"),
        "no line names the errors: {log}"
    );
    // Calm: a line when it starts, maybe one per failure that lasts, not one per error.
    let failing = lines_with(&log, "archive writes failing");
    assert!(
        failing <= 5 && lines_with(&log, "archive writes work again") <= 5,
        "{failing} lines about {injected} errors: {log}"
    );
    assert_logged(
        receiver,
        &["archive writes failing, retrying"],
        "no line says the store answered errors",
    );
}

#[test]
fn a_full_spool_holds_the_stream_back_and_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let fs = SpoolFs::tmpfs(16);
    let (pg, receiver, copy) = primary_with(|pg| {
        Receiver::on_slot_in(
            &wh,
            &archive,
            archive.env(),
            &fs.spool(),
            &pg.conninfo(),
            &[],
        )
    });
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    let tries = 2;
    let mut recovery = Duration::ZERO;
    for _ in 0..tries {
        std::thread::sleep(Duration::from_secs(2));
        fs.fill();
        std::thread::sleep(Duration::from_secs(10));
        fs.free();
        recovery = recovery.max(caught_up(&archive, &pg, Instant::now()));
    }
    let row = FaultRow {
        fault: "spool filesystem full (ENOSPC) for 10 s",
        test: "faults::a_full_spool_holds_the_stream_back_and_loses_nothing",
        tries,
        damage: Damage::default(),
        recovery,
    };
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    assert_logged(
        receiver,
        &["spool full", "No space left on device"],
        "no line says the spool is full",
    );
}

#[test]
fn a_spool_turned_read_only_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let fs = SpoolFs::ext4_on_loop(64);
    let (pg, receiver, copy) = primary_with(|pg| {
        Receiver::on_slot_in(
            &wh,
            &archive,
            archive.env(),
            &fs.spool(),
            &pg.conninfo(),
            &[],
        )
    });
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    std::thread::sleep(Duration::from_secs(3));
    fs.break_read_only();
    std::thread::sleep(Duration::from_secs(5));
    // The operator's repair: unmount (the receiver must let go of the spool), e2fsck, mount.
    fs.repair(Duration::from_secs(60));
    let recovery = caught_up(&archive, &pg, Instant::now());
    let row = FaultRow {
        fault: "spool filesystem turned read-only (ext4 error), repaired with e2fsck",
        test: "faults::a_spool_turned_read_only_loses_nothing",
        tries: 1,
        damage: Damage::default(),
        recovery,
    };
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    assert_logged(
        receiver,
        &["Read-only file system"],
        "no line says the spool turned read-only",
    );
}

#[test]
fn a_spool_segment_read_back_damaged_is_received_again_never_archived() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let (pg, (receiver, proxy), copy) =
        primary_with(|pg| receiver_behind_a_proxy(&wh, &archive, pg, &[]));
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    std::thread::sleep(Duration::from_secs(2));
    // The store away: segments wait in the spool, and each retry reads its file again.
    proxy.pause();
    damage_a_waiting_segment(&receiver.spool);
    proxy.resume();
    let recovery = caught_up(&archive, &pg, Instant::now());
    let row = FaultRow {
        fault: "a spool segment read back with a page of zeros (a lost write)",
        test: "faults::a_spool_segment_read_back_damaged_is_received_again_never_archived",
        tries: 1,
        damage: Damage::default(),
        recovery,
    };
    let spool = receiver.spool.clone();
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    // Removed once its segment, received again, is archived.
    let copies = || -> Vec<String> {
        (std::fs::read_dir(&spool).unwrap())
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(".damaged"))
            .collect()
    };
    wait_for("no damaged copy left", Duration::from_secs(30), || {
        copies().is_empty().then_some(())
    });
    assert_logged(
        receiver,
        &[
            "did not give back what was received",
            "did not read back from the spool as it was received: streaming again",
            "kept the refused file aside as a damaged copy",
            "removed the damaged copy the spool kept",
        ],
        "no line says the damaged segment was refused, kept aside, streamed again and its copy removed",
    );
}

/// A stopped receiver's spool holding an empty file (as an e2fsck can leave one) named as the
/// next segment the archive lacks, which the slot keeps; written while the receiver is away:
/// that segment and one more. Returns the primary, the receiver, the empty file's segment and
/// the newest segment written.
#[cfg(feature = "failpoints")]
fn an_empty_spool_file_the_archive_lacks(
    wh: &Walhalla,
    archive: &TestArchive,
) -> (PgCluster, Receiver, String, String) {
    let (pg, mut receiver) = crate::receive::streaming_primary(wh, archive, &[]);
    pg.write_rows(100);
    wait_archive_holds(archive, &pg.switch_wal());
    assert!(receiver.stop().success(), "{}", receiver.log());
    let lacking = pg.switch_wal();
    pg.write_rows(100);
    let last = pg.switch_wal();
    let empty = receiver.spool.join(&lacking);
    std::fs::File::create(&empty).expect("an empty spool file");
    crate::harness::give_tree_to_pg(&empty);
    (pg, receiver, lacking, last)
}

/// `receiver` started again on its spool and slot "walhalla" of `pg`, with `failpoints` armed
/// and `extra` arguments.
#[cfg(feature = "failpoints")]
fn restart_with_failpoints(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    receiver: &Receiver,
    failpoints: String,
    extra: &[&str],
) -> Receiver {
    let mut vars = archive.env();
    vars.push((walhalla::failpoint::VARIABLE.into(), failpoints));
    let args = restart_args(pg, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Receiver::restart_via(wh, archive, vars, &receiver.spool, &args)
}

/// A receiver killed once the archive holds a file, before the file leaves the spool: the
/// next start uploads it again, and the line that says so says the archive held the same
/// bytes already, so that a second "archived" line for one file is explained.
#[cfg(feature = "failpoints")]
#[test]
fn a_file_stored_before_a_crash_is_said_to_be_held_already_when_archived_again() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, mut receiver) = crate::receive::streaming_primary(&wh, &archive, &[]);
    assert!(receiver.stop().success(), "{}", receiver.log());
    let point = walhalla::failpoint::UPLOAD_STORED;
    let mut killed = restart_with_failpoints(
        &wh,
        &archive,
        &pg,
        &receiver,
        format!("{point}=return"),
        &[],
    );
    pg.write_rows(10);
    let segment = pg.switch_wal();
    let status = killed
        .wait(Duration::from_secs(60))
        .expect("killed at the fail point");
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    assert_eq!(signal, Some(9), "{}", killed.log());
    let mut again = restart_on_slot(&wh, &archive, &pg, &receiver, &[]);
    wait_archive_holds(&archive, &segment);
    wait_for(
        "the file archived again to be said",
        Duration::from_secs(30),
        || {
            (again.log().lines())
                .any(|l| l.contains("(the archive held the same bytes already)"))
                .then_some(())
        },
    );
    assert!(again.stop().success(), "{}", again.log());
}

/// The arguments that start a receiver again on slot "walhalla" of `pg`, with status updates
/// every second, and `extra`.
fn restart_args(pg: &PgCluster, extra: &[&str]) -> Vec<String> {
    let mut args = [
        "-d",
        &pg.conninfo(),
        "-S",
        "walhalla",
        "--status-interval",
        "1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `receiver` started again on its spool and slot "walhalla" of `pg`, with `extra` arguments.
fn restart_on_slot(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    receiver: &Receiver,
    extra: &[&str],
) -> Receiver {
    let args = restart_args(pg, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Receiver::restart(wh, archive, &receiver.spool, &args)
}

/// Fails unless the uploader refused the empty spool file of `lacking` and nothing was
/// reported lost.
#[cfg(feature = "failpoints")]
fn assert_refused_not_lost(log: &str, lacking: &str) {
    assert!(
        log.contains(&format!("file={lacking}")) && log.contains("it holds 0 of its"),
        "the uploader did not refuse the empty file: {log}"
    );
    assert!(
        !log.contains("lost to the archive"),
        "a segment the slot kept was reported lost: {log}"
    );
}

/// CI67's race: a restart finds a segment in the spool that its filesystem's repair left
/// empty, the next segment the archive lacks. The start planned where to stream from while
/// the uploader checked the file, and counted it as held. Now the take-over reads it back
/// before any plan; the fail point still holds the first upload's read-back, the order CI67
/// met. The slot keeps that WAL, so it must be streamed again, not reported lost with a hole
/// left in the archive.
#[cfg(feature = "failpoints")]
#[test]
fn a_spool_file_left_empty_is_refused_before_the_start_plans_and_streamed_again() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, receiver, lacking, last) = an_empty_spool_file_the_archive_lacks(&wh, &archive);
    let hold = format!("{}=1*sleep(1500)", walhalla::failpoint::UPLOAD_START);
    let mut again = restart_with_failpoints(&wh, &archive, &pg, &receiver, hold, &[]);
    wait_archive_holds(&archive, &last);
    let log = again.log();
    assert_refused_not_lost(&log, &lacking);
    // Refused at the take-over, before any plan; not after the plan (which the stream would
    // catch, so the test would pass without the take-over's part).
    assert!(
        log.lines().any(|l| l.contains("receiver::takeover")
            && l.contains("read back the complete segments an earlier run left")
            && l.contains("refused=1")),
        "the take-over did not refuse the empty file: {log}"
    );
    assert!(
        !log.contains(&format!("{lacking} did not read back")),
        "refused after the plan, not before it: {log}"
    );
    // Kept aside while refused; removed once its segment is archived, received again.
    let kept = receiver.spool.join(format!("{lacking}.damaged"));
    wait_for("the damaged copy to go", Duration::from_secs(30), || {
        (!kept.exists()).then_some(())
    });
    let log = again.log();
    assert!(
        log.contains("kept the refused file aside as a damaged copy")
            && log.contains("removed the damaged copy the spool kept"),
        "{log}"
    );
    assert!(again.stop().success(), "{log}");
}

/// helper-79's loss: a receiver restarted in `--synchronous` mode on a spool holding a damaged
/// copy of the next segment the archive lacks. The start counted the file as held and
/// streamed past it, the flush position (the fsynced spool) let the server recycle the
/// segment, and it was lost when the upload refused the file. Now the take-over refuses it
/// before the start plans, so it is streamed again. The fail point holds the upload's
/// read-back, where that refusal came from, while the primary writes and checkpoints.
#[cfg(feature = "failpoints")]
#[test]
fn synchronous_a_spool_file_left_damaged_is_streamed_again_not_confirmed() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, receiver, lacking, _) = an_empty_spool_file_the_archive_lacks(&wh, &archive);
    let hold = format!("{}=1*sleep(4000)", walhalla::failpoint::UPLOAD_START);
    let synchronous = ["--synchronous"];
    let mut again = restart_with_failpoints(&wh, &archive, &pg, &receiver, hold, &synchronous);
    wait_streaming(&pg);
    // What would recycle the segment if the slot let it go.
    for _ in 0..8 {
        pg.write_rows(500);
        pg.switch_wal();
        pg.sql("CHECKPOINT");
        std::thread::sleep(Duration::from_millis(300));
    }
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    let log = again.log();
    assert_refused_not_lost(&log, &lacking);
    assert!(again.stop().success(), "{log}");
}

/// A check of what an earlier run left that panics (a bug damaged bytes meet, stood for by
/// the fail point's `panic`) refuses that file, as damaged, instead of ending the receiver at
/// every start: it is received again and everything is archived.
#[cfg(feature = "failpoints")]
#[test]
fn a_panic_while_checking_a_spool_file_refuses_it_not_the_receiver() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, receiver, lacking, last) = an_empty_spool_file_the_archive_lacks(&wh, &archive);
    let panic = format!("{}=1*panic(bad bytes)", walhalla::failpoint::TAKEOVER_CHECK);
    let mut again = restart_with_failpoints(&wh, &archive, &pg, &receiver, panic, &[]);
    wait_archive_holds(&archive, &last);
    wait_archive_holds(&archive, &lacking);
    let log = again.log();
    assert!(
        log.lines()
            .any(|l| l.contains("the check failed: bad bytes")
                && l.contains("did not give back what was received")
                && l.contains(&format!("file={lacking}"))),
        "the panic did not refuse the file: {log}"
    );
    assert!(!log.contains("the archive has a hole"), "{log}");
    assert!(!log.contains("lost to the archive"), "{log}");
    assert!(again.stop().success(), "{log}");
}

/// A stopped receiver's spool holding a file an earlier run left of the next segment the
/// archive lacks (1 MiB: 30 transactions of 10 rows of table `t`, about 330 kB, after a base
/// backup), as PostgreSQL wrote it but for `damage`, which the server then no longer has (its
/// slot moved past it by hand, as `--synchronous` mode's confirmations move it). Returns the
/// primary, the receiver, the segment and the file's bytes.
fn a_spool_file_of_a_segment_the_server_recycled(
    wh: &Walhalla,
    archive: &TestArchive,
    damage: impl FnOnce(&mut Vec<u8>),
) -> (PgCluster, Receiver, String, Vec<u8>) {
    let (pg, mut receiver) = crate::receive::streaming_primary(wh, archive, &[]);
    pg.write_rows(100);
    crate::backup::take_backup(wh, archive, &pg);
    wait_archive_holds(archive, &pg.switch_wal());
    assert!(receiver.stop().success(), "{}", receiver.log());
    for _ in 0..30 {
        pg.write_rows(10);
    }
    let lacking = pg.switch_wal();
    let mut bytes = std::fs::read(pg.data.join("pg_wal").join(&lacking)).expect("pg_wal copy");
    damage(&mut bytes);
    let spooled = receiver.spool.join(&lacking);
    std::fs::write(&spooled, &bytes).expect("a spool file");
    crate::harness::give_tree_to_pg(&spooled);
    pg.sql("SELECT pg_replication_slot_advance('walhalla', pg_current_wal_lsn())");
    wait_for(
        "the primary to recycle the segment",
        Duration::from_secs(60),
        || {
            pg.write_rows(10);
            pg.switch_wal();
            pg.sql("CHECKPOINT");
            let left = format!("SELECT count(*) FROM pg_ls_waldir() WHERE name = '{lacking}'");
            (pg.sql(&left) == "0").then_some(())
        },
    );
    (pg, receiver, lacking, bytes)
}

/// In `--synchronous` mode a spool file an earlier run left that cannot be
/// read (here: its mode 000; the receiver runs as PostgreSQL's user) holds the flush position,
/// and so synchronous commits, until it reads back. That must be said, and its segment, which
/// the server no longer has, not reported lost while the file may still read back: once it
/// can be read, it is archived and the archive has no hole.
#[test]
fn synchronous_an_unreadable_spool_file_holds_the_flush_says_so_and_is_archived_later() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, receiver, lacking, _) =
        a_spool_file_of_a_segment_the_server_recycled(&wh, &archive, |_| {});
    let spooled = receiver.spool.join(&lacking);
    let mode = |mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&spooled, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(0o000);
    let mut again = restart_on_slot(&wh, &archive, &pg, &receiver, &["--synchronous"]);
    wait_for("the hold to be said", Duration::from_secs(60), || {
        again
            .log()
            .contains("has not read back (see the warnings about it): the flush position is held")
            .then_some(())
    });
    let log = again.log();
    assert!(
        log.contains("cannot read what an earlier run left in the spool")
            && log.contains("which has not read back yet"),
        "{log}"
    );
    mode(0o640);
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    wait_for("the hold's end to be said", Duration::from_secs(60), || {
        again
            .log()
            .contains("the flush position is no longer held by a spool file")
            .then_some(())
    });
    let log = again.log();
    assert!(!log.contains("lost to the archive"), "{log}");
    assert!(again.stop().success(), "{log}");
}

/// A spool file an earlier run left that does not read back, of a segment
/// the server no longer has (in `--synchronous` mode a checkpoint recycles WAL the receiver
/// confirmed; here the slot is moved past it by hand while the receiver is stopped). It was
/// removed, and with it the only copy of the WAL before its damage. Now it is kept as
/// `SEGMENT.damaged`, never archived, named where the segment is reported lost, and kept (and
/// named again) at the next start.
#[test]
fn a_damaged_spool_file_of_a_segment_the_server_recycled_is_kept_and_named() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    // A byte flipped inside a record, past the segment's first 256 kB.
    let (pg, receiver, lacking, damaged) =
        a_spool_file_of_a_segment_the_server_recycled(&wh, &archive, |bytes| {
            bytes[200_000] ^= 0xff
        });
    let mut again = restart_on_slot(&wh, &archive, &pg, &receiver, &[]);
    let kept = receiver.spool.join(format!("{lacking}.damaged"));
    let named = format!("copy={}", kept.display());
    wait_for(
        "the loss to name the damaged copy",
        Duration::from_secs(60),
        || {
            again
                .log()
                .lines()
                .any(|l| l.contains("damaged copy of this lost segment") && l.contains(&named))
                .then_some(())
        },
    );
    let last = pg.switch_wal();
    let archived = |segment: &str| {
        crate::receive::archived(&archive)
            .0
            .contains(&segno_of(segment))
    };
    wait_for("streaming to go on", Duration::from_secs(60), || {
        archived(&last).then_some(())
    });
    let log = again.log();
    assert!(log.contains("lost to the archive"), "{log}");
    assert!(!archived(&lacking), "a damaged file was archived: {log}");
    assert_eq!(
        std::fs::read(&kept).ok().as_deref(),
        Some(&damaged[..]),
        "the damaged copy is not kept as it was: {log}"
    );
    assert!(
        log.matches("the spool keeps damaged copies").count() <= 1,
        "named again at every session: {log}"
    );
    // Its WAL up to the damaged record is archived as a snapshot, which `fetch --partial`
    // serves zero-padded: PostgreSQL's bytes up to there.
    wait_for(
        "the snapshot of the valid WAL",
        Duration::from_secs(30),
        || {
            let (_, snapshots) = crate::receive::archived(&archive);
            snapshots
                .iter()
                .any(|&(segno, _)| segno == segno_of(&lacking))
                .then_some(())
        },
    );
    let dir = crate::harness::TestDir::new("fetch");
    let dest = dir.path().join("RESTORED");
    let fetched_run = wh.run(
        &archive,
        dir.path(),
        &["fetch", "--partial", &lacking, &dest.display().to_string()],
    );
    assert!(fetched_run.status.success(), "{fetched_run:?}");
    let fetched = std::fs::read(&dest).expect("the fetched segment");
    let valid = fetched.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
    assert!(
        (200_000 - 16_384..=200_000).contains(&valid) && fetched[..valid] == damaged[..valid],
        "fetch --partial served {valid} bytes of WAL, not those before the damage at 200000: {log}"
    );
    assert!(fetched[valid..].iter().all(|&b| b == 0));
    let said = String::from_utf8_lossy(&fetched_run.stderr);
    assert!(
        said.contains("is not archived whole: wrote its last-resort copy"),
        "{said}"
    );
    // `list` and `verify` name the snapshot with the hole.
    let listing = wh.run(&archive, dir.path(), &["list"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    let named = format!("1 missing; a snapshot holds {lacking}'s WAL up to");
    assert!(listing.contains(&named), "{listing}");
    let verified = wh.run(&archive, dir.path(), &["verify"]);
    let findings = format!("{verified:?}");
    assert_eq!(verified.status.code(), Some(1), "{findings}");
    assert!(
        findings.contains(&format!("(a snapshot holds {lacking}'s WAL up to")),
        "{findings}"
    );
    // Without --partial the hole is refused, and the refusal says what --partial would do.
    let refused = crate::harness::TestDir::new("refused");
    let (code, _, stderr) =
        crate::backup::restore(&wh, &archive, &refused.path().join("data"), &[]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("The archive holds a snapshot of it, its WAL up to")
            && stderr.contains("`restore --partial` (not --standby) replays up to there"),
        "{stderr}"
    );
    // With a target inside the snapshot, it is named, but nothing is promised: a restore
    // with another target may choose another backup and path.
    let key = (archive.keys().into_iter())
        .find(|k| k.contains(&format!("{lacking}.partial.")))
        .expect("the snapshot");
    let end = key.rsplit('.').nth(1).expect("SEGMENT.partial.END.zst");
    let inside = u64::from_str_radix(end, 16).unwrap() - 8;
    let target = format!("{:X}/{:X}", inside >> 32, inside & 0xffff_ffff);
    let (code, _, stderr) = crate::backup::restore(
        &wh,
        &archive,
        &refused.path().join("data"),
        &["--partial", "--target-lsn", &target],
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("The archive holds a snapshot of it, its WAL up to")
            && !stderr.contains("replays up to there"),
        "{stderr}"
    );
    // `restore --partial` goes on through the hole, and recovery ends at the damage: the
    // transactions committed before it (of 30 in the segment), none after.
    let restored = crate::harness::TestDir::new("restored");
    let data = restored.path().join("data");
    let (code, report, stderr) = crate::backup::restore(&wh, &archive, &data, &["--partial"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("which holds a snapshot of it up to"),
        "{stderr}"
    );
    let report = report.expect("restore --json");
    assert_eq!(
        report["ends_in_snapshot"][0],
        lacking.as_str(),
        "{report:#}"
    );
    let restored = crate::backup::start_restored(&archive, restored, data);
    let rows: u32 = restored.sql("SELECT count(*) FROM t").parse().unwrap();
    assert!(
        rows > 100 && rows < 400 && rows % 10 == 0,
        "{rows} rows: not those committed before the damage"
    );
    assert!(again.stop().success(), "{log}");
    let log = again.log();
    assert!(
        log.lines().any(|l| l.contains(
            "stopped: everything received is archived but the segments of the damaged copies"
        ) && l.contains(&kept.display().to_string())),
        "{log}"
    );
    // Kept, and named, at the next start too; and a snapshot missing from the archive (a
    // stop before its task ran, a full spool: here deleted) is stored again.
    let snapshots = || {
        (archive.keys().into_iter())
            .filter(|k| k.contains(&format!("{lacking}.partial.")))
            .collect::<Vec<_>>()
    };
    let stored = snapshots();
    assert_eq!(stored.len(), 1, "{stored:?}");
    archive.remove(&stored[0]);
    let mut third = restart_on_slot(&wh, &archive, &pg, &receiver, &[]);
    wait_streaming(&pg);
    wait_for("the snapshot stored again", Duration::from_secs(30), || {
        (snapshots() == stored).then_some(())
    });
    wait_for(
        "the start to name the damaged copy",
        Duration::from_secs(30),
        || {
            let log = third.log();
            (log.contains("the spool keeps damaged copies")
                && log.contains(&kept.display().to_string()))
            .then_some(())
        },
    );
    assert!(kept.exists(), "{}", third.log());
    assert!(third.stop().success(), "{}", third.log());
}

/// Once three complete segments wait in `spool` (the store away), damages the newest as a lost
/// write would (its second page reads back as zeros), and gives the uploader's next attempt
/// (`--timeout 3`) time to read it back. Returns its name.
fn damage_a_waiting_segment(spool: &std::path::Path) -> String {
    let waiting = wait_for(
        "three complete segments waiting in the spool",
        Duration::from_secs(60),
        || {
            let mut complete: Vec<_> = std::fs::read_dir(spool)
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect();
            complete.sort();
            (complete.len() >= 3).then(|| complete.pop().expect("three"))
        },
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(spool.join(&waiting))
        .expect("open a spool segment");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 8192], 8192).expect("damage it");
    drop(file);
    std::thread::sleep(Duration::from_secs(3));
    waiting
}

#[test]
fn at_endpos_a_segment_read_back_damaged_is_received_again_and_the_run_ends() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let mut pg = PgCluster::init("primary");
    faults::keep_all_wal(&pg);
    pg.start();
    pg.sql("CREATE TABLE t (n int)");
    let first = current_segment(&pg);
    // The end position: four segments ahead, in the middle of a page.
    let size = pg.sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'");
    let end = pg.sql(&format!("SELECT pg_current_wal_lsn() + 4 * {size} + 100"));
    let last = pg.sql(&format!("SELECT pg_walfile_name('{end}'::pg_lsn - {size})"));
    let (mut receiver, proxy) = receiver_behind_a_proxy(&wh, &archive, &pg, &["--endpos", &end]);
    wait_streaming(&pg);
    // The store away while the receiver reaches the end position.
    proxy.pause();
    while pg.sql(&format!("SELECT pg_current_wal_lsn() > '{end}'")) != "t" {
        pg.sql("INSERT INTO t SELECT generate_series(1, 10000)");
        pg.switch_wal();
    }
    let damaged = damage_a_waiting_segment(&receiver.spool);
    proxy.resume();
    let status = receiver
        .wait(Duration::from_secs(120))
        .expect("--endpos must end the receiver");
    let log = receiver.log();
    assert!(status.success(), "{status:?}: {log}");
    assert!(
        log.contains(&format!(
            "{damaged} did not read back from the spool as it was received: streaming again"
        )),
        "no line says the damaged segment was streamed again: {log}"
    );
    let damage = faults::compare_with_server(&wh, &archive, &pg, &first, &last);
    assert_eq!(damage.bytes_lost + damage.corrupt_objects, 0, "{damage:?}");
    assert!(damage.segments >= 4, "{damage:?}");
}

#[test]
fn the_network_to_the_primary_cut_past_the_timeouts_loses_nothing() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let (pg, (receiver, proxy), copy) = primary_with(|pg| {
        pg.append_conf("wal_sender_timeout = '5s'");
        pg.sql("SELECT pg_reload_conf()");
        let proxy = TcpProxy::start(([127, 0, 0, 1], pg.port).into());
        let conninfo = format!("host=127.0.0.1 port={} user=postgres", proxy.addr().port());
        let receiver = Receiver::on_slot(&wh, &archive, &conninfo, &["--receive-timeout", "6"]);
        (receiver, proxy)
    });
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    std::thread::sleep(Duration::from_secs(2));
    // Silence both ways, past wal_sender_timeout (5 s) and --receive-timeout (6 s).
    proxy.blackhole();
    std::thread::sleep(Duration::from_secs(15));
    proxy.heal();
    let back = Instant::now();
    wait_streaming(&pg);
    let recovery = caught_up(&archive, &pg, back);
    let row = FaultRow {
        fault: "network to the primary silent for 15 s (timeouts 5 s and 6 s)",
        test: "faults::the_network_to_the_primary_cut_past_the_timeouts_loses_nothing",
        tries: 1,
        damage: Damage::default(),
        recovery,
    };
    settle_and_record(&wh, &archive, &pg, load, &first, copy, row);
    assert_logged(
        receiver,
        &["no message from the server", "reconnecting"],
        "no line says the connection was given up and made again",
    );
}
