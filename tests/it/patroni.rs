//! deploy/patroni/'s settings under a real Patroni: three nodes and one etcd on loopback, the
//! archive and restore commands, a receiver on the permanent slot, replicas built from the
//! archive; then a switchover and a failover.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::patroni::{
    Etcd, PATRONI_PASSWORD, PatroniNode, fill_template, patroni_bin_dir, patroni_dir,
    replace_setting,
};
use crate::harness::{
    Backend, Receiver, TestArchive, TestDir, Walhalla, as_pg_user, describe, free_port, wait_for,
};

const SCOPE: &str = "walhalla-test";

/// The repository's deploy/patroni directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/patroni")
}

/// deploy/patroni/'s scripts copied where the PostgreSQL user can run them.
fn install_scripts(dir: &TestDir) -> PathBuf {
    let scripts = dir.subdir("scripts");
    for name in ["walhalla-create-replica", "walhalla-clone"] {
        std::fs::copy(deploy_dir().join(name), scripts.join(name)).expect("copy a script");
    }
    scripts
}

/// The node that accepts writes, once exactly one does.
fn leader(nodes: &[PatroniNode], among: &[usize]) -> usize {
    wait_for("one leader", Duration::from_secs(120), || {
        let primaries: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| nodes[i].is_primary())
            .collect();
        (primaries.len() == 1).then(|| primaries[0])
    })
}

/// Waits until `leader` has every node of `replicas` streaming from it, and the receiver
/// streaming from its slot "walhalla".
fn wait_streaming(nodes: &[PatroniNode], leader: usize, replicas: &[usize]) {
    let names: Vec<String> = replicas
        .iter()
        .map(|&i| format!("'{}'", nodes[i].name))
        .collect();
    let query = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' \
         AND application_name IN ({})",
        names.join(",")
    );
    wait_for("the replicas to stream", Duration::from_secs(180), || {
        (nodes[leader].try_sql(&query)? == replicas.len().to_string()).then_some(())
    });
    wait_for(
        "the receiver to stream from the leader's slot",
        Duration::from_secs(120),
        || {
            let active = nodes[leader]
                .try_sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'walhalla'")?;
            (active == "t").then_some(())
        },
    );
}

/// How many times Patroni on `node` logged that it built its replica with walhalla.
fn built_from_archive(node: &PatroniNode) -> usize {
    node.log()
        .matches("replica has been created using walhalla")
        .count()
}

/// Writes rows on `node`, switches segments and waits until the receiver's slot and the
/// archiver have both passed the switch: the archive holds everything written so far.
fn write_and_archive(node: &PatroniNode, rows: u32) {
    node.sql(&format!(
        "CREATE TABLE IF NOT EXISTS t (id serial primary key, payload text);\
         INSERT INTO t (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, {rows}) g"
    ));
    node.sql("SELECT pg_logical_emit_message(false, 'walhalla-test', 'switch')");
    let segment = node.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let end = node.sql("SELECT pg_current_wal_lsn()");
    wait_for(
        &format!("{segment} archived by archive_command"),
        Duration::from_secs(120),
        || {
            let last =
                node.try_sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")?;
            (last.len() >= 24 && last[..24] >= segment[..]).then_some(())
        },
    );
    wait_for(
        "the receiver to confirm the switch",
        Duration::from_secs(120),
        || {
            let done = node.try_sql(&format!(
                "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = 'walhalla'"
            ))?;
            (done == "t").then_some(())
        },
    );
}

/// Gives `path` to the PostgreSQL user, readable by it alone.
fn chown_to_pg(path: &Path) {
    let chown = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(path)
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Runs walhalla as the PostgreSQL user with the nodes' settings file.
fn walhalla(wh: &Walhalla, config: &Path, args: &[&str]) -> std::process::Output {
    as_pg_user(wh.path())
        .current_dir("/")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("PGPASSWORD", PATRONI_PASSWORD)
        .output()
        .expect("run walhalla")
}

#[test]
fn patroni_switchover_and_failover_keep_the_archive_whole() {
    let started = Instant::now();
    let dir = TestDir::new("patroni");
    let bin = match patroni_bin_dir(dir.path()) {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("skipped: Patroni cannot run on this PostgreSQL: {why}");
            return;
        }
    };
    assert!(
        patroni_dir().join("bin/patroni").exists(),
        "Patroni is not installed in {}: run tests/prepare.sh",
        patroni_dir().display()
    );
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let etcd = Etcd::start();
    let scripts = install_scripts(&dir);

    // walhalla's settings, shared by every node and the receiver.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let password_file = dir.path().join("replication-password");
    std::fs::write(&password_file, format!("{PATRONI_PASSWORD}\n")).unwrap();
    let config = dir.path().join("walhalla.toml");
    let template = std::fs::read_to_string(deploy_dir().join("walhalla.toml")).unwrap();
    let port_list: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(
        &config,
        fill_template(
            &template,
            &[
                ("ARCHIVE", archive.url().to_string()),
                ("PG_HOSTS", ["127.0.0.1"; 3].join(",")),
                ("PG_PORTS", port_list.join(",")),
                (
                    "REPLICATION_PASSWORD_FILE",
                    password_file.display().to_string(),
                ),
            ],
        ),
    )
    .unwrap();
    chown_to_pg(&password_file);
    chown_to_pg(&config);

    // deploy/patroni/patroni.yml, with quicker failure detection and 1 MiB segments.
    let template = std::fs::read_to_string(deploy_dir().join("patroni.yml")).unwrap();
    let template = replace_setting(&template, "ttl: 30", "ttl: 10");
    let template = replace_setting(&template, "loop_wait: 10", "loop_wait: 2");
    let template = replace_setting(&template, "retry_timeout: 10", "retry_timeout: 4");
    let template = replace_setting(
        &template,
        "    - data-checksums\n",
        "    - data-checksums\n    - wal-segsize: \"1\"\n",
    );
    let shared = [
        ("SCOPE", SCOPE.to_string()),
        ("ETCD_HOSTS", etcd.client_addr.clone()),
        ("BIN_DIR", bin.display().to_string()),
        ("WALHALLA", wh.path().display().to_string()),
        ("WALHALLA_CONFIG", config.display().to_string()),
        ("SCRIPTS", scripts.display().to_string()),
        ("SUPERUSER_PASSWORD", PATRONI_PASSWORD.to_string()),
        ("REPLICATION_PASSWORD", PATRONI_PASSWORD.to_string()),
        ("CLIENT_NETWORK", "127.0.0.1/32".to_string()),
    ];
    let mut nodes: Vec<PatroniNode> = (0..3)
        .map(|i| {
            PatroniNode::new(&format!("node{}", i + 1), ports[i], |own| {
                let values: Vec<(&str, String)> =
                    shared.iter().cloned().chain(own.iter().cloned()).collect();
                fill_template(&template, &values)
            })
        })
        .collect();

    // node1 initialises the cluster; the receiver follows whichever node leads.
    nodes[0].start();
    assert_eq!(leader(&nodes, &[0]), 0);
    let mut receiver = Receiver::from_config(&wh, &config, dir.path().join("spool"));
    write_and_archive(&nodes[0], 500);

    // A base backup in the archive: node2 and node3 are built from it, not from node1.
    let backup = walhalla(
        &wh,
        &config,
        &[
            "backup",
            "-d",
            &format!("host=127.0.0.1 port={} user=replicator", ports[0]),
            "--fast",
        ],
    );
    assert_eq!(backup.status.code(), Some(0), "{}", describe(&backup));
    nodes[1].start();
    nodes[2].start();
    wait_streaming(&nodes, 0, &[1, 2]);
    for node in &nodes[1..] {
        assert_eq!(
            built_from_archive(node),
            1,
            "{} was not built from the archive",
            node.name
        );
    }
    eprintln!("three nodes streaming after {:?}", started.elapsed());

    // Switchover to node2: timeline 2.
    write_and_archive(&nodes[0], 500);
    let switchover = nodes[0].patronictl(&[
        "switchover",
        SCOPE,
        "--leader",
        "node1",
        "--candidate",
        "node2",
        "--force",
    ]);
    assert!(switchover.status.success(), "{}", describe(&switchover));
    wait_for("node2 to lead", Duration::from_secs(120), || {
        (nodes[1].is_primary() && !nodes[0].is_primary()).then_some(())
    });
    wait_streaming(&nodes, 1, &[0, 2]);
    write_and_archive(&nodes[1], 500);
    eprintln!("switchover done after {:?}", started.elapsed());

    // Failover: node2's host dies; node1 or node3 takes over on timeline 3.
    nodes[1].kill9();
    let new_leader = leader(&nodes, &[0, 2]);
    let replica = if new_leader == 0 { 2 } else { 0 };
    wait_streaming(&nodes, new_leader, &[replica]);
    write_and_archive(&nodes[new_leader], 500);
    eprintln!(
        "failover to {} done after {:?}",
        nodes[new_leader].name,
        started.elapsed()
    );

    // The archive is contiguous across both switches, with each history file.
    let verify = walhalla(&wh, &config, &["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
    let list = walhalla(&wh, &config, &["list", "--json"]);
    assert_eq!(list.status.code(), Some(0), "{}", describe(&list));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let timelines = list["clusters"][0]["timelines"]
        .as_array()
        .expect("timelines");
    let numbers: Vec<u64> = timelines
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3], "{list:#}");
    for timeline in timelines {
        assert_eq!(
            timeline["gaps"].as_array().unwrap().len(),
            0,
            "{timeline:#}"
        );
        if timeline["timeline"] != 1 {
            // Its parent comes from its history file.
            assert!(timeline["parent"].is_array(), "{timeline:#}");
        }
    }
    for history in ["00000002.history", "00000003.history"] {
        assert!(
            archive.keys().iter().any(|k| k.contains(history)),
            "no {history} in {:?}",
            archive.keys()
        );
    }

    // The surviving replica, reinitialised: restored from the archive again, then streaming.
    let built = built_from_archive(&nodes[replica]);
    let reinit = nodes[new_leader].patronictl(&["reinit", SCOPE, &nodes[replica].name, "--force"]);
    assert!(reinit.status.success(), "{}", describe(&reinit));
    wait_for(
        "the reinitialised replica to be built",
        Duration::from_secs(180),
        || (built_from_archive(&nodes[replica]) > built).then_some(()),
    );
    // The dead host comes back and rejoins as a replica.
    nodes[1].start();
    wait_streaming(&nodes, new_leader, &[replica, 1]);
    eprintln!("reinit and rejoin done after {:?}", started.elapsed());

    // The same data everywhere.
    write_and_archive(&nodes[new_leader], 100);
    let lsn = nodes[new_leader].sql("SELECT pg_current_wal_lsn()");
    let fingerprint = "SELECT count(*) || ':' || sum(id) || ':' || sum(length(payload)) FROM t";
    let expected = nodes[new_leader].sql(fingerprint);
    assert!(expected.starts_with("2100:"), "{expected}");
    for node in &nodes {
        wait_for(
            &format!("{} to replay", node.name),
            Duration::from_secs(60),
            || {
                let query = format!(
                    "SELECT pg_is_in_recovery() = false OR pg_last_wal_replay_lsn() >= '{lsn}'"
                );
                (node.try_sql(&query)? == "t").then_some(())
            },
        );
        assert_eq!(node.sql(fingerprint), expected, "{}", node.name);
    }
    assert!(
        receiver.wait(Duration::ZERO).is_none(),
        "the receiver exited:\n{}",
        receiver.log()
    );

    // A point-in-time clone: a new cluster bootstrapped with walhalla_clone from this
    // cluster's archive, at a time between two commits; it archives into an archive of its own.
    std::thread::sleep(Duration::from_millis(1100));
    let target_time = nodes[new_leader].sql("SELECT now()");
    std::thread::sleep(Duration::from_millis(1100));
    write_and_archive(&nodes[new_leader], 100);
    let clone_archive = TestArchive::new(Backend::Local);
    let clone_config = dir.path().join("clone-walhalla.toml");
    let clone_port = free_port();
    let walhalla_template = std::fs::read_to_string(deploy_dir().join("walhalla.toml")).unwrap();
    std::fs::write(
        &clone_config,
        fill_template(
            &walhalla_template,
            &[
                ("ARCHIVE", clone_archive.url().to_string()),
                ("PG_HOSTS", "127.0.0.1".to_string()),
                ("PG_PORTS", clone_port.to_string()),
                (
                    "REPLICATION_PASSWORD_FILE",
                    password_file.display().to_string(),
                ),
            ],
        ),
    )
    .unwrap();
    chown_to_pg(&clone_config);
    // The bootstrap method, uncommented, with this target.
    let mut in_method = false;
    let clone_template: String = template
        .lines()
        .map(|line| {
            if line == "  # method: walhalla_clone" {
                in_method = true;
            }
            let line = if in_method {
                line.replacen("  # ", "  ", 1)
            } else {
                line.to_string()
            };
            if line.contains("keep_existing_recovery_conf") {
                in_method = false;
            }
            if line.contains("target-time:") {
                format!("    target-time: \"{target_time}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(
        clone_template.contains("\n  method: walhalla_clone\n"),
        "{clone_template}"
    );
    let clone_shared: Vec<(&str, String)> = shared
        .iter()
        .cloned()
        .map(|(name, value)| match name {
            "SCOPE" => (name, "walhalla-clone".to_string()),
            "WALHALLA_CONFIG" => (name, clone_config.display().to_string()),
            _ => (name, value),
        })
        .chain([("SOURCE_ARCHIVE", archive.url().to_string())])
        .collect();
    let mut clone = PatroniNode::new("clone1", clone_port, |own| {
        let values: Vec<(&str, String)> = clone_shared
            .iter()
            .cloned()
            .chain(own.iter().cloned())
            .collect();
        fill_template(&clone_template, &values)
    });
    clone.start();
    wait_for("the clone to lead", Duration::from_secs(180), || {
        clone.is_primary().then_some(())
    });
    let at_target = expected;
    assert_eq!(clone.sql(fingerprint), at_target);
    assert!(nodes[new_leader].sql(fingerprint).starts_with("2200:"));
    // It archives into its own archive, on a timeline of its own.
    clone.sql("SELECT pg_logical_emit_message(false, 'walhalla-test', 'switch')");
    let segment = clone.sql("SELECT pg_walfile_name(pg_switch_wal())");
    wait_for("the clone's archive", Duration::from_secs(60), || {
        clone_archive
            .keys()
            .iter()
            .any(|k| k.contains(&segment))
            .then_some(())
    });
    eprintln!("done after {:?}", started.elapsed());
}
