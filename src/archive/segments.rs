//! WAL segments and snapshots in a cluster's part of the archive, found by listing: the newest
//! segment (per timeline, or with its snapshot), those in a range, the objects of a group.

use std::collections::BTreeSet;

use super::keys::{self, ObjectName, WalGroup, parse_group_object};
use super::{ClusterArchive, ObjectInfo, Result};
use crate::wal::{SegNo, SegmentName, SegmentSize, TimelineId, WalFileName};

impl ClusterArchive {
    /// The groups (folders of 4 GiB of WAL of one timeline) under `wal/`, sorted.
    pub(super) async fn wal_groups(&self) -> Result<Vec<WalGroup>> {
        let wal = keys::wal_prefix(&self.archive.root, self.system_id);
        let mut groups = self
            .archive
            .list(&wal)
            .await?
            .folders_as(&wal, WalGroup::parse);
        groups.sort();
        Ok(groups)
    }

    /// The newest complete segment the archive holds, on the newest timeline it has any on.
    pub async fn newest_segment(&self) -> Result<Option<SegmentName>> {
        Ok(self.newest_segments_per_timeline().await?.pop())
    }

    /// The newest complete segment the archive holds on each timeline that has any, oldest
    /// timeline first. Names in `wal/` and its groups that walhalla did not write are ignored.
    pub async fn newest_segments_per_timeline(&self) -> Result<Vec<SegmentName>> {
        let newest = self.newest_segments_with_info().await?;
        Ok(newest.into_iter().map(|(segment, _)| segment).collect())
    }

    /// [`ClusterArchive::newest_segments_per_timeline`] with each segment's size and time
    /// as stored.
    pub async fn newest_segments_with_info(&self) -> Result<Vec<(SegmentName, ObjectInfo)>> {
        self.newest_in_groups(self.wal_groups().await?, |object| match object {
            ObjectName::File(WalFileName::Segment(s)) => Some(s),
            _ => None,
        })
        .await
    }

    /// Where the archive ends, for a stream to start after it: the newest complete segment (as
    /// [`ClusterArchive::newest_segment`]) and the newest segment of which it holds a receiver
    /// snapshot (WAL archived up to inside it), each on the newest timeline that has one. The
    /// groups are listed once; snapshots are looked for only from the newest complete
    /// segment's group on, as an older one changes nothing.
    pub async fn newest_segment_and_snapshot(
        &self,
    ) -> Result<(Option<SegmentName>, Option<SegmentName>)> {
        let groups = self.wal_groups().await?;
        let segment = self
            .newest_in_groups(groups.clone(), |object| match object {
                ObjectName::File(WalFileName::Segment(s)) => Some(s),
                _ => None,
            })
            .await?
            .pop()
            .map(|(segment, _)| segment);
        let from = segment.map(WalGroup::of);
        let later = groups
            .into_iter()
            .filter(|&group| from.is_none_or(|from| group >= from))
            .collect();
        let snapshot = self
            .newest_in_groups(later, |object| match object {
                ObjectName::Snapshot { segment, .. } => Some(segment),
                _ => None,
            })
            .await?
            .pop()
            .map(|(segment, _)| segment);
        Ok((segment, snapshot))
    }

    /// On each timeline that has any, the newest segment `pick` finds among the objects of
    /// `groups` (sorted), with that object's size and time as stored; oldest timeline first.
    async fn newest_in_groups(
        &self,
        mut groups: Vec<WalGroup>,
        pick: impl Fn(ObjectName) -> Option<SegmentName>,
    ) -> Result<Vec<(SegmentName, ObjectInfo)>> {
        let mut newest = Vec::new();
        let mut done_timeline: Option<TimelineId> = None;
        while let Some(group) = groups.pop() {
            if done_timeline == Some(group.timeline) {
                continue;
            }
            let dir = keys::group_prefix(&self.archive.root, self.system_id, group);
            let listing = self.archive.list(&dir).await?;
            let found = listing
                .objects_with_info(&dir, |name| parse_group_object(group, name))
                .into_iter()
                .filter_map(|(object, info)| Some((pick(object)?, info)))
                .max_by_key(|(segment, _)| *segment);
            if let Some(found) = found {
                newest.push(found);
                done_timeline = Some(group.timeline);
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
        for log in from.0 / per_group..=(to.0 - 1) / per_group {
            let Ok(log) = u32::try_from(log) else { break };
            held.extend(
                self.segments_in(WalGroup { timeline, log })
                    .await?
                    .into_iter()
                    .filter_map(|s| s.segno(size))
                    .filter(|n| (from..to).contains(n)),
            );
        }
        Ok(held)
    }

    /// The complete segments stored in `group`.
    async fn segments_in(&self, group: WalGroup) -> Result<Vec<SegmentName>> {
        Ok(self
            .group_objects(group)
            .await?
            .into_iter()
            .filter_map(|object| match object {
                ObjectName::File(WalFileName::Segment(s)) => Some(s),
                _ => None,
            })
            .collect())
    }

    /// The objects in `group` (a folder under `wal/`), in no particular order; names that are
    /// not objects of that group are ignored. For listings of segments, snapshots, backups.
    pub async fn group_objects(&self, group: WalGroup) -> Result<Vec<ObjectName>> {
        let dir = keys::group_prefix(&self.archive.root, self.system_id, group);
        let listing = self.archive.list(&dir).await?;
        Ok(listing.objects_as(&dir, |name| parse_group_object(group, name)))
    }
}
