//! A real Azure Blob Storage emulator on loopback: Azurite's blob service (npm `azurite`,
//! installed by `tests/prepare.sh` beside the PostgreSQL cache), one per test, with a
//! container created through the Azure SDK for Python. Killed by pid on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestDir, describe, free_port, wait_for};

/// Azurite's well-known development account key (public: it is in Azure's documentation).
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service with one container.
pub struct Azurite {
    child: Child,
    _data: TestDir,
    /// The service's endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Azurite {
    /// Starts Azurite on a free loopback port and creates `container`.
    pub fn start(container: &str) -> Azurite {
        let bin = binary();
        let port = free_port();
        let data = TestDir::new("azurite");
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} ({e}): run tests/prepare.sh", bin.display())
            });
        let azurite = Azurite {
            child,
            _data: data,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_for("Azurite to listen", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        azurite.create_container(container);
        azurite
    }

    fn create_container(&self, container: &str) {
        let script = "import sys\n\
             from azure.storage.blob import BlobServiceClient\n\
             cs = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;BlobEndpoint=%s/devstoreaccount1;' % (sys.argv[1], sys.argv[2])\n\
             BlobServiceClient.from_connection_string(cs).create_container(sys.argv[3])\n";
        let output = Command::new("python3")
            .args(["-c", script, ACCOUNT_KEY, &self.endpoint, container])
            .output()
            .expect("run python3 with azure-storage-blob");
        assert!(
            output.status.success(),
            "create container {container}: {}",
            describe(&output)
        );
    }

    /// The variables that point walhalla (object_store) at this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint.clone()),
        ]
    }
}

/// `azurite-blob` as `tests/prepare.sh` installs it: `azurite/` beside the PostgreSQL cache.
fn binary() -> PathBuf {
    super::pg::cache_dir()
        .with_file_name("azurite")
        .join("node_modules/.bin/azurite-blob")
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
