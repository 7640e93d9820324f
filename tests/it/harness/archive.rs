//! An archive for a test, on a local directory or on an S3 server, with raw access to its
//! objects (to inspect them, or to damage them on purpose).

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{S3Server, TestDir};

/// Which kind of store backs a test archive.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// A local directory.
    Local,
    /// A bucket on a moto server.
    S3,
}

/// An archive a test writes through walhalla and inspects directly.
pub struct TestArchive {
    url: String,
    env: Vec<(String, String)>,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    _dir: Option<TestDir>,
    _server: Option<S3Server>,
}

/// The runtime a test archive drives its store with.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

impl TestArchive {
    /// A new, empty archive.
    pub fn new(backend: Backend) -> TestArchive {
        match backend {
            Backend::Local => {
                let dir = TestDir::new("archive");
                let root = dir.subdir("wal-archive");
                let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .expect("local store");
                TestArchive {
                    url: root.display().to_string(),
                    env: Vec::new(),
                    store: Arc::new(store),
                    runtime: runtime(),
                    _dir: Some(dir),
                    _server: None,
                }
            }
            Backend::S3 => Self::on_s3(S3Server::start("walhalla-it")),
        }
    }

    /// A new, empty archive on `server`'s bucket.
    pub fn on_s3(server: S3Server) -> TestArchive {
        let runtime = runtime();
        let prefix = "clusters/test";
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&server.bucket)
            .with_endpoint(&server.endpoint)
            .with_allow_http(true)
            .with_region(super::s3::REGION)
            .with_access_key_id(super::s3::ACCESS_KEY)
            .with_secret_access_key(super::s3::SECRET_KEY)
            .build()
            .expect("s3 store");
        let store = object_store::prefix::PrefixStore::new(s3, prefix);
        TestArchive {
            url: format!("s3://{}/{prefix}", server.bucket),
            env: server.env(),
            store: Arc::new(store),
            runtime,
            _dir: None,
            _server: Some(server),
        }
    }

    /// An archive on a local directory that does not exist yet (walhalla is to create it):
    /// `relative` (`a/b`) inside a new test directory, which is returned too.
    pub fn uncreated_local(relative: &str) -> (TestArchive, std::path::PathBuf) {
        let runtime = runtime();
        let dir = TestDir::new("archive");
        let parent = dir.path().to_path_buf();
        let base =
            object_store::local::LocalFileSystem::new_with_prefix(&parent).expect("local store");
        let store = object_store::prefix::PrefixStore::new(base, relative);
        let archive = TestArchive {
            url: parent.join(relative).display().to_string(),
            env: Vec::new(),
            store: Arc::new(store),
            runtime,
            _dir: Some(dir),
            _server: None,
        };
        (archive, parent)
    }

    /// The `--archive` URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The S3 server, for an S3 archive.
    pub fn s3(&self) -> Option<&S3Server> {
        self._server.as_ref()
    }

    /// The S3 server, for an S3 archive, to kill and restart it.
    pub fn s3_mut(&mut self) -> Option<&mut S3Server> {
        self._server.as_mut()
    }

    /// The S3 server's address, for an S3 archive.
    pub fn s3_addr(&self) -> Option<std::net::SocketAddr> {
        let endpoint = self._server.as_ref()?.endpoint.strip_prefix("http://")?;
        endpoint.parse().ok()
    }

    /// Environment variables walhalla needs to reach the archive.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// The raw bytes of the object at `key` (relative to the archive root), if present.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            match self.store.get(&ObjectPath::from(key)).await {
                Ok(result) => Some(result.bytes().await.expect("read object").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {key}: {e}"),
            }
        })
    }

    /// Replaces (or adds) the object at `key` behind walhalla's back; on a local archive, the
    /// folders it made belong to the user walhalla runs as.
    pub fn overwrite(&self, key: &str, bytes: Vec<u8>) {
        self.runtime
            .block_on(
                self.store
                    .put(&ObjectPath::from(key), PutPayload::from(bytes)),
            )
            .expect("overwrite object");
        if self._dir.is_some() {
            super::give_tree_to_pg(std::path::Path::new(&self.url));
        }
    }

    /// Flips one bit of the object at `key` behind walhalla's back, the first from its middle
    /// on that changes what the object holds: zstd leaves some bits unread, and a flip there
    /// keeps the content, which walhalla then rightly delivers, verified.
    pub fn corrupt(&self, key: &str) {
        let original = self
            .object(key)
            .unwrap_or_else(|| panic!("no object {key}"));
        let corrupted = (original.len() / 2..original.len())
            .find_map(|i| {
                let mut object = original.clone();
                object[i] ^= 0x01;
                walhalla::envelope::decode(&object)
                    .is_err()
                    .then_some(object)
            })
            .expect("a bit whose flip changes the content");
        self.overwrite(key, corrupted);
    }

    /// Deletes the object at `key` behind walhalla's back (a lost upload).
    pub fn remove(&self, key: &str) {
        self.runtime
            .block_on(self.store.delete(&ObjectPath::from(key)))
            .expect("delete object");
    }

    /// Every object key in the archive, sorted, but for what walhalla keeps about the store
    /// itself (`.walhalla/`, see `walhalla::archive::probe`).
    pub fn keys(&self) -> Vec<String> {
        use futures_util::TryStreamExt;
        let mut keys: Vec<String> = self.runtime.block_on(async {
            self.store
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_filter(|key| std::future::ready(!key.contains(".walhalla/")))
                .try_collect()
                .await
                .expect("list")
        });
        keys.sort();
        keys
    }
}
