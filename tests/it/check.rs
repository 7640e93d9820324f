//! `walhalla check` against real servers: a correctly archiving primary passes; a missing
//! archive_command, one that stores into another archive, and a missing or idle slot are
//! named; with a running receiver the round trip goes through its slot; a standby's fetch
//! server is asked whether it answers and accepts the token restore_command names.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Backend, PgCluster, Receiver, Server, TEST_TOKEN, TestArchive, TestDir, Walhalla, as_pg_user,
    describe, free_port, pg_user_ids, wait_for,
};
use crate::push::archiving_primary;

/// Runs `walhalla --archive ARCHIVE check -d CONNINFO --json ARGS` on `pg`; its exit code
/// and report.
fn check(wh: &Walhalla, archive: &TestArchive, pg: &PgCluster, args: &[&str]) -> (i32, Value) {
    check_as(wh, archive, &pg.conninfo(), args)
}

/// Like [`check`] with a connection string of its own.
pub(crate) fn check_as(
    wh: &Walhalla,
    archive: &TestArchive,
    conninfo: &str,
    args: &[&str],
) -> (i32, Value) {
    let mut all = vec!["check", "-d", conninfo, "--json"];
    all.extend_from_slice(args);
    let output = wh.run(archive, std::path::Path::new("/tmp"), &all);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}): {}", describe(&output)));
    (output.status.code().expect("an exit code"), report)
}

/// The check named `name` in `report`.
fn named<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// The verdict of check `name`.
pub(crate) fn verdict<'a>(report: &'a Value, name: &str) -> &'a str {
    named(report, name)["verdict"].as_str().expect("a verdict")
}

/// The detail and hint of check `name`, as one text.
pub(crate) fn said(report: &Value, name: &str) -> String {
    let check = named(report, name);
    let text = |field: &str| check[field].as_str().unwrap_or_default().to_owned();
    format!("{} / {}", text("detail"), text("hint"))
}

#[test]
fn check_passes_on_an_archiving_primary() {
    passes_on_an_archiving_primary(Backend::Local);
}

#[test]
fn check_passes_on_a_primary_archiving_to_s3() {
    passes_on_an_archiving_primary(Backend::S3);
}

fn passes_on_an_archiving_primary(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let pg = archiving_primary(&wh, &archive, "");
    let (code, report) = check(&wh, &archive, &pg, &["--wait", "60"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["server"]["role"], "primary");
    assert_eq!(report["server"]["system_id"], pg.system_id().to_string());
    for name in [
        "connection",
        "wal_level",
        "archive_mode",
        "archive_command",
        "archiver",
        "archive_reachable",
        "archive_writable",
        "archive_create_only",
        "switch_privilege",
        "round_trip",
    ] {
        assert_eq!(verdict(&report, name), "pass", "{name}: {report:#}");
    }
    assert_eq!(verdict(&report, "restore_command"), "skip");
    // The scratch object of the create-only probe is gone; the switched segment is there.
    assert!(
        archive.keys().iter().all(|k| !k.starts_with("0/")),
        "{:?}",
        archive.keys()
    );
    // The table for a person says the same.
    let text = wh.run(
        &archive,
        std::path::Path::new("/tmp"),
        &["check", "-d", &pg.conninfo()],
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{}", describe(&text));
    assert!(stdout.contains("round_trip"), "{stdout}");
    assert!(stdout.contains("every check passed"), "{stdout}");
}

#[test]
fn check_names_a_missing_archive_command() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.append_conf("archive_mode = off");
    pg.start();
    let (code, report) = check(&wh, &archive, &pg, &["--wait", "60"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(verdict(&report, "archive_mode"), "fail", "{report:#}");
    assert!(said(&report, "archive_mode").contains("archive_mode = on"));
    // PostgreSQL 15 and older show "(disabled)", which is no command; and what the archiver's
    // statistics say, nothing archiving, tells of nothing now.
    assert_eq!(verdict(&report, "archive_command"), "fail", "{report:#}");
    assert_eq!(verdict(&report, "archiver"), "skip", "{report:#}");
    // Without waiting out --wait for what cannot arrive.
    assert_eq!(verdict(&report, "round_trip"), "fail", "{report:#}");
    assert!(
        said(&report, "round_trip").contains("nothing archives"),
        "{report:#}"
    );

    pg.stop("fast");
    pg.append_conf("archive_mode = on\narchive_command = ''");
    pg.start();
    let (code, report) = check(&wh, &archive, &pg, &["--wait", "60"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "archive_mode"), "pass", "{report:#}");
    assert_eq!(verdict(&report, "archive_command"), "fail", "{report:#}");
    assert!(
        said(&report, "archive_command").contains("empty"),
        "{report:#}"
    );
    assert_eq!(verdict(&report, "round_trip"), "fail", "{report:#}");
}

#[test]
fn check_names_an_archive_command_that_stores_elsewhere() {
    let wh = Walhalla::install();
    let elsewhere = TestArchive::new(Backend::Local);
    let checked = TestArchive::new(Backend::Local);
    let pg = archiving_primary(&wh, &elsewhere, "");
    let (code, report) = check(&wh, &checked, &pg, &["--wait", "20"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "archive_command"), "fail", "{report:#}");
    assert!(
        said(&report, "archive_command").contains(elsewhere.url()),
        "{report:#}"
    );
    // The archiver reports the segment archived, yet the checked archive lacks it.
    assert_eq!(verdict(&report, "round_trip"), "fail", "{report:#}");
    let trip = said(&report, "round_trip");
    assert!(trip.contains("another archive"), "{trip}");
    assert!(trip.contains(elsewhere.url()), "{trip}");
}

#[test]
fn check_goes_through_a_receivers_slot() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let mut receiver = Receiver::on_slot(&wh, &archive, &pg.conninfo(), &[]);
    wait_for(
        "the receiver to stream from its slot",
        std::time::Duration::from_secs(60),
        || {
            (pg.sql(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walhalla' AND active",
            ) == "1")
                .then_some(())
        },
    );
    let (code, report) = check(&wh, &archive, &pg, &["-S", "walhalla", "--wait", "60"]);
    assert_eq!(code, 0, "{report:#}\n{}", receiver.log());
    assert_eq!(verdict(&report, "slot"), "pass");
    assert!(said(&report, "slot").contains("bytes"), "{report:#}");
    assert_eq!(verdict(&report, "slot_active"), "pass");
    assert_eq!(verdict(&report, "round_trip"), "pass");
    assert_eq!(verdict(&report, "archive_command"), "skip");

    // A slot that does not exist carries nothing: no switch, no waiting out --wait.
    let current_segment = || pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let before = current_segment();
    let started = Instant::now();
    let (code, report) = check(&wh, &archive, &pg, &["-S", "nosuch", "--wait", "60"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "slot"), "fail");
    assert!(said(&report, "slot").contains("nosuch"), "{report:#}");
    assert_eq!(verdict(&report, "round_trip"), "fail", "{report:#}");
    let trip = said(&report, "round_trip");
    assert!(trip.contains("not attempted"), "{trip}");
    assert!(trip.contains("--create-slot"), "{trip}");
    assert!(started.elapsed() < Duration::from_secs(30), "{report:#}");
    assert_eq!(current_segment(), before, "check switched WAL");

    // The receiver streams, but into another archive than the one checked.
    let other = TestArchive::new(Backend::Local);
    let (code, report) = check(&wh, &other, &pg, &["-S", "walhalla", "--wait", "3"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "slot_active"), "pass", "{report:#}");
    let trip = said(&report, "round_trip");
    assert!(trip.contains("streams from slot walhalla"), "{trip}");
    assert!(trip.contains("--archive"), "{trip}");

    receiver.stop();
    let (code, report) = check(&wh, &archive, &pg, &["-S", "walhalla", "--wait", "2"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "slot_active"), "fail", "{report:#}");
    assert!(
        said(&report, "round_trip").contains("nothing streams"),
        "{report:#}"
    );
}

#[test]
fn check_names_a_missing_switch_privilege_and_its_grant() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = archiving_primary(&wh, &archive, "");
    pg.sql("CREATE ROLE checker LOGIN");
    // No database is named and none is named checker, as with a replication role's
    // connection string: check connects to postgres.
    let conninfo = format!("{} user=checker", pg.conninfo());
    let (code, report) = check_as(&wh, &archive, &conninfo, &["--wait", "30"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "switch_privilege"), "fail", "{report:#}");
    let grant = "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO \"checker\"";
    assert!(
        said(&report, "switch_privilege").contains(grant)
            && said(&report, "switch_privilege").contains("in database postgres"),
        "{report:#}"
    );
    assert_eq!(verdict(&report, "round_trip"), "skip", "{report:#}");

    pg.sql(&grant.replace('"', ""));
    let (code, report) = check_as(&wh, &archive, &conninfo, &["--wait", "30"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(verdict(&report, "round_trip"), "pass", "{report:#}");

    // A database named like the role, which pg_hba.conf keeps the role out of: postgres too.
    pg.sql("CREATE DATABASE checker");
    let hba = pg.data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host checker checker 127.0.0.1/32 reject\n{original}"),
    )
    .unwrap();
    pg.sql("SELECT pg_reload_conf()");
    let (code, report) = check_as(&wh, &archive, &conninfo, &["--wait", "30"]);
    assert_eq!(code, 0, "{report:#}");
}

#[test]
fn check_connects_over_tls_as_sslmode_says() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    let (_pki, ca) = pg.enable_tls();
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} --archive {} push %p'",
        wh.path().display(),
        archive.url()
    ));
    pg.start();
    let conninfo = format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.conninfo(),
        ca.display()
    );
    let (code, report) = check_as(&wh, &archive, &conninfo, &["--wait", "30"]);
    assert_eq!(code, 0, "{report:#}");
    assert!(
        said(&report, "connection").contains("over TLS"),
        "{report:#}"
    );
    let plain = format!("{} sslmode=disable", pg.conninfo());
    let (_, report) = check_as(&wh, &archive, &plain, &["--wait", "30"]);
    assert!(
        said(&report, "connection").contains("without TLS"),
        "{report:#}"
    );
    // A certificate that does not chain to the root given is refused.
    let other = PgCluster::init("other");
    let (_other_pki, other_ca) = other.enable_tls();
    let wrong = format!(
        "{} sslmode=verify-ca sslrootcert={}",
        pg.conninfo(),
        other_ca.display()
    );
    let (code, report) = check_as(&wh, &archive, &wrong, &["--wait", "2"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "connection"), "fail", "{report:#}");
}

#[test]
fn check_on_a_standby_checks_restore_command_instead_of_a_round_trip() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let primary = archiving_primary(&wh, &archive, "");
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.append_conf("archive_mode = on");
    standby.start();
    let (code, report) = check(&wh, &archive, &standby, &["--wait", "2"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["server"]["role"], "standby");
    assert_eq!(verdict(&report, "restore_command"), "fail", "{report:#}");
    assert_eq!(verdict(&report, "archive_mode"), "skip", "{report:#}");
    assert!(
        said(&report, "round_trip").contains("standby"),
        "{report:#}"
    );
    assert_eq!(verdict(&report, "round_trip"), "skip", "{report:#}");

    // restore_command takes a restart on PostgreSQL 13.
    standby.stop("fast");
    standby.append_conf(&format!(
        "restore_command = '{} --archive {} fetch %f %p'",
        wh.path().display(),
        archive.url()
    ));
    standby.start();
    let (code, report) = check(&wh, &archive, &standby, &["--wait", "2"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(verdict(&report, "restore_command"), "pass", "{report:#}");

    // WAL from a fetch server, which is asked whether it answers.
    let port = free_port();
    standby.stop("fast");
    // (No archive_command either, which would name the archive.)
    standby.append_conf(&format!(
        "restore_command = '{} fetch --server http://127.0.0.1:{port} %f %p'\narchive_command = ''",
        wh.path().display()
    ));
    standby.start();
    let (code, report) = check(&wh, &archive, &standby, &["--wait", "2"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "restore_command"), "pass", "{report:#}");
    let restore = said(&report, "restore_command");
    assert!(restore.contains("fetch server"), "{restore}");
    assert!(!restore.contains("WALHALLA_ARCHIVE"), "{restore}");
    assert_eq!(verdict(&report, "fetch_server"), "fail", "{report:#}");
    assert!(
        said(&report, "fetch_server").contains("unreachable"),
        "{report:#}"
    );
    let server = Server::start_on(&wh, &archive, port, &[]);
    let (code, report) = check(&wh, &archive, &standby, &["--wait", "2"]);
    assert_eq!(code, 0, "{report:#}\n{}", server.log());
    assert_eq!(verdict(&report, "fetch_server"), "pass", "{report:#}");
    // Without --archive too, as the README's standby is set up: nothing to fail.
    let output = as_pg_user(wh.path())
        .current_dir("/tmp")
        .args(["check", "-d", &standby.conninfo(), "--json", "--wait", "2"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(verdict(&report, "archive_reachable"), "skip", "{report:#}");
    drop(server);

    // A token file named in restore_command is tried: a server that refuses it would have the
    // standby's fetch exit 255, and PostgreSQL shut the standby down at its next probe.
    let tokens = TestDir::new("tokens");
    let token_file = |name: &str, token: &str| {
        let path = tokens.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = pg_user_ids() {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        path
    };
    let ours = token_file("ours", TEST_TOKEN);
    let theirs = token_file("theirs", "another-token");
    standby.stop("fast");
    standby.append_conf(&format!(
        "restore_command = '{} fetch --server http://127.0.0.1:{port} --token-file {} %f %p'",
        wh.path().display(),
        ours.display()
    ));
    // No server runs while the standby starts: its probes are "not available" meanwhile. It
    // probes no more once it streams; a refused token before then would shut it down.
    standby.start();
    primary.wait_streaming_standbys(1);
    let theirs_arg = theirs.display().to_string();
    let server = Server::start_on(&wh, &archive, port, &["--token-file", &theirs_arg]);
    let (code, report) = check(&wh, &archive, &standby, &["--wait", "2"]);
    assert_eq!(code, 1, "{report:#}\n{}", server.log());
    assert_eq!(verdict(&report, "fetch_server"), "fail", "{report:#}");
    assert!(said(&report, "fetch_server").contains("401"), "{report:#}");
    drop(server);
    let server = Server::start_on(&wh, &archive, port, &[]);
    let (code, report) = check(&wh, &archive, &standby, &["--wait", "2"]);
    assert_eq!(code, 0, "{report:#}\n{}", server.log());
    assert!(
        said(&report, "fetch_server").contains("accepts requests with the token"),
        "{report:#}"
    );
}

#[test]
fn check_names_an_archive_it_cannot_reach() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (missing, parent) = TestArchive::uncreated_local("not/there");
    let pg = archiving_primary(&wh, &archive, "");
    let (code, report) = check(&wh, &missing, &pg, &["--wait", "2"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "archive_reachable"), "fail", "{report:#}");
    assert!(
        said(&report, "archive_reachable").contains("no such directory"),
        "{report:#}"
    );
    assert_eq!(verdict(&report, "round_trip"), "skip", "{report:#}");
    assert!(
        !parent.join("not").exists(),
        "check created the archive directory"
    );
}

#[test]
fn check_that_cannot_reach_the_server_does_not_blame_archive_command() {
    let wh = Walhalla::install();
    let nobody = format!("host=127.0.0.1 port={} user=postgres", free_port());
    let output = as_pg_user(wh.path())
        .current_dir("/tmp")
        .env_remove("WALHALLA_ARCHIVE")
        .env_remove("WALHALLA_CONFIG")
        .args(["check", "-d", &nobody, "--json"])
        .output()
        .expect("run walhalla check");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}): {}", describe(&output)));
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(verdict(&report, "connection"), "fail", "{report:#}");
    assert_eq!(verdict(&report, "archive_reachable"), "skip", "{report:#}");
    assert!(
        said(&report, "archive_reachable").contains("could not be reached"),
        "{report:#}"
    );
}

#[test]
fn check_reads_the_archive_of_archive_commands_config_file() {
    let wh = Walhalla::install();
    let elsewhere = TestArchive::new(Backend::Local);
    let checked = TestArchive::new(Backend::Local);
    let dir = TestDir::new("config");
    let config = dir.path().join("walhalla.toml");
    std::fs::write(&config, format!("archive = \"{}\"\n", elsewhere.url())).unwrap();
    let mut pg = PgCluster::init("primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} --config {} push %p'",
        wh.path().display(),
        config.display()
    ));
    pg.start();
    let (code, report) = check(&wh, &checked, &pg, &["--wait", "10"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "archive_command"), "fail", "{report:#}");
    let said = said(&report, "archive_command");
    assert!(said.contains(elsewhere.url()), "{said}");
    assert!(said.contains("walhalla.toml"), "{said}");
}
