//! Timeline history files in a cluster's part of the archive, read verified.

use bytes::Bytes;

use super::keys::{parse_timeline_object, timelines_prefix};
use super::{ClusterArchive, Error, Result};
use crate::envelope;
use crate::wal::{TimelineId, WalFileName};

impl ClusterArchive {
    /// The timelines whose history file the archive holds.
    pub async fn history_timelines(&self) -> Result<Vec<TimelineId>> {
        let dir = timelines_prefix(&self.archive.root, self.system_id);
        let listing = self.archive.list(&dir).await?;
        let mut timelines = listing.objects_as(&dir, parse_timeline_object);
        timelines.sort();
        Ok(timelines)
    }

    /// The content of `name`, verified (length and CRC-32); `None` when the archive lacks it.
    pub async fn get_verified(&self, name: &WalFileName) -> Result<Option<Bytes>> {
        let Some(stored) = self.get(name).await? else {
            return Ok(None);
        };
        let key = self.key(name).to_string();
        crate::blocking::run(move || {
            envelope::decode(&stored)
                .map(|content| Some(Bytes::from(content)))
                .map_err(|error| Error::Corrupt { key, error })
        })
        .await
    }
}
