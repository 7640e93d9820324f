//! A Patroni cluster on loopback: one etcd ([`Etcd`]) and Patroni nodes ([`PatroniNode`]) run
//! with `deploy/patroni/`'s settings, filled in with this machine's ports and paths. Patroni
//! runs as the PostgreSQL user from `tests/prepare.sh`'s install beside the PostgreSQL cache;
//! every process is stopped by pid on drop, the logs' tails printed when the test fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{TestDir, describe, free_port, pg_client_bin, wait_for};

/// The password of the `postgres` and `replicator` roles of the tests' Patroni clusters.
pub const PATRONI_PASSWORD: &str = "walhalla-patroni-test";

/// Where `tests/prepare.sh` installs Patroni: `bin/patroni` and `bin/patronictl`, which the
/// PostgreSQL user can run.
pub fn patroni_dir() -> PathBuf {
    super::pg::cache_dir()
        .parent()
        .expect("the cache has a parent")
        .join("patroni")
}

/// A directory of links for Patroni's `bin_dir`: the server's initdb, pg_ctl and postgres, and
/// the client tools Patroni also runs (pg_controldata, pg_rewind, pg_basebackup, pg_isready).
/// `Err` says why Patroni cannot run on this PostgreSQL: those tools are of another major
/// (they are PostgreSQL 18's where the server's package ships none).
pub fn patroni_bin_dir(dir: &Path) -> Result<PathBuf, String> {
    let (server, client) = (super::pg::pg_bin(), pg_client_bin());
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create the bin directory");
    let major = |program: &Path| -> String {
        let out = Command::new(program).arg("--version").output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
        let text = text.unwrap_or_default();
        text.split_whitespace()
            .last()
            .and_then(|v| v.split('.').next())
            .unwrap_or("?")
            .to_string()
    };
    let want = major(&server.join("postgres"));
    for tool in [
        "pg_controldata",
        "pg_rewind",
        "pg_basebackup",
        "pg_isready",
        "psql",
    ] {
        let have = major(&client.join(tool));
        if have != want {
            return Err(format!(
                "{tool} in {} is PostgreSQL {have}'s, not {want}'s: Patroni needs both of one major",
                client.display()
            ));
        }
        std::os::unix::fs::symlink(client.join(tool), bin.join(tool)).expect("link a tool");
    }
    for tool in ["initdb", "pg_ctl", "postgres"] {
        std::os::unix::fs::symlink(server.join(tool), bin.join(tool)).expect("link a tool");
    }
    Ok(bin)
}

/// Fills in a settings file's `{{NAME}}` placeholders; every one must be given.
pub fn fill_template(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    // Comments may name placeholders; settings may not keep one.
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(!line.contains("{{"), "placeholder left unfilled: {line}");
    }
    text
}

/// Replaces `from` with `to` in `text`, which must contain it.
pub fn replace_setting(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the settings have no {from:?}");
    text.replacen(from, to, 1)
}

/// A process run as the PostgreSQL user, its output in `log`; SIGKILLed on drop.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(mut command: Command, log: PathBuf, home: &Path) -> Daemon {
        let file = std::fs::File::create(&log).expect("create a log");
        if let Some((uid, gid)) = super::pg_user_ids() {
            command.uid(uid).gid(gid).env("HOME", home);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Daemon {
            child: Some(child),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One etcd member on loopback, its data in a temporary directory.
pub struct Etcd {
    daemon: Daemon,
    /// `127.0.0.1:PORT`, where clients connect.
    pub client_addr: String,
    _dir: TestDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Etcd {
        let dir = TestDir::new("etcd");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command
            .args(["--name", "walhalla-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("walhalla-test={peer_url}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ]);
        let daemon = Daemon::spawn(command, dir.path().join("etcd.log"), dir.path());
        let etcd = Etcd {
            daemon,
            client_addr: format!("127.0.0.1:{client}"),
            _dir: dir,
        };
        wait_for("etcd to answer", Duration::from_secs(30), || {
            let health = super::http::get_with(client, "/health", None).ok()?;
            (health.status == 200).then_some(())
        });
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the etcd log ---\n{}",
                super::tail(&self.daemon.log())
            );
        }
        self.daemon.kill9();
    }
}

/// One Patroni node: its settings file, its PostgreSQL's data directory and port.
pub struct PatroniNode {
    /// The member name.
    pub name: String,
    /// The TCP port PostgreSQL listens on, on 127.0.0.1.
    pub pg_port: u16,
    /// The data directory.
    pub data: PathBuf,
    /// The settings file Patroni runs with.
    pub config: PathBuf,
    daemon: Option<Daemon>,
    /// How many times Patroni was started here (each run logs to its own file).
    runs: u32,
    dir: TestDir,
}

impl PatroniNode {
    /// A node named `name` whose settings `settings` makes from its placeholders' values
    /// (`NAME`, `RESTAPI_LISTEN`, `PG_LISTEN`, `DATA_DIR`, `PGPASS`, `SOCKET_DIR` and the
    /// addresses), not started yet. `pg_port` was chosen beforehand: every node's is in the
    /// receiver's connection string.
    pub fn new(name: &str, pg_port: u16, settings: impl Fn(&[(&str, String)]) -> String) -> Self {
        let dir = TestDir::new(name);
        let api_port = free_port();
        let data = dir.path().join("data");
        let values = [
            ("NAME", name.to_string()),
            ("RESTAPI_LISTEN", format!("127.0.0.1:{api_port}")),
            ("RESTAPI_ADDRESS", format!("127.0.0.1:{api_port}")),
            ("PG_LISTEN", format!("127.0.0.1:{pg_port}")),
            ("PG_ADDRESS", format!("127.0.0.1:{pg_port}")),
            ("DATA_DIR", data.display().to_string()),
            ("PGPASS", dir.path().join("pgpass").display().to_string()),
            ("SOCKET_DIR", dir.path().display().to_string()),
        ];
        let config = dir.path().join("patroni.yml");
        std::fs::write(&config, settings(&values)).expect("write patroni.yml");
        PatroniNode {
            name: name.to_string(),
            pg_port,
            data,
            config,
            daemon: None,
            runs: 0,
            dir,
        }
    }

    /// Starts Patroni on this node.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "{} runs already", self.name);
        let mut command = Command::new(patroni_dir().join("bin/patroni"));
        command.arg(&self.config);
        self.runs += 1;
        let log = self.log_path(self.runs);
        self.daemon = Some(Daemon::spawn(command, log, self.dir.path()));
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("patroni-{run}.log"))
    }

    /// Kills Patroni and its PostgreSQL with SIGKILL, as a crashed host would leave them.
    pub fn kill9(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill9();
        }
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: kill() on the postmaster this node's Patroni started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_for("the postmaster to die", Duration::from_secs(30), || {
                // SAFETY: signal 0 only checks that the process exists.
                (unsafe { libc::kill(pid, 0) } != 0).then_some(())
            });
        }
    }

    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// What Patroni (and PostgreSQL, whose output goes to Patroni's) logged so far, in every
    /// run.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| std::fs::read_to_string(self.log_path(run)).unwrap_or_default())
            .collect()
    }

    /// Runs SQL on this node's PostgreSQL as `postgres` over TCP, `None` when it fails.
    pub fn try_sql(&self, query: &str) -> Option<String> {
        let output = self.psql(query).ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Runs SQL on this node, which must succeed.
    pub fn sql(&self, query: &str) -> String {
        let output = self.psql(query).expect("run psql");
        assert!(
            output.status.success(),
            "psql on {} {query:?} failed: {}",
            self.name,
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn psql(&self, query: &str) -> std::io::Result<Output> {
        Command::new(pg_client_bin().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", query])
            .env("PGPASSWORD", PATRONI_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
    }

    /// Whether this node's PostgreSQL accepts writes now.
    pub fn is_primary(&self) -> bool {
        self.try_sql("SELECT pg_is_in_recovery()").as_deref() == Some("f")
    }

    /// Runs `patronictl -c CONFIG ARGS` as the PostgreSQL user.
    pub fn patronictl(&self, args: &[&str]) -> Output {
        let mut command = super::as_pg_user(patroni_dir().join("bin/patronictl"));
        command
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("HOME", self.dir.path());
        command.output().expect("run patronictl")
    }
}

impl Drop for PatroniNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log: String = self
                .log()
                .lines()
                .filter(|line| !line.contains("INFO: no action."))
                .map(|line| format!("{line}\n"))
                .collect();
            eprintln!(
                "--- last lines of Patroni's log on {} (less its \"no action\" lines) ---\n{}",
                self.name,
                super::tail(&log)
            );
        }
        if let Some(daemon) = self.daemon.as_mut() {
            daemon.kill9();
        }
        if self.postmaster_pid().is_some() {
            let _ = super::as_pg_user(super::pg::pg_bin().join("pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
        }
    }
}
