//! The archive: WAL files stored as envelopes under their cluster's namespace, on a local
//! directory or an S3-compatible bucket. Writes are create-only and idempotent (the same bytes
//! again succeed, different bytes are refused and nothing is overwritten); reads return
//! verified content only.

mod keys;
mod location;
mod retry;

pub use keys::{OBJECT_SUFFIX, cluster_prefix, object_key, partial_snapshot_key};
pub use location::Location;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use thiserror::Error;
use tokio::time::Instant;

use crate::backoff::{GaveUp, retry};
use crate::envelope;
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName};
use retry::STORE_BACKOFF;

/// What went wrong talking to the archive.
#[derive(Debug, Error)]
pub enum Error {
    /// The archive location cannot be opened (bad configuration, missing directory).
    #[error("cannot open archive {location}: {reason}")]
    Open {
        /// The configured location.
        location: Location,
        /// Why.
        reason: String,
    },
    /// The store refused or failed an operation, permanently or after retries.
    // Errors here carry their cause in the message, not as `source()`: object_store's
    // messages already include their own causes, so a chain would print them twice.
    #[error("{op} {key}: {error}")]
    Store {
        /// What was attempted.
        op: &'static str,
        /// The object or folder.
        key: String,
        /// The store's error.
        error: object_store::Error,
    },
    /// The operation did not finish within the deadline.
    #[error("{op} {key}: no answer within {seconds}s{}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        /// What was attempted.
        op: &'static str,
        /// The object or folder.
        key: String,
        /// The time the operation was given, in seconds.
        seconds: u64,
        /// The last transient error before the deadline, if any.
        last: Option<object_store::Error>,
    },
    /// The archive already holds different content under this name; nothing was overwritten.
    #[error(
        "{key} is already archived with different content (stored: {stored_len} bytes, crc32 {stored_crc:08x}; \
         offered: {offered_len} bytes, crc32 {offered_crc:08x}); the archived object was left unchanged"
    )]
    Conflict {
        /// The object's key.
        key: String,
        /// Length of what the archive holds.
        stored_len: u64,
        /// CRC-32 of what the archive holds.
        stored_crc: u32,
        /// Length of what was offered.
        offered_len: u64,
        /// CRC-32 of what was offered.
        offered_crc: u32,
    },
    /// The archive holds nothing at all for the cluster: a miss there is more likely a wrong
    /// location or prefix, or an unmounted directory, than the end of the WAL.
    #[error(
        "archive {location} holds nothing for cluster {system_id}: wrong location or prefix, an unmounted directory, or nothing archived yet?"
    )]
    NothingArchived {
        /// The archive.
        location: Location,
        /// The cluster.
        system_id: SystemId,
    },
    /// An archived object failed verification.
    #[error("archived object {key} is corrupt: {error}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What verification found.
        error: envelope::Error,
    },
}

impl Error {
    /// Whether retrying can cure this: a store's transient failure or a timeout. A conflict,
    /// a corrupt object, a refused permission, a missing bucket or directory will not go
    /// away by waiting.
    pub fn is_transient(&self) -> bool {
        use crate::backoff::Transient;
        match self {
            Error::Store { error, .. } => error.is_transient(),
            Error::Timeout { .. } => true,
            Error::Open { .. }
            | Error::NothingArchived { .. }
            | Error::Conflict { .. }
            | Error::Corrupt { .. } => false,
        }
    }

    /// Whether the archive holds something that contradicts what was offered: retrying the
    /// same write can never succeed, and going on could hide a real problem.
    pub fn is_contradiction(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Corrupt { .. })
    }
}

/// Result of archive operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings for opening an archive.
#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    /// Time allowed for one operation, retries included.
    pub timeout: Duration,
    /// When set, no operation goes on past this instant: a short-lived command's whole budget.
    pub deadline: Option<Instant>,
    /// Create a missing local archive directory (for writers) instead of failing (for readers).
    pub create: bool,
}

/// How a put ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was stored.
    Stored,
    /// The archive already held identical content.
    AlreadyArchived,
}

/// An archive, which may hold the WAL of several clusters.
#[derive(Clone, Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: Location,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl Archive {
    /// Opens the archive at `location`.
    pub fn open(location: &Location, options: &ArchiveOptions) -> Result<Archive> {
        let open_error = |reason: String| Error::Open {
            location: location.clone(),
            reason,
        };
        let (store, root): (Arc<dyn ObjectStore>, Path) = match location {
            Location::Local(dir) => {
                if options.create {
                    crate::fsutil::create_dir_all_durable(dir)
                        .map_err(|e| open_error(e.to_string()))?;
                } else if !dir.is_dir() {
                    return Err(open_error("no such directory".into()));
                }
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| open_error(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(fs), Path::default())
            }
            Location::S3 { bucket, prefix } => {
                // Client settings go through config keys: `with_client_options` would replace
                // what `from_env` read (AWS_ALLOW_HTTP among them).
                use object_store::ClientConfigKey as Key;
                use object_store::aws::AmazonS3ConfigKey;
                let seconds = |d: Duration| format!("{}s", d.as_secs().max(1));
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: (options.timeout / 2).min(Duration::from_secs(30)),
                    ..Default::default()
                };
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    // The per-request timeout outlasts the deadline, which then fires first
                    // with the clearer message.
                    .with_config(
                        AmazonS3ConfigKey::Client(Key::Timeout),
                        seconds(options.timeout + Duration::from_secs(5)),
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(Key::ConnectTimeout),
                        seconds(Duration::from_secs(5).min(options.timeout)),
                    )
                    .with_retry(retry)
                    .build()
                    .map_err(|e| open_error(e.to_string()))?;
                (Arc::new(s3), Path::from(prefix.as_str()))
            }
        };
        Ok(Archive {
            store,
            root,
            location: location.clone(),
            timeout: options.timeout,
            deadline: options.deadline,
        })
    }

    /// Where the archive lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The clusters whose WAL the archive holds.
    pub async fn clusters(&self) -> Result<Vec<SystemId>> {
        let listing = self
            .retrying("list", &self.root, || {
                self.store.list_with_delimiter(Some(&self.root))
            })
            .await?;
        let mut ids: Vec<SystemId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|name| name.parse().ok()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The part of the archive that holds the WAL of cluster `system_id`.
    pub fn cluster(&self, system_id: SystemId) -> ClusterArchive {
        ClusterArchive {
            archive: self.clone(),
            system_id,
        }
    }

    async fn retrying<T, F, Fut>(&self, op: &'static str, key: &Path, attempt: F) -> Result<T>
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
        retry(STORE_BACKOFF, Some(deadline), attempt, |error, pause| {
            tracing::warn!(error = %error, retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
        })
        .await
        .map_err(|failure| match failure {
                GaveUp::Error(error) => Error::Store {
                    op,
                    key: key.to_string(),
                    error,
                },
                GaveUp::Deadline(last) => Error::Timeout {
                    op,
                    key: key.to_string(),
                    seconds: allowed,
                    last,
                },
            })
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
        self.put_key(self.key(name), content, envelope).await
    }

    /// Stores a snapshot of `segment` as received up to `end` (the bytes from the segment's
    /// start to `end`), under a key of its own: a newer snapshot supersedes an older one
    /// without replacing it, and a full segment's name is never used for one.
    pub async fn put_partial_snapshot(
        &self,
        segment: SegmentName,
        end: Lsn,
        content: Bytes,
        envelope: Vec<u8>,
    ) -> Result<PutOutcome> {
        let key = partial_snapshot_key(&self.archive.root, self.system_id, segment, end);
        self.put_key(key, content, envelope).await
    }

    async fn put_key(&self, key: Path, content: Bytes, envelope: Vec<u8>) -> Result<PutOutcome> {
        let payload = PutPayload::from(envelope);
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let put = self
            .archive
            .retrying("store", &key, || {
                self.archive.store.put_opts(&key, payload.clone(), opts())
            })
            .await;
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
            let existing = envelope::decode(&stored).map_err(|error| Error::Corrupt {
                key: key_text.clone(),
                error,
            })?;
            if existing == content[..] {
                return Ok(PutOutcome::AlreadyArchived);
            }
            Err(Error::Conflict {
                key: key_text,
                stored_len: existing.len() as u64,
                stored_crc: crc32fast::hash(&existing),
                offered_len: content.len() as u64,
                offered_crc: crc32fast::hash(&content),
            })
        })
        .await
    }

    /// The newest complete segment the archive holds, on the newest timeline it has any on.
    pub async fn newest_segment(&self) -> Result<Option<SegmentName>> {
        Ok(self.newest_segments_per_timeline().await?.pop())
    }

    /// The newest complete segment the archive holds on each timeline that has any, oldest
    /// timeline first.
    pub async fn newest_segments_per_timeline(&self) -> Result<Vec<SegmentName>> {
        let wal = cluster_prefix(&self.archive.root, self.system_id).join("wal");
        let listing = self
            .archive
            .retrying("list", &wal, || {
                self.archive.store.list_with_delimiter(Some(&wal))
            })
            .await?;
        // Groups are named TTTTTTTTXXXXXXXX: their order is timeline, then position.
        let mut groups: Vec<Path> = listing
            .common_prefixes
            .into_iter()
            .filter(|p| p.filename().is_some_and(|g| g.len() == 16))
            .collect();
        groups.sort();
        let mut newest = Vec::new();
        let mut done_timeline: Option<String> = None;
        while let Some(group) = groups.pop() {
            let timeline = group.filename().unwrap_or_default()[..8].to_string();
            if done_timeline.as_ref() == Some(&timeline) {
                continue;
            }
            let found = self.segments_in_group(&group).await?.into_iter().max();
            if let Some(segment) = found {
                newest.push(segment);
                done_timeline = Some(timeline);
            }
        }
        newest.reverse();
        Ok(newest)
    }

    /// The segments of `timeline` in `from..to` that the archive holds, listed one group
    /// (4 GiB of WAL) at a time.
    pub async fn segments_between(
        &self,
        timeline: TimelineId,
        from: SegNo,
        to: SegNo,
        size: SegmentSize,
    ) -> Result<BTreeSet<SegNo>> {
        let mut held = BTreeSet::new();
        if from >= to {
            return Ok(held);
        }
        let per_group = size.segments_per_xlog_id();
        let wal = cluster_prefix(&self.archive.root, self.system_id).join("wal");
        for log in from.0 / per_group..=(to.0 - 1) / per_group {
            let group = wal.clone().join(format!("{:08X}{log:08X}", timeline.0));
            held.extend(
                self.segments_in_group(&group)
                    .await?
                    .into_iter()
                    .filter(|s| s.timeline == timeline)
                    .filter_map(|s| s.segno(size))
                    .filter(|n| (from..to).contains(n)),
            );
        }
        Ok(held)
    }

    /// The complete segments stored in one group folder (`wal/TTTTTTTTXXXXXXXX`).
    async fn segments_in_group(&self, group: &Path) -> Result<Vec<SegmentName>> {
        let listing = self
            .archive
            .retrying("list", group, || {
                self.archive.store.list_with_delimiter(Some(group))
            })
            .await?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_suffix(OBJECT_SUFFIX)?
                    .parse::<WalFileName>()
                    .ok()
            })
            .filter_map(|name| match name {
                WalFileName::Segment(s) => Some(s),
                _ => None,
            })
            .collect())
    }

    /// The newest snapshot a receiver stored of `segment` (the one reaching furthest): its
    /// key and envelope, not yet verified.
    pub async fn newest_partial_snapshot(
        &self,
        segment: SegmentName,
    ) -> Result<Option<(String, Bytes)>> {
        let group = self.key(&WalFileName::Segment(segment));
        let Some(dir) = group
            .parts()
            .count()
            .checked_sub(1)
            .map(|n| Path::from_iter(group.parts().take(n)))
        else {
            return Ok(None);
        };
        let listing = self
            .archive
            .retrying("list", &dir, || {
                self.archive.store.list_with_delimiter(Some(&dir))
            })
            .await?;
        let prefix = format!("{segment}.partial.");
        let newest = listing
            .objects
            .into_iter()
            .filter_map(|o| {
                let end = o
                    .location
                    .filename()?
                    .strip_prefix(&prefix)?
                    .strip_suffix(OBJECT_SUFFIX)?;
                (end.len() == 16)
                    .then(|| u64::from_str_radix(end, 16).ok())
                    .flatten()
                    .map(|end| (end, o.location))
            })
            .max_by_key(|(end, _)| *end);
        let Some((_, key)) = newest else {
            return Ok(None);
        };
        Ok(self
            .get_key(&key)
            .await?
            .map(|object| (key.to_string(), object)))
    }

    /// Fails with [`Error::NothingArchived`] when the archive holds nothing at all for this
    /// cluster. A miss in such an archive must not end a recovery early.
    pub async fn ensure_not_empty(&self) -> Result<()> {
        let prefix = cluster_prefix(&self.archive.root, self.system_id);
        let listing = self
            .archive
            .retrying("list", &prefix, || {
                self.archive.store.list_with_delimiter(Some(&prefix))
            })
            .await?;
        if listing.objects.is_empty() && listing.common_prefixes.is_empty() {
            return Err(Error::NothingArchived {
                location: self.archive.location.clone(),
                system_id: self.system_id,
            });
        }
        Ok(())
    }

    /// The stored envelope of `name`, not yet verified, or `None` when the archive lacks it.
    pub async fn get(&self, name: &WalFileName) -> Result<Option<Bytes>> {
        self.get_key(&self.key(name)).await
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
