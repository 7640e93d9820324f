//! The backups an archive holds, read from their metadata: for `restore` and `list`.

use bytes::Bytes;

use super::meta::BackupMeta;
use crate::archive::{BackupId, BackupObject, ClusterArchive};
use crate::{blocking, envelope};

/// One backup folder: its metadata, or why it has none usable (an interrupted backup has no
/// metadata; a corrupt one says so).
#[derive(Debug)]
pub struct Entry {
    /// The folder's name.
    pub id: BackupId,
    /// The metadata.
    pub meta: Result<BackupMeta, String>,
}

/// Every backup folder of the cluster, oldest first, with its metadata.
pub async fn read(cluster: &ClusterArchive) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for id in cluster.backup_ids().await? {
        let meta = match cluster.get_backup_object(&id, &BackupObject::Meta).await? {
            None => Err("no backup.json: the backup was interrupted".to_string()),
            Some(object) => decode_meta(cluster, &id, object).await,
        };
        entries.push(Entry { id, meta });
    }
    Ok(entries)
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
