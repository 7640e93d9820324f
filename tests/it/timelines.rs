//! `walhalla receive` across promotions: timeline switches, history files, following the new
//! primary among several hosts, and partial segments in the archive.

use std::time::Duration;

use crate::harness::{Backend, PgCluster, Receiver, TestArchive, Walhalla, wait_for};
use crate::push::key_of;

/// Waits until the archive holds `name`'s object.
fn wait_object(archive: &TestArchive, system_id: u64, name: &str) {
    let key = key_of(system_id, name);
    wait_for(
        &format!("{name} in the archive"),
        Duration::from_secs(120),
        || archive.object(&key).map(|_| ()),
    );
}

/// The object of `name` decoded, as fetch gives it back.
fn fetched(wh: &Walhalla, archive: &TestArchive, pg: &PgCluster, name: &str) -> Vec<u8> {
    let out = crate::harness::TestDir::new("out");
    let dest = out.path().join(name);
    let run = wh.run(archive, &pg.data, &["fetch", name, dest.to_str().unwrap()]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "fetch {name}: {}",
        crate::harness::describe(&run)
    );
    std::fs::read(dest).unwrap()
}

fn promote(pg: &PgCluster) {
    pg.sql("SELECT pg_promote()");
    wait_for("the promotion", Duration::from_secs(60), || {
        (pg.try_sql("SELECT pg_is_in_recovery()")? == "f").then_some(())
    });
}

fn wait_replayed(primary: &PgCluster, standby: &PgCluster) {
    let target = primary.sql("SELECT pg_current_wal_lsn()");
    wait_for("the standby to replay", Duration::from_secs(60), || {
        (standby.try_sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'"))? == "t")
            .then_some(())
    });
}

#[test]
fn follows_a_failover_to_the_promoted_standby() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    primary.append_conf("wal_keep_size = '1GB'");
    primary.start();
    primary.write_rows(500);
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.append_conf("wal_keep_size = '1GB'");
    standby.start();
    let hosts = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut receiver = Receiver::on_slot(&wh, &archive, &hosts, &[]);
    wait_for("the receiver to stream", Duration::from_secs(60), || {
        let streaming = primary
            .sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walhalla'");
        (streaming == "1").then_some(())
    });
    // Taken once the receiver streams, so all the WAL it needs reaches the archive.
    let mut backup = PgCluster::from_backup(&primary, "restored", "none");
    primary.write_rows(1000);
    let before = primary.switch_wal();
    let system_id = primary.system_id();
    wait_object(&archive, system_id, &before);
    primary.write_rows(300);
    wait_replayed(&primary, &standby);

    primary.stop("fast");
    promote(&standby);
    standby.write_rows(1000);
    let after = standby.switch_wal();
    assert!(after.starts_with("00000002"), "{after}");
    wait_object(&archive, system_id, &after);
    let history = fetched(&wh, &archive, &standby, "00000002.history");
    assert_eq!(
        history,
        std::fs::read(standby.data.join("pg_wal/00000002.history")).unwrap()
    );
    let log = receiver.log();
    assert!(
        log.contains("created replication slot")
            && log.contains(&format!("127.0.0.1:{}", standby.port)),
        "{log}"
    );
    assert!(receiver.stop().success());

    // Recovery through the archive alone follows the history to timeline 2's data.
    backup.append_conf(&format!(
        "restore_command = '{} --archive {} fetch %f %p'\nrecovery_target_timeline = 'latest'",
        wh.path().display(),
        archive.url()
    ));
    std::fs::write(backup.data.join("recovery.signal"), "").unwrap();
    backup.start();
    wait_for("recovery to finish", Duration::from_secs(120), || {
        (backup.try_sql("SELECT pg_is_in_recovery()")? == "f").then_some(())
    });
    assert_eq!(backup.table_fingerprint(), standby.table_fingerprint());
}

#[test]
fn follows_the_promotion_of_the_standby_it_streams_from() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    primary.start();
    primary.write_rows(500);
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.append_conf("wal_keep_size = '1GB'");
    standby.start();
    let conninfo = standby.conninfo();
    let mut receiver = Receiver::on_slot(&wh, &archive, &conninfo, &[]);
    primary.write_rows(1000);
    primary.switch_wal();
    wait_replayed(&primary, &standby);
    primary.stop("fast");
    promote(&standby);
    standby.write_rows(1000);
    let after = standby.switch_wal();
    wait_object(&archive, standby.system_id(), &after);
    wait_object(&archive, standby.system_id(), "00000002.history");
    let log = receiver.log();
    assert!(log.contains("timeline switch"), "{log}");
    assert!(
        !log.contains("reconnecting"),
        "it should follow without a reconnection:\n{log}"
    );
    assert!(receiver.stop().success());
}

#[test]
fn starts_on_an_empty_archive_against_timeline_2() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    primary.start();
    primary.write_rows(200);
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.start();
    wait_replayed(&primary, &standby);
    primary.stop("fast");
    promote(&standby);
    let conninfo = standby.conninfo();
    let mut receiver = Receiver::start(
        &wh,
        &archive,
        &["-d", &conninfo, "-S", "walhalla", "--create-slot"],
    );
    standby.write_rows(1000);
    let after = standby.switch_wal();
    wait_object(&archive, standby.system_id(), &after);
    let history = fetched(&wh, &archive, &standby, "00000002.history");
    assert_eq!(
        history,
        std::fs::read(standby.data.join("pg_wal/00000002.history")).unwrap()
    );
    assert!(receiver.stop().success());
}

#[test]
fn partial_uploads_bound_what_losing_the_host_loses() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let conninfo = pg.conninfo();
    let mut receiver = Receiver::on_slot(&wh, &archive, &conninfo, &["--partial-interval", "1"]);
    pg.write_rows(100);
    let written: walhalla::wal::Lsn = pg.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The host is lost: the receiver dies and its spool with it.
    receiver.kill9();
    std::fs::remove_dir_all(&receiver.spool).unwrap();
    let system_id = pg.system_id().to_string();
    let newest_end = archive
        .keys()
        .iter()
        .filter(|k| k.starts_with(&system_id))
        .filter_map(|k| {
            k.strip_suffix(".zst")?
                .rsplit_once(".partial.")
                .map(|(_, end)| u64::from_str_radix(end, 16).unwrap())
        })
        .max()
        .expect("a partial snapshot in the archive");
    assert!(
        newest_end >= written.0,
        "the archive ends at {newest_end:X}, WAL was written up to {written}"
    );
}
