//! A real S3-compatible server on loopback: `moto_server` (PyPI `moto[server]`), one per test,
//! with a bucket created by a signed request. Killed by pid on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{describe, free_port, wait_for};

/// Credentials the tests use; moto accepts any signed request.
pub const ACCESS_KEY: &str = "walhalla-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "walhalla-test-secret";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// A running moto server with one bucket.
pub struct S3Server {
    child: Child,
    /// The server's endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created for the test.
    pub bucket: String,
}

impl S3Server {
    /// Starts a server on a free loopback port and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}): install it with pip install 'moto[server]'")
            });
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        wait_for("moto_server to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        server.create_bucket();
        server
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
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
