//! The backups an archive holds, read from their metadata: for `restore` and `list`.
//!
//! A backup whose WAL had not reached the archive when it ended is marked incomplete in its
//! metadata, which is never rewritten (archived objects are create-only). Once that WAL has
//! arrived (archiving repaired, say), the backup is usable: [`read`] checks again and counts
//! it complete.
//!
//! A backup is stored whole, but an object can go from the archive later (deleted by hand, a
//! bucket lifecycle rule): [`read`] lists each backup's folders and names the objects restore
//! would read that are gone, so `list`, `prune` and `restore` do not count on that backup.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::meta::BackupMeta;
use crate::archive::{BackupId, BackupObject, ClusterArchive};
use crate::wal::TimelineId;
use crate::{blocking, envelope};

/// One backup folder: its metadata, or why it has none usable.
#[derive(Debug)]
pub struct Entry {
    /// The folder's name.
    pub id: BackupId,
    /// The metadata.
    pub meta: Result<BackupMeta, NoMeta>,
}

/// Why a backup folder has no usable metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoMeta {
    /// No `backup.json`: the backup was interrupted, or still runs (it is written last).
    Absent,
    /// A `backup.json` this walhalla cannot read: corrupt, or written by a newer walhalla.
    Unreadable(String),
}

impl std::fmt::Display for NoMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoMeta::Absent => {
                f.write_str("no backup.json: the backup was interrupted, or is still running")
            }
            NoMeta::Unreadable(why) => f.write_str(why),
        }
    }
}

/// Backup folders read at once: each is a metadata read and, for a complete backup, a listing
/// of its folder and of each tar stream's, a round trip apiece on S3.
const READ_PARALLELISM: usize = 8;

/// Every backup folder of the cluster, oldest first, with its metadata. Folders are read
/// [`READ_PARALLELISM`] at a time; the first error fails the whole read, so that nobody acts
/// (prune least of all) on part of the catalogue, except a `backup.json` that cannot be read
/// for good (a file of another user's): that backup is [`NoMeta::Unreadable`].
pub async fn read(cluster: &ClusterArchive) -> anyhow::Result<Vec<Entry>> {
    let ids = cluster.backup_ids().await?;
    futures_util::stream::iter(ids)
        .map(|id| read_entry(cluster, id))
        .buffered(READ_PARALLELISM)
        .try_collect()
        .await
}

/// One backup folder's entry.
async fn read_entry(cluster: &ClusterArchive, id: BackupId) -> anyhow::Result<Entry> {
    let object = match cluster.get_backup_object(&id, &BackupObject::Meta).await {
        Ok(object) => object,
        // A file this user may not read (another user wrote it, with a mode of its own): no
        // retry cures it, and the other backups stay usable (prune still refuses to guess).
        Err(e @ crate::archive::Error::Store { .. }) if !e.is_transient() => {
            let meta = Err(NoMeta::Unreadable(e.to_string()));
            return Ok(Entry { id, meta });
        }
        Err(e) => return Err(e.into()),
    };
    let meta = match object {
        None => Err(NoMeta::Absent),
        Some(object) => match decode_meta(cluster, &id, object).await {
            Ok(meta) => {
                let meta = if meta.is_complete() {
                    meta
                } else {
                    complete_since(cluster, meta).await?
                };
                if meta.is_complete() {
                    Ok(with_missing_objects(cluster, &id, meta).await?)
                } else {
                    Ok(meta)
                }
            }
            Err(why) => Err(NoMeta::Unreadable(why)),
        },
    };
    Ok(Entry { id, meta })
}

/// `meta`, with the keys of the objects a restore of it reads that the archive lacks: a
/// listing of the backup's folder and one of each tar stream's.
async fn with_missing_objects(
    cluster: &ClusterArchive,
    id: &BackupId,
    mut meta: BackupMeta,
) -> anyhow::Result<BackupMeta> {
    let absent = cluster.absent_backup_objects(id, &meta.objects()).await?;
    meta.missing_objects = (absent.iter())
        .map(|object| cluster.backup_object_key(id, object))
        .collect();
    if let Some(first) = meta.missing_objects.first() {
        tracing::debug!(
            backup = %id,
            "{} of its objects are not in the archive (the first: {first})",
            meta.missing_objects.len()
        );
    }
    Ok(meta)
}

/// `meta`, of a backup marked incomplete, counted complete when the archive now holds every
/// segment from its start to its stop; else with the first still missing.
async fn complete_since(
    cluster: &ClusterArchive,
    mut meta: BackupMeta,
) -> anyhow::Result<BackupMeta> {
    let (Ok(start), Ok(stop), Ok(size)) = (meta.start(), meta.stop(), meta.segment_size()) else {
        return Ok(meta);
    };
    let timelines = [
        TimelineId(meta.start_timeline),
        TimelineId(meta.stop_timeline),
    ];
    let missing = super::wal::first_missing(cluster, timelines, start, stop, size).await?;
    if missing.is_none() {
        tracing::debug!(backup = %meta.id, "its WAL reached the archive after the backup ended");
    }
    meta.wal_complete = missing.is_none();
    meta.wal_missing = missing.map(|s| s.to_string());
    Ok(meta)
}

async fn decode_meta(
    cluster: &ClusterArchive,
    id: &BackupId,
    object: Bytes,
) -> Result<BackupMeta, String> {
    let key = cluster.backup_object_key(id, &BackupObject::Meta);
    let content = blocking::run(move || envelope::decode(&object))
        .await
        .map_err(|e| format!("{key} is corrupt: {e}"))?;
    let meta = BackupMeta::parse(&content)?;
    if meta.id != id.as_str() {
        return Err(format!("{key} describes backup {:?}", meta.id));
    }
    Ok(meta)
}
