//! Faults injected end to end under pgbench load on a real primary. After each, the archive
//! is compared byte for byte with the primary's WAL, a copy recovered from a base backup
//! through `walhalla fetch` alone must equal the primary, and the test records its row of
//! the results table (`tests/faults/table.sh`).

use std::time::{Duration, Instant};

use crate::harness::faults::{self, Damage, FaultRow, PgBench};
use crate::harness::{Backend, PgCluster, Receiver, TestArchive, Walhalla};
use crate::receive::{wait_archive_holds, wait_streaming};

/// A primary with pgbench's tables that keeps all its WAL, a receiver streaming it into
/// `archive`, and a base backup without WAL taken before the load (not started).
pub(crate) fn primary_with_receiver(
    wh: &Walhalla,
    archive: &TestArchive,
    extra: &[&str],
) -> (PgCluster, Receiver, PgCluster) {
    let mut pg = PgCluster::init("primary");
    faults::keep_all_wal(&pg);
    pg.start();
    let receiver = Receiver::on_slot(wh, archive, &pg.conninfo(), extra);
    wait_streaming(&pg);
    PgBench::init(&pg);
    let copy = PgCluster::from_backup(&pg, "restored", "none");
    (pg, receiver, copy)
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
        let back = Instant::now();
        let written = pg.switch_wal();
        wait_archive_holds(&archive, &written);
        recovery = recovery.max(back.elapsed());
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
