//! The archive: WAL files stored as envelopes under their cluster's namespace, on a local
//! directory or an S3-compatible bucket. Writes are create-only and idempotent (the same bytes
//! again succeed, different bytes are refused and nothing is overwritten); reads return
//! verified content only.

mod backups;
mod compare;
mod credentials;
mod delete;
mod error;
mod fork_copies;
mod health;
mod index;
mod inventory;
mod keys;
mod last_resort;
pub mod leftovers;
mod listing;
mod location;
pub mod probe;
mod refusal;
mod retry;
mod segments;
mod store;
mod timelines;

pub use error::{ChoiceError, Error, Result};
pub use health::{Direction, Health, HealthReport};
pub use index::{PreparedIndex, index_now, prepare_index};
pub use inventory::WalInventory;
pub use keys::{
    BackupId, BackupObject, OBJECT_SUFFIX, ObjectName, WalGroup, cluster_prefix, index_key,
    object_key, parse_cluster_folder, parse_group_object, parse_index_object,
    parse_timeline_object, partial_snapshot_key,
};
pub use last_resort::LastResortCopy;
pub use listing::ObjectInfo;
pub use location::Location;
pub use refusal::{Brief, NoCredentials, Refusal};
pub use store::{Encryption, StoreOptions};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use thiserror::Error;
use tokio::time::Instant;

use crate::backoff::{GaveUp, Transient, retry};
use crate::envelope;
use crate::wal::{Lsn, SegmentName, SegmentSize, SystemId, WalFileName};
use compare::Comparing;
use retry::STORE_BACKOFF;

/// Settings for opening an archive.
#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    /// Time allowed for one operation, retries included.
    pub timeout: Duration,
    /// When set, no operation goes on past this instant: a short-lived command's whole budget.
    pub deadline: Option<Instant>,
    /// Create a missing local archive directory (for writers) instead of failing (for readers).
    pub create: bool,
    /// How new objects are stored.
    pub store: StoreOptions,
}

/// How a put ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was stored.
    Stored,
    /// The archive already held identical content.
    AlreadyArchived,
    /// The archive already held the other copy of the segment a newer timeline begins in
    /// ([`fork_copies`]): the same WAL up to the switch point.
    AtFork,
}

/// An archive, which may hold the WAL of several clusters.
#[derive(Clone, Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: Location,
    /// The location and endpoint: what names the store.
    identity: String,
    /// The storage class of new objects, when not the bucket's default.
    storage_class: Option<String>,
    timeout: Duration,
    deadline: Option<Instant>,
    /// How its operations have been going, shared by every clone.
    health: Arc<Health>,
}

/// What an archive's cluster folders say about which cluster is meant when nothing names one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnlyCluster {
    /// The archive holds this one cluster.
    Only(SystemId),
    /// The archive holds no cluster yet.
    NoneYet,
    /// The archive holds these clusters: one must be named.
    Several(Vec<SystemId>),
}

impl Archive {
    /// Opens the archive at `location`.
    pub fn open(location: &Location, options: &ArchiveOptions) -> Result<Archive> {
        let open_error = |reason: String| Error::Open {
            location: location.clone(),
            reason,
        };
        let opened = store::open(location, options).map_err(open_error)?;
        Ok(Archive {
            identity: format!("{location} {}", opened.endpoint),
            storage_class: options.store.storage_class.clone(),
            store: opened.store,
            root: opened.root,
            location: location.clone(),
            timeout: options.timeout,
            deadline: options.deadline,
            health: Arc::default(),
        })
    }

    /// How its reads and writes have been going.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Where the archive lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The clusters whose WAL the archive holds. Names at the root that are not a cluster's
    /// folder are ignored.
    pub async fn clusters(&self) -> Result<Vec<SystemId>> {
        let listing = self.list(&self.root).await?;
        let mut ids: Vec<SystemId> = listing.folders_as(&self.root, parse_cluster_folder);
        ids.sort();
        Ok(ids)
    }

    /// The cluster meant when nothing names one: the only one the archive holds, if so.
    pub async fn only_cluster(&self) -> Result<OnlyCluster> {
        let mut ids = self.clusters().await?;
        Ok(match ids.len() {
            0 => OnlyCluster::NoneYet,
            1 => OnlyCluster::Only(ids.remove(0)),
            _ => OnlyCluster::Several(ids),
        })
    }

    /// The cluster a command works on (restore, prune): the one named, when the archive
    /// holds it, or the only one the archive holds.
    pub async fn chosen_cluster(
        &self,
        named: Option<SystemId>,
    ) -> std::result::Result<SystemId, ChoiceError> {
        if let Some(id) = named {
            let held = self.clusters().await?;
            return if held.contains(&id) {
                Ok(id)
            } else {
                Err(ChoiceError::NotHeld { named: id, held })
            };
        }
        match self.only_cluster().await? {
            OnlyCluster::Only(id) => Ok(id),
            OnlyCluster::NoneYet => Err(ChoiceError::NoCluster(self.location().to_string())),
            OnlyCluster::Several(ids) => Err(ChoiceError::Several(ids)),
        }
    }

    /// The part of the archive that holds the WAL of cluster `system_id`.
    pub fn cluster(&self, system_id: SystemId) -> ClusterArchive {
        ClusterArchive {
            archive: self.clone(),
            system_id,
        }
    }

    async fn retrying<T, F, Fut>(&self, op: &'static str, key: &Path, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let started = Instant::now();
        let own = started + self.timeout;
        let deadline = self.deadline.map_or(own, |overall| overall.min(own));
        // What this operation was given, rounded: less than `--timeout` under a deadline.
        let allowed = (deadline.saturating_duration_since(started).as_millis() as u64 + 500) / 1000;
        let what = format!("{op} {key}");
        let direction = match op {
            "store" | "delete" => Direction::Write,
            _ => Direction::Read,
        };
        let health = &self.health;
        // The mark of the latest attempt, to report its outcome with.
        let attempt_began = std::sync::Mutex::new(health.begin(direction));
        let mut failures = 0u32;
        let outcome = retry(
            STORE_BACKOFF,
            Some(deadline),
            || {
                *attempt_began.lock().unwrap_or_else(|p| p.into_inner()) = health.begin(direction);
                attempt()
            },
            |error, pause| {
                failures += 1;
                // Logged once when failing starts (by `health`), each retry at debug level.
                let began = *attempt_began.lock().unwrap_or_else(|p| p.into_inner());
                health.failed(direction, began, &format!("{what}: {}", Brief(error)), false);
                tracing::debug!(error = %Brief(error), retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
            },
        )
        .await;
        let began = *attempt_began.lock().unwrap_or_else(|p| p.into_inner());
        match &outcome {
            Ok(_) => health.succeeded(direction, began),
            Err(GaveUp::Error(error)) if is_answer(op, error) => health.succeeded(direction, began),
            // Under a deadline (a hook's whole run) the command reports its failure itself,
            // in one line; health is for daemons.
            Err(GaveUp::Error(_)) if self.deadline.is_some() => {}
            Err(GaveUp::Error(error)) => health.failed(
                direction,
                began,
                &format!("{what}: {}", Brief(error)),
                !error.is_transient() || Refusal::of(error).is_some(),
            ),
            Err(GaveUp::Deadline(_)) => health.failed(
                direction,
                began,
                &format!("{what}: no answer within {allowed}s"),
                false,
            ),
        }
        outcome.map_err(|failure| match failure {
            GaveUp::Error(error) => match Refusal::of(&error) {
                Some(refusal) => Error::Refused {
                    reason: refusal.describe(&self.location, &error),
                    location: self.location.clone(),
                    refusal,
                },
                None => Error::Store {
                    op,
                    key: key.to_string(),
                    error,
                },
            },
            GaveUp::Deadline(last) => Error::Timeout {
                op,
                key: key.to_string(),
                seconds: allowed,
                attempts: failures + 1,
                last,
            },
        })
    }
}

/// Whether the store answered `op`, though not with success: the archive works. A missing
/// object is an answer to a read or a delete; to a store it means a missing bucket.
fn is_answer(op: &str, error: &object_store::Error) -> bool {
    use object_store::Error as E;
    match error {
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => true,
        E::NotFound { .. } => op != "store",
        _ => false,
    }
}

/// One cluster's WAL in an archive.
#[derive(Clone, Debug)]
pub struct ClusterArchive {
    archive: Archive,
    system_id: SystemId,
}

impl ClusterArchive {
    /// The cluster's system identifier.
    pub fn system_id(&self) -> SystemId {
        self.system_id
    }

    /// Where the archive lives.
    pub fn location(&self) -> &Location {
        &self.archive.location
    }

    /// The key under which `name` is stored.
    pub fn key(&self, name: &WalFileName) -> Path {
        object_key(&self.archive.root, self.system_id, name)
    }

    /// Stores `envelope` (made from `content`) as `name`, unless the archive already holds it:
    /// identical content is success, different content is [`Error::Conflict`].
    pub async fn put(
        &self,
        name: &WalFileName,
        content: Bytes,
        envelope: Vec<u8>,
    ) -> Result<PutOutcome> {
        // Shared, not copied: the fork's case below may store it again as a snapshot.
        let envelope = Bytes::from(envelope);
        let conflict = match self
            .put_key(self.key(name), content.clone(), envelope.clone())
            .await
        {
            Err(conflict @ Error::Conflict { .. }) => conflict,
            outcome => return outcome,
        };
        let (WalFileName::Segment(segment), Some(size)) =
            (name, SegmentSize::new(content.len() as u32))
        else {
            return Err(conflict);
        };
        match (self.copies_at_fork(*segment, size, content, envelope)).await? {
            Some(_) => Ok(PutOutcome::AtFork),
            None => Err(conflict),
        }
    }

    /// Stores a snapshot of `segment` as received up to `end` (the bytes from the segment's
    /// start to `end`), under a key of its own: a newer snapshot supersedes an older one
    /// without replacing it, and a full segment's name is never used for one.
    pub async fn put_partial_snapshot(
        &self,
        segment: SegmentName,
        end: Lsn,
        content: Bytes,
        envelope: impl Into<PutPayload>,
    ) -> Result<PutOutcome> {
        let key = partial_snapshot_key(&self.archive.root, self.system_id, segment, end);
        self.put_key(key, content, envelope).await
    }

    async fn put_key(
        &self,
        key: Path,
        content: Bytes,
        envelope: impl Into<PutPayload>,
    ) -> Result<PutOutcome> {
        let payload: PutPayload = envelope.into();
        let attributes: object_store::Attributes = (self.archive.storage_class.clone())
            .map(|class| {
                let value = object_store::AttributeValue::from(class);
                (object_store::Attribute::StorageClass, value)
            })
            .into_iter()
            .collect();
        let opts = || PutOptions {
            mode: PutMode::Create,
            attributes: attributes.clone(),
            ..Default::default()
        };
        let put = self.archive.retrying("store", &key, || {
            self.archive.store.put_opts(&key, payload.clone(), opts())
        });
        let put = crate::failpoint::during(crate::failpoint::UPLOAD_IN_FLIGHT, put).await;
        match put {
            Ok(_) => Ok(PutOutcome::Stored),
            Err(Error::Store {
                error: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                let outcome = self.compare_existing(&key, content).await?;
                self.make_durable(&key).await?;
                Ok(outcome)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes sure an object found already present is durable: an earlier attempt may have
    /// been cut off between linking it into place and fsyncing its directory. Object stores
    /// acknowledge only durable writes; on a local directory, fsync the file and its folders.
    async fn make_durable(&self, key: &Path) -> Result<()> {
        let Location::Local(root) = &self.archive.location else {
            return Ok(());
        };
        let (root, relative) = (root.clone(), key.to_string());
        crate::blocking::run(move || {
            crate::fsutil::fsync_path_within(&root, std::path::Path::new(&relative))
        })
        .await
        .map_err(|e| Error::Open {
            location: self.archive.location.clone(),
            reason: format!("fsync {key}: {e}"),
        })
    }

    async fn compare_existing(&self, key: &Path, content: Bytes) -> Result<PutOutcome> {
        let stored = self.get_key(key).await?.ok_or_else(|| Error::Store {
            op: "read back",
            key: key.to_string(),
            error: object_store::Error::NotFound {
                path: key.to_string(),
                source: "the store reported it as existing, then as missing".into(),
            },
        })?;
        let key_text = key.to_string();
        crate::blocking::run(move || {
            // Compared as it is decoded: a segment's worth of memory is not needed for it.
            let mut existing = Comparing::new(&content);
            envelope::decode_into(&stored, &mut existing).map_err(|error| Error::Corrupt {
                key: key_text.clone(),
                error,
            })?;
            if existing.is_same() {
                return Ok(PutOutcome::AlreadyArchived);
            }
            Err(Error::Conflict {
                key: key_text,
                stored_len: existing.len(),
                stored_crc: existing.crc(),
                offered_len: content.len() as u64,
                offered_crc: crc32fast::hash(&content),
            })
        })
        .await
    }

    /// Fails with [`Error::NothingArchived`] when the archive holds nothing at all for this
    /// cluster. A miss in such an archive must not end a recovery early.
    pub async fn ensure_not_empty(&self) -> Result<()> {
        let prefix = cluster_prefix(&self.archive.root, self.system_id);
        let listing = self.archive.list(&prefix).await?;
        if listing.objects.is_empty() && listing.folders.is_empty() {
            return Err(Error::NothingArchived {
                location: self.archive.location.clone(),
                system_id: self.system_id,
            });
        }
        Ok(())
    }

    /// Whether the archive holds an object named `name` (its content is not read).
    pub async fn holds(&self, name: &WalFileName) -> Result<bool> {
        self.exists(&self.key(name)).await
    }

    /// Whether an object is stored at `key` (its content is not read).
    async fn exists(&self, key: &Path) -> Result<bool> {
        let store = &self.archive.store;
        let found = self
            .archive
            .retrying("read", key, || async { store.head(key).await })
            .await;
        match found {
            Ok(_) => Ok(true),
            Err(Error::Store {
                error: object_store::Error::NotFound { .. },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The stored envelope of `name`, not yet verified, or `None` when the archive lacks it.
    pub async fn get(&self, name: &WalFileName) -> Result<Option<Bytes>> {
        self.get_key(&self.key(name)).await
    }

    /// The content length `name`'s stored envelope declares (its header alone is read), or
    /// `None` when the archive lacks it.
    pub async fn content_length(&self, name: &WalFileName) -> Result<Option<u64>> {
        let key = self.key(name);
        let store = &self.archive.store;
        let range = 0..envelope::HEADER_BYTES as u64;
        let read = self
            .archive
            .retrying("read", &key, || store.get_range(&key, range.clone()))
            .await;
        let header = match read {
            Ok(bytes) => bytes,
            Err(Error::Store {
                error: object_store::Error::NotFound { .. },
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        envelope::Header::parse(&header)
            .map(|header| Some(header.content_len))
            .map_err(|error| Error::Corrupt {
                key: key.to_string(),
                error,
            })
    }

    async fn get_key(&self, key: &Path) -> Result<Option<Bytes>> {
        let store = &self.archive.store;
        let read = self
            .archive
            .retrying("read", key, || async move {
                store.get(key).await?.bytes().await
            })
            .await;
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::Store {
                error: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A local archive at `root`, as the archive's own tests open one.
#[cfg(test)]
pub(super) fn local_for_tests(root: &std::path::Path) -> Archive {
    let options = ArchiveOptions {
        timeout: Duration::from_secs(10),
        deadline: None,
        create: false,
        store: StoreOptions::default(),
    };
    Archive::open(&Location::Local(root.to_path_buf()), &options).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// A local archive holding objects of cluster 7 and, at every level, names walhalla
    /// does not write: listings find the objects and skip the rest, without failing.
    #[tokio::test]
    async fn listings_skip_foreign_names_at_every_level() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let touch = |relative: &str| {
            let path = root.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"object").unwrap();
        };
        touch("7/wal/0000000100000000/000000010000000000000003.zst");
        touch("7/wal/0000000100000000/000000010000000000000004.partial.0000000004000100.zst");
        touch("7/wal/0000000200000000/000000020000000000000005.zst");
        touch("7/timelines/00000002.history.zst");
        // Foreign names: cluster level, wal/ level, in a group, in timelines/.
        let non_utf8 = std::ffi::OsStr::from_bytes(b"\xff\xfe-latin1-\xe9");
        for foreign_dir in [
            "007",
            "lost+found",
            "7/wal/0\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}1",
            "7/wal/00000001",
            "7/wal/000000030000000G",
            "7/wal/0000000100000000/000000010000000000000009.zst",
        ] {
            std::fs::create_dir_all(root.join(foreign_dir)).unwrap();
        }
        for foreign_file in [
            "README",
            "7/stray",
            "7/wal/stray.zst",
            "7/wal/0000000300000000",
            "7/wal/0000000100000000/000000010000000000000007.zst#1",
            "7/wal/0000000100000000/00000001000000000000000A.zst.tmp",
            "7/wal/0000000100000000/000000020000000000000009.zst",
            "7/wal/0000000100000000/000000010000000000000004.partial.0000000104000100.zst",
            "7/timelines/notes.txt",
        ] {
            touch(foreign_file);
        }
        for level in ["", "7", "7/wal", "7/wal/0000000100000000", "7/timelines"] {
            std::fs::write(root.join(level).join(non_utf8), b"x").unwrap();
            std::fs::create_dir_all(root.join(level).join(non_utf8).with_extension("d")).unwrap();
        }

        let archive = local_for_tests(root);
        assert_eq!(archive.clusters().await.unwrap(), vec![SystemId(7)]);
        let cluster = archive.cluster(SystemId(7));
        let newest: Vec<String> = cluster
            .newest_segments_per_timeline()
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            newest,
            ["000000010000000000000003", "000000020000000000000005"]
        );
        let segment = |text: &str| match text.parse() {
            Ok(WalFileName::Segment(s)) => s,
            other => panic!("{other:?}"),
        };
        // The snapshot is found among the foreign names (its bytes are a placeholder, which
        // fails verification).
        match cluster
            .last_resort_copy(segment("000000010000000000000004"))
            .await
        {
            Err(Error::Corrupt { key, .. }) => {
                assert!(key.ends_with("000000010000000000000004.partial.0000000004000100.zst"))
            }
            other => panic!("{other:?}"),
        }
        assert!(cluster.ensure_not_empty().await.is_ok());
        assert!(matches!(
            archive.cluster(SystemId(8)).ensure_not_empty().await,
            Err(Error::NothingArchived { .. })
        ));
    }
}
