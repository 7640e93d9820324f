//! Settings from the config file and the environment alone: `receive` and `serve` run from
//! a file without a single flag, and `walhalla config` says where each value came from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::server::wait_until_listening;
use crate::harness::{
    Backend, PgCluster, Receiver, Server, TestArchive, TestDir, Walhalla, free_port, http, wait_for,
};
use crate::push::key_of;

/// Writes `text` to `dir/name`, readable by its owner only, owned by PostgreSQL's user as
/// `dir` is.
fn private_file(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write a file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if let Some((uid, gid)) = crate::harness::pg_user_ids() {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
    }
    path
}

fn toml_path(path: &Path) -> String {
    toml_string(&path.display().to_string())
}

fn toml_string(text: &str) -> String {
    format!("{text:?}")
}

#[test]
fn the_config_file_alone_runs_receive_and_serve() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("configured");
    pg.start();
    let dir = TestDir::new("config");
    let spool = dir.subdir("spool");
    let token = private_file(&dir, "token", "a-token-only-the-test-knows\n");
    let (receive_port, serve_port) = (free_port(), free_port());
    let config = private_file(
        &dir,
        "walhalla.toml",
        &format!(
            "archive = {archive}\n\
             [receive]\n\
             conninfo = {conninfo}\n\
             slot = \"walhalla\"\n\
             create_slot = true\n\
             spool = {spool}\n\
             status_interval = 1\n\
             listen = \"127.0.0.1:{receive_port}\"\n\
             token_file = {token}\n\
             [serve]\n\
             listen = \"127.0.0.1:{serve_port}\"\n\
             token_file = {token}\n",
            archive = toml_string(archive.url()),
            conninfo = toml_string(&pg.conninfo()),
            spool = toml_path(&spool),
            token = toml_path(&token),
        ),
    );

    let mut receiver = Receiver::from_config(&wh, &config, spool);
    wait_until_listening(receive_port);
    wait_for("the receiver on its slot", Duration::from_secs(60), || {
        let active = pg.sql("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'walhalla'");
        (active == "t").then_some(())
    });
    pg.write_rows(1000);
    let segment = pg.switch_wal();
    let key = key_of(pg.system_id(), &segment);
    wait_for("the segment archived", Duration::from_secs(60), || {
        archive.object(&key).map(|_| ())
    });
    let server = Server::from_config(&wh, &config, serve_port);
    let path = format!("/wal/{segment}");
    let served =
        http::get_with(serve_port, &path, Some("a-token-only-the-test-knows")).expect("GET");
    assert_eq!(served.status, 200, "{}", server.log());
    let segment_size = pg.sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'");
    assert_eq!(served.body.len().to_string(), segment_size);
    let refused = http::get_with(serve_port, &path, Some("another token")).expect("GET");
    assert_eq!(refused.status, 401, "the file's token_file is in force");
    assert!(receiver.stop().success(), "{}", receiver.log());
}

#[test]
fn config_names_each_source_and_masks_the_password() {
    let wh = Walhalla::install();
    let dir = TestDir::new("config-report");
    let config = private_file(
        &dir,
        "walhalla.toml",
        "archive = \"/from/file\"\n[receive]\nslot = \"from_file\"\nspool_max_bytes = \"2GB\"\n",
    );
    let output = std::process::Command::new(wh.binary())
        .args(["config", "receive", "--json", "--compression-level", "9"])
        .env("WALHALLA_CONFIG", &config)
        .env("WALHALLA_SLOT", "from_env")
        .env("WALHALLA_CONNINFO", "host=db1 user=w password=hunter2")
        .env_remove("WALHALLA_ARCHIVE")
        .output()
        .expect("run walhalla config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        crate::harness::describe(&output)
    );
    assert!(
        !stdout.contains("hunter2"),
        "the password is printed: {stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let settings = &report["commands"][0]["settings"];
    let setting = |key: &str| {
        settings
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .clone()
    };
    assert_eq!(
        setting("slot")["values"][0],
        "from_env",
        "the environment beats the file"
    );
    assert_eq!(setting("slot")["source"]["kind"], "env");
    assert_eq!(
        setting("spool_max_bytes")["source"]["key"],
        "[receive] spool_max_bytes"
    );
    assert_eq!(setting("archive")["source"]["kind"], "file");
    assert_eq!(setting("compression_level")["source"]["kind"], "flag");
    assert_eq!(setting("partial_interval")["source"]["kind"], "default");
    assert_eq!(
        setting("conninfo")["values"][0],
        "host=db1 user=w password=********"
    );

    // A mistake in the file is a usage error naming the key, for every command.
    let broken = private_file(&dir, "broken.toml", "[receive]\nslott = \"x\"\n");
    let output = std::process::Command::new(wh.binary())
        .args(["list"])
        .env("WALHALLA_CONFIG", &broken)
        .output()
        .expect("run walhalla list");
    assert_eq!(
        output.status.code(),
        Some(255),
        "{}",
        crate::harness::describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("[receive] slott"),
        "{}",
        crate::harness::describe(&output)
    );

    let empty = private_file(&dir, "empty.toml", "");
    // config refuses a variable the command it shows would refuse, as that command does.
    for args in [
        &["--archive", "/x", "config", "receive"][..],
        &["--archive", "/x", "config"],
    ] {
        let output = std::process::Command::new(wh.binary())
            .args(args)
            .env("WALHALLA_CONFIG", &empty)
            .env("WALHALLA_SPOOL_MAX_BYTES", "bogus")
            .output()
            .expect("run walhalla config");
        let described = crate::harness::describe(&output);
        assert_eq!(output.status.code(), Some(255), "{args:?}: {described}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(
                "receive, from the environment: invalid value 'bogus' for '--spool-max-bytes"
            ),
            "{args:?}: {described}"
        );
    }

    // So is a setting that cannot be right, found once the command line is parsed.
    for (args, says) in [
        (
            &["--archive", "ftp://x/y", "list"][..],
            "unsupported archive",
        ),
        (&["--archive", "relative/dir", "list"], "absolute path"),
        (
            &["--archive", "/nonexistent", "--timeout", "0", "list"],
            "timeout",
        ),
        (
            &["--archive", "/nonexistent", "check", "-d", "port=notaport"],
            "connection string",
        ),
        (
            &["status", "--server", "127.0.0.1:7480"],
            "a URL such as http://",
        ),
        (
            &["status", "--server", "ftp://127.0.0.1:7480"],
            "only http:// and https://",
        ),
    ] {
        let output = std::process::Command::new(wh.binary())
            .args(args)
            .env("WALHALLA_CONFIG", &empty)
            .output()
            .expect("run walhalla");
        let described = crate::harness::describe(&output);
        assert_eq!(output.status.code(), Some(255), "{args:?}: {described}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(says),
            "{args:?}: {described}"
        );
    }
}

/// `walhalla config | head -1` and `walhalla list | head -1`: a reader that closes the pipe
/// early ends the output quietly, with no panic and no error.
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    for args in [&["config"][..], &["list"][..]] {
        // A pipe whose reader is gone before the command writes: every write gets EPIPE.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let output = std::process::Command::new(wh.path())
            .arg("--archive")
            .arg(archive.url())
            .args(args)
            .envs(archive.env())
            .stdout(writer)
            .output()
            .expect("run walhalla");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.is_empty(),
            "{args:?}: {:?}\n{stderr}",
            output.status
        );
    }
}

/// A password in `-d` is seen by every user of the host (`ps`): said, without the password;
/// the same string from the environment is not warned about.
#[test]
fn a_password_on_the_command_line_is_warned_about() {
    let wh = Walhalla::install();
    let dir = TestDir::new("password-flag");
    let conninfo = "host=127.0.0.1 port=1 user=x password=hunter2";
    let flag = std::process::Command::new(wh.binary())
        .args([
            "--archive",
            dir.path().to_str().unwrap(),
            "backup",
            "-d",
            conninfo,
        ])
        .output()
        .expect("run walhalla backup");
    let stderr = String::from_utf8_lossy(&flag.stderr);
    assert_eq!(flag.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the connection string on the command line holds a password")
            && !stderr.contains("hunter2"),
        "{stderr}"
    );
    let env = std::process::Command::new(wh.binary())
        .args(["--archive", dir.path().to_str().unwrap(), "backup"])
        .env("WALHALLA_CONNINFO", conninfo)
        .output()
        .expect("run walhalla backup");
    let stderr = String::from_utf8_lossy(&env.stderr);
    assert!(!stderr.contains("on the command line"), "{stderr}");
}
