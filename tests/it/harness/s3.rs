//! A real S3-compatible server on loopback: `moto_server` (PyPI `moto[server]`), one per test,
//! with a bucket created by a signed request. Killed by pid on drop.
//!
//! moto keeps its state in memory; a recorded server ([`S3Server::start_recorded`]) also appends
//! every request it takes to a file (moto's recorder, `MOTO_ENABLE_RECORDING`), so it can be
//! killed with SIGKILL and restarted on the same port with the same objects: the new process
//! (`moto_serve.py`) replays the recording before it listens. When a test fails, the
//! recordings and moto's log are kept and their folder is printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestDir, describe, free_port, wait_for};

/// Credentials the tests use; moto accepts any signed request.
pub const ACCESS_KEY: &str = "walhalla-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "walhalla-test-secret";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// A running moto server with one bucket.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    /// Where a recorded server records every request.
    recording: Option<Recording>,
    /// The server's endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created for the test.
    pub bucket: String,
}

impl S3Server {
    /// Starts a server on a free loopback port and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        Self::start_with(bucket, None)
    }

    /// Like [`S3Server::start`], recording every request so that [`S3Server::restart`] can
    /// bring its objects back after [`S3Server::kill9`].
    pub fn start_recorded(bucket: &str) -> S3Server {
        let dir = TestDir::new("moto");
        Self::start_with(bucket, Some(Recording { dir }))
    }

    fn start_with(bucket: &str, recording: Option<Recording>) -> S3Server {
        let port = free_port();
        let mut server = S3Server {
            child: None,
            port,
            recording,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        server.spawn(None);
        server.create_bucket();
        server
    }

    /// Starts moto on the server's port and waits until it listens: `moto_server`, or
    /// [`SERVE_AFTER_REPLAY`] with the recording `replay` to replay first. A recorded
    /// server's output (a line per request it answered, with the status) goes to `moto.log`
    /// beside its recording.
    fn spawn(&mut self, replay: Option<&Path>) {
        let port = self.port.to_string();
        let mut command = match replay {
            None => {
                let mut command = Command::new("moto_server");
                command.args(["-H", "127.0.0.1", "-p", &port]);
                command
            }
            Some(recording) => {
                let report = self.recording.as_ref().map(Recording::report);
                let mut command = Command::new("python3");
                command
                    .args(["-c", SERVE_AFTER_REPLAY, "127.0.0.1", &port])
                    .arg(recording)
                    .arg(report.expect("only a recorded server replays"));
                command
            }
        };
        let (stdout, stderr) = match &self.recording {
            Some(recording) => {
                command
                    .env("MOTO_ENABLE_RECORDING", "True")
                    .env("MOTO_RECORDER_FILEPATH", recording.file());
                let log = recording.log();
                (
                    Stdio::from(log.try_clone().expect("dup moto.log")),
                    Stdio::from(log),
                )
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto ({e}): install it with pip install 'moto[server]'")
            });
        self.child = Some(child);
        self.wait_listening();
    }

    /// Waits until the server listens; fails if it exits first (its replay failed).
    fn wait_listening(&mut self) {
        let port = self.port;
        let child = self.child.as_mut().expect("a server was started");
        // Long enough to replay a recording of a few hundred MB first.
        let exited = wait_for("moto to listen", Duration::from_secs(120), || {
            if let Some(status) = child.try_wait().expect("wait for moto") {
                return Some(Some(status));
            }
            let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            listening.then_some(None)
        });
        if let Some(status) = exited {
            let report = self.recording.as_ref().map(Recording::read_report);
            panic!(
                "moto exited ({status}) before listening: {}",
                report.unwrap_or_default()
            );
        }
    }

    /// Kills the server with SIGKILL, in the middle of whatever it was doing.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a recorded server again on its port, with the objects it held: the new process
    /// replays the recording ([`SERVE_AFTER_REPLAY`]) before it listens, then answers as
    /// before. Returns how many requests were replayed; prints what the replay reports (every
    /// request answered other than 2xx).
    ///
    /// The replay is the harness's, not moto's own endpoint, which stops recording while it
    /// replays and so forgets what the receiver stores meanwhile. The new process records into
    /// a fresh file, the replayed requests first, then the receiver's new ones. The recording
    /// replayed stays beside it (`recording.before`) until the next restart, and both stay,
    /// with moto's log, when the test fails.
    ///
    /// Fails, keeping the recordings, when the replay cannot decode an entry other than the
    /// last (a kill can tear the last one: a request never acted on nor answered) or when a
    /// PUT it replays fails and no other entry stores its key.
    pub fn restart(&mut self) -> usize {
        let recording = self
            .recording
            .as_ref()
            .expect("only a recorded server can be restarted with its objects");
        let before = recording.before();
        std::fs::rename(recording.file(), &before).expect("set the recording aside");
        self.spawn(Some(&before));
        let report = self
            .recording
            .as_ref()
            .map(Recording::read_report)
            .unwrap_or_default();
        let (noted, last) = report.trim_end().rsplit_once('\n').unwrap_or(("", &report));
        if !noted.is_empty() {
            eprintln!("--- replaying {}: ---\n{noted}", before.display());
        }
        last.trim()
            .strip_prefix("replayed ")
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no count in the replay's report: {report}"))
    }

    /// Creates the bucket (again).
    pub fn create_bucket(&self) {
        self.boto("s3.create_bucket(Bucket=bucket)");
    }

    /// Deletes the bucket with everything in it: a store that answers "no such bucket".
    pub fn delete_bucket(&self) {
        self.boto(
            "for o in s3.list_objects_v2(Bucket=bucket).get('Contents', []):\n    \
             s3.delete_object(Bucket=bucket, Key=o['Key'])\n\
             s3.delete_bucket(Bucket=bucket)",
        );
    }

    /// The storage class and server-side encryption S3 reports for `key`.
    pub fn storage_of(&self, key: &str) -> String {
        self.boto(&format!(
            "r = s3.head_object(Bucket=bucket, Key={key:?})\n\
             print(r.get('StorageClass', 'STANDARD'), r.get('ServerSideEncryption', 'none'))"
        ))
    }

    /// Runs Python `statements` with boto3's client `s3` and the name `bucket`; returns what
    /// they print.
    fn boto(&self, statements: &str) -> String {
        let script = format!(
            "import boto3, sys\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], \
             aws_secret_access_key=sys.argv[3], region_name=sys.argv[4])\n\
             bucket = sys.argv[5]\n{statements}\n"
        );
        let output = Command::new("python3")
            .args([
                "-c",
                &script,
                &self.endpoint,
                ACCESS_KEY,
                SECRET_KEY,
                REGION,
                &self.bucket,
            ])
            .output()
            .expect("run python3 with boto3");
        assert!(
            output.status.success(),
            "{statements}: {}",
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The variables that point an AWS client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        Self::env_for(&self.endpoint)
    }

    /// The variables that point an AWS client at `endpoint` with the test credentials.
    pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    /// Kills the server; when the test failed, keeps a recorded server's recordings and log.
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            if let Some(Recording { dir }) = self.recording.take() {
                eprintln!(
                    "--- moto's recordings and log, kept: {} ---",
                    dir.keep().display()
                );
            }
        }
    }
}

/// A moto server that replays a recording before it listens (see [`S3Server::restart`]).
const SERVE_AFTER_REPLAY: &str = include_str!("moto_serve.py");

/// Where a recorded server keeps its recordings, its log and the report of its last replay.
struct Recording {
    dir: TestDir,
}

impl Recording {
    /// The recording the running server writes.
    fn file(&self) -> PathBuf {
        self.dir.path().join("recording.jsonl")
    }

    /// The recording the running server was started from, set aside.
    fn before(&self) -> PathBuf {
        self.dir.path().join("recording.before")
    }

    /// The report of the last replay.
    fn report(&self) -> PathBuf {
        self.dir.path().join("replay.txt")
    }

    /// The report of the last replay, or why there is none.
    fn read_report(&self) -> String {
        std::fs::read_to_string(self.report())
            .unwrap_or_else(|e| format!("no report {}: {e}", self.report().display()))
    }

    /// moto's log, appended to by each server started here.
    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("moto.log"))
            .expect("open moto.log")
    }
}
