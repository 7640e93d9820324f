//! The test harness: real PostgreSQL clusters ([`PgCluster`]), a real S3-compatible server
//! ([`S3Server`]), archives on either ([`TestArchive`]), a scripted misbehaving walsender
//! playing real WAL ([`walsender`], [`real_wal`]), and the walhalla binary run as
//! PostgreSQL runs it. Everything lives in per-test temporary directories removed on drop.

mod archive;
mod azurite;
pub mod faults;
pub mod http;
mod http_faults;
pub mod patroni;
mod pg;
mod pki;
mod proxy;
pub mod real_wal;
mod receiver;
pub mod s3;
pub mod server;
mod spool_fs;
pub mod walsender;

pub use archive::{Backend, TestArchive};
pub use azurite::Azurite;
pub use http_faults::FaultyS3;
pub use pg::{PgCluster, pg_client_bin};
pub use pki::TestCa;
pub use proxy::TcpProxy;
pub use receiver::Receiver;
#[allow(unused_imports)]
pub use s3::S3Server;
pub use server::Server;
pub use spool_fs::SpoolFs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The operating-system user PostgreSQL runs as when the tests run as root.
const PG_USER: &str = "postgres";

/// Whether the tests run as root, so PostgreSQL and the hooks must run as `postgres`.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as the PostgreSQL user (directly when not root).
pub fn as_pg_user(program: impl AsRef<Path>) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(program.as_ref());
        c
    } else {
        Command::new(program.as_ref())
    }
}

/// The PostgreSQL user's uid and gid when the tests run as root, for processes that must run
/// as that user without a `runuser` in between (which a SIGKILL would leave orphaned).
pub fn pg_user_ids() -> Option<(u32, u32)> {
    if !running_as_root() {
        return None;
    }
    let name = std::ffi::CString::new(PG_USER).expect("no NUL");
    // SAFETY: getpwnam with a valid C string; the entry is read before any other call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "no user {PG_USER}");
    // SAFETY: non-null, points to libc's static entry.
    Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

/// A temporary directory owned by the PostgreSQL user, removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// A new directory with a short path (unix socket paths are limited to ~100 bytes).
    pub fn new(label: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wh-{label}-"))
            .tempdir_in("/tmp")
            .expect("create a temporary directory");
        if running_as_root() {
            chown_to_pg(dir.path());
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        TestDir { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory (not removed on drop), for a failed test's evidence; returns it.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// A subdirectory, created and owned by the PostgreSQL user.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).expect("create a subdirectory");
        if running_as_root() {
            chown_to_pg(&p);
        }
        p
    }
}

fn chown_to_pg(path: &Path) {
    let status = Command::new("chown")
        .arg(format!("{PG_USER}:"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {} to {PG_USER}", path.display());
}

/// Gives `path` and everything under it to the PostgreSQL user, when the tests run as root:
/// for what a test writes where walhalla, run as that user, writes too.
pub fn give_tree_to_pg(path: &Path) {
    if !running_as_root() {
        return;
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{PG_USER}:"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown -R {} to {PG_USER}", path.display());
}

/// The bearer token every walhalla the tests start sends to the tests' fetch servers, and
/// those servers require (through [`Walhalla::path`]'s `WALHALLA_TOKEN_FILE`).
pub const TEST_TOKEN: &str = "walhalla-test-token";

/// The walhalla binary, copied where the PostgreSQL user can run it (the checkout may sit
/// under a directory only root can enter).
///
/// Test processes run as root and as `postgres` (PostgreSQL's hooks), whose default token
/// files differ; so [`Walhalla::path`] is a wrapper that sets `WALHALLA_TOKEN_FILE` to a file
/// holding [`TEST_TOKEN`] (owned by `postgres`, 0600) unless the test set it, and execs the
/// binary: every server a test starts requires that token and every client sends it, as an
/// operator's explicit token file. The default token file is tested with [`Walhalla::binary`].
pub struct Walhalla {
    bin: PathBuf,
    wrapper: PathBuf,
    _dir: TestDir,
}

impl Walhalla {
    /// Links (or, across filesystems, copies) the binary cargo built for these tests.
    ///
    /// A link costs no space: a debug binary is a hundred megabytes or more, and each of the
    /// tests running at once installs one (copies of it once filled a CI machine's disk). It
    /// needs `/tmp` on the target directory's filesystem; elsewhere (a tmpfs) each test copies.
    pub fn install() -> Walhalla {
        let dir = TestDir::new("bin");
        let bin = dir.path().join("walhalla-bin");
        let built = env!("CARGO_BIN_EXE_walhalla");
        if std::fs::hard_link(built, &bin).is_err() {
            std::fs::copy(built, &bin).expect("copy the walhalla binary");
        }
        // On a link this is the built file's mode too, which the PostgreSQL user needs anyway.
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TEST_TOKEN}\n")).expect("write the token file");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if running_as_root() {
            chown_to_pg(&token);
        }
        let wrapper = dir.path().join("walhalla");
        let script = format!(
            "#!/bin/sh\n: \"${{WALHALLA_TOKEN_FILE={}}}\"\nexport WALHALLA_TOKEN_FILE\nexec {} \"$@\"\n",
            token.display(),
            bin.display()
        );
        std::fs::write(&wrapper, script).expect("write the wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Walhalla {
            bin,
            wrapper,
            _dir: dir,
        }
    }

    /// The installed walhalla, run with the tests' token file.
    pub fn path(&self) -> &Path {
        &self.wrapper
    }

    /// The binary itself, which finds the token file on its own.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// Runs walhalla as the PostgreSQL user in `cwd` with `archive`'s settings.
    pub fn run(&self, archive: &TestArchive, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = as_pg_user(&self.wrapper);
        cmd.current_dir(cwd)
            .arg("--archive")
            .arg(archive.url())
            .args(args);
        cmd.envs(archive.env());
        cmd.output().expect("run walhalla")
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, check, String::new)
}

/// Like [`wait_for`], adding what `explain` says at the timeout (the state that was waited on).
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port on 127.0.0.1 that no other test of this run has been given, and that was free a
/// moment ago.
///
/// Ports come from below the kernel's ephemeral range (32768 and up), so no outgoing connection
/// takes one between this call and the bind of whoever asked; and each test process counts
/// through its own block, chosen by its PostgreSQL major (`tests/run.sh` runs majors side by
/// side as separate processes), so no parallel test is handed the same port. A port asked for
/// with `bind(0)` instead is free only until the next connect anywhere on the machine: a
/// PostgreSQL under Patroni once failed with "could not create any TCP/IP sockets" that way.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const BLOCK: u16 = 2500;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = std::env::var("WALHALLA_PG")
        .ok()
        .and_then(|major| major.parse::<u32>().ok())
        .unwrap_or_else(std::process::id)
        % 6;
    let slot = u16::try_from(slot).expect("below 6");
    let base = 16000 + slot * BLOCK;
    for _ in 0..BLOCK {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{base}..{}", base + BLOCK)
}

/// The last 40 lines of `text`.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Describes an exited process for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
