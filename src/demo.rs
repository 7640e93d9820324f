//! `walhalla demo`: the main job in one command. Starts a throwaway PostgreSQL from the
//! installed server binaries, runs the receiver into a local archive directory, generates some
//! load, shows the archive and the receiver's position, and cleans everything up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::archive::{Archive, ArchiveOptions, Location};
use crate::protocol::conninfo::ConnParams;
use crate::receiver::{self, Mode, ReceiveOptions};

/// Runs the demo; keeps the directory when `keep` is set.
pub async fn run(compression_level: i32, keep: bool) -> anyhow::Result<()> {
    let bin = pg_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("walhalla-demo-")
        .tempdir_in("/tmp")
        .context("create a directory")?;
    let root = dir.path().to_path_buf();
    // The server listens only on a socket in its own directory: the port number cannot clash.
    let cluster = Cluster {
        bin,
        root: root.clone(),
        port: 5432,
    };
    let result = demo(&cluster, compression_level).await;
    cluster.stop();
    if keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    result
}

async fn demo(cluster: &Cluster, compression_level: i32) -> anyhow::Result<()> {
    println!("== a throwaway PostgreSQL in {}", cluster.data().display());
    cluster.init()?;
    let archive_dir = cluster.root.join("archive");
    let conninfo = format!(
        "host={} port={} user=postgres",
        cluster.root.display(),
        cluster.port
    );
    let options = ReceiveOptions {
        conn: ConnParams::parse(&conninfo, &|_| None)?,
        slot: Some("walhalla_demo".into()),
        create_slot: true,
        start_lsn: None,
        endpos: None,
        spool: Some(cluster.root.join("spool")),
        spool_max_bytes: 1 << 30,
        partial_interval: None,
        receive_timeout: Some(Duration::from_secs(60)),
        shutdown_timeout: Duration::from_secs(30),
        status_interval: Duration::from_secs(1),
        mode: Mode::Archived,
        upload_parallelism: 2,
        compression_level,
        system_id: None,
        for_backup: None,
    };
    let location = Location::Local(archive_dir.clone());
    let archive = Archive::open(
        &location,
        &ArchiveOptions {
            timeout: Duration::from_secs(60),
            deadline: None,
            create: true,
            store: Default::default(),
        },
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    println!(
        "== walhalla receive: streaming from slot walhalla_demo into {}",
        archive_dir.display()
    );
    let receiver = tokio::spawn(receiver::run(options, archive, stopped, Default::default()));

    println!("== generating load (100 000 rows, then 5 WAL switches)");
    cluster.psql("CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 100000) g")?;
    let mut last = String::new();
    for _ in 0..5 {
        cluster.psql("INSERT INTO demo SELECT id, payload FROM demo LIMIT 20000")?;
        last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")?;
    }
    let wanted = format!("{last}.zst");
    for _ in 0..600 {
        if find_files(&archive_dir)
            .iter()
            .any(|(path, _)| path.ends_with(&wanted))
        {
            break;
        }
        if receiver.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // one status interval

    println!("== the receiver as the server sees it (pg_stat_replication, pg_replication_slots)");
    println!(
        "{}",
        cluster.psql(
            "SELECT 'application_name=' || application_name || ' state=' || state || ' sent=' || sent_lsn \
             || ' written=' || write_lsn || ' flushed (archived)=' || flush_lsn FROM pg_stat_replication"
        )?
    );
    println!("{}", cluster.psql("SELECT 'slot ' || slot_name || ' restart_lsn=' || restart_lsn FROM pg_replication_slots")?);
    println!("== the archive (compressed, checksummed, under the cluster's system identifier)");
    let mut files = find_files(&archive_dir);
    files.sort();
    for (path, size) in &files {
        println!(
            "{size:>10}  {}",
            path.strip_prefix(&archive_dir).unwrap_or(path).display()
        );
    }
    let _ = stop.send(true);
    receiver.await.context("the receiver task")??;
    println!("== done: {} objects archived; cleaning up", files.len());
    Ok(())
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

/// The demo's PostgreSQL, run as user postgres when the demo runs as root.
struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn command(&self, program: &str) -> Command {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"])
                .arg(self.bin.join(program));
            cmd
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn init(&self) -> anyhow::Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            run_ok(Command::new("chown").arg("postgres:").arg(&self.root))?;
        }
        run_ok(
            self.command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--wal-segsize=1", "-D"])
                .arg(self.data()),
        )?;
        let conf = format!(
            "listen_addresses = ''\nport = {}\nunix_socket_directories = '{}'\nmax_wal_senders = 4\n",
            self.port,
            self.root.display()
        );
        let path = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        run_ok(
            self.command("pg_ctl")
                .args(["-w", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.root.join("server.log"))
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
            let _ = self
                .command("pg_ctl")
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
