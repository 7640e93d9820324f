//! Who may ask the fetch server, by default: a server creates its token file on first start,
//! refuses (and logs) requests without the token, and a client of the same user finds the
//! token on its own; `--no-auth` is an explicit, logged opt-out.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{
    Backend, Server, TestArchive, TestDir, Walhalla, as_pg_user, describe, http, wait_for,
};
use crate::push::primary_with_an_archived_segment;

#[test]
fn a_default_server_requires_its_token_which_local_clients_find() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, segment) = primary_with_an_archived_segment(&wh, &archive);
    let id = primary.system_id().to_string();

    // First start: the server creates its token file, private to its user.
    let state = TestDir::new("state");
    let server = Server::start_in_state(&wh, &archive, state.path(), &["--system-id", &id]);
    let token_file = state.path().join("walhalla/token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token_file.display());
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.len() >= 32, "a long random token");

    // Without the token: 401 on every path but /healthz, logged with the client's address.
    for path in [
        format!("/wal/{segment}"),
        "/metrics".into(),
        "/status".into(),
    ] {
        let answer = http::get_with(server.port, &path, None).unwrap();
        assert_eq!(answer.status, 401, "{path}");
    }
    let wrong = http::get_with(server.port, "/status", Some("guess")).unwrap();
    assert_eq!(wrong.status, 401);
    // /healthz says only that the server answers, to health checks that hold no secret.
    let health = http::get_with(server.port, "/healthz", None).unwrap();
    assert_eq!((health.status, health.text()), (200, "ok\n".to_string()));
    let check = std::process::Command::new(wh.binary())
        .env_remove("WALHALLA_TOKEN_FILE")
        .env("XDG_STATE_HOME", "/nonexistent")
        .args(["status", "--healthz", "--server", &server.url()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    // status without the token: refused, saying where a server keeps it.
    let status = std::process::Command::new(wh.binary())
        .env_remove("WALHALLA_TOKEN_FILE")
        .env("XDG_STATE_HOME", "/nonexistent")
        .args(["status", "--server", &server.url()])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{}", describe(&status));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("give its file with --token-file"),
        "{}",
        describe(&status)
    );
    // So does fetch, refused (255: outside standby mode, no archive to fall back to).
    let scratch = crate::harness::TestDir::new("scratch");
    let fetch = std::process::Command::new(wh.binary())
        .current_dir(scratch.path())
        .env_remove("WALHALLA_TOKEN_FILE")
        .env_remove("WALHALLA_ARCHIVE")
        .env("XDG_STATE_HOME", "/nonexistent")
        .args(["fetch", "--server", &server.url(), "00000002.history", "h"])
        .output()
        .unwrap();
    assert_eq!(fetch.status.code(), Some(255), "{}", describe(&fetch));
    assert!(
        String::from_utf8_lossy(&fetch.stderr).contains("401 Unauthorized")
            && String::from_utf8_lossy(&fetch.stderr).contains("give its file with --token-file"),
        "{}",
        describe(&fetch)
    );
    // With a token the server refuses: the file it came from is named.
    let wrong = scratch.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-servers-token\n").unwrap();
    let fetch = std::process::Command::new(wh.binary())
        .current_dir(scratch.path())
        .env_remove("WALHALLA_ARCHIVE")
        .args(["fetch", "--server", &server.url(), "--token-file"])
        .arg(&wrong)
        .args(["00000002.history", "h"])
        .output()
        .unwrap();
    assert_eq!(fetch.status.code(), Some(255), "{}", describe(&fetch));
    assert!(
        String::from_utf8_lossy(&fetch.stderr).contains(&format!(
            "the server refused the token sent, from {}",
            wrong.display()
        )),
        "{}",
        describe(&fetch)
    );
    wait_for(
        "the refusals in the log",
        std::time::Duration::from_secs(10),
        || {
            let log = server.log();
            (log.contains("refused a request with no Authorization header")
                && log.contains("refused a request with a wrong bearer token"))
            .then_some(())
        },
    );
    let log = server.log();
    assert!(log.contains("client=127.0.0.1:"), "{log}");
    assert!(!log.contains("guess"), "an offered token was logged: {log}");

    // A client of the same user on this host, given no token, finds it and is served.
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let run = as_pg_user(wh.binary())
        .current_dir(&primary.data)
        .env("XDG_STATE_HOME", state.path())
        .env_remove("WALHALLA_TOKEN_FILE")
        .args(["fetch", "--prefetch", "0", "--server", &server.url()])
        .args([segment.as_str(), dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(primary.data.join("pg_wal").join(&segment)).unwrap()
    );
    // Served requests are logged, the token never.
    let served = format!("path=/wal/{segment} status=200");
    wait_for(
        "the request log",
        std::time::Duration::from_secs(10),
        || server.log().contains(&served).then_some(()),
    );
    assert!(!server.log().contains(token), "the token was logged");
    drop(server);

    // A restart keeps the token clients already have.
    let again = Server::start_in_state(&wh, &archive, state.path(), &["--system-id", &id]);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    let answer = http::get_with(again.port, "/healthz", Some(token)).unwrap();
    assert_eq!(answer.status, 200);

    // A rotation without a restart: the new token added as a line, SIGHUP, both served;
    // the old line removed, SIGHUP, the old token refused.
    let rotated = "rotated-0123456789abcdef0123456789abcdef";
    let hangup = |server: &Server, count: usize| {
        // SAFETY: kill() on the pid of a server this test started and has not reaped.
        unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
        let said = format!("count={count}");
        wait_for(
            "the token file read again",
            std::time::Duration::from_secs(10),
            || {
                server
                    .log()
                    .lines()
                    .any(|l| l.contains("read the token file again") && l.contains(&said))
                    .then_some(())
            },
        );
    };
    std::fs::write(&token_file, format!("{token}\n{rotated}\n")).unwrap();
    hangup(&again, 2);
    for offered in [token, rotated] {
        let answer = http::get_with(again.port, "/status", Some(offered)).unwrap();
        assert_eq!(answer.status, 200, "{}", again.log());
    }
    std::fs::write(&token_file, format!("{rotated}\n")).unwrap();
    hangup(&again, 1);
    let answer = http::get_with(again.port, "/status", Some(rotated)).unwrap();
    assert_eq!(answer.status, 200, "{}", again.log());
    let answer = http::get_with(again.port, "/status", Some(token)).unwrap();
    assert_eq!(answer.status, 401, "the old token is refused once removed");
    drop(again);

    // --no-auth serves anyone, and says so.
    let open = Server::start_in_state(
        &wh,
        &archive,
        state.path(),
        &["--system-id", &id, "--no-auth"],
    );
    let answer = http::get_with(open.port, &format!("/wal/{segment}"), None).unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        open.log().contains("WARN") && open.log().contains("--no-auth"),
        "{}",
        open.log()
    );
    primary.stop("fast");
}
