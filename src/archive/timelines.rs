//! Timeline history files in a cluster's part of the archive, read verified.

use bytes::Bytes;

use super::keys::{parse_timeline_object, timelines_prefix};
use super::{ClusterArchive, Error, Result};
use crate::envelope;
use crate::wal::{
    Lsn, SegmentName, SegmentSize, TimelineId, WalFileName, parse_history, switch_point_in,
};

impl ClusterArchive {
    /// The timelines whose history file the archive holds.
    pub async fn history_timelines(&self) -> Result<Vec<TimelineId>> {
        let dir = timelines_prefix(&self.archive.root, self.system_id);
        let listing = self.archive.list(&dir).await?;
        let mut timelines = listing.objects_as(&dir, parse_timeline_object);
        timelines.sort();
        Ok(timelines)
    }

    /// The newer timelines whose history files in the archive branch off `segment`'s
    /// timeline inside that segment, each with its switch point. A history file that is
    /// corrupt or does not parse names none (`verify` reports it).
    pub async fn forks_inside(
        &self,
        segment: SegmentName,
        size: SegmentSize,
    ) -> Result<Vec<(TimelineId, Lsn)>> {
        let mut forks = Vec::new();
        for timeline in self.history_timelines().await? {
            if timeline <= segment.timeline {
                continue;
            }
            let content = match self.get_verified(&WalFileName::History(timeline)).await {
                Ok(Some(content)) => content,
                Ok(None) | Err(Error::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            let switch = parse_history(timeline, &content)
                .ok()
                .and_then(|entries| switch_point_in(&entries, segment, size));
            forks.extend(switch.map(|at| (timeline, at)));
        }
        Ok(forks)
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
