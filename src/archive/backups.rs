//! Base backups' objects in a cluster's part of the archive: pieces of the tar streams, the
//! manifest and the metadata, stored create-only like WAL.

use std::collections::{BTreeSet, HashSet};

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

    /// Whether backup `id` has metadata (whether or not it can be read).
    pub async fn has_backup_meta(&self, id: &BackupId) -> Result<bool> {
        let key = backup_object_key(&self.archive.root, self.system_id, id, &BackupObject::Meta);
        self.exists(&key).await
    }

    /// The key of `object` of backup `id`, for messages.
    pub fn backup_object_key(&self, id: &BackupId, object: &BackupObject) -> String {
        backup_object_key(&self.archive.root, self.system_id, id, object).to_string()
    }

    /// Those of `expected` (objects of backup `id`) the archive does not hold, found by
    /// listing the backup's folder and each of its streams' folders. A backup checks this
    /// before its metadata makes it restorable: a prune told that no backup runs
    /// (`--assume-interrupted`) may have deleted a running one's folder. Reading the catalogue
    /// checks it too, and prune acts on it, so the first one the listings lack is asked for by
    /// name as well: a listing that left out an object the archive holds condemns nothing.
    pub async fn absent_backup_objects(
        &self,
        id: &BackupId,
        expected: &[BackupObject],
    ) -> Result<Vec<BackupObject>> {
        let folder = backups_prefix(&self.archive.root, self.system_id).join(id.as_str());
        let listing = self.archive.list(&folder).await?;
        let mut held: HashSet<String> = listing
            .objects_as(&folder, |name| Some(name.to_string()))
            .into_iter()
            .collect();
        let streams: BTreeSet<&str> = expected
            .iter()
            .filter_map(|object| match object {
                BackupObject::Piece { archive, .. } => Some(archive.as_str()),
                _ => None,
            })
            .collect();
        for stream in streams {
            let dir = folder.clone().join(stream);
            let listing = self.archive.list(&dir).await?;
            held.extend(listing.objects_as(&dir, |name| Some(format!("{stream}/{name}"))));
        }
        let mut absent = Vec::new();
        for object in expected.iter().filter(|o| !held.contains(&o.to_string())) {
            let key = backup_object_key(&self.archive.root, self.system_id, id, object);
            if absent.is_empty() && self.exists(&key).await? {
                continue;
            }
            absent.push(object.clone());
        }
        Ok(absent)
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
