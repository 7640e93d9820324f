//! The fetch server (`walhalla receive --listen`, `walhalla serve`), `walhalla fetch --server`
//! and its readahead, against real PostgreSQL: catch-up of a standby whose WAL the primary
//! recycled, spool segments served before upload, corrupt objects refused, metrics matching
//! pg_stat_replication, and who may ask.

use std::path::Path;
use std::time::Duration;

use crate::harness::server::{refused_start, scrape, wait_until_listening};
use crate::harness::{
    Backend, PgCluster, Receiver, S3Server, Server, TcpProxy, TestArchive, TestDir, Walhalla,
    as_pg_user, describe, free_port, http, wait_for,
};
use crate::push::{archiving_primary, key_of, primary_with_an_archived_segment};

/// The segment after `name` on the same timeline (16 MiB segments).
fn next_segment(name: &str, ahead: u32) -> String {
    let low = u32::from_str_radix(&name[16..], 16).unwrap() + ahead;
    format!("{}{low:08X}", &name[..16])
}

fn lsn_bytes(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A receiver on slot "walhalla" of `pg` serving on a fresh loopback port, once it answers.
fn serving_receiver(
    wh: &Walhalla,
    archive: &TestArchive,
    env: Vec<(String, String)>,
    pg: &PgCluster,
    extra: &[&str],
) -> (Receiver, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let receiver = Receiver::on_slot_via(wh, archive, env, &pg.conninfo(), &args);
    wait_until_listening(port);
    crate::receive::wait_streaming(pg);
    (receiver, port)
}

/// Runs `walhalla ARGS` the way PostgreSQL runs restore_command: as its user, in `data`.
fn run_as_postgres(wh: &Walhalla, data: &Path, args: &[&str]) -> std::process::Output {
    as_pg_user(wh.path())
        .current_dir(data)
        .args(args)
        .output()
        .expect("run walhalla")
}

#[test]
fn a_standby_whose_wal_was_recycled_catches_up_through_the_receivers_server() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    primary.append_conf(
        "wal_keep_size = 0\nmax_wal_size = '4MB'\nmin_wal_size = '2MB'\ncheckpoint_timeout = '1h'",
    );
    primary.start();
    let (receiver, port) = serving_receiver(&wh, &archive, archive.env(), &primary, &[]);
    primary.write_rows(1000);
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.start();
    primary.wait_streaming_standbys(2);
    standby.stop("fast");

    // Several times max_wal_size of WAL, with checkpoints, until the segment the standby
    // needs next is gone from the primary (the receiver's slot lets it go once archived).
    let needed = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    primary.churn_until_recycled(&needed);
    primary.write_rows(100);

    // Only the server: no archive settings at all on the standby.
    standby.append_conf(&format!(
        "restore_command = '{} fetch --server http://127.0.0.1:{port} %f %p'",
        wh.path().display()
    ));
    standby.start();
    standby.wait_replayed(&primary);
    assert_eq!(standby.table_fingerprint(), primary.table_fingerprint());
    assert!(
        standby
            .log()
            .contains(&format!("restored log file \"{needed}\" from archive")),
        "{needed} did not come through restore_command"
    );
    let served = scrape(port, "walhalla_fetch_hits_total{source=\"archive\"}").unwrap()
        + scrape(port, "walhalla_fetch_hits_total{source=\"spool\"}").unwrap();
    assert!(served >= 1.0, "the server served nothing");

    // Stopping PostgreSQL stops the readahead worker too (it is in the startup process's
    // group), which empties its cache: nothing is left in pg_wal.
    standby.stop("fast");
    let cache = standby.data.join("pg_wal/walhalla-prefetch");
    wait_for(
        "the readahead cache to be emptied",
        Duration::from_secs(30),
        || {
            let left = std::fs::read_dir(&cache)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().len() == 24)
                        .count()
                })
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    );
    drop(receiver);
}

#[test]
fn a_segment_complete_in_the_spool_is_served_before_its_upload() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&proxy.endpoint());
    let mut primary = PgCluster::init("primary");
    primary.start();
    let (receiver, port) = serving_receiver(&wh, &archive, env, &primary, &["--timeout", "3"]);

    // The archive stops; the standby's base backup and everything after it exist only in the
    // primary and in the receiver's spool.
    proxy.pause();
    let mut standby = PgCluster::from_backup(&primary, "standby", "stream");
    primary.write_rows(2000);
    let spooled = primary.switch_wal();
    wait_for(
        &format!("{spooled} complete in the spool"),
        Duration::from_secs(60),
        || receiver.spool.join(&spooled).exists().then_some(()),
    );
    assert!(archive.keys().iter().all(|k| !k.contains(&spooled)));

    // A standby without a connection to the primary: only the server can give it WAL.
    standby.append_conf(&format!(
        "restore_command = '{} fetch --prefetch 0 --server http://127.0.0.1:{port} %f %p'\n\
         recovery_target_timeline = 'current'",
        wh.path().display()
    ));
    std::fs::write(standby.data.join("standby.signal"), "").unwrap();
    standby.start_without_waiting();
    wait_for(
        &format!("the standby to restore {spooled}"),
        Duration::from_secs(90),
        || {
            standby
                .log()
                .contains(&format!("restored log file \"{spooled}\" from archive"))
                .then_some(())
        },
    );
    assert!(
        scrape(port, "walhalla_fetch_hits_total{source=\"spool\"}").unwrap() >= 1.0,
        "not served from the spool"
    );
    assert_eq!(
        scrape(port, "walhalla_fetch_hits_total{source=\"archive\"}").unwrap(),
        0.0,
        "the archive was down: nothing can have come from it"
    );
    // Served from the spool means byte for byte what the primary wrote.
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let run = run_as_postgres(
        &wh,
        &standby.data,
        &[
            "fetch",
            "--prefetch",
            "0",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            &spooled,
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(
        std::fs::read(&dest).unwrap()
            == std::fs::read(primary.data.join("pg_wal").join(&spooled)).unwrap(),
        "the served segment differs from the primary's"
    );
    proxy.resume();
}

#[test]
fn a_corrupt_object_is_refused_by_the_server_and_the_client() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = archiving_primary(&wh, &archive, "wal_keep_size = '1GB'");
    let backup = TestDir::new("backup");
    let base = backup.path().join("data");
    primary.base_backup(&base);
    primary.write_rows(200);
    let good = primary.switch_wal();
    let bad = next_segment(&good, 1);
    primary.write_rows(2000);
    let last = primary.switch_wal();
    primary.wait_archived(&last);
    let key = key_of(primary.system_id(), &bad);
    primary.stop("fast");

    archive.corrupt(&key);
    let server = Server::start(&wh, &archive, &[]);

    // The server refuses it.
    let answer = http::get(server.port, &format!("/wal/{bad}")).unwrap();
    assert_eq!(answer.status, 500, "{}", answer.text());
    assert!(answer.text().contains(&key), "{}", answer.text());
    let answer = http::get(server.port, &format!("/wal/{good}")).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        std::fs::read(primary.data.join("pg_wal").join(&good)).unwrap()
    );

    // The client, asking the server and falling back to the archive, refuses it too: exit
    // 255 (recovery stops), nothing written; the readahead never cached it either.
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let fetch = |name: &str| {
        let mut cmd = as_pg_user(wh.path());
        cmd.current_dir(&base)
            .args(["--archive", archive.url(), "fetch", "--server"])
            .arg(server.url())
            .args([name, dest.to_str().unwrap()])
            .envs(archive.env());
        cmd.output().expect("run walhalla")
    };
    let run = fetch(&good);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let cache = out.path().join("walhalla-prefetch");
    wait_for(
        "the readahead to try the next segment",
        Duration::from_secs(30),
        || (scrape(server.port, "walhalla_errors_total{kind=\"fetch\"}")? >= 2.0).then_some(()),
    );
    assert!(!cache.join(&bad).exists(), "a corrupt segment was cached");
    std::fs::remove_file(&dest).unwrap();
    let run = fetch(&bad);
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("500"),
        "the server's refusal is reported: {stderr}"
    );
    assert!(
        stderr.contains(&key),
        "the archive's refusal is reported: {stderr}"
    );
    assert!(!dest.exists());

    // A recovering instance stops at the corrupt segment instead of replaying it or ending
    // recovery there.
    let mut recovering = PgCluster::adopt(backup, base);
    recovering.append_conf(&format!(
        "restore_command = '{} fetch --server {} %f %p'",
        wh.path().display(),
        server.url()
    ));
    std::fs::write(recovering.data.join("recovery.signal"), "").unwrap();
    recovering.start_without_waiting();
    wait_for("recovery to stop", Duration::from_secs(90), || {
        recovering.log().contains("exit code 255").then_some(())
    });
    assert!(
        !recovering
            .log()
            .contains(&format!("restored log file \"{bad}\""))
    );
    assert!(!recovering.data.join("pg_wal").join(&bad).exists());
}

#[test]
fn metrics_match_pg_stat_replication_and_status_is_json() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    primary.start();
    let (_receiver, port) = serving_receiver(&wh, &archive, archive.env(), &primary, &[]);
    primary.write_rows(3000);
    let last = primary.switch_wal();
    primary.write_rows(100);

    let page = http::get(port, "/metrics").unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let lines = page
        .text()
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    let scrape_result =
        prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text");
    for name in [
        "walhalla_received_lsn",
        "walhalla_flushed_lsn",
        "walhalla_archived_lsn",
        "walhalla_received_bytes_total",
        "walhalla_archived_bytes_total",
        "walhalla_archived_segments_total",
        "walhalla_upload_queue_segments",
        "walhalla_spool_bytes",
        "walhalla_reconnects_total",
        "walhalla_errors_total",
        "walhalla_replication_lag_bytes",
        "walhalla_replication_lag_seconds",
        "walhalla_oldest_unarchived_segment_age_seconds",
        "walhalla_fetch_requests_total",
        "walhalla_fetch_hits_total",
        "walhalla_fetch_misses_total",
    ] {
        assert!(
            scrape_result.samples.iter().any(|s| s.metric == name),
            "{name} missing from /metrics"
        );
    }
    assert!(
        scrape_result
            .samples
            .iter()
            .any(|s| s.metric == "walhalla_fetch_duration_seconds"),
        "the latency histogram is missing"
    );

    // Once load stops, one status interval later both sides say the same.
    wait_for(
        "metrics to match pg_stat_replication",
        Duration::from_secs(30),
        || {
            let row = primary.sql(
                "SELECT write_lsn || ' ' || coalesce(flush_lsn::text, '0/0') FROM pg_stat_replication WHERE application_name = 'walhalla'",
            );
            let (write, flush) = row.split_once(' ')?;
            let received = scrape(port, "walhalla_received_lsn")? as u64;
            let flushed = scrape(port, "walhalla_flushed_lsn")? as u64;
            (received == lsn_bytes(write) && flushed == lsn_bytes(flush) && flushed > 0)
                .then_some(())
        },
    );
    assert!(scrape(port, "walhalla_archived_segments_total").unwrap() >= 1.0);

    let status = || {
        let status = http::get(port, "/status").unwrap();
        assert_eq!(status.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&status.body).expect("valid JSON");
        json
    };
    let json = status();
    assert_eq!(json["system_id"], primary.system_id().to_string());
    assert_eq!(json["receiver"]["connected"], true);
    wait_for(
        &format!("/status to show {last} archived"),
        Duration::from_secs(60),
        || {
            let json = status();
            let newest = json["archive"]["newest_segments"].as_array()?.clone();
            newest
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s >= last.as_str()))
                .then_some(())
        },
    );
    assert_eq!(http::get(port, "/healthz").unwrap().status, 200);

    // `walhalla status` prints it for a person.
    let run = std::process::Command::new(wh.path())
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", describe(&run));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains(&primary.system_id().to_string()), "{text}");
    assert!(text.contains("archived"), "{text}");
}

#[test]
fn only_authenticated_clients_reach_a_server() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let dir = TestDir::new("secrets");

    // Reachable from other hosts and no client authentication: a usage error before binding.
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");
    let open = ["serve", "--listen", &everywhere, "--no-auth"];
    let run = refused_start(&wh, &archive, &open);
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("refusing to listen"),
        "{}",
        describe(&run)
    );
    // The receiver too, before it connects anywhere.
    let args = [
        "receive",
        "-d",
        "host=127.0.0.1 port=1",
        "--listen",
        &everywhere,
        "--no-auth",
    ];
    let run = refused_start(&wh, &archive, &args);
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("refusing to listen"),
        "{}",
        describe(&run)
    );

    // A token: requests without it, or with another, get 401.
    let (mut primary, segment) = primary_with_an_archived_segment(&wh, &archive);
    let token = dir.path().join("token");
    std::fs::write(&token, "correct horse battery staple\n").unwrap();
    std::fs::write(dir.path().join("wrong"), "nope\n").unwrap();
    let server = Server::start(&wh, &archive, &["--token-file", token.to_str().unwrap()]);
    for path in [
        format!("/wal/{segment}"),
        "/metrics".into(),
        "/status".into(),
    ] {
        assert_eq!(
            http::get_with(server.port, &path, None).unwrap().status,
            401,
            "{path}"
        );
        assert_eq!(
            http::get_with(server.port, &path, Some("nope"))
                .unwrap()
                .status,
            401,
            "{path}"
        );
        assert_eq!(
            http::get_with(server.port, &path, Some("correct horse battery staple"))
                .unwrap()
                .status,
            200,
            "{path}"
        );
    }
    assert!(
        !server.log().contains("correct horse"),
        "the token was logged"
    );
    // The file is root's and readable by PostgreSQL's user (its fetch below reads it), so by
    // every user: the server says so.
    assert!(
        server.log().contains("other users can read the token file"),
        "{}",
        server.log()
    );

    // walhalla fetch sends the token from WALHALLA_TOKEN_FILE; without it the fetch fails
    // loudly (no archive to fall back to) instead of reading as "not found".
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let fetch_from = |url: &str, token_file: Option<&Path>| {
        let mut cmd = as_pg_user(wh.path());
        cmd.current_dir(&primary.data)
            .args(["fetch", "--prefetch", "0", "--server", url])
            .args([segment.as_str(), dest.to_str().unwrap()]);
        if let Some(file) = token_file {
            cmd.env("WALHALLA_TOKEN_FILE", file);
        }
        cmd.output().expect("run walhalla")
    };
    let fetch = |token_file: Option<&Path>| fetch_from(&server.url(), token_file);
    let denied = fetch(None);
    assert_eq!(denied.status.code(), Some(255), "{}", describe(&denied));
    assert!(!dest.exists());
    let allowed = fetch(Some(&token));
    assert_eq!(allowed.status.code(), Some(0), "{}", describe(&allowed));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(primary.data.join("pg_wal").join(&segment)).unwrap()
    );

    // A 404 that does not come from a walhalla server answering for this cluster (here a
    // mistyped URL) is an error, not "not archived": recovery must not end on it.
    std::fs::remove_file(&dest).unwrap();
    let elsewhere = fetch_from(&format!("{}/typo/", server.url()), Some(&token));
    assert_eq!(
        elsewhere.status.code(),
        Some(255),
        "{}",
        describe(&elsewhere)
    );
    assert!(!dest.exists());
    primary.stop("fast");
}

#[test]
fn tls_client_certificates_are_required_when_configured() {
    use rcgen::ExtendedKeyUsagePurpose;
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let dir = TestDir::new("pki");
    let ca = crate::harness::TestCa::new();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let leaf = |name: &str, san: &str, purpose: ExtendedKeyUsagePurpose| {
        let (cert, key) = ca.leaf(san, name, purpose);
        (
            write(&format!("{name}.crt"), &cert),
            write(&format!("{name}.key"), &key),
        )
    };
    let (server_cert, server_key) =
        leaf("server", "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(
        "client",
        "walhalla-client",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let ca_file = write("ca.crt", &ca.pem());

    let (mut primary, segment) = primary_with_an_archived_segment(&wh, &archive);
    let server = Server::start(
        &wh,
        &archive,
        &[
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &ca_file,
        ],
    );
    let url = format!("https://127.0.0.1:{}", server.port);
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let fetch = |with_cert: bool| {
        let mut cmd = as_pg_user(wh.path());
        cmd.current_dir(&primary.data).args([
            "fetch",
            "--prefetch",
            "0",
            "--server",
            &url,
            "--server-ca",
            &ca_file,
        ]);
        if with_cert {
            cmd.args(["--client-cert", &client_cert, "--client-key", &client_key]);
        }
        cmd.args([segment.as_str(), dest.to_str().unwrap()]);
        cmd.output().expect("run walhalla")
    };
    // Refused in the handshake: a configuration to fix, not an outage to wait out until the
    // deadline (with TLS 1.3 the refusal may first show as a closed connection, asked again).
    let denied = fetch(false);
    assert_eq!(denied.status.code(), Some(255), "{}", describe(&denied));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("the request cannot be made") && stderr.contains("CertificateRequired"),
        "{stderr}"
    );
    assert!(!dest.exists());
    // In standby mode the refusal is "not available" (the standby streams meanwhile), and the
    // warning says what is missing even when only a closed connection was seen.
    let signal = primary.data.join("standby.signal");
    std::fs::write(&signal, "").unwrap();
    let denied = fetch(false);
    std::fs::remove_file(&signal).unwrap();
    assert_eq!(denied.status.code(), Some(1), "{}", describe(&denied));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("standby mode")
            && (stderr.contains("CertificateRequired") || stderr.contains("give --client-cert")),
        "{stderr}"
    );
    let allowed = fetch(true);
    assert_eq!(allowed.status.code(), Some(0), "{}", describe(&allowed));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(primary.data.join("pg_wal").join(&segment)).unwrap()
    );
    primary.stop("fast");
}

#[test]
fn a_receiver_that_cannot_reach_its_primary_still_serves_the_archive() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, segment) = primary_with_an_archived_segment(&wh, &archive);

    // Its primary is down (nothing listens on port 1): it never learns its cluster itself.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "-d",
        "host=127.0.0.1 port=1 user=postgres",
        "--listen",
        &listen,
    ];
    let _receiver = Receiver::start(&wh, &archive, &args);
    wait_until_listening(port);
    let url = format!("http://127.0.0.1:{port}");
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let fetch = |cwd: &Path| {
        let args = ["fetch", "--prefetch", "0", "--server", &url, &segment];
        run_as_postgres(&wh, cwd, &[&args[..], &[dest.to_str().unwrap()]].concat())
    };

    // A standby names its cluster (from pg_control): served from the archive.
    let run = fetch(&primary.data);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(primary.data.join("pg_wal").join(&segment)).unwrap()
    );
    // A client that cannot name one gets no answer to act on: 255, never "not found".
    std::fs::remove_file(&dest).unwrap();
    let run = fetch(out.path());
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("503"),
        "{}",
        describe(&run)
    );
    primary.stop("fast");
}
