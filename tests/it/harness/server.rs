//! A `walhalla serve` run by a test: logging to a file, killed by pid on drop, its log printed
//! when the test fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{TestArchive, TestDir, Walhalla, free_port, http, wait_for};

/// A running `walhalla serve`.
pub struct Server {
    child: Option<Child>,
    log: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    _dir: TestDir,
}

impl Server {
    /// The server's process id (it runs until dropped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts `walhalla --archive … serve --listen 127.0.0.1:PORT EXTRA` and waits until it
    /// answers.
    pub fn start(wh: &Walhalla, archive: &TestArchive, extra: &[&str]) -> Server {
        Self::start_on(wh, archive, free_port(), extra)
    }

    /// Like [`Server::start`] on a given port (to restart a server where clients expect it).
    pub fn start_on(wh: &Walhalla, archive: &TestArchive, port: u16, extra: &[&str]) -> Server {
        Self::spawn(Command::new(wh.path()), archive, port, extra)
    }

    /// Starts the binary itself as PostgreSQL's user with state directory `state`
    /// (`XDG_STATE_HOME`) and no `WALHALLA_TOKEN_FILE`: a server as an operator starts it,
    /// with its default token file.
    #[allow(dead_code)]
    pub fn start_in_state(
        wh: &Walhalla,
        archive: &TestArchive,
        state: &Path,
        extra: &[&str],
    ) -> Server {
        let mut command = Command::new(wh.binary());
        if let Some((uid, gid)) = super::pg_user_ids() {
            command.uid(uid).gid(gid);
        }
        command
            .env("XDG_STATE_HOME", state)
            .env_remove("WALHALLA_TOKEN_FILE");
        Self::spawn(command, archive, free_port(), extra)
    }

    fn spawn(mut command: Command, archive: &TestArchive, port: u16, extra: &[&str]) -> Server {
        command
            .arg("--archive")
            .arg(archive.url())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .envs(archive.env());
        Self::launch(command, port)
    }

    /// `walhalla serve` without a single flag: every setting from the config file `config`
    /// (named by `WALHALLA_CONFIG`), which has it listen on 127.0.0.1:`port`.
    pub fn from_config(wh: &Walhalla, config: &std::path::Path, port: u16) -> Server {
        // The binary itself: the tests' wrapper would name a token file in the environment.
        let mut command = Command::new(wh.binary());
        command.env("WALHALLA_CONFIG", config).arg("serve");
        Self::launch(command, port)
    }

    fn launch(mut command: Command, port: u16) -> Server {
        let dir = TestDir::new("serve");
        let log = dir.path().join("serve.log");
        let file = std::fs::File::create(&log).expect("create the server log");
        let child = command
            .env("WALHALLA_LOG", "walhalla=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("start walhalla serve");
        let server = Server {
            child: Some(child),
            log,
            port,
            _dir: dir,
        };
        wait_until_listening(port);
        server
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_until_listening(port: u16) {
    wait_for(
        &format!("a server on port {port}"),
        Duration::from_secs(60),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

/// Runs `walhalla --archive … ARGS` (a daemon command, without the tests' token file)
/// expecting it to refuse to start; returns how it ended.
pub fn refused_start(wh: &Walhalla, archive: &TestArchive, args: &[&str]) -> Output {
    let mut child = Command::new(wh.binary())
        .env_remove("WALHALLA_TOKEN_FILE")
        .arg("--archive")
        .arg(archive.url())
        .args(args)
        .envs(archive.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start walhalla serve");
    wait_for("serve to refuse", Duration::from_secs(30), || {
        child.try_wait().expect("wait").map(|_| ())
    });
    child.wait_with_output().expect("collect output")
}

/// The metric `name` (with its labels, as printed) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /status` on `port` as JSON, which must answer 200.
pub fn status(port: u16) -> serde_json::Value {
    let response = http::get(port, "/status").expect("/status answers");
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).expect("valid JSON")
}

/// The metric `name` from the server on `port`.
pub fn scrape(port: u16, name: &str) -> Option<f64> {
    metric(&http::get(port, "/metrics").ok()?.text(), name)
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the server log ---\n{}",
                super::tail(&self.log())
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
