//! Everything a cluster's part of the archive holds, listed at once, with sizes and times:
//! what `list`, `verify` and `prune` work from.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::keys::{self, ObjectName, parse_group_object, parse_timeline_object};
use super::{ClusterArchive, Error, ObjectInfo, Result};
use crate::wal::{HistoryEntry, TimelineId, WalFileName, parse_history};

/// Groups listed at once.
const LISTINGS_IN_FLIGHT: usize = 8;

/// A cluster's WAL objects and timeline histories.
#[derive(Clone, Debug, Default)]
pub struct WalInventory {
    /// Every object in the `wal/` groups, sorted by name (so by timeline, then position).
    pub objects: Vec<(ObjectName, ObjectInfo)>,
    /// Every timeline history file: its timeline, size and time.
    pub histories: Vec<(TimelineId, ObjectInfo)>,
}

impl ClusterArchive {
    /// The stored envelope of a WAL-area object, not yet verified; `None` when missing.
    pub async fn get_wal_object(&self, name: &ObjectName) -> Result<Option<Bytes>> {
        self.get_key(&self.wal_object_path(name)).await
    }

    /// The key of a WAL-area object, for messages.
    pub fn wal_object_key(&self, name: &ObjectName) -> String {
        self.wal_object_path(name).to_string()
    }

    pub(super) fn wal_object_path(&self, name: &ObjectName) -> object_store::path::Path {
        match name {
            ObjectName::File(file) => self.key(file),
            ObjectName::Snapshot { segment, end } => {
                keys::partial_snapshot_key(&self.archive.root, self.system_id, *segment, *end)
            }
        }
    }

    /// Lists every WAL object and history file of the cluster (a listing per group of 4 GiB
    /// of WAL, a few at a time).
    pub async fn wal_inventory(&self) -> Result<WalInventory> {
        let groups = self.wal_groups().await?;
        let listed: Vec<Vec<(ObjectName, ObjectInfo)>> = futures_util::stream::iter(groups)
            .map(|group| async move {
                let dir = keys::group_prefix(&self.archive.root, self.system_id, group);
                let listing = self.archive.list(&dir).await?;
                Ok::<_, Error>(
                    listing.objects_with_info(&dir, |name| parse_group_object(group, name)),
                )
            })
            .buffered(LISTINGS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut objects: Vec<_> = listed.into_iter().flatten().collect();
        objects.sort_by_key(|(name, _)| *name);
        let dir = keys::timelines_prefix(&self.archive.root, self.system_id);
        let mut histories = self
            .archive
            .list(&dir)
            .await?
            .objects_with_info(&dir, parse_timeline_object);
        histories.sort_by_key(|(timeline, _)| *timeline);
        Ok(WalInventory { objects, histories })
    }

    /// The parsed history of every timeline whose history file the archive holds, verified;
    /// a file that cannot be read or parsed is reported beside the others.
    pub async fn histories(
        &self,
        timelines: Vec<TimelineId>,
    ) -> Result<(
        BTreeMap<TimelineId, Vec<HistoryEntry>>,
        Vec<(TimelineId, String)>,
    )> {
        let (mut parsed, mut unreadable) = (BTreeMap::new(), Vec::new());
        for timeline in timelines {
            let name = WalFileName::History(timeline);
            let read = match self.get_verified(&name).await {
                Ok(Some(content)) => parse_history(timeline, &content),
                Ok(None) => Err("removed while listing".to_string()),
                Err(Error::Corrupt { key, error }) => Err(format!("{key}: {error}")),
                Err(e) => return Err(e),
            };
            match read {
                Ok(entries) => {
                    parsed.insert(timeline, entries);
                }
                Err(why) => unreadable.push((timeline, why)),
            }
        }
        Ok((parsed, unreadable))
    }
}
