//! Base backups' objects in a cluster's part of the archive: pieces of the tar streams, the
//! manifest and the metadata, stored create-only like WAL.

use bytes::Bytes;

use super::keys::{BackupId, BackupObject, backup_object_key, backups_prefix};
use super::{ClusterArchive, PutOutcome, Result};

impl ClusterArchive {
    /// Stores `envelope` (made from `content`) as `object` of backup `id`, create-only.
    pub async fn put_backup_object(
        &self,
        id: &BackupId,
        object: &BackupObject,
        content: Bytes,
        envelope: Vec<u8>,
    ) -> Result<PutOutcome> {
        let key = backup_object_key(&self.archive.root, self.system_id, id, object);
        self.put_key(key, content, envelope).await
    }

    /// The stored envelope of `object` of backup `id`, not yet verified; `None` when missing.
    pub async fn get_backup_object(
        &self,
        id: &BackupId,
        object: &BackupObject,
    ) -> Result<Option<Bytes>> {
        let key = backup_object_key(&self.archive.root, self.system_id, id, object);
        self.get_key(&key).await
    }

    /// The key of `object` of backup `id`, for messages.
    pub fn backup_object_key(&self, id: &BackupId, object: &BackupObject) -> String {
        backup_object_key(&self.archive.root, self.system_id, id, object).to_string()
    }

    /// The backups whose folders the archive holds, oldest first; folders walhalla does not
    /// name are skipped.
    pub async fn backup_ids(&self) -> Result<Vec<BackupId>> {
        let dir = backups_prefix(&self.archive.root, self.system_id);
        let listing = self.archive.list(&dir).await?;
        let mut ids = listing.folders_as(&dir, BackupId::parse);
        ids.sort();
        Ok(ids)
    }
}
