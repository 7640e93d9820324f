//! A real PostgreSQL cluster in a temporary directory: initdb with 1 MiB WAL segments, pg_ctl,
//! SQL through psql, base backups and standbys. Stopped (immediate) on drop; the server log's
//! tail is printed when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{TestDir, as_pg_user, describe, free_port, wait_for};

/// The PostgreSQL installation the tests run against.
struct Install {
    /// initdb, pg_ctl and postgres.
    server: PathBuf,
    /// psql and pg_basebackup: the server's own, or newer ones that support it.
    client: PathBuf,
}

/// `WALHALLA_PG=MAJOR` picks the installation `tests/prepare.sh` put in its cache
/// (`WALHALLA_PG_CACHE/MAJOR/{server,client}`); without it, `PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, holds everything.
fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let (server, client) = match std::env::var("WALHALLA_PG") {
            Ok(major) => {
                assert!(
                    major.parse::<u32>().is_ok(),
                    "WALHALLA_PG={major:?}: a test process runs one PostgreSQL major; \
                     tests/run.sh runs a list of them"
                );
                let dir = cache_dir().join(&major);
                assert!(
                    dir.join("server/pg_ctl").exists(),
                    "PostgreSQL {major} is not in {}: run WALHALLA_PG={major} tests/prepare.sh",
                    dir.display()
                );
                (dir.join("server"), dir.join("client"))
            }
            Err(_) => {
                let bin = walhalla::demo::pg_bin().unwrap_or_else(|e| panic!("{e}"));
                (bin.clone(), bin)
            }
        };
        if let Ok(wanted) = std::env::var("WALHALLA_PG") {
            let major = server_major(&server);
            assert_eq!(
                wanted,
                major.to_string(),
                "{} is not PostgreSQL {wanted}",
                server.display()
            );
        }
        Install { server, client }
    })
}

/// Where `tests/prepare.sh` installs PostgreSQL versions (the same rule as there).
pub(super) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WALHALLA_PG_CACHE") {
        return dir.into();
    }
    if super::running_as_root() {
        return "/var/cache/walhalla/pg".into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    cache.join("walhalla/pg")
}

/// The major version `postgres --version` reports ("postgres (PostgreSQL) 17.10" is 17).
fn server_major(server: &Path) -> u32 {
    let output = Command::new(server.join("postgres"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {}/postgres: {e}", server.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.split(['.', 'b', 'r']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("cannot read a version in {text:?}"))
}

/// Where the server binaries (initdb, pg_ctl, postgres) of the PostgreSQL under test are.
pub fn pg_bin() -> &'static Path {
    &install().server
}

/// Where the client tools (psql, pg_basebackup) for the PostgreSQL under test are.
pub fn pg_client_bin() -> &'static Path {
    &install().client
}

/// A PostgreSQL cluster owned by the test.
pub struct PgCluster {
    dir: TestDir,
    /// The data directory.
    pub data: PathBuf,
    /// The TCP port on 127.0.0.1 (also the unix socket's number).
    pub port: u16,
    env: Vec<(String, String)>,
    running: bool,
}

impl PgCluster {
    /// initdb a new cluster with 1 MiB segments, listening on 127.0.0.1 and a private socket.
    pub fn init(label: &str) -> PgCluster {
        let dir = TestDir::new(label);
        let data = dir.path().join("data");
        run_ok(
            as_pg_user(pg_bin().join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--wal-segsize=1",
                    "-N",
                    "-D",
                ])
                .arg(&data),
        );
        let cluster = PgCluster::at(dir, data);
        cluster.append_conf(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_wal_senders = 10\nwal_level = replica\nlog_checkpoints = on\n",
            cluster.port,
            cluster.dir.path().display()
        ));
        cluster
    }

    /// A cluster whose data directory was made by hand inside `dir` (a copy of another one):
    /// its own port and socket, not started yet.
    pub fn adopt(dir: TestDir, data: PathBuf) -> PgCluster {
        let cluster = PgCluster::at(dir, data);
        cluster.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'",
            cluster.port,
            cluster.dir.path().display()
        ));
        cluster
    }

    fn at(dir: TestDir, data: PathBuf) -> PgCluster {
        PgCluster {
            dir,
            data,
            port: free_port(),
            env: Vec::new(),
            running: false,
        }
    }

    /// A standby of `primary` from a fresh `pg_basebackup`, not started yet, with
    /// `primary_conninfo` set and `standby.signal` in place.
    pub fn standby_of(primary: &PgCluster, label: &str) -> PgCluster {
        let standby = Self::from_backup(primary, label, "stream");
        standby.append_conf(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={label}'",
            primary.port
        ));
        std::fs::write(standby.data.join("standby.signal"), "").expect("write standby.signal");
        standby
    }

    /// A cascade: a primary with rows, keeping 1 GB of WAL; a standby of it, started and caught
    /// up; and a standby of that standby, following the latest timeline, not started yet (for
    /// its own settings).
    pub fn cascade() -> (PgCluster, PgCluster, PgCluster) {
        let mut primary = PgCluster::init("primary");
        primary.append_conf("wal_keep_size = '1GB'");
        primary.start();
        primary.write_rows(300);
        let mut standby1 = PgCluster::standby_of(&primary, "standby1");
        standby1.append_conf("wal_keep_size = '1GB'");
        standby1.start();
        standby1.wait_replayed(&primary);
        let standby2 = PgCluster::standby_of(&standby1, "standby2");
        standby2.append_conf("wal_keep_size = '1GB'\nrecovery_target_timeline = 'latest'");
        (primary, standby1, standby2)
    }

    /// An instance made from a fresh `pg_basebackup -X wal_method` of `primary`, with its own
    /// port and socket and archiving off, not started yet.
    pub fn from_backup(primary: &PgCluster, label: &str, wal_method: &str) -> PgCluster {
        let dir = TestDir::new(label);
        let data = dir.path().join("data");
        primary.base_backup_with(&data, wal_method);
        let copy = PgCluster::adopt(dir, data);
        copy.append_conf("archive_mode = off");
        copy
    }

    /// Starts this copy in archive recovery with `restore_command` (no target: to the end of
    /// the archive, on the latest timeline) and waits until it is promoted.
    pub fn recover_from_archive(&mut self, restore_command: &str) {
        self.append_conf(&format!("restore_command = '{restore_command}'"));
        std::fs::write(self.data.join("recovery.signal"), "").expect("write recovery.signal");
        self.start();
        wait_for(
            "archive recovery to finish",
            Duration::from_secs(120),
            || (self.try_sql("SELECT pg_is_in_recovery()")? == "f").then_some(()),
        );
    }

    /// Environment variables for the server, and so for its archive and restore commands.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Appends settings to postgresql.conf (later lines win).
    pub fn append_conf(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "{text}").expect("append to postgresql.conf");
    }

    /// Starts the server and waits until it accepts connections (or, for a standby, until
    /// pg_ctl considers it started).
    pub fn start(&mut self) {
        self.pg_ctl_start(&["-w", "-t", "120"]);
    }

    /// Starts the server without waiting for it to accept connections (a standby that may
    /// never reach a consistent state, a recovery expected to stop).
    pub fn start_without_waiting(&mut self) {
        self.pg_ctl_start(&["-W"]);
    }

    fn pg_ctl_start(&mut self, wait: &[&str]) {
        let output = as_pg_user(pg_bin().join("pg_ctl"))
            .args(wait)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .arg("start")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run pg_ctl start");
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}\n{}",
            describe(&output),
            self.log_tail()
        );
        self.running = true;
    }

    /// Promotes this standby and waits until it accepts writes.
    pub fn promote(&self) {
        self.sql("SELECT pg_promote()");
        wait_for("the promotion", Duration::from_secs(60), || {
            (self.try_sql("SELECT pg_is_in_recovery()")? == "f").then_some(())
        });
    }

    /// Waits until this standby has replayed everything `primary` has written so far.
    pub fn wait_replayed(&self, primary: &PgCluster) {
        let target = primary.sql("SELECT pg_current_wal_lsn()");
        wait_for("the standby to replay", Duration::from_secs(120), || {
            (self.try_sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'"))? == "t")
                .then_some(())
        });
    }

    /// Waits until `count` standbys stream from this server.
    pub fn wait_streaming_standbys(&self, count: usize) {
        wait_for("standbys to stream", Duration::from_secs(60), || {
            let streaming =
                self.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
            (streaming == count.to_string()).then_some(())
        });
    }

    /// The state of the walsender serving walhalla (`application_name` walhalla) in
    /// `pg_stat_replication`, `""` when none is.
    pub fn receiver_state(&self) -> String {
        self.sql(
            "SELECT coalesce(max(state), '') FROM pg_stat_replication \
             WHERE application_name = 'walhalla'",
        )
    }

    /// How many walsenders serve walhalla.
    pub fn receiver_connections(&self) -> usize {
        self.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walhalla'")
            .parse()
            .expect("a count")
    }

    /// `pg_stat_archiver.failed_count`.
    pub fn archive_failures(&self) -> u64 {
        self.sql("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .expect("a count")
    }

    /// Writes and checkpoints until `segment` is gone from pg_wal (recycled or removed), at
    /// least a few rounds; needs a small max_wal_size and nothing holding the WAL back.
    pub fn churn_until_recycled(&self, segment: &str) {
        let mut rounds = 0;
        while self.data.join("pg_wal").join(segment).exists() || rounds < 3 {
            self.write_rows(3000);
            self.switch_wal();
            self.sql("CHECKPOINT");
            std::thread::sleep(Duration::from_millis(200));
            rounds += 1;
            assert!(rounds < 60, "{segment} is never recycled");
        }
    }

    /// Stops the server with `mode` (smart, fast or immediate).
    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let output = as_pg_user(pg_bin().join("pg_ctl"))
            .args(["-w", "-t", "120", "-m", mode, "-D"])
            .arg(&self.data)
            .arg("stop")
            .output()
            .expect("run pg_ctl stop");
        self.running = false;
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            describe(&output)
        );
    }

    /// Runs SQL through psql and returns its unaligned, tuples-only output, trimmed.
    pub fn sql(&self, query: &str) -> String {
        let output = self.psql(query).output().expect("run psql");
        assert!(
            output.status.success(),
            "psql {query:?} failed: {}",
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs SQL and returns whether it succeeded, with what psql printed on stdout and stderr.
    pub fn sql_output(&self, query: &str) -> (bool, String, String) {
        let output = self.psql(query).output().expect("run psql");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        (
            output.status.success(),
            text(&output.stdout),
            text(&output.stderr),
        )
    }

    /// A connection string for `walhalla receive` to this cluster over TCP.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// Like [`PgCluster::sql`] but returns `None` when the query fails.
    pub fn try_sql(&self, query: &str) -> Option<String> {
        let output = self.psql(query).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn psql(&self, query: &str) -> Command {
        let mut cmd = Command::new(pg_client_bin().join("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-h",
        ])
        .arg(self.dir.path())
        .args(["-p", &self.port.to_string(), "-c", query]);
        cmd
    }

    /// The cluster's system identifier.
    pub fn system_id(&self) -> u64 {
        self.sql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .expect("a number")
    }

    /// Switches to a new WAL segment and returns the name of the one it closed. A record goes
    /// first: `pg_switch_wal()` does nothing at the very start of a segment, where a base
    /// backup's end leaves PostgreSQL 17 and later.
    pub fn switch_wal(&self) -> String {
        self.switch_wal_ending().0
    }

    /// [`Self::switch_wal`], with where the closed segment's WAL ends: just past the switch
    /// record, as `pg_switch_wal()` returns it.
    pub fn switch_wal_ending(&self) -> (String, String) {
        self.sql("SELECT pg_logical_emit_message(false, 'walhalla-test', 'switch')");
        let ending = self.sql("SELECT pg_switch_wal()");
        let name = self.sql(&format!("SELECT pg_walfile_name('{ending}')"));
        (name, ending)
    }

    /// Writes `rows` rows of about 1 kB into table `t` (created if missing).
    pub fn write_rows(&self, rows: u32) {
        self.sql(&format!(
            "CREATE TABLE IF NOT EXISTS t (id serial primary key, payload text);\
             INSERT INTO t (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, {rows}) g"
        ));
    }

    /// A fingerprint of table `t`: row count and a sum over its content.
    pub fn table_fingerprint(&self) -> String {
        self.sql("SELECT count(*) || ':' || coalesce(sum(id), 0) || ':' || coalesce(sum(length(payload)), 0) FROM t")
    }

    /// A `pg_basebackup` of this cluster into `dest` (WAL streamed alongside).
    pub fn base_backup(&self, dest: &Path) {
        self.base_backup_with(dest, "stream");
    }

    /// A `pg_basebackup -X wal_method` of this cluster into `dest`.
    pub fn base_backup_with(&self, dest: &Path, wal_method: &str) {
        run_ok(
            as_pg_user(pg_client_bin().join("pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-c",
                    "fast",
                    "-X",
                    wal_method,
                    "-D",
                ])
                .arg(dest),
        );
    }

    /// Turns TLS on (`ssl = on`, effective at the next start) with a server certificate for
    /// 127.0.0.1 signed by a new CA; the directory holding the CA's files, and the CA
    /// certificate (for `sslrootcert`).
    pub fn enable_tls(&self) -> (TestDir, PathBuf) {
        // A CA, and a server certificate it signs for 127.0.0.1 (rustls checks the IP address
        // in subjectAltName; it ignores the CN, and refuses a CA certificate as the server's).
        let pki = TestDir::new("pki");
        let (ca, cert, key) = (
            pki.path().join("ca.crt"),
            self.data.join("server.crt"),
            self.data.join("server.key"),
        );
        let ext = pki.path().join("san.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
        let p = |name: &str| pki.path().join(name).display().to_string();
        let steps: [Vec<String>; 3] = [
            format!("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walhalla-test-ca -keyout {} -out {}", p("ca.key"), ca.display()),
            format!("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {} -out {}", key.display(), p("server.csr")),
            format!(
                "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 2 -extfile {} -out {}",
                p("server.csr"),
                ca.display(),
                p("ca.key"),
                ext.display(),
                cert.display()
            ),
        ]
        .map(|step| step.split(' ').map(String::from).collect());
        for args in steps {
            let made = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .expect("openssl is needed for this test: apt-get install openssl");
            assert!(
                made.status.success(),
                "openssl {args:?}: {}",
                describe(&made)
            );
        }
        for file in [&cert, &key] {
            let chown = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(file)
                .status()
                .unwrap();
            assert!(chown.success());
            std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        self.append_conf("ssl = on");
        (pki, ca)
    }

    /// Waits until the archiver has archived `segment` (or a later file).
    pub fn wait_archived(&self, segment: &str) {
        wait_for(
            &format!("{segment} archived"),
            Duration::from_secs(60),
            || {
                let row = self.sql("SELECT coalesce(last_archived_wal, '') || ',' || failed_count FROM pg_stat_archiver");
                let (last, _failed) = row.split_once(',').expect("two columns");
                (last.len() >= 24 && &last[..24] >= segment).then_some(())
            },
        )
    }

    /// The path of the server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        super::tail(&self.log())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log_path().display(),
                self.log_tail()
            );
        }
        if self.running {
            let _ = as_pg_user(pg_bin().join("pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        describe(&output)
    );
}
