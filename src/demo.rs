//! `walhalla demo`: the main jobs in one command, on a throwaway PostgreSQL from the installed
//! server binaries. It runs the very commands a user would (`receive`, `backup`, `list`,
//! `restore`), as processes of this binary with their logs in the demo's directory: the
//! receiver streams into a local archive, a base backup is taken, rows are deleted after a
//! restore point, and a point-in-time restore brings them back. Then it says what was shown
//! and what to run next; everything is removed unless `--keep`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The rows the demo writes, deletes, and gets back.
const ROWS: u32 = 100_000;
/// The primary's port (on a socket in the demo's directory: it cannot clash).
const PRIMARY_PORT: u16 = 5432;
/// The restored server's port.
const RESTORED_PORT: u16 = 5433;

/// Runs the demo; keeps its directory (clusters, archive, spool, logs) when `keep` is set.
/// Blocking: run it off the async reactor.
pub fn run(compression_level: i32, keep: bool) -> anyhow::Result<()> {
    let bin = pg_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("walhalla-demo-")
        .tempdir_in("/tmp")
        .context("create a directory")?;
    let demo = Demo::new(bin, dir.path(), compression_level)?;
    let result = demo.show();
    demo.stop_everything();
    if keep {
        let kept = dir.keep();
        println!("\n== kept {} (logs: *.log there)", kept.display());
    } else {
        println!(
            "\n== removing {} (--keep keeps it, logs included)",
            dir.path().display()
        );
    }
    result
}

/// The demo's directory, its servers and its walhalla.
struct Demo {
    root: PathBuf,
    walhalla: PathBuf,
    compression_level: i32,
    primary: Cluster,
    restored: Cluster,
    receiver: std::cell::RefCell<Option<Child>>,
}

impl Demo {
    fn new(bin: PathBuf, root: &Path, compression_level: i32) -> anyhow::Result<Demo> {
        // A copy of this binary where PostgreSQL's user can run it (the build may sit under a
        // directory only its owner can enter).
        let walhalla = root.join("walhalla");
        std::fs::copy(
            std::env::current_exe().context("the path of this walhalla")?,
            &walhalla,
        )
        .context("copy walhalla into the demo's directory")?;
        std::fs::set_permissions(
            &walhalla,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        if crate::osuser::is_root() {
            run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(root))?;
        }
        Ok(Demo {
            root: root.to_owned(),
            primary: Cluster::new(&bin, root, "primary", PRIMARY_PORT),
            restored: Cluster::new(&bin, root, "restored", RESTORED_PORT),
            walhalla,
            compression_level,
            receiver: std::cell::RefCell::new(None),
        })
    }

    fn archive(&self) -> PathBuf {
        self.root.join("archive")
    }

    fn conninfo(&self) -> String {
        format!(
            "host={} port={PRIMARY_PORT} user=postgres",
            self.root.display()
        )
    }

    /// `walhalla --archive … ARGS`, as PostgreSQL's user when the demo runs as root.
    fn walhalla(&self, args: &[&str]) -> Command {
        let mut cmd = as_pg_user(&self.walhalla);
        cmd.arg("--archive")
            .arg(self.archive())
            .arg("--compression-level")
            .arg(self.compression_level.to_string())
            .args(args)
            .env("WALHALLA_LOG", "warn");
        cmd
    }

    /// Runs `walhalla ARGS`, shows the command and what it printed.
    fn step(&self, args: &[&str]) -> anyhow::Result<String> {
        println!(
            "$ walhalla --archive {} {}",
            self.archive().display(),
            shell_words(args)
        );
        let output = self
            .walhalla(args)
            .output()
            .with_context(|| format!("run walhalla {}", args[0]))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{}", indent(&stdout));
        if !output.status.success() {
            bail!(
                "walhalla {} failed: {}",
                args[0],
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(stdout)
    }

    fn show(&self) -> anyhow::Result<()> {
        println!(
            "== a throwaway PostgreSQL in {}",
            self.primary.data().display()
        );
        self.primary.init()?;
        self.primary.start()?;

        let conninfo = self.conninfo();
        let spool = self.root.join("spool");
        let receive = [
            "receive",
            "-d",
            &conninfo,
            "-S",
            "walhalla_demo",
            "--create-slot",
            "--spool",
            spool.to_str().context("a spool path in UTF-8")?,
            "--status-interval",
            "1",
        ];
        println!(
            "\n== streaming WAL into the archive (log: {}/receiver.log)\n$ walhalla --archive {} {} &",
            self.root.display(),
            self.archive().display(),
            shell_words(&receive)
        );
        let log = std::fs::File::create(self.root.join("receiver.log"))?;
        let child = self
            .walhalla(&receive)
            .env("WALHALLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start walhalla receive")?;
        *self.receiver.borrow_mut() = Some(child);
        self.wait_for("the receiver to stream", || {
            Ok(self
                .primary
                .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")?
                == "1")
        })?;

        println!("\n== a base backup, its WAL archived by the receiver");
        self.primary.psql(&format!(
            "CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, {ROWS}) g"
        ))?;
        self.step(&["backup", "-d", &conninfo, "--fast"])?;

        println!("\n== a restore point, then an accident: every row deleted");
        self.primary
            .psql("SELECT pg_create_restore_point('before_the_accident')")?;
        self.primary.psql("DELETE FROM demo")?;
        let last = self
            .primary
            .psql("SELECT pg_walfile_name(pg_switch_wal())")?;
        self.wait_for("the last segment to be archived", || {
            Ok(find_files(&self.archive())
                .iter()
                .any(|(path, _)| path.to_string_lossy().ends_with(&format!("{last}.zst"))))
        })?;
        println!(
            "{}",
            indent(&self.primary.psql(
                "SELECT 'the server sees walhalla: state=' || state || ' flushed (archived)=' || flush_lsn \
                 || ', slot restart_lsn=' || (SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walhalla_demo') \
                 FROM pg_stat_replication"
            )?)
        );
        println!(
            "  rows on the primary now: {}",
            self.primary.psql("SELECT count(*) FROM demo")?
        );

        println!("\n== what the archive holds");
        self.step(&["list"])?;

        println!("\n== point-in-time restore to the restore point, into a new data directory");
        let to = self.restored.data();
        self.step(&[
            "restore",
            "--to",
            to.to_str().context("a path in UTF-8")?,
            "--target-name",
            "before_the_accident",
            "--target-action",
            "promote",
        ])?;
        self.restored.start()?;
        self.wait_for("the restored server to reach the restore point", || {
            Ok(self.restored.psql("SELECT pg_is_in_recovery()")? == "f")
        })?;
        let rows = self.restored.psql("SELECT count(*) FROM demo")?;
        println!("  rows on the restored server: {rows} (the primary has 0)");
        if rows != ROWS.to_string() {
            bail!("the restored server has {rows} rows, not {ROWS}");
        }
        self.explain();
        Ok(())
    }

    fn explain(&self) {
        println!(
            "
== what this showed
  - walhalla receive streamed the primary's WAL over a physical replication slot and archived
    each segment, compressed and checksummed, as it completed; the slot's position is what the
    archive holds, so the primary keeps any WAL not yet archived.
  - walhalla backup took a base backup into the same archive; its WAL came from the receiver.
  - walhalla restore chose that backup, checked the WAL to the restore point was archived,
    wrote and verified every file, and set restore_command = 'walhalla fetch %f %p': the new
    server recovered from the archive alone and got back the {ROWS} deleted rows.

== next, on your own cluster (walhalla --help, and each command's --help, say more)
  walhalla --archive s3://bucket/prod receive -d 'host=db1 user=walhalla' -S walhalla --create-slot
      # or let PostgreSQL's archiver push: archive_command = 'walhalla --archive s3://bucket/prod push %p'
  walhalla --archive s3://bucket/prod backup -d 'host=db1 user=walhalla'
  walhalla --archive s3://bucket/prod check -d 'host=db1 user=walhalla'   # is it really protected?
  walhalla --archive s3://bucket/prod verify
  walhalla config                      # every setting, from flags, WALHALLA_* or a config file"
        );
    }

    /// Polls `ready` every 200 ms for up to two minutes; stops early if the receiver died.
    fn wait_for(
        &self,
        what: &str,
        mut ready: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if ready().unwrap_or(false) {
                return Ok(());
            }
            if let Some(child) = self.receiver.borrow_mut().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "the receiver exited ({status}) while waiting for {what}; see {}/receiver.log",
                    self.root.display()
                );
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("gave up waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the receiver (SIGTERM: it archives what is complete) and both servers.
    fn stop_everything(&self) {
        if let Some(mut child) = self.receiver.borrow_mut().take() {
            // SAFETY: kill() on the pid of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        self.restored.stop();
        self.primary.stop();
    }
}

/// `args` as a shell would need them typed: those with spaces single-quoted.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn find_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path));
        } else if let Ok(meta) = entry.metadata() {
            found.push((path, meta.len()));
        }
    }
    found
}

/// The newest installed PostgreSQL server binaries (`PG_BIN` overrides).
pub fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL server binaries not found: install them (apt-get install postgresql) or set PG_BIN"
        ),
    }
}

/// `program`, run as user postgres when the demo runs as root (PostgreSQL refuses root).
fn as_pg_user(program: &Path) -> Command {
    if crate::osuser::is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// One of the demo's servers, listening only on a socket in the demo's directory.
struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    name: &'static str,
    port: u16,
}

impl Cluster {
    fn new(bin: &Path, root: &Path, name: &'static str, port: u16) -> Cluster {
        Cluster {
            bin: bin.to_owned(),
            root: root.to_owned(),
            name,
            port,
        }
    }

    fn data(&self) -> PathBuf {
        self.root.join(self.name)
    }

    fn init(&self) -> anyhow::Result<()> {
        run_ok(
            as_pg_user(&self.bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--wal-segsize=1", "-D"])
                .arg(self.data()),
        )?;
        let conf = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nmax_wal_senders = 4\n",
            self.root.display()
        );
        let path = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        Ok(())
    }

    fn start(&self) -> anyhow::Result<()> {
        run_ok(
            as_pg_user(&self.bin.join("pg_ctl"))
                .args(["-w", "-t", "120", "-D"])
                .arg(self.data())
                .arg("-o")
                .arg(format!("-p {}", self.port))
                .arg("-l")
                .arg(self.root.join(format!("{}.log", self.name)))
                .arg("start"),
        )
    }

    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X", "-A", "-t", "-q", "-U", "postgres", "-d", "postgres", "-h",
            ])
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .context("run psql")?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn stop(&self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = as_pg_user(&self.bin.join("pg_ctl"))
                .args(["-w", "-m", "fast", "-D"])
                .arg(self.data())
                .arg("stop")
                .output();
        }
    }
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
