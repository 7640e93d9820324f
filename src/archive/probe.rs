//! Whether a store honours create-only writes (`If-None-Match: *` on S3). walhalla's promise
//! that an archived object is never overwritten rests on it, and some S3-compatible stores
//! ignore the header and silently replace the object.
//!
//! [`conditional_writes`] writes a scratch key twice and says what the store did. Writers
//! ([`Archive::ensure_create_only`]) run it on first use of an archive and refuse a store
//! that overwrites. A passed probe is remembered twice, so that `push` (one process per
//! segment) does not pay for it on every call: in a marker object in the archive
//! (`.walhalla/create-only-verified` under the prefix), which every host then finds with one
//! request, and in an empty file under the user's cache directory
//! (`~/.cache/walhalla/verified-stores/`, named by a hash of the archive URL and endpoint),
//! which spares even that request on a host that has checked before.

use std::path::PathBuf;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

use super::{Archive, Error, Location, Result};

/// What the store did with a second create-only write of the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionalWrites {
    /// It refused the second write: create-only holds.
    Honoured,
    /// It accepted the second write; what was seen, for the operator.
    Ignored(String),
}

/// The folder, under the archive's prefix, of what walhalla keeps about the store itself.
const STORE_FOLDER: &str = ".walhalla";
/// The marker object of a passed probe.
const MARKER: &str = "create-only-verified";

/// Writes a scratch key twice, create-only, and reports whether the second write was
/// refused; the scratch key is removed afterwards. For `walhalla check` and first use.
pub async fn conditional_writes(archive: &Archive) -> Result<ConditionalWrites> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = store_key(archive, &format!("probe-{}-{nanos}", std::process::id()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let put = |content: &'static [u8]| {
        let key = key.clone();
        async move {
            archive
                .retrying("store", &key, || {
                    archive
                        .store
                        .put_opts(&key, PutPayload::from_static(content), create())
                })
                .await
        }
    };
    put(b"first").await?;
    let second = put(b"second").await;
    let verdict = match second {
        Err(Error::Store {
            error:
                object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
            ..
        }) => Ok(ConditionalWrites::Honoured),
        Err(e) => Err(e),
        Ok(_) => {
            let store = &archive.store;
            let now = archive
                .retrying("read", &key, || async {
                    store.get(&key).await?.bytes().await
                })
                .await;
            let held = match now {
                Ok(bytes) if bytes == Bytes::from_static(b"second") => {
                    "the object now holds the second content"
                }
                Ok(_) => "the object still holds the first content",
                Err(_) => "the object could not be read back",
            };
            Ok(ConditionalWrites::Ignored(format!(
                "a second create-only write (If-None-Match: *) of {key} succeeded; {held}"
            )))
        }
    };
    // Best effort: a scratch object left behind harms nothing.
    let _ = archive.store.delete(&key).await;
    verdict
}

impl Archive {
    /// Refuses a store that ignores create-only writes ([`Error::Unsafe`]), probing it on
    /// first use; a local directory always honours them. See the module's documentation for
    /// how a passed probe is remembered.
    pub async fn ensure_create_only(&self) -> Result<()> {
        if matches!(self.location, Location::Local(_)) {
            return Ok(());
        }
        let remembered = cache_file(&self.identity);
        if let Some(file) = remembered.clone()
            && crate::blocking::run(move || file.exists()).await
        {
            return Ok(());
        }
        let marker = store_key(self, MARKER);
        let store = &self.store;
        let found = self
            .retrying("read", &marker, || async { store.head(&marker).await })
            .await;
        match found {
            Ok(_) => {}
            Err(Error::Store {
                error: object_store::Error::NotFound { .. },
                ..
            }) => match conditional_writes(self).await? {
                ConditionalWrites::Honoured => {
                    let note =
                        PutPayload::from_static(b"this store refused a second create-only write\n");
                    self.retrying("store", &marker, || store.put(&marker, note.clone()))
                        .await?;
                }
                ConditionalWrites::Ignored(seen) => {
                    return Err(Error::Unsafe {
                        location: self.location.clone(),
                        seen,
                    });
                }
            },
            Err(e) => return Err(e),
        }
        if let Some(file) = remembered {
            // Not remembered locally: the marker is found next time, at one request.
            let _ = crate::blocking::run(move || {
                std::fs::create_dir_all(file.parent().expect("a folder"))?;
                std::fs::write(&file, b"")
            })
            .await;
        }
        Ok(())
    }
}

/// The key of `name` in the archive's own folder.
fn store_key(archive: &Archive, name: &str) -> Path {
    archive.root.clone().join(STORE_FOLDER).join(name)
}

/// The local file that remembers a passed probe of the store `identity` (its URL and
/// endpoint), under `$XDG_CACHE_HOME` or `~/.cache`; `None` without either.
fn cache_file(identity: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let digest = Sha256::digest(identity.as_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Some(base.join("walhalla/verified-stores").join(name))
}
