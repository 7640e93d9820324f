//! `walhalla receive` across promotions: timeline switches, history files, following the new
//! primary among several hosts, and partial segments in the archive.

use std::time::Duration;

use crate::harness::{Backend, PgCluster, Receiver, TestArchive, Walhalla, describe, wait_for};
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

/// A primary with some rows, its standby, and a receiver on slot "walhalla" of whichever of
/// the two accepts writes.
/// The key and end of cluster `system_id`'s snapshot reaching furthest, if any.
fn newest_snapshot(archive: &TestArchive, system_id: u64) -> Option<(String, u64)> {
    let cluster = format!("{system_id}/");
    archive
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&cluster))
        .filter_map(|k| {
            let (_, end) = k.strip_suffix(".zst")?.rsplit_once(".partial.")?;
            let end = u64::from_str_radix(end, 16).ok()?;
            Some((k, end))
        })
        .max_by_key(|(_, end)| *end)
}

fn pair_with_receiver(
    wh: &Walhalla,
    archive: &TestArchive,
    extra: &[&str],
) -> (PgCluster, PgCluster, Receiver) {
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
    let receiver = Receiver::on_slot(wh, archive, &hosts, extra);
    // Its slot must exist before the test writes: it starts where the slot was created.
    wait_for("the receiver to stream", Duration::from_secs(60), || {
        (primary.receiver_connections() == 1).then_some(())
    });
    (primary, standby, receiver)
}

#[test]
fn follows_a_failover_to_the_promoted_standby() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, standby, mut receiver) = pair_with_receiver(&wh, &archive, &[]);
    // Taken once the receiver streams, so all the WAL it needs reaches the archive.
    let mut backup = PgCluster::from_backup(&primary, "restored", "none");
    primary.write_rows(1000);
    let before = primary.switch_wal();
    let system_id = primary.system_id();
    wait_object(&archive, system_id, &before);
    primary.write_rows(300);
    standby.wait_replayed(&primary);

    primary.stop("fast");
    standby.promote();
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
    backup.recover_from_archive(&format!(
        "{} --archive {} fetch %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(backup.table_fingerprint(), standby.table_fingerprint());
}

/// An old primary left running after a failover, listed first among the hosts: the receiver
/// refuses it (its timeline is older than the archive's) and then tries the promoted standby
/// first, instead of asking the old primary again and again while nothing is archived.
#[test]
fn an_old_primary_left_running_is_passed_over_for_the_promoted_standby() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, standby, mut receiver) = pair_with_receiver(&wh, &archive, &[]);
    let system_id = primary.system_id();
    primary.write_rows(300);
    standby.wait_replayed(&primary);
    primary.stop("fast");
    standby.promote();
    standby.write_rows(300);
    let after = standby.switch_wal();
    wait_object(&archive, system_id, &after);

    // The old primary comes back as a primary (unfenced), and the stream from the promoted
    // one breaks.
    primary.start();
    let streaming_from_new = || standby.receiver_connections();
    standby.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'walhalla'",
    );
    wait_for(
        "the receiver to refuse the old primary",
        Duration::from_secs(60),
        || {
            receiver
                .log()
                .contains("the other hosts are tried first")
                .then_some(())
        },
    );
    wait_for(
        "the receiver to stream from the promoted standby again",
        Duration::from_secs(60),
        || (streaming_from_new() == 1).then_some(()),
    );
    standby.write_rows(100);
    let later = standby.switch_wal();
    wait_object(&archive, system_id, &later);
    assert!(receiver.stop().success());
}

/// Promotes `standby` to timeline 2 and archives its history file, as the new primary's
/// archive_command does first: the archive knows of the promotion by that file alone.
fn promote_and_archive_the_history(wh: &Walhalla, archive: &TestArchive, standby: &PgCluster) {
    standby.promote();
    let pushed = wh.run(archive, &standby.data, &["push", "pg_wal/00000002.history"]);
    assert!(pushed.status.success(), "{}", describe(&pushed));
}

/// A failover in which the old primary keeps running and writing (a split brain), and the
/// promoted standby has archived only its history file: a new receiver on the old primary is
/// refused at once, and a synchronous receiver already streaming from it leaves it once it
/// writes past the fork and goes on from the promoted node (helper-72: it kept confirming the
/// old primary's commits, which the promoted node will never have).
#[test]
fn an_old_primary_in_a_split_brain_is_left_once_the_archive_holds_the_promotion() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (primary, standby, mut receiver) = pair_with_receiver(&wh, &archive, &["--synchronous"]);
    primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'walhalla'");
    primary.sql("SELECT pg_reload_conf()");
    primary.write_rows(100);
    standby.wait_replayed(&primary);
    promote_and_archive_the_history(&wh, &archive, &standby);

    // A receiver starting now on the old primary alone (its own slot and spool) is refused.
    let only_old = format!("host=127.0.0.1 port={} user=postgres", primary.port);
    let mut second = Receiver::start(
        &wh,
        &archive,
        &["-d", &only_old, "-S", "second", "--create-slot"],
    );
    wait_for(
        "the old primary to be refused",
        Duration::from_secs(60),
        || {
            (second.log())
                .contains("is on timeline 1 but the archive already holds timeline 2")
                .then_some(())
        },
    );
    assert!(second.stop().success(), "{}", second.log());
    // Refused before its slot was made: nothing holds WAL on the old primary (helper-75).
    let slots = primary.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'second'");
    assert_eq!(slots, "0");

    // The old primary writes on (its commits no longer wait for the receiver once it left).
    primary.sql("SET synchronous_commit = local; CREATE TABLE split_brain AS SELECT 1 AS x");
    wait_for(
        "the receiver to leave the old primary",
        Duration::from_secs(60),
        || receiver.log().contains("a split brain").then_some(()),
    );
    wait_for(
        "the receiver to stream from the promoted node",
        Duration::from_secs(60),
        || (standby.receiver_connections() == 1).then_some(()),
    );
    wait_for(
        "the old primary's walsender to end",
        Duration::from_secs(30),
        || (primary.receiver_connections() == 0).then_some(()),
    );
    assert!(receiver.stop().success(), "{}", receiver.log());
}

/// The same split brain with the old primary idle at the fork: it never sends WAL past the
/// fork, and never ends its timeline either, so the synchronous receiver would stay on it for
/// good, away from the promoted node whose commits then wait. It leaves the old primary one
/// check interval after the archive holds the promotion (the stop-42 review's #5).
#[test]
fn an_old_primary_idle_at_the_fork_is_left_for_the_promoted_node() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (primary, standby, mut receiver) = pair_with_receiver(&wh, &archive, &["--synchronous"]);
    // Idle for good: the background writer logs one more running-transactions record within
    // 15 s of the last writes (bgwriter.c), then none while nothing else is written.
    std::thread::sleep(Duration::from_secs(16));
    standby.wait_replayed(&primary);
    promote_and_archive_the_history(&wh, &archive, &standby);
    wait_for(
        "the receiver to leave the idle old primary",
        Duration::from_secs(60),
        || {
            (receiver.log())
                .contains(
                    "did not end its timeline at the point where the archive's timeline 2 forked",
                )
                .then_some(())
        },
    );
    wait_for(
        "the receiver to stream from the promoted node",
        Duration::from_secs(60),
        || (standby.receiver_connections() == 1).then_some(()),
    );
    assert_eq!(primary.receiver_connections(), 0);
    assert!(receiver.stop().success(), "{}", receiver.log());
}

/// A failover to a standby that had not received everything the receiver archived: the new
/// timeline forks before the archive's end on the old one. The receiver restarts at the fork
/// and says where the WAL only the archive holds lies, and how to restore it.
#[test]
fn a_failover_to_a_standby_behind_the_archive_restarts_at_the_fork() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, mut standby, mut receiver) = pair_with_receiver(&wh, &archive, &[]);
    let system_id = primary.system_id();
    standby.wait_replayed(&primary);
    standby.stop("fast");
    primary.write_rows(300);
    let orphan = primary.switch_wal();
    wait_object(&archive, system_id, &orphan);
    primary.stop("immediate");

    standby.start();
    standby.promote();
    standby.write_rows(300);
    let after = standby.switch_wal();
    assert!(after.starts_with("00000002"), "{after}");
    wait_object(&archive, system_id, &after);
    let log = receiver.log();
    assert!(
        log.contains("the archive holds WAL of timeline 1 past where the server's history left it")
            && log.contains("walhalla restore --target-timeline 1")
            && log.contains("restarting at the fork on timeline 2"),
        "{log}"
    );
    assert!(receiver.stop().success(), "{}", receiver.log());

    // verify notes the orphaned WAL, and the archive stays clean.
    let (code, report) = crate::verify::json_of(&wh, &archive, &["verify", "--json"]);
    let cluster = &report["clusters"][0];
    assert_eq!(code, Some(0), "{report:#}");
    let note = cluster["notes"][0]["problem"].as_str().unwrap_or_default();
    assert!(
        note.contains(&orphan)
            && note.contains("where timeline 2 branched off it")
            && note.contains("--target-timeline 1"),
        "{report:#}"
    );
}

/// The same, the primary's last WAL held only by a snapshot of the segment the timeline
/// forks in (helper-53: no warning, and a restore along the new timeline lacked confirmed
/// commits without a word).
#[test]
fn a_failover_to_a_standby_behind_a_snapshot_is_warned_about() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, mut standby, mut receiver) =
        pair_with_receiver(&wh, &archive, &["--partial-interval", "1"]);
    let id = primary.system_id();
    standby.wait_replayed(&primary);
    standby.stop("fast");
    primary.write_rows(300);
    let written: walhalla::wal::Lsn = primary.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    wait_for(
        "a snapshot holding the rows",
        Duration::from_secs(60),
        || newest_snapshot(&archive, id).filter(|(_, end)| *end >= written.0),
    );
    primary.stop("immediate");

    standby.start();
    standby.promote();
    let history = std::fs::read_to_string(standby.data.join("pg_wal/00000002.history")).unwrap();
    let switch_point = history.split('\t').nth(1).unwrap().to_string();
    standby.write_rows(300);
    let after = standby.switch_wal();
    wait_object(&archive, id, &after);
    let log = receiver.log();
    let prefix = format!(
        "the archive holds WAL of timeline 1 past where the server's history left it ({switch_point} to "
    );
    // The range reaches the snapshot holding the rows, not only complete segments.
    let end: walhalla::wal::Lsn = log
        .split_once(&prefix)
        .and_then(|(_, rest)| rest.split([',', ')']).next())
        .and_then(|end| end.parse().ok())
        .unwrap_or_else(|| panic!("no warning with the range:\n{log}"));
    assert!(
        end >= written,
        "the range ends at {end}, rows went to {written}:\n{log}"
    );
    assert!(
        log.contains("walhalla restore --target-timeline 1"),
        "{log}"
    );
    assert!(receiver.stop().success(), "{}", receiver.log());
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
    standby.wait_replayed(&primary);
    primary.stop("fast");
    standby.promote();
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
    standby.wait_replayed(&primary);
    primary.stop("fast");
    standby.promote();
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
    wait_for("the receiver to stream", Duration::from_secs(60), || {
        (pg.receiver_connections() == 1).then_some(())
    });
    let mut restored = PgCluster::from_backup(&pg, "restored", "none");
    pg.write_rows(100);
    let written: walhalla::wal::Lsn = pg.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The host is lost: the receiver dies and its spool with it.
    receiver.kill9();
    std::fs::remove_dir_all(&receiver.spool).unwrap();
    let (_, newest_end) =
        newest_snapshot(&archive, pg.system_id()).expect("a partial snapshot in the archive");
    assert!(
        newest_end >= written.0,
        "the archive ends at {newest_end:X}, WAL was written up to {written}"
    );
    let listing = wh.run(&archive, std::path::Path::new("/"), &["list"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("receiver snapshot(s)"),
        "list shows none: {text}"
    );

    // The primary is lost too: a restore with fetch --partial reaches the last archived byte.
    pg.stop("immediate");
    recover_last_resort(&mut restored, &wh, &archive);
    assert_eq!(
        restored.sql("SELECT count(*) FROM t"),
        "100",
        "rows written before the last snapshot are lost"
    );
}

/// helper-49's failover: the receiver followed a promotion and, streaming the new timeline's
/// first segment from its start, stored a snapshot of it that ended before the switch point;
/// then every host was lost. The parent timeline's snapshot reaches the switch point. A
/// last-resort restore must not stop at the short snapshot (PostgreSQL asks for the newest
/// timeline's file first): it gets the parent's copy, cut at the switch point.
#[test]
fn a_last_resort_restore_passes_a_snapshot_ending_before_its_timeline_begins() {
    use walhalla::wal::{Lsn, SystemId, WalFileName};
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut pg, mut receiver) =
        crate::receive::streaming_primary(&wh, &archive, &["--partial-interval", "1"]);
    let mut restored = PgCluster::from_backup(&pg, "restored", "none");
    pg.write_rows(100);
    let written: Lsn = pg.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    let system_id = pg.system_id();
    let (key, end) = wait_for(
        "a snapshot holding every row",
        Duration::from_secs(60),
        || newest_snapshot(&archive, system_id).filter(|(_, end)| *end >= written.0),
    );
    receiver.kill9();
    pg.stop("immediate");

    // Timeline 2 begins at the end of that snapshot; its snapshot of the same segment holds
    // the first page only (the parent's WAL, as streamed from the segment's start).
    let content = walhalla::envelope::decode(&archive.object(&key).unwrap()).unwrap();
    let name = key.rsplit('/').next().unwrap().split('.').next().unwrap();
    let WalFileName::Segment(segment) = name.parse().unwrap() else {
        panic!("{name}")
    };
    let tl2 = walhalla::wal::SegmentName {
        timeline: walhalla::wal::TimelineId(2),
        ..segment
    };
    let first_page = 8192;
    let start = end - content.len() as u64;
    let encode = |bytes: &[u8]| {
        walhalla::envelope::Encoder::new(3, 1)
            .unwrap()
            .encode(bytes)
            .unwrap()
    };
    let short = walhalla::archive::partial_snapshot_key(
        &Default::default(),
        SystemId(system_id),
        tl2,
        Lsn(start + first_page),
    );
    archive.overwrite(short.as_ref(), encode(&content[..first_page as usize]));
    let history = format!("1\t{}\tno recovery target specified\n", Lsn(end));
    archive.overwrite(
        &crate::push::key_of(system_id, "00000002.history"),
        encode(history.as_bytes()),
    );

    recover_last_resort(&mut restored, &wh, &archive);
    assert_eq!(
        restored.sql("SELECT count(*) FROM t"),
        "100",
        "recovery stopped at the short snapshot of timeline 2"
    );
}

/// Archive recovery of `restored` to the last byte archived (`fetch --partial`), as after
/// losing the primary and the receiver's host.
fn recover_last_resort(restored: &mut PgCluster, wh: &Walhalla, archive: &TestArchive) {
    restored.recover_from_archive(&format!(
        "{} --archive {} fetch --partial %f %p",
        wh.path().display(),
        archive.url()
    ));
}

#[test]
fn follows_two_promotions_to_timeline_3() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    // primary -> standby1 -> standby2 (cascading); the receiver streams from standby2.
    let (mut primary, mut standby1, mut standby2) = PgCluster::cascade();
    standby2.start();
    let conninfo = standby2.conninfo();
    let mut receiver = Receiver::on_slot(&wh, &archive, &conninfo, &[]);
    wait_for("the receiver to stream", Duration::from_secs(60), || {
        (standby2.receiver_connections() == 1).then_some(())
    });
    let mut backup = PgCluster::from_backup(&primary, "restored", "none");
    primary.write_rows(500);
    primary.switch_wal();
    standby1.wait_replayed(&primary);
    standby2.wait_replayed(&primary);

    // First promotion: standby1 to timeline 2; standby2 follows it, and the receiver follows.
    primary.stop("fast");
    standby1.promote();
    standby1.write_rows(500);
    standby1.switch_wal();
    standby2.wait_replayed(&standby1);
    // Second promotion: standby2 to timeline 3.
    standby1.stop("fast");
    standby2.promote();
    standby2.write_rows(500);
    let last = standby2.switch_wal();
    assert!(last.starts_with("00000003"), "{last}");
    let system_id = standby2.system_id();
    wait_object(&archive, system_id, &last);
    for history in ["00000002.history", "00000003.history"] {
        assert_eq!(
            fetched(&wh, &archive, &standby2, history),
            std::fs::read(standby2.data.join("pg_wal").join(history)).unwrap(),
            "{history}"
        );
    }
    assert!(receiver.stop().success());
    // Ordinary promotions leave nothing past a fork: verify notes nothing.
    let (code, report) = crate::verify::json_of(&wh, &archive, &["verify", "--json"]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        report["clusters"][0]["notes"],
        serde_json::json!([]),
        "{report:#}"
    );

    backup.recover_from_archive(&format!(
        "{} --archive {} fetch %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(backup.table_fingerprint(), standby2.table_fingerprint());
}

#[test]
fn a_second_primary_on_the_same_timeline_cannot_change_the_archive() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = crate::push::archiving_primary(&wh, &archive, "wal_keep_size = '1GB'");
    primary.write_rows(300);
    primary.switch_wal();
    primary.stop("fast");
    // A copy of the stopped primary: the same cluster, on the same timeline.
    let twin_dir = crate::harness::TestDir::new("twin");
    let twin_data = twin_dir.path().join("data");
    let copied = crate::harness::as_pg_user("cp")
        .arg("-a")
        .arg(&primary.data)
        .arg(&twin_data)
        .status()
        .unwrap();
    assert!(copied.success());
    // The original goes on and its WAL is archived.
    primary.start();
    primary.write_rows(1000);
    let first = primary.switch_wal();
    primary.wait_archived(&first);
    let before: Vec<(String, Vec<u8>)> = archive
        .keys()
        .into_iter()
        .map(|k| (k.clone(), archive.object(&k).unwrap()))
        .collect();
    primary.stop("immediate");

    // The twin comes up and writes something else at the same positions.
    let mut twin = PgCluster::adopt(twin_dir, twin_data);
    twin.set_env(archive.env());
    twin.start();
    twin.sql("CREATE TABLE other AS SELECT g, 'split brain' AS x FROM generate_series(1, 50000) g");
    twin.switch_wal();
    wait_for(
        "the twin's archiver to fail",
        Duration::from_secs(60),
        || (twin.archive_failures() != 0).then_some(()),
    );
    let log = twin.log();
    assert!(
        log.contains("is already archived with different content") && log.contains(&first[..16]),
        "{log}"
    );
    for (key, bytes) in before {
        assert!(archive.object(&key).unwrap() == bytes, "{key} changed");
    }
}

#[test]
fn follows_a_promotion_whose_timeline_begins_at_a_segment_boundary() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, standby, mut receiver) = pair_with_receiver(&wh, &archive, &[]);
    primary.write_rows(300);
    // The old primary's last record switches segments, and it stops at once (no shutdown
    // checkpoint after it): timeline 2 begins exactly at a segment boundary. Asked for
    // timeline 1 from there, the server streams nothing and names timeline 2 at once.
    let last = primary.switch_wal();
    let system_id = primary.system_id();
    wait_object(&archive, system_id, &last);
    standby.wait_replayed(&primary);
    primary.stop("immediate");
    standby.promote();
    let history = std::fs::read_to_string(standby.data.join("pg_wal/00000002.history")).unwrap();
    let switch_point: walhalla::wal::Lsn = history
        .split_whitespace()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("a switch point in {history:?}"));
    assert_eq!(
        switch_point.0 % (1 << 20),
        0,
        "not at a segment boundary: {history}"
    );

    standby.write_rows(500);
    let after = standby.switch_wal();
    assert!(after.starts_with("00000002"), "{after}");
    wait_object(&archive, system_id, &after);
    let log = receiver.log();
    assert!(!log.contains("protocol violation"), "{log}");
    assert!(receiver.stop().success());
}
