//! Object stores as operators meet them: a missing bucket or missing credentials fail at once
//! with one line saying what to set; credentials come from an AWS profile like any AWS tool's;
//! a store that ignores create-only writes is refused; Azure Blob Storage works like S3.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{
    Azurite, Backend, PgCluster, Receiver, S3Server, TcpProxy, TestArchive, TestDir, Walhalla,
    describe, wait_for,
};
use crate::receive::{wait_archive_holds, wait_streaming};

/// A cluster identifier for objects pushed without a data directory.
const SYSTEM_ID: &str = "7000000000000000001";
/// A valid timeline history file: a small object to push and fetch without PostgreSQL.
const HISTORY: &str = "1\t0/3000000\tno recovery target specified\n";

/// Runs walhalla in `cwd` with exactly the `AWS_*` variables in `env` (none inherited), as
/// the current user: `runuser` would reset `HOME`.
fn run(wh: &Walhalla, cwd: &Path, url: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(wh.path());
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(cwd)
        .args(["--archive", url, "--timeout", "60"])
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .expect("run walhalla")
}

/// The variables that point at `s3` without giving credentials.
fn endpoint_only(s3: &S3Server) -> Vec<(String, String)> {
    S3Server::env_for(&s3.endpoint)
        .into_iter()
        .filter(|(name, _)| !name.starts_with("AWS_ACCESS_KEY") && !name.starts_with("AWS_SECRET"))
        .collect()
}

/// Runs walhalla with `run` and checks that it exits `code` within `limit`, having said one
/// line that holds every one of `words`; returns the line.
fn fails_at_once(
    code: i32,
    limit: Duration,
    words: &[&str],
    run: impl FnOnce() -> Output,
) -> String {
    let started = Instant::now();
    let ran = run();
    let took = started.elapsed();
    assert_eq!(ran.status.code(), Some(code), "{}", describe(&ran));
    assert!(took < limit, "took {took:?}\n{}", describe(&ran));
    // Run as root in a test directory of PostgreSQL's user, fetch rightly warns that what it
    // writes is root's: that line aside.
    let all = stderr(&ran);
    let said: Vec<&str> = (all.lines())
        .filter(|line| !line.contains("fetching as root into"))
        .collect();
    assert_eq!(said.len(), 1, "{all}");
    assert!(words.iter().all(|w| said[0].contains(w)), "{all}");
    said[0].to_owned()
}

/// Fetches the timeline history file pushed to `url` into `back`, and checks it came back.
fn fetch_history_back(wh: &Walhalla, cwd: &Path, url: &str, back: &Path, env: &[(String, String)]) {
    let args = ["--system-id", SYSTEM_ID, "fetch", "00000002.history"];
    let mut args = args.to_vec();
    args.push(back.to_str().unwrap());
    let fetched = run(wh, cwd, url, &args, env);
    assert_eq!(fetched.status.code(), Some(0), "{}", describe(&fetched));
    assert_eq!(std::fs::read_to_string(back).unwrap(), HISTORY);
}

fn stderr(run: &Output) -> String {
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[test]
fn a_missing_bucket_or_a_plain_http_endpoint_fails_fetch_at_once_in_one_line() {
    let wh = Walhalla::install();
    let s3 = S3Server::start("present");
    let work = TestDir::new("work");
    let said = fails_at_once(
        255,
        Duration::from_secs(2),
        &["no such bucket", "create bucket"],
        || {
            run(
                &wh,
                work.path(),
                "s3://no-such-bucket/x",
                &[
                    "--system-id",
                    SYSTEM_ID,
                    "fetch",
                    "00000002.history",
                    "RECOVERYHISTORY",
                ],
                &s3.env(),
            )
        },
    );
    assert!(!said.contains("<?xml"), "{said}");
    // A plain-HTTP endpoint without AWS_ALLOW_HTTP: said so, not a "builder error" retried.
    let mut https_only = s3.env();
    https_only.retain(|(name, _)| name != "AWS_ALLOW_HTTP");
    let url = format!("s3://{}/x", s3.bucket);
    let fetch_history = |env: &[(String, String)]| {
        let args = [
            "--system-id",
            SYSTEM_ID,
            "fetch",
            "00000002.history",
            "back",
        ];
        run(&wh, work.path(), &url, &args, env)
    };
    fails_at_once(
        255,
        Duration::from_secs(2),
        &["AWS_ALLOW_HTTP=true"],
        || fetch_history(&https_only),
    );
    // An endpoint without a scheme: said so (object_store would panic on it).
    let mut no_scheme = s3.env();
    for (name, value) in &mut no_scheme {
        if name == "AWS_ENDPOINT_URL" {
            *value = value.trim_start_matches("http://").to_owned();
        }
    }
    fails_at_once(
        255,
        Duration::from_secs(2),
        &["AWS_ENDPOINT_URL", "is not a URL such as"],
        || fetch_history(&no_scheme),
    );
}

/// An HTTPS endpoint whose certificate a CA this host does not trust issued (a TLS server
/// walhalla runs itself: the handshake fails before any S3 request): refused at once, not
/// retried until the deadline, in one line saying how to trust a private CA, or what is wrong
/// with the SSL_CERT_FILE given. In standby mode, a plain miss with a warning.
#[test]
fn an_endpoint_whose_certificate_is_not_trusted_fails_at_once() {
    use rcgen::ExtendedKeyUsagePurpose;
    let wh = Walhalla::install();
    let dir = TestDir::new("pki");
    let ca = crate::harness::TestCa::new();
    let (cert, key) = ca.leaf("127.0.0.1", "server", ExtendedKeyUsagePurpose::ServerAuth);
    let (cert_file, key_file) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let local = TestArchive::new(Backend::Local);
    let server = crate::harness::Server::start(
        &wh,
        &local,
        &[
            "--system-id",
            SYSTEM_ID,
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let mut env = S3Server::env_for(&format!("https://127.0.0.1:{}", server.port));
    env.retain(|(name, _)| name != "AWS_ALLOW_HTTP");
    let work = TestDir::new("work");
    let args = [
        "--system-id",
        SYSTEM_ID,
        "fetch",
        "00000002.history",
        "RECOVERYHISTORY",
    ];
    fails_at_once(
        255,
        Duration::from_secs(10),
        &[
            "the endpoint's TLS certificate was refused",
            "UnknownIssuer",
            "SSL_CERT_FILE",
        ],
        || run(&wh, work.path(), "s3://bucket/x", &args, &env),
    );
    // An SSL_CERT_FILE this user cannot read is named.
    let mut unreadable = env.clone();
    unreadable.push(("SSL_CERT_FILE".into(), "/nonexistent/ca.pem".into()));
    fails_at_once(
        255,
        Duration::from_secs(10),
        &["SSL_CERT_FILE=/nonexistent/ca.pem cannot be read"],
        || run(&wh, work.path(), "s3://bucket/x", &args, &unreadable),
    );
    // A standby takes it for "not available" (a clock not yet synchronized, a certificate
    // being renewed), and streams meanwhile.
    std::fs::write(work.path().join("standby.signal"), "").unwrap();
    let standby = run(&wh, work.path(), "s3://bucket/x", &args, &env);
    assert_eq!(standby.status.code(), Some(1), "{}", describe(&standby));
    assert!(
        stderr(&standby).contains("the endpoint's TLS certificate was refused"),
        "{}",
        describe(&standby)
    );
}

#[test]
fn credentials_come_from_an_aws_profile_and_none_anywhere_fails_fast() {
    let wh = Walhalla::install();
    let s3 = S3Server::start("profiled");
    let work = TestDir::new("work");
    let home = TestDir::new("home");
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [walhalla]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            crate::harness::s3::ACCESS_KEY,
            crate::harness::s3::SECRET_KEY
        ),
    )
    .unwrap();
    let history = work.path().join("00000002.history");
    std::fs::write(&history, HISTORY).unwrap();
    let url = format!("s3://{}/profile", s3.bucket);
    let mut env = endpoint_only(&s3);
    env.push(("HOME".into(), home.path().display().to_string()));
    env.push(("AWS_PROFILE".into(), "walhalla".into()));

    let pushed = run(
        &wh,
        work.path(),
        &url,
        &["--system-id", SYSTEM_ID, "push", history.to_str().unwrap()],
        &env,
    );
    assert_eq!(pushed.status.code(), Some(0), "{}", describe(&pushed));
    let back = work.path().join("back");
    fetch_history_back(&wh, work.path(), &url, &back, &env);

    // A profile whose credentials come from a program (credential_process, as aws-vault).
    let program = home.path().join("credentials.sh");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho '{{\"Version\": 1, \"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\"}}'\n",
            crate::harness::s3::ACCESS_KEY,
            crate::harness::s3::SECRET_KEY
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile process]\ncredential_process = {}\n",
            program.display()
        ),
    )
    .unwrap();
    let mut by_process = env.clone();
    by_process.retain(|(name, _)| name != "AWS_PROFILE");
    by_process.push(("AWS_PROFILE".into(), "process".into()));
    std::fs::remove_file(&back).unwrap();
    fetch_history_back(&wh, work.path(), &url, &back, &by_process);

    // No variables, no profile, no role: one line saying what to set, at once.
    let empty_home = TestDir::new("empty-home");
    let mut env = endpoint_only(&s3);
    env.push(("HOME".into(), empty_home.path().display().to_string()));
    fails_at_once(
        1,
        Duration::from_secs(3),
        &["no credentials found", "AWS_PROFILE"],
        || {
            run(
                &wh,
                work.path(),
                &url,
                &["--system-id", SYSTEM_ID, "push", history.to_str().unwrap()],
                &env,
            )
        },
    );
}

#[test]
fn a_store_that_ignores_create_only_writes_is_refused() {
    let wh = Walhalla::install();
    let s3 = S3Server::start("overwriting");
    let addr = s3
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("moto's address");
    // A store in front of moto that drops If-None-Match, as some S3-compatible stores do.
    let proxy = TcpProxy::rewriting(addr, Some((b"if-none-match", b"x-ignored-hdr")));
    let work = TestDir::new("work");
    let history = work.path().join("00000002.history");
    std::fs::write(&history, HISTORY).unwrap();
    let cache = TestDir::new("cache");
    let mut env = S3Server::env_for(&proxy.endpoint());
    env.push(("XDG_CACHE_HOME".into(), cache.path().display().to_string()));
    let url = format!("s3://{}/unsafe", s3.bucket);
    let push = |env: &[(String, String)]| {
        run(
            &wh,
            work.path(),
            &url,
            &["--system-id", SYSTEM_ID, "push", history.to_str().unwrap()],
            env,
        )
    };

    let refused = push(&env);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let said = stderr(&refused);
    assert!(
        said.contains("does not honour create-only writes"),
        "{said}"
    );
    assert!(said.contains("now holds the second content"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    let fetched = run(
        &wh,
        work.path(),
        &url,
        &[
            "--system-id",
            SYSTEM_ID,
            "fetch",
            "00000002.history",
            "back",
        ],
        &S3Server::env_for(&s3.endpoint),
    );
    assert_eq!(fetched.status.code(), Some(255), "{}", describe(&fetched));
    assert!(
        stderr(&fetched).contains("holds nothing for cluster"),
        "nothing was archived: {}",
        describe(&fetched)
    );

    // The same bucket reached directly honours them: the probe passes once and is
    // remembered, in the archive and in the cache directory.
    let mut env = s3.env();
    env.push(("XDG_CACHE_HOME".into(), cache.path().display().to_string()));
    let stored = push(&env);
    assert_eq!(stored.status.code(), Some(0), "{}", describe(&stored));
    let remembered = std::fs::read_dir(cache.path().join("walhalla/verified-stores"))
        .expect("the cache folder")
        .count();
    assert_eq!(remembered, 1);
    let again = push(&env);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
}

#[test]
fn push_and_fetch_round_trip_through_azure_blob_storage() {
    let wh = Walhalla::install();
    let azurite = Azurite::start("wal");
    let mut pg = PgCluster::init("source");
    pg.start();
    pg.write_rows(200);
    let name = pg.switch_wal();
    let url = "az://wal/cluster-a";
    let mut env = azurite.env();
    let cache = TestDir::new("cache");
    env.push(("XDG_CACHE_HOME".into(), cache.path().display().to_string()));
    let segment = pg.data.join("pg_wal").join(&name);
    let pushed = run(
        &wh,
        &pg.data,
        url,
        &["push", segment.to_str().unwrap()],
        &env,
    );
    assert_eq!(pushed.status.code(), Some(0), "{}", describe(&pushed));
    let out = TestDir::new("out");
    let back = out.path().join("RECOVERYXLOG");
    let fetched = run(
        &wh,
        &pg.data,
        url,
        &["fetch", &name, back.to_str().unwrap()],
        &env,
    );
    assert_eq!(fetched.status.code(), Some(0), "{}", describe(&fetched));
    assert!(
        std::fs::read(&segment).unwrap() == std::fs::read(&back).unwrap(),
        "{name} came back different"
    );
    // A container that does not exist: at once, in one line.
    fails_at_once(
        255,
        Duration::from_secs(2),
        &["no such bucket", "ContainerNotFound"],
        || {
            run(
                &wh,
                &pg.data,
                "az://missing/x",
                &["fetch", &name, back.to_str().unwrap()],
                &env,
            )
        },
    );
}

#[test]
fn new_objects_take_the_storage_class_and_encryption_asked_for() {
    let wh = Walhalla::install();
    let s3 = S3Server::start("classes");
    let work = TestDir::new("work");
    let history = work.path().join("00000002.history");
    std::fs::write(&history, HISTORY).unwrap();
    let url = format!("s3://{}/classes", s3.bucket);
    let settings = ["--storage-class", "STANDARD_IA", "--sse", "AES256"];
    let mut args = vec!["--system-id", SYSTEM_ID];
    args.extend(settings);
    args.extend(["push", history.to_str().unwrap()]);
    let pushed = run(&wh, work.path(), &url, &args, &s3.env());
    assert_eq!(pushed.status.code(), Some(0), "{}", describe(&pushed));
    let key = format!("classes/{SYSTEM_ID}/timelines/00000002.history.zst");
    assert_eq!(s3.storage_of(&key), "STANDARD_IA AES256");
}

#[test]
fn a_receiver_started_while_the_store_is_down_archives_once_it_is_back() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::S3);
    let proxy = TcpProxy::start(archive.s3_addr().expect("an S3 archive"));
    proxy.pause();
    let mut pg = PgCluster::init("primary");
    pg.start();
    let conninfo = pg.conninfo();
    let env = S3Server::env_for(&proxy.endpoint());
    let mut receiver = Receiver::on_slot_via(&wh, &archive, env, &conninfo, &["--timeout", "3"]);
    wait_for(
        "the receiver to start without the check",
        Duration::from_secs(30),
        || receiver.log().contains("cannot check now").then_some(()),
    );
    proxy.resume();
    wait_streaming(&pg);
    let last = pg.switch_wal();
    wait_archive_holds(&archive, &last);
    assert!(receiver.stop().success(), "{}", receiver.log());
}
