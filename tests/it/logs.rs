//! Logs: `--log-format json` writes one JSON object per line, the command's last error
//! included; a log filter that does not parse (`WALHALLA_LOG`, `--log-level`) is a usage
//! error, exit 255, rather than silence; a primary that stays down is one warning, not one
//! per reconnection attempt; the end of a stream is said at info level. The receiver's JSON log
//! is checked in `status`.

use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{
    Backend, PgCluster, Receiver, TestArchive, TestDir, Walhalla, describe, wait_for,
};
use crate::receive::{streaming_primary, wait_streaming};

/// `walhalla --archive … ARGS` in `dir` with `env`, not as the PostgreSQL user (nothing here
/// reads a data directory).
fn run(
    wh: &Walhalla,
    archive: &TestArchive,
    dir: &TestDir,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    Command::new(wh.path())
        .current_dir(dir.path())
        .arg("--archive")
        .arg(archive.url())
        .args(args)
        .env_remove("WALHALLA_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run walhalla")
}

#[test]
fn an_invalid_log_filter_is_a_usage_error() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let dir = TestDir::new("logs");
    let fetch = ["fetch", "000000010000000000000001", "RECOVERYXLOG"];
    /// Variables, flags, and the source the error must name.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 3] = [
        (&[("WALHALLA_LOG", "bogus")], &[], "WALHALLA_LOG"),
        (&[("WALHALLA_LOG", "walhalla=loud")], &[], "WALHALLA_LOG"),
        (&[], &["--log-level", "info,verbose"], "--log-level"),
    ];
    for (env, flags, source) in cases {
        let args: Vec<&str> = flags.iter().chain(&fetch).copied().collect();
        let output = run(&wh, &archive, &dir, env, &args);
        assert_eq!(
            output.status.code(),
            Some(255),
            "{env:?} {flags:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("invalid log filter") && stderr.contains(source),
            "{stderr}"
        );
    }
    // A valid one is taken.
    let output = run(
        &wh,
        &archive,
        &dir,
        &[("WALHALLA_LOG", "walhalla=debug")],
        &fetch,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("invalid log filter"), "{stderr}");
    assert!(stderr.contains("DEBUG"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_a_line_to_the_last_error() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let dir = TestDir::new("logs");
    std::fs::write(
        dir.path().join("000000010000000000000001"),
        b"not a segment",
    )
    .unwrap();
    let args = [
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "push",
        "000000010000000000000001",
    ];
    let output = run(&wh, &archive, &dir, &[], &args);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("walhalla push: error")),
        "{last}"
    );
    assert!(lines.iter().all(|l| l["timestamp"].is_string()), "{stderr}");
}

#[test]
fn a_primary_that_stays_down_is_one_warning_not_one_per_attempt() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut pg, mut receiver) = streaming_primary(&wh, &archive, &[]);
    pg.stop("fast");
    // Backoff from 1 s, doubling: several attempts in 12 s.
    std::thread::sleep(Duration::from_secs(12));
    pg.start();
    wait_streaming(&pg);
    assert!(receiver.stop().success(), "{}", receiver.log());
    let log = receiver.log();
    let attempts: Vec<&str> = log.lines().filter(|l| l.contains("disconnected")).collect();
    let warnings = attempts.iter().filter(|l| l.contains(" WARN ")).count();
    assert!(attempts.len() >= 4, "{log}");
    // The stream's end, then the first refused connection; the rest at debug level.
    assert!(warnings <= 2, "{warnings} warnings:\n{log}");
}

/// A stream that ends where a snapshot stored while streaming already ends still says so at
/// info level, as a tail archived at the end does (helper-68: in synchronous mode, a
/// disconnect at `--receive-timeout` left the archived end of the stream unmentioned).
#[test]
fn the_end_of_a_stream_is_logged_when_a_snapshot_had_stored_it_already() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    let mut receiver = Receiver::on_slot(
        &wh,
        &archive,
        &pg.conninfo(),
        &["--synchronous", "--partial-interval", "1"],
    );
    wait_streaming(&pg);
    pg.write_rows(100);
    // Idle: the snapshot taken within a second holds everything received.
    std::thread::sleep(Duration::from_secs(3));
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'walhalla'");
    let said = |log: &str| {
        log.lines().any(|l| {
            l.contains(" INFO ")
                && (l.contains("the end of the stream is archived already")
                    || l.contains("archived a snapshot, which a last-resort recovery"))
        })
    };
    wait_for(
        "the end of the stream to be logged",
        Duration::from_secs(30),
        || said(&receiver.log()).then_some(()),
    );
    wait_streaming(&pg);
    assert!(receiver.stop().success(), "{}", receiver.log());
}
