//! A `walhalla receive` daemon run by a test, as the PostgreSQL user: started with the
//! archive's settings, logging to a file, stopped with SIGTERM or killed with SIGKILL by pid;
//! killed on drop, its log printed when the test fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{TestArchive, TestDir, Walhalla};

/// A running receiver.
pub struct Receiver {
    child: Option<Child>,
    log: PathBuf,
    /// The spool directory it was given.
    pub spool: PathBuf,
    _dir: TestDir,
}

impl Receiver {
    /// Starts `walhalla --archive … receive --spool … ARGS` (spool in a fresh directory).
    pub fn start(wh: &Walhalla, archive: &TestArchive, args: &[&str]) -> Receiver {
        Self::start_via(wh, archive, archive.env(), args)
    }

    /// A receiver on slot "walhalla" (created when missing) of `conninfo`, reporting every
    /// second, with `extra` arguments.
    pub fn on_slot(
        wh: &Walhalla,
        archive: &TestArchive,
        conninfo: &str,
        extra: &[&str],
    ) -> Receiver {
        Self::on_slot_via(wh, archive, archive.env(), conninfo, extra)
    }

    /// Like [`Receiver::on_slot`] with other variables for reaching the archive (a proxy).
    pub fn on_slot_via(
        wh: &Walhalla,
        archive: &TestArchive,
        env: Vec<(String, String)>,
        conninfo: &str,
        extra: &[&str],
    ) -> Receiver {
        Self::start_via(wh, archive, env, &slot_args(conninfo, extra))
    }

    /// Like [`Receiver::on_slot_via`] with a given spool directory (on a filesystem of its
    /// own).
    pub fn on_slot_in(
        wh: &Walhalla,
        archive: &TestArchive,
        env: Vec<(String, String)>,
        spool: &Path,
        conninfo: &str,
        extra: &[&str],
    ) -> Receiver {
        let args = slot_args(conninfo, extra);
        let dir = TestDir::new("receiver");
        Self::start_with_spool(wh, archive, env, spool.to_path_buf(), &args, dir)
    }

    /// Like [`Receiver::start`] with other variables for reaching the archive (a proxy).
    pub fn start_via(
        wh: &Walhalla,
        archive: &TestArchive,
        env: Vec<(String, String)>,
        args: &[&str],
    ) -> Receiver {
        let dir = TestDir::new("receiver");
        Self::start_with_spool(wh, archive, env, dir.path().join("spool"), args, dir)
    }

    /// Like [`Receiver::start`] but with a given spool directory, to restart on the same one.
    pub fn restart(wh: &Walhalla, archive: &TestArchive, spool: &Path, args: &[&str]) -> Receiver {
        let dir = TestDir::new("receiver");
        Self::start_with_spool(wh, archive, archive.env(), spool.to_path_buf(), args, dir)
    }

    /// Like [`Receiver::restart`] with other variables (a fail point configuration, say).
    #[cfg(feature = "failpoints")]
    pub fn restart_via(
        wh: &Walhalla,
        archive: &TestArchive,
        env: Vec<(String, String)>,
        spool: &Path,
        args: &[&str],
    ) -> Receiver {
        let dir = TestDir::new("receiver");
        Self::start_with_spool(wh, archive, env, spool.to_path_buf(), args, dir)
    }

    /// Like [`Receiver::start`] with a given spool directory, in a process whose umask is
    /// `umask` (whatever the test process's is).
    pub fn start_with_umask(
        wh: &Walhalla,
        archive: &TestArchive,
        spool: &Path,
        umask: u32,
        args: &[&str],
    ) -> Receiver {
        let dir = TestDir::new("receiver");
        let mut command = Command::new(wh.path());
        // SAFETY: umask is async-signal-safe and touches no state of this process.
        unsafe {
            command.pre_exec(move || {
                libc::umask(umask as libc::mode_t);
                Ok(())
            });
        }
        Self::spawn(
            command,
            archive,
            archive.env(),
            spool.to_path_buf(),
            args,
            dir,
        )
    }

    fn start_with_spool(
        wh: &Walhalla,
        archive: &TestArchive,
        env: Vec<(String, String)>,
        spool: PathBuf,
        args: &[&str],
        dir: TestDir,
    ) -> Receiver {
        Self::spawn(Command::new(wh.path()), archive, env, spool, args, dir)
    }

    fn spawn(
        mut command: Command,
        archive: &TestArchive,
        env: Vec<(String, String)>,
        spool: PathBuf,
        args: &[&str],
        dir: TestDir,
    ) -> Receiver {
        command
            .arg("--archive")
            .arg(archive.url())
            .arg("receive")
            .arg("--spool")
            .arg(&spool)
            .args(args)
            .envs(env);
        Self::launch(command, spool, dir)
    }

    /// `walhalla receive` without a single flag: every setting from the config file `config`
    /// (named by `WALHALLA_CONFIG`), whose spool is `spool`.
    pub fn from_config(wh: &Walhalla, config: &Path, spool: PathBuf) -> Receiver {
        // The binary itself: the tests' wrapper would name a token file in the environment.
        let mut command = Command::new(wh.binary());
        command.env("WALHALLA_CONFIG", config).arg("receive");
        Self::launch(command, spool, TestDir::new("receiver"))
    }

    /// Starts `command` as PostgreSQL's user, who owns the test archives and runs the hooks
    /// that read what the receiver archived (walhalla's files grant nothing to other users).
    fn launch(mut command: Command, spool: PathBuf, dir: TestDir) -> Receiver {
        let log = dir.path().join("receiver.log");
        let file = std::fs::File::create(&log).expect("create the receiver log");
        if let Some((uid, gid)) = super::pg_user_ids() {
            command.uid(uid).gid(gid);
            // Not root's home, which that user cannot read (libpq's ~/.postgresql lookups),
            // unless the test chose one.
            if !command.get_envs().any(|(name, _)| name == "HOME") {
                command.env("HOME", dir.path());
            }
        }
        let child = command
            .env("WALHALLA_LOG", "walhalla=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("start walhalla receive");
        Receiver {
            child: Some(child),
            log,
            spool,
            _dir: dir,
        }
    }

    /// Asks it to stop (SIGTERM) and waits for it.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(child) = &self.child {
            // SAFETY: kill() on the pid of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        self.wait(Duration::from_secs(120))
            .expect("the receiver did not stop within 120 s after SIGTERM")
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for the receiver") {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id while it runs (the wrapper execs walhalla, so it is walhalla's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its peak resident memory (VmHWM) in kB, while it runs.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The arguments of a receiver on slot "walhalla" (created when missing) of `conninfo`,
/// reporting every second, with `extra` arguments.
fn slot_args<'a>(conninfo: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-d",
        conninfo,
        "-S",
        "walhalla",
        "--create-slot",
        "--status-interval",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            // What went wrong may lie further back than the last lines: its warnings,
            // errors and failed attempts (debug) first.
            let troubles: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("failed"))
                .collect();
            eprintln!(
                "--- the receiver's warnings, errors and failures ---\n{}\n\
                 --- last lines of the receiver log ---\n{}",
                super::tail(&troubles.join("\n")),
                super::tail(&log)
            );
        }
        self.kill9();
    }
}
