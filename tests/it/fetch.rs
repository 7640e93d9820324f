//! `walhalla fetch` as PostgreSQL's restore_command: missing files, corrupt objects, bad names,
//! one deadline for the whole call, and an archive that holds nothing yet for the cluster.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::server::scrape;
use crate::harness::{
    Backend, PgCluster, S3Server, Server, TcpProxy, TestArchive, TestDir, Walhalla, as_pg_user,
    describe, wait_for,
};
use crate::push::key_of;

/// A cluster with one segment pushed to `archive`; returns the cluster and the segment name.
fn one_archived_segment(wh: &Walhalla, archive: &TestArchive) -> (PgCluster, String) {
    let mut pg = PgCluster::init("source");
    pg.append_conf("wal_keep_size = '1GB'");
    pg.start();
    pg.write_rows(500);
    let name = pg.switch_wal();
    let run = wh.run(archive, &pg.data, &["push", &format!("pg_wal/{name}")]);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    (pg, name)
}

fn corrupt_objects_are_never_delivered(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let (pg, name) = one_archived_segment(&wh, &archive);
    let key = key_of(pg.system_id(), &name);
    archive.corrupt(&key);

    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let run = wh.run(
        &archive,
        &pg.data,
        &["fetch", &name, dest.to_str().unwrap()],
    );
    assert_eq!(
        run.status.code(),
        Some(255),
        "a corrupt object must stop recovery: {}",
        describe(&run)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&key),
        "the error should name the object {key}: {stderr}"
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "something was written beside the destination"
    );
}

#[test]
fn corrupt_objects_are_never_delivered_local() {
    corrupt_objects_are_never_delivered(Backend::Local);
}

#[test]
fn corrupt_objects_are_never_delivered_s3() {
    corrupt_objects_are_never_delivered(Backend::S3);
}

fn missing_files_and_bad_names(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let (pg, name) = one_archived_segment(&wh, &archive);
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let dest = dest.to_str().unwrap();

    let next = format!(
        "{}{:08X}",
        &name[..16],
        u32::from_str_radix(&name[16..], 16).unwrap() + 1
    );
    for missing in [
        next.as_str(),
        "00000002.history",
        "00000001.history",
        "0000000100000000000000FF.partial",
    ] {
        let run = wh.run(&archive, &pg.data, &["fetch", missing, dest]);
        assert_eq!(
            run.status.code(),
            Some(1),
            "fetch {missing}: {}",
            describe(&run)
        );
        assert!(
            run.stderr.is_empty(),
            "a missing file must be quiet: {}",
            describe(&run)
        );
    }
    for bad in [
        "../x",
        "",
        "garbage",
        "pg_wal/RECOVERYXLOG",
        "00000000.history",
        "0000000100000000000000ff",
    ] {
        let run = wh.run(&archive, &pg.data, &["fetch", bad, dest]);
        assert_eq!(
            run.status.code(),
            Some(255),
            "fetch {bad:?}: {}",
            describe(&run)
        );
    }
    // A restore_command missing %p must not read as "not found".
    let run = wh.run(&archive, &pg.data, &["fetch", &name]);
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    // The archived one comes back.
    let run = wh.run(&archive, &pg.data, &["fetch", &name, dest]);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(
        std::fs::read(dest).unwrap() == std::fs::read(pg.data.join("pg_wal").join(&name)).unwrap()
    );
}

#[test]
fn missing_files_and_bad_names_local() {
    missing_files_and_bad_names(Backend::Local);
}

#[test]
fn missing_files_and_bad_names_s3() {
    missing_files_and_bad_names(Backend::S3);
}

#[test]
fn a_misconfigured_or_unreachable_archive_stops_recovery() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let (pg, name) = one_archived_segment(&wh, &archive);
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let fetch = |url: &str, env: Vec<(String, String)>| {
        let mut cmd = crate::harness::as_pg_user(wh.path());
        cmd.current_dir(&pg.data)
            .args(["--archive", url, "--timeout", "3", "fetch", &name])
            .arg(&dest)
            .envs(env);
        cmd.output().unwrap()
    };
    // A local archive directory that does not exist.
    let run = fetch(out.path().join("no-such-dir").to_str().unwrap(), Vec::new());
    assert_eq!(
        run.status.code(),
        Some(255),
        "missing directory: {}",
        describe(&run)
    );
    // A directory that exists but holds nothing for this cluster (an unmounted mount point).
    let empty = out.path().join("empty-archive");
    std::fs::create_dir(&empty).unwrap();
    let run = fetch(empty.to_str().unwrap(), Vec::new());
    assert_eq!(
        run.status.code(),
        Some(255),
        "empty archive: {}",
        describe(&run)
    );
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("holds nothing for cluster"),
        "{}",
        describe(&run)
    );
    // A bucket that does not exist on a live server.
    let run = fetch("s3://no-such-bucket/x", archive.env());
    assert_eq!(
        run.status.code(),
        Some(255),
        "missing bucket: {}",
        describe(&run)
    );
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("bucket does not exist"),
        "{}",
        describe(&run)
    );
    // The server gone: connection refused until the deadline.
    let url = archive.url().to_string();
    drop(archive);
    let run = fetch(
        &url,
        crate::harness::S3Server::env_for("http://127.0.0.1:9"),
    );
    assert_eq!(
        run.status.code(),
        Some(255),
        "server down: {}",
        describe(&run)
    );
    assert!(!dest.exists());
}

#[test]
fn one_deadline_covers_the_server_and_the_archive() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let (pg, name) = one_archived_segment(&wh, &archive);
    // The kernel completes connections to a listener nobody accepts on: a server that takes
    // the request and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", silent.local_addr().unwrap());
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let fetch = || {
        let started = Instant::now();
        let run = as_pg_user(wh.path())
            .current_dir(&pg.data)
            .args(["--archive", archive.url(), "--timeout", "4", "fetch"])
            .args(["--server", &server, &name])
            .arg(&dest)
            .envs(S3Server::env_for(&proxy.endpoint()))
            .output()
            .expect("run walhalla fetch");
        (run, started.elapsed())
    };

    // Neither answers: the server gets half of --timeout, the archive what is left.
    proxy.pause();
    let (run, took) = fetch();
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert!(
        took < Duration::from_millis(5500),
        "fetch took {took:?} with --timeout 4: {}",
        describe(&run)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("reading the archive directly"),
        "the archive was not tried after the server: {stderr}"
    );
    assert!(!dest.exists());

    // The archive reachable again: what the server's half leaves is enough.
    proxy.resume();
    let (run, took) = fetch();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(took < Duration::from_millis(5500), "fetch took {took:?}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(pg.data.join("pg_wal").join(&name)).unwrap()
    );
}

/// A primary that archives nothing to `archive`, an empty `archive`, and a fetch server on
/// it for the primary's cluster.
fn primary_and_empty_archive(wh: &Walhalla) -> (PgCluster, TestArchive, Server) {
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    primary.start();
    primary.write_rows(100);
    assert!(archive.keys().is_empty());
    let id = primary.system_id().to_string();
    let server = Server::start(wh, &archive, &["--system-id", &id]);
    (primary, archive, server)
}

/// The probe PostgreSQL makes first with `recovery_target_timeline = 'latest'`, made in
/// `data` as PostgreSQL makes it, from `source` (`--archive URL` or `--server URL`).
fn probe_history(wh: &Walhalla, data: &Path, source: [&str; 2]) -> Output {
    as_pg_user(wh.path())
        .current_dir(data)
        .arg("fetch")
        .args(source)
        .args(["00000002.history", "pg_wal/RECOVERYHISTORY"])
        .output()
        .expect("run walhalla fetch")
}

#[test]
fn a_new_standby_streams_while_the_archive_holds_nothing_for_its_cluster() {
    let wh = Walhalla::install();
    let (primary, archive, server) = primary_and_empty_archive(&wh);
    // Serving a cluster the archive does not hold yet is said at start.
    let started = server.log();
    assert!(
        started.contains(&format!(
            "the archive holds no cluster {}; it holds none: every request fails until it is archived there",
            primary.system_id()
        )),
        "{started}"
    );
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.append_conf(&format!(
        "restore_command = '{} --archive {} fetch %f %p'",
        wh.path().display(),
        archive.url()
    ));

    // Read directly or through the fetch server: "not found", with one warning line.
    for source in [["--archive", archive.url()], ["--server", &server.url()]] {
        let run = probe_history(&wh, &standby.data, source);
        assert_eq!(run.status.code(), Some(1), "{source:?}: {}", describe(&run));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(stderr.lines().count(), 1, "{source:?}: one line: {stderr}");
        assert!(
            stderr.contains("WARN") && stderr.contains("holds nothing for cluster"),
            "{source:?}: {stderr}"
        );
    }
    assert!(!standby.data.join("pg_wal/RECOVERYHISTORY").exists());

    standby.start();
    primary.wait_streaming_standbys(1);
    assert_eq!(
        standby.sql("SELECT status FROM pg_stat_wal_receiver"),
        "streaming"
    );
    primary.write_rows(100);
    standby.wait_replayed(&primary);
    let log = standby.log();
    assert!(
        log.contains("holds nothing for cluster"),
        "the standby never ran its restore_command:\n{}",
        standby.log_tail()
    );
    assert!(!log.contains("FATAL"), "{}", standby.log_tail());
}

#[test]
fn a_streaming_standby_outlives_an_unreachable_fetch_server_and_archive() {
    let wh = Walhalla::install();
    let mut primary = PgCluster::init("primary");
    primary.start();
    primary.write_rows(100);
    // Nothing listens on port 9 of loopback: connections are refused.
    let down = "http://127.0.0.1:9";
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.append_conf(&format!(
        "restore_command = '{} --timeout 3 fetch --server {down} %f %p'",
        wh.path().display()
    ));

    // The probe a standby makes when its stream breaks: "not available", one warning line,
    // whether the server or the store behind an archive is down.
    let archive_down = {
        let mut cmd = as_pg_user(wh.path());
        cmd.current_dir(&standby.data)
            .args(["--archive", "s3://bucket/x", "--timeout", "3", "fetch"])
            .args(["00000002.history", "pg_wal/RECOVERYHISTORY"])
            .envs(S3Server::env_for(down));
        cmd.output().expect("run walhalla fetch")
    };
    // A fetch server that runs while the store behind its archive is down: it answers 503,
    // not 500, and the probe is "not available" too.
    let mut s3_archive = TestArchive::new(Backend::S3);
    let system_id = primary.system_id().to_string();
    let server = Server::start(
        &wh,
        &s3_archive,
        &["--timeout", "2", "--system-id", &system_id],
    );
    s3_archive.s3_mut().expect("an S3 archive").kill9();
    let server_url = server.url();
    for (what, run) in [
        (
            "server",
            probe_history(&wh, &standby.data, ["--server", down]),
        ),
        ("archive", archive_down),
        (
            "server's archive",
            probe_history(&wh, &standby.data, ["--server", &server_url]),
        ),
    ] {
        assert_eq!(run.status.code(), Some(1), "{what}: {}", describe(&run));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("WARN") && stderr.contains("standby mode"),
            "{what}: {stderr}"
        );
    }
    let run = probe_history(&wh, &standby.data, ["--server", &server_url]);
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("503"),
        "{}",
        describe(&run)
    );
    // The server's metrics say its reads fail.
    let reads_failing = "walhalla_archive_reads_failing{kind=\"transient\"}";
    assert_eq!(
        scrape(server.port, reads_failing),
        Some(1.0),
        "{}",
        server.log()
    );
    // Outside standby mode the same answer still stops recovery (255), as an unreachable
    // archive does: ending it early would be worse.
    let recovering = TestDir::new("recovering");
    let run = as_pg_user(wh.path())
        .current_dir(recovering.path())
        .args(["--system-id", &system_id, "fetch"])
        .args([
            "--server",
            &server_url,
            "00000002.history",
            "RECOVERYHISTORY",
        ])
        .output()
        .expect("run walhalla fetch");
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("503"),
        "{}",
        describe(&run)
    );
    drop(server);

    // The primary restarts while the fetch server is down: the standby asks its
    // restore_command, is told "not available", and streams again.
    standby.start();
    primary.wait_streaming_standbys(1);
    primary.stop("fast");
    primary.start();
    primary.wait_streaming_standbys(1);
    primary.write_rows(100);
    standby.wait_replayed(&primary);
    let log = standby.log();
    assert!(
        log.contains("unreachable"),
        "the standby never ran its restore_command:\n{}",
        standby.log_tail()
    );
    // (The WAL receiver's own FATAL lines, while the primary is down, are expected.)
    assert!(
        !log.contains("could not restore file") && !log.contains("startup process failure"),
        "{}",
        standby.log_tail()
    );

    // The primary dies and the standby is promoted while its fetch server is still down.
    // Once recovery has ended, PostgreSQL asks for the parent timeline's history (timeline
    // 1's, which no cluster has): "not here", at once. A refusal (255) would stop the
    // promotion with FATAL and shut the server down.
    primary.stop("immediate");
    standby.promote();
    assert_eq!(
        standby.sql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002",
        "{}",
        standby.log_tail()
    );
    assert!(
        !standby.log().contains("could not restore file"),
        "{}",
        standby.log_tail()
    );
}

#[test]
fn an_archive_that_holds_nothing_still_stops_archive_recovery() {
    let wh = Walhalla::install();
    let (primary, archive, server) = primary_and_empty_archive(&wh);
    let mut copy = PgCluster::from_backup(&primary, "recovering", "stream");
    std::fs::write(copy.data.join("recovery.signal"), "").unwrap();

    for source in [["--archive", archive.url()], ["--server", &server.url()]] {
        let run = probe_history(&wh, &copy.data, source);
        assert_eq!(
            run.status.code(),
            Some(255),
            "{source:?}: {}",
            describe(&run)
        );
        assert!(
            String::from_utf8_lossy(&run.stderr).contains("holds nothing for cluster"),
            "{source:?}: {}",
            describe(&run)
        );
    }

    // PostgreSQL stops instead of ending recovery and promoting.
    copy.append_conf(&format!(
        "restore_command = '{} --archive {} fetch %f %p'",
        wh.path().display(),
        archive.url()
    ));
    copy.start_without_waiting();
    wait_for("recovery to stop", Duration::from_secs(90), || {
        copy.log().contains("exit code 255").then_some(())
    });
    assert!(copy.log().contains("FATAL"), "{}", copy.log_tail());
    assert!(!copy.log().contains("selected new timeline ID"));
}
/// A fetch server that restarts while archive recovery asks it, with no archive to fall back
/// to: asked again until it answers, not a failure that stops recovery. (A standby moves on
/// at once, and streams.)
#[test]
fn a_restarting_fetch_server_is_asked_again_in_archive_recovery() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = crate::push::archiving_primary(&wh, &archive, "");
    let copy = PgCluster::from_backup(&pg, "recovering", "none");
    std::fs::write(copy.data.join("recovery.signal"), "").unwrap();
    pg.write_rows(100);
    let segment = pg.switch_wal();
    pg.wait_archived(&segment);
    let port = crate::harness::free_port();
    let asking = as_pg_user(wh.path())
        .current_dir(&copy.data)
        .args(["fetch", "--server", &format!("http://127.0.0.1:{port}")])
        .args([segment.as_str(), "pg_wal/RECOVERYXLOG"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run walhalla fetch");
    std::thread::sleep(Duration::from_secs(2));
    let system_id = pg.system_id().to_string();
    let _server = Server::start_on(&wh, &archive, port, &["--system-id", &system_id]);
    let run = asking.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("asking again in"),
        "{}",
        describe(&run)
    );
    assert!(copy.data.join("pg_wal/RECOVERYXLOG").exists());
}

/// A segment deleted after `restore` checked the archive (while its recovery runs, say): the
/// restore_command restore writes for a recovery to the end (`fetch --to-end LAST`, LAST the
/// newest segment it checked) refuses the miss, directly and through a fetch server, and
/// PostgreSQL stops instead of ending recovery at the hole and promoting without the WAL after
/// it. A miss past LAST (even with a later object there, as when another backup's own WAL
/// arrives after a gap), a valid copy in pg_wal and a fetch without `--to-end` stay plain
/// misses; a junk copy in pg_wal does not. With the segment put back, the same recovery goes
/// on to the end.
#[test]
fn a_segment_deleted_during_a_restore_to_the_end_stops_it_instead_of_ending_it() {
    use crate::backup::{insert_batch, primary_with_batches, restore, take_backup};
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    take_backup(&wh, &archive, &pg);
    insert_batch(&pg, "A");
    let hole = pg.switch_wal();
    insert_batch(&pg, "B");
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    let dir = TestDir::new("deleted");
    let data = dir.path().join("data");
    let (code, report, stderr) = restore(&wh, &archive, &data, &["--archive-mode", "off"]);
    assert_eq!(code, Some(0), "{stderr}");
    let command = report.unwrap()["settings"]["restore_command"].to_string();
    assert!(
        command.contains(&format!(" fetch --to-end {last} %f %p")),
        "{command}"
    );
    let key = key_of(pg.system_id(), &hole);
    let saved = archive.object(&key).expect("the segment is archived");
    archive.remove(&key);

    let server = Server::start(&wh, &archive, &["--system-id", &pg.system_id().to_string()]);
    let fetch = |args: &[&str], name: &str| {
        let run = as_pg_user(wh.path())
            .current_dir(&data)
            .arg("fetch")
            .args(args)
            .args([name, "pg_wal/RECOVERYXLOG"])
            .output()
            .expect("run walhalla fetch");
        (run.status.code(), describe(&run))
    };
    let after = |name: &str, n: u32| {
        let next = u32::from_str_radix(&name[16..], 16).unwrap() + n;
        format!("{}{next:08X}", &name[..16])
    };
    let (past_the_end, later) = (after(&last, 1), after(&last, 2));
    archive.overwrite(&key_of(pg.system_id(), &later), b"arrived later".to_vec());
    let to_end = ["--to-end", last.as_str()];
    for source in [["--archive", archive.url()], ["--server", &server.url()]] {
        let (code, run) = fetch(&[&source[..], &to_end].concat(), &hole);
        assert_eq!(code, Some(255), "{source:?}: {run}");
        assert!(
            run.contains(&format!(
                "{hole} is not in the archive, though it was when walhalla restore checked the WAL through {last}: a hole"
            )),
            "{source:?}: {run}"
        );
        let (code, run) = fetch(&[&source[..], &to_end].concat(), &past_the_end);
        assert_eq!(code, Some(1), "{source:?}: {run}");
        let (code, run) = fetch(&source, &hole);
        assert_eq!(code, Some(1), "{source:?}: {run}");
        // A timeline newer than the one restore checked (a server promoted since).
        let (code, run) = fetch(
            &[&source[..], &to_end].concat(),
            &format!("00000002{}", &hole[8..]),
        );
        assert_eq!(code, Some(1), "{source:?}: {run}");
    }
    archive.remove(&key_of(pg.system_id(), &later));
    // With --partial (the last recovery after losing the primary), a snapshot of the deleted
    // segment is no stand-in for it: the hole stays a hole. Without --to-end it is served.
    let snapshot = {
        use walhalla::wal::{Lsn, SegmentSize, SystemId, WalFileName};
        let WalFileName::Segment(segment) = hole.parse().unwrap() else {
            panic!("{hole}")
        };
        let start = segment
            .start_lsn(SegmentSize::new(16 << 20).unwrap())
            .unwrap();
        let key = walhalla::archive::partial_snapshot_key(
            &Default::default(),
            SystemId(pg.system_id()),
            segment,
            Lsn(start.0 + 8192),
        );
        let content = walhalla::envelope::decode(&saved).unwrap();
        let object = walhalla::envelope::Encoder::new(1, 1)
            .unwrap()
            .encode(&content[..8192])
            .unwrap();
        archive.overwrite(key.as_ref(), object);
        key
    };
    let partial = ["--archive", archive.url(), "--partial", "--prefetch", "0"];
    let (code, run) = fetch(&[&partial[..], &to_end].concat(), &hole);
    assert_eq!(code, Some(255), "{run}");
    // Served, and said: PostgreSQL logs "restored log file" for it as for a whole segment.
    let served = "is not archived whole: wrote its last-resort copy, zero-padded";
    let (code, run) = fetch(&partial, &hole);
    assert_eq!(code, Some(0), "{run}");
    assert!(run.contains(served), "{run}");
    std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG")).unwrap();
    // The same through the fetch server, which names the snapshot's object.
    let through_server = ["--server", &server.url(), "--partial", "--prefetch", "0"];
    let (code, run) = fetch(&through_server, &hole);
    assert_eq!(code, Some(0), "{run}");
    let object = snapshot.as_ref().rsplit('/').next().unwrap();
    assert!(run.contains(served) && run.contains(object), "{run}");
    std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG")).unwrap();
    archive.remove(snapshot.as_ref());
    // A copy in pg_wal, which PostgreSQL reads after the archive's miss: a valid one is left
    // to it, a junk one is not taken for one.
    let in_pg_wal = data.join("pg_wal").join(&hole);
    let with_archive = [&["--archive", archive.url()][..], &to_end].concat();
    std::fs::write(&in_pg_wal, walhalla::envelope::decode(&saved).unwrap()).unwrap();
    let (code, run) = fetch(&with_archive, &hole);
    assert_eq!(code, Some(1), "{run}");
    std::fs::write(&in_pg_wal, b"").unwrap();
    let (code, run) = fetch(&with_archive, &hole);
    assert_eq!(code, Some(255), "{run}");
    std::fs::remove_file(&in_pg_wal).unwrap();
    drop(server);

    let mut copy = PgCluster::adopt(dir, data);
    copy.set_env(archive.env());
    copy.start_without_waiting();
    wait_for("recovery to stop", Duration::from_secs(90), || {
        copy.log().contains("exit code 255").then_some(())
    });
    assert!(copy.log().contains("FATAL"), "{}", copy.log_tail());
    assert!(
        copy.log()
            .contains(&format!("{hole} is not in the archive")),
        "{}",
        copy.log_tail()
    );
    assert!(!copy.log().contains("selected new timeline ID"));

    archive.overwrite(&key, saved);
    wait_for("the server to stop", Duration::from_secs(30), || {
        (!copy.data.join("postmaster.pid").exists()).then_some(())
    });
    copy.start();
    wait_for("recovery to end", Duration::from_secs(120), || {
        (copy.try_sql("SELECT pg_is_in_recovery()")? == "f").then_some(())
    });
    let batches = copy.sql("SELECT string_agg(DISTINCT batch, ',' ORDER BY batch) FROM batches");
    assert_eq!(batches, "A,B");
}

/// A restore of a timeline-1 backup to the end after a failover made timeline 2, whose later
/// segments the archive holds: recovery follows timeline 2 to its end, and `fetch --to-end`
/// takes none of its asks for a hole. (PostgreSQL 13 before 13.3 asked timeline 2's name for
/// segments before timeline 2 began; the unit test of `later_segment` covers those.)
#[test]
fn a_restore_to_the_end_across_a_failover_takes_misses_before_the_new_timeline_as_misses() {
    use crate::backup::{insert_batch, primary_with_batches, restored_batches, take_backup};
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    take_backup(&wh, &archive, &pg);
    for batch in ["A", "B"] {
        insert_batch(&pg, batch);
        pg.switch_wal();
    }
    let (standby, _) = crate::push::promoted_archiving_standby(&wh, &archive, &pg, "");
    insert_batch(&standby, "C");
    standby.switch_wal();
    insert_batch(&standby, "D");
    let last = standby.switch_wal();
    standby.wait_archived(&last);

    let (batches, report) = restored_batches(&wh, &archive, &[]);
    assert!(
        report["settings"]["restore_command"]
            .as_str()
            .is_some_and(|c| c.contains(" fetch --to-end 00000002")),
        "{report}"
    );
    assert_eq!(batches, "A,B,C,D");
}
