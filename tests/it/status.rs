//! `/status` and `walhalla status` tell the truth: an archive outage shows within seconds and
//! its end too, the receiver's upstream, slot and newest archived segment are there, a
//! receiver that lost its server says why, and a part that does not run has no section. The
//! receiver logs in JSON meanwhile: every line parses, each archived segment has its line at
//! info level, and the outage is two lines.

use std::time::{Duration, Instant};

use crate::harness::server::{status, wait_until_listening};
use crate::harness::{
    Backend, PgCluster, Receiver, S3Server, Server, TcpProxy, TestArchive, Walhalla, describe,
    free_port, wait_for,
};
use crate::receive::{wait_archive_holds, wait_streaming};

/// `walhalla status` of the server on `port`, for a person.
fn status_text(wh: &Walhalla, port: u16) -> String {
    let run = std::process::Command::new(wh.path())
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run walhalla status");
    assert!(run.status.success(), "{}", describe(&run));
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// Every line of a JSON log, parsed; panics on a line that is not a JSON object.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(value) if value.is_object() => value,
                other => panic!("a log line that is not a JSON object ({other:?}): {line}"),
            },
        )
        .collect()
}

/// The log lines whose message starts with `prefix`.
fn messages<'a>(lines: &'a [serde_json::Value], prefix: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
        .collect()
}

#[test]
fn status_shows_an_archive_outage_within_seconds_and_its_end() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    let env = S3Server::env_for(&proxy.endpoint());
    let mut pg = PgCluster::init("primary");
    pg.start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // The default --timeout (60 s per archive operation): the outage must show long before.
    let mut receiver = Receiver::on_slot_via(
        &wh,
        &archive,
        env,
        &pg.conninfo(),
        &["--listen", &listen, "--log-format", "json"],
    );
    wait_streaming(&pg);
    wait_until_listening(port);
    pg.write_rows(300);
    let first = pg.switch_wal();
    wait_archive_holds(&archive, &first);

    let json = wait_for(
        &format!("/status to show {first} archived"),
        Duration::from_secs(30),
        || {
            let json = status(port);
            (json["receiver"]["last_archived_segment"] == first.as_str()).then_some(json)
        },
    );
    let receiver_section = &json["receiver"];
    assert_eq!(receiver_section["slot"], "walhalla", "{json}");
    assert!(receiver_section["upstream_host"].is_string(), "{json}");
    assert!(
        receiver_section["last_archived_at"].as_f64().is_some(),
        "{json}"
    );
    assert_eq!(json["archive"]["newest_segment"], first.as_str(), "{json}");
    assert!(
        json["archive"]["newest_segment_stored_at"]
            .as_f64()
            .is_some(),
        "{json}"
    );
    assert_eq!(json["archive"]["writes"]["failing"], false, "{json}");
    assert!(json["server"]["listen"].is_string(), "{json}");

    // The archive becomes unreachable while a segment waits for its upload.
    proxy.pause();
    pg.write_rows(300);
    let second = pg.switch_wal();
    let cut = Instant::now();
    let down = wait_for(
        "/status to show the archive failing",
        Duration::from_secs(10),
        || {
            let json = status(port);
            (json["archive"]["writes"]["failing"] == true).then_some(json)
        },
    );
    eprintln!(
        "the outage showed after {:.1} s",
        cut.elapsed().as_secs_f64()
    );
    let writes = &down["archive"]["writes"];
    assert!(writes["last_error"].is_string(), "{down}");
    let since = writes["failing_since"].as_f64().expect("since when");
    assert_eq!(writes["permanent"], false, "{down}");
    let text = status_text(&wh, port);
    assert!(text.contains("FAILING since"), "{text}");
    assert!(text.contains("slot walhalla"), "{text}");

    // It comes back: the segment is archived, and the failure is over.
    std::thread::sleep(Duration::from_secs(5));
    proxy.resume();
    let up = wait_for(
        "/status to show the archive working again",
        Duration::from_secs(90),
        || {
            let json = status(port);
            let archived = json["receiver"]["last_archived_segment"] == second.as_str();
            (archived && json["archive"]["writes"]["failing"] == false).then_some(json)
        },
    );
    let writes = &up["archive"]["writes"];
    assert!(
        writes["last_success_at"].as_f64().expect("a success") > since,
        "{up}"
    );
    assert_eq!(writes["failing_since"], serde_json::Value::Null, "{up}");
    assert!(status_text(&wh, port).contains("ok, last success"));

    // The server goes away: status says the receiver is not connected, and why.
    pg.stop("fast");
    let text = wait_for(
        "status to say why the receiver is not connected",
        Duration::from_secs(30),
        || {
            let text = status_text(&wh, port);
            text.contains("why not connected").then_some(text)
        },
    );
    assert!(text.contains("not connected"), "{text}");
    let json = status(port);
    assert_eq!(json["receiver"]["connected"], false, "{json}");
    assert!(
        json["receiver"]["last_disconnect_at"].as_f64().is_some(),
        "{json}"
    );
    assert!(receiver.stop().success(), "{}", receiver.log());

    // The log: JSON throughout, a line per archived segment at info level, and the outage
    // in two lines however many retries it took.
    let log = receiver.log();
    let lines = json_lines(&log);
    let archived = messages(&lines, "archived");
    for segment in [&first, &second] {
        let line = archived
            .iter()
            .find(|l| l["fields"]["segment"] == segment.as_str())
            .unwrap_or_else(|| panic!("no line for {segment}:\n{log}"));
        assert_eq!(line["level"], "INFO", "{line}");
        for field in ["bytes", "stored_bytes", "ratio", "ms"] {
            assert!(!line["fields"][field].is_null(), "no {field}: {line}");
        }
    }
    let failing = messages(&lines, "archive writes failing");
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0]["level"], "WARN", "{}", failing[0]);
    let recovered = messages(&lines, "archive writes work again after");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0]["level"], "INFO", "{}", recovered[0]);
}

#[test]
fn a_serve_only_instance_has_no_receiver_section() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    pg.write_rows(100);
    let segment = pg.switch_wal();
    let path = pg.data.join("pg_wal").join(&segment);
    let run = wh.run(&archive, &pg.data, &["push", path.to_str().unwrap()]);
    assert!(run.status.success(), "{}", describe(&run));

    let server = Server::start(&wh, &archive, &[]);
    let json = status(server.port);
    assert!(json.get("receiver").is_none(), "{json}");
    assert_eq!(json["system_id"], pg.system_id().to_string(), "{json}");
    assert!(json["server"]["listen"].is_string(), "{json}");
    assert_eq!(
        json["archive"]["newest_segment"],
        segment.as_str(),
        "{json}"
    );
    assert!(json["errors"].is_object(), "{json}");
    let text = status_text(&wh, server.port);
    assert!(!text.contains("receiver"), "{text}");
    assert!(!text.contains("upstream"), "{text}");
    assert!(text.contains(&segment), "{text}");
}
