//! deploy/compose/'s topology as processes on loopback, with the settings its files carry: a
//! primary with quorum commit `ANY 1 (walhalla, replica1)`, walhalla receiving synchronously
//! and serving WAL, two replicas on slots fetching through that server; one replica stopped
//! while commits go on, a failover by hand, and a replica built afterwards from the archive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::patroni::replace_setting;
use crate::harness::{
    Backend, PgCluster, Receiver, TEST_TOKEN, TestArchive, TestDir, Walhalla, as_pg_user, describe,
    free_port, wait_for,
};

fn compose_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/compose")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A file only the PostgreSQL user reads.
fn secret(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::process::Command::new("chown")
        .arg("postgres:")
        .arg(&path)
        .status()
        .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// A replica of `primary` on slot `name` as replica-entrypoint.sh configures it, with its
/// restore_command through walhalla's fetch server, and walhalla's settings file (which names
/// the archive, for when the server does not answer) in `WALHALLA_CONFIG`, as the compose
/// file mounts it where walhalla looks by default.
fn replica(
    wh: &Walhalla,
    primary: &PgCluster,
    name: &str,
    server: &str,
    config: &Path,
) -> PgCluster {
    let mut replica = PgCluster::standby_of(primary, name);
    replica.append_conf(&format!(
        "primary_slot_name = '{name}'\nrestore_command = '{} fetch --server {server} %f %p'\n\
         recovery_target_timeline = 'latest'",
        wh.path().display()
    ));
    replica.set_env(vec![(
        "WALHALLA_CONFIG".into(),
        config.display().to_string(),
    )]);
    replica.start();
    replica
}

/// Commits on `primary` and fails if the commit waited for synchronous replication longer
/// than `statement_timeout` (PostgreSQL then commits locally with a warning).
fn commit(primary: &PgCluster, rows: u32) {
    let (ok, _, stderr) = primary.sql_output(&format!(
        "SET statement_timeout = '30s';\
         CREATE TABLE IF NOT EXISTS t (id serial primary key, payload text);\
         INSERT INTO t (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, {rows}) g"
    ));
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("synchronous replication"),
        "the commit waited for the quorum: {stderr}"
    );
}

/// `name:sync_state` of each streaming standby, sorted by name, comma-separated.
fn sync_states(primary: &PgCluster) -> String {
    primary.sql(
        "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY application_name) \
         FROM pg_stat_replication WHERE state = 'streaming'",
    )
}

#[test]
fn compose_topology_quorum_failover_and_a_replica_from_the_archive() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let dir = TestDir::new("topology");

    // The primary with primary.conf, archive_command naming this walhalla and archive.
    let mut primary = PgCluster::init("primary");
    let conf = compose_file("primary.conf");
    let conf = replace_setting(
        &conf,
        "archive_command = 'walhalla push %p'",
        &format!(
            "archive_command = '{} --archive {} push %p'",
            wh.path().display(),
            archive.url()
        ),
    );
    primary.append_conf(&conf);
    primary.append_conf("wal_keep_size = 0\nmax_wal_size = '32MB'");
    primary.start();
    // The slots init-primary.sh creates.
    let init = compose_file("init-primary.sh");
    let slots: Vec<&str> = init
        .lines()
        .filter(|l| l.contains("pg_create_physical_replication_slot"))
        .collect();
    assert_eq!(slots.len(), 3, "{init}");
    for slot in &slots {
        primary.sql(slot.trim_end_matches(';'));
    }

    // walhalla.toml: the receiver on every host that may lead, serving WAL with a token.
    let server_port = free_port();
    let server = format!("http://127.0.0.1:{server_port}");
    let config = compose_file("walhalla.toml");
    let config = replace_setting(&config, "s3://walhalla/demo", archive.url());
    let config = replace_setting(&config, "0.0.0.0:7480", &format!("127.0.0.1:{server_port}"));
    let token = secret(&dir, "token", TEST_TOKEN).display().to_string();
    let config = replace_setting(&config, "/run/secrets/walhalla-token", &token);
    let config = replace_setting(
        &config,
        "/run/secrets/walhalla-password",
        &secret(&dir, "password", "unused-with-trust")
            .display()
            .to_string(),
    );
    // The replicas' ports are chosen when they are made: the receiver starts with the
    // primary's, and is restarted with all three before the failover.
    let receiver_config = |hosts: &[u16]| -> PathBuf {
        let ports: Vec<String> = hosts.iter().map(u16::to_string).collect();
        let text = replace_setting(
            &config,
            "host=primary,replica1,replica2 user=walhalla",
            &format!(
                "host={} port={} user=postgres",
                vec!["127.0.0.1"; hosts.len()].join(","),
                ports.join(",")
            ),
        );
        let path = dir.path().join(format!("walhalla-{}.toml", hosts.len()));
        std::fs::write(&path, text).unwrap();
        std::process::Command::new("chown")
            .arg("postgres:")
            .arg(&path)
            .status()
            .unwrap();
        path
    };
    let first_config = receiver_config(&[primary.port]);
    let mut receiver = Receiver::from_config(&wh, &first_config, dir.path().join("spool"));
    wait_for("walhalla in the quorum", Duration::from_secs(60), || {
        (sync_states(&primary) == "walhalla:quorum").then_some(())
    });
    commit(&primary, 500);

    let mut replica1 = replica(&wh, &primary, "replica1", &server, &first_config);
    let replica2 = replica(&wh, &primary, "replica2", &server, &first_config);
    wait_for("both replicas streaming", Duration::from_secs(60), || {
        (sync_states(&primary) == "replica1:quorum,replica2:async,walhalla:quorum").then_some(())
    });
    // A base backup in the archive, as `docker compose run --rm backup` takes.
    let backup = as_pg_user(wh.path())
        .current_dir("/")
        .args([
            "--archive",
            archive.url(),
            "backup",
            "-d",
            &primary.conninfo(),
            "--fast",
        ])
        .output()
        .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", describe(&backup));

    // replica1 down: walhalla alone confirms the commits.
    replica1.stop("fast");
    commit(&primary, 500);
    // And walhalla is what confirms them: without it too, a commit waits for the quorum,
    // until it is cancelled (and then stays local only).
    receiver.stop();
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| primary.sql_output("CREATE TABLE probe (x int)"));
        wait_for(
            "a commit waiting for the quorum",
            Duration::from_secs(30),
            || {
                let count = primary
                    .sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
                (count == "1").then_some(())
            },
        );
        primary.sql(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        );
        let (_, _, stderr) = waiting.join().unwrap();
        assert!(
            stderr.contains("canceling wait for synchronous replication"),
            "{stderr}"
        );
    });
    replica1.start();

    // The receiver again, now with every host that may lead (the compose file's conninfo).
    let mut receiver = Receiver::from_config(
        &wh,
        &receiver_config(&[primary.port, replica1.port, replica2.port]),
        dir.path().join("spool"),
    );
    wait_for("the quorum again", Duration::from_secs(60), || {
        (sync_states(&primary) == "replica1:quorum,replica2:async,walhalla:quorum").then_some(())
    });
    commit(&primary, 500);
    replica1.wait_replayed(&primary);

    // Failover by hand (docs/deploy-compose.md): the primary dies, replica1 is promoted, repointed.
    primary.stop("immediate");
    replica1.promote();
    replica1.sql("SELECT pg_create_physical_replication_slot('replica2')");
    replica1.sql("SELECT pg_create_physical_replication_slot('replica3')");
    replica1.sql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (walhalla, replica2)'");
    replica1.sql("SELECT pg_reload_conf()");
    replica2.sql(&format!(
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=replica2'",
        replica1.port
    ));
    replica2.sql("SELECT pg_reload_conf()");
    wait_for("the new quorum", Duration::from_secs(120), || {
        (sync_states(&replica1) == "replica2:quorum,walhalla:quorum").then_some(())
    });
    commit(&replica1, 500);
    let segment = replica1.switch_wal();
    let key_written = |name: &str| archive.keys().iter().any(|k| k.contains(name));
    wait_for("timeline 2 in the archive", Duration::from_secs(60), || {
        (key_written("00000002.history") && key_written(&segment)).then_some(())
    });

    // replica3, built afterwards from the archive alone: walhalla restore, no primary.
    let dir3 = TestDir::new("replica3");
    let data3 = dir3.path().join("data");
    let restore = as_pg_user(wh.path())
        .current_dir("/")
        .args(["--archive", archive.url(), "restore", "--to"])
        .arg(&data3)
        .args(["--standby", "--server", &server])
        .output()
        .unwrap();
    assert_eq!(restore.status.code(), Some(0), "{}", describe(&restore));
    let mut replica3 = PgCluster::adopt(dir3, data3);
    replica3.append_conf("archive_mode = off");
    // The compose file gives every PostgreSQL container the token in WALHALLA_TOKEN_FILE.
    replica3.set_env(vec![
        ("WALHALLA_TOKEN_FILE".into(), token.clone()),
        ("WALHALLA_CONFIG".into(), first_config.display().to_string()),
    ]);
    replica3.start();
    let lsn = replica1.sql("SELECT pg_current_wal_lsn()");
    wait_for(
        "replica3 to replay the archive",
        Duration::from_secs(120),
        || {
            (replica3.try_sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"))? == "t")
                .then_some(())
        },
    );
    let expected = replica1.table_fingerprint();
    assert!(expected.starts_with("2000:"), "{expected}");
    replica2.wait_replayed(&replica1);
    assert_eq!(replica2.table_fingerprint(), expected);
    assert_eq!(replica3.table_fingerprint(), expected);
    assert!(
        receiver.wait(Duration::ZERO).is_none(),
        "the receiver exited:\n{}",
        receiver.log()
    );
}
