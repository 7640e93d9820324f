//! Deleting, for `walhalla prune` only: the one way objects leave an archive that is
//! otherwise create-only. A missing object counts as deleted, so an interrupted prune can
//! simply run again.

use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::keys::{self, BackupId, BackupObject, ObjectName};
use super::{ClusterArchive, Error, Location, Result};
use crate::wal::{SegmentName, WalFileName};

impl ClusterArchive {
    /// Deletes a WAL-area object, and a segment's time index with it.
    pub async fn delete_wal_object(&self, name: &ObjectName) -> Result<()> {
        self.delete_key(&self.wal_object_path(name)).await?;
        if let ObjectName::File(WalFileName::Segment(segment)) = name {
            self.delete_index(*segment).await?;
        }
        Ok(())
    }

    /// Deletes the time index of `segment`, if there is one.
    pub async fn delete_index(&self, segment: SegmentName) -> Result<()> {
        self.delete_key(&keys::index_key(
            &self.archive.root,
            self.system_id,
            segment,
        ))
        .await
    }

    /// Deletes backup `id`: its metadata first (a delete cut short then leaves what looks
    /// like an interrupted backup, never one that seems restorable), then the rest
    /// ([`Self::delete_backup_rest`]). Returns how many objects went.
    pub async fn delete_backup(&self, id: &BackupId) -> Result<u64> {
        self.delete_backup_meta(id).await?;
        self.delete_backup_rest(id).await
    }

    /// Deletes backup `id`'s metadata, the first step of [`Self::delete_backup`]: once it is
    /// gone, the backup cannot be restored.
    pub async fn delete_backup_meta(&self, id: &BackupId) -> Result<()> {
        self.delete_key(&self.backup_meta_key(id)).await
    }

    /// Deletes every object in backup `id`'s folder once [`Self::delete_backup_meta`] has
    /// deleted its metadata, then its metadata again: a backup still running (a prune told
    /// none runs) may have written it meanwhile, over pieces now gone. Returns how many
    /// objects went, the metadata counted once.
    pub async fn delete_backup_rest(&self, id: &BackupId) -> Result<u64> {
        let meta = self.backup_meta_key(id);
        let folder = keys::backups_prefix(&self.archive.root, self.system_id).join(id.as_str());
        let mut deleted = 1;
        let mut folders = vec![folder.clone()];
        while let Some(dir) = folders.pop() {
            let listing = self.archive.list(&dir).await?;
            for name in listing.folders.iter().flatten() {
                folders.push(dir.clone().join(name.as_str()));
            }
            for name in listing.objects.iter().flatten() {
                self.delete_key(&dir.clone().join(name.as_str())).await?;
                deleted += 1;
            }
        }
        self.delete_key(&meta).await?;
        if let Location::Local(root) = &self.archive.location {
            // A directory left behind would list as a backup without metadata.
            let path = root.join(folder.as_ref());
            crate::blocking::run(move || remove_folder(&path))
                .await
                .map_err(|e| Error::Store {
                    op: "delete",
                    key: folder.to_string(),
                    error: object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    },
                })?;
        }
        Ok(deleted)
    }

    fn backup_meta_key(&self, id: &BackupId) -> Path {
        keys::backup_object_key(&self.archive.root, self.system_id, id, &BackupObject::Meta)
    }

    async fn delete_key(&self, key: &Path) -> Result<()> {
        let store = &self.archive.store;
        let deleted = self
            .archive
            .retrying("delete", key, || async move { store.delete(key).await })
            .await;
        match deleted {
            Ok(()) => Ok(()),
            Err(Error::Store {
                error: object_store::Error::NotFound { .. },
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Removes `dir` and the directories under it, which must hold no files but the staging
/// files of uploads into the deleted backup interrupted by a kill ([`super::leftovers`]):
/// listings never show those, and the folder could not go with them in it, failing every
/// prune after.
fn remove_folder(dir: &std::path::Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            remove_folder(&entry.path())?;
        } else if kind.is_file()
            && super::leftovers::is_staging_name(&entry.file_name().to_string_lossy())
        {
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::SystemId;

    /// A backup killed mid-upload leaves a staging file in its folder: deleting the backup
    /// removes it with the folder (it failed every later prune with "Directory not empty").
    #[tokio::test]
    async fn deleting_a_backup_takes_its_interrupted_uploads_with_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let archive = crate::archive::local_for_tests(dir.path());
        let cluster = archive.cluster(SystemId(7));
        let folder = dir.path().join("7/backups");
        for (id, stray) in [
            ("20261205T213021Z", "00000146.zst#1"),
            ("20261205T213022Z", "notes.txt"),
        ] {
            let base = folder.join(id).join("base");
            std::fs::create_dir_all(&base).unwrap();
            std::fs::write(base.join("00000000.zst"), b"piece").unwrap();
            std::fs::write(base.join(stray), b"half a piece").unwrap();
        }
        let id = BackupId::new("20261205T213021Z", 1).unwrap();
        cluster.delete_backup(&id).await.unwrap();
        assert!(!folder.join("20261205T213021Z").exists());
        // The other backup keeps its folder.
        assert!(folder.join("20261205T213022Z/base/notes.txt").exists());
    }
}
