//! WAL segments and snapshots in a cluster's part of the archive, found by listing: the newest
//! segment (per timeline, or with its snapshot), those in a range, the objects of a group.

use std::collections::BTreeSet;

use super::keys::{self, ObjectName, WalGroup, parse_group_object};
use super::{ClusterArchive, Error, ObjectInfo, Result};
use crate::envelope;
use crate::wal::{SegNo, SegmentName, SegmentSize, TimelineId, WalFileName, parse_history};

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

    /// Whether `segment` lies at or after where its timeline began (the segment holding the
    /// parent's switch point, as the timeline's history file says), with the cluster's segment
    /// size read from `sized_by`, a segment the archive holds: PostgreSQL 13 before 13.3 asks
    /// the newest timeline's name for every segment, and misses before it began are expected.
    /// Timeline 1 began at the start. `None` when the history file or `sized_by` is gone.
    pub async fn timeline_begun_by(
        &self,
        segment: SegmentName,
        sized_by: SegmentName,
    ) -> Result<Option<bool>> {
        if segment.timeline.0 < 2 {
            return Ok(Some(true));
        }
        Ok(self
            .timeline_begin(segment.timeline, sized_by)
            .await?
            .map(|(begin, size)| segment.segno(size).is_some_and(|n| n >= begin)))
    }

    /// The first segment of `timeline` (the one holding its parent's switch point, as its
    /// history file says) and the cluster's segment size (the content length of `held`, a
    /// segment the archive holds), for a timeline after the first. `None` when either is gone.
    async fn timeline_begin(
        &self,
        timeline: TimelineId,
        held: SegmentName,
    ) -> Result<Option<(SegNo, SegmentSize)>> {
        let name = WalFileName::History(timeline);
        let Some(content) = self.get_verified(&name).await? else {
            return Ok(None);
        };
        let key = self.key(&name).to_string();
        let corrupt = |why: String| Error::Corrupt {
            key: key.clone(),
            error: envelope::Error::Malformed(why),
        };
        let switch = parse_history(timeline, &content)
            .map_err(&corrupt)?
            .last()
            .map(|entry| entry.switch_point)
            .ok_or_else(|| corrupt("names no parent timeline".into()))?;
        let Some(length) = self.content_length(&WalFileName::Segment(held)).await? else {
            return Ok(None);
        };
        let size = u32::try_from(length)
            .ok()
            .and_then(SegmentSize::new)
            .ok_or_else(|| Error::Corrupt {
                key: self.key(&WalFileName::Segment(held)).to_string(),
                error: envelope::Error::Malformed(format!(
                    "{length} bytes is not a WAL segment size"
                )),
            })?;
        Ok(Some((SegNo::containing(switch, size), size)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::SystemId;

    fn name(text: &str) -> WalFileName {
        text.parse().unwrap()
    }

    fn segment(text: &str) -> SegmentName {
        match name(text) {
            WalFileName::Segment(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// Where a timeline began: from its history file's switch point, with the segment size
    /// the held segment's envelope declares; timeline 1 at the start; unknown without the
    /// history or the held segment.
    #[tokio::test]
    async fn a_segment_is_on_its_timeline_from_where_the_history_says_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let archive = crate::archive::local_for_tests(dir.path());
        let cluster = archive.cluster(SystemId(7));
        let mut encoder = envelope::Encoder::new(1, 1).unwrap();
        let mut put = async |text: &str, content: Vec<u8>| {
            let envelope = encoder.encode(&content).unwrap();
            cluster
                .put(&name(text), content.into(), envelope)
                .await
                .unwrap();
        };
        // Timeline 2 begins in segment 5 (1-MiB segments: 0/500028 lies in it).
        put("000000020000000000000008", vec![0u8; 1 << 20]).await;
        put(
            "00000002.history",
            b"1\t0/500028\tno recovery target specified\n".to_vec(),
        )
        .await;

        let begun = async |text: &str, sized_by: &str| {
            cluster
                .timeline_begun_by(segment(text), segment(sized_by))
                .await
                .unwrap()
        };
        let held = "000000020000000000000008";
        assert_eq!(begun("000000010000000000000003", held).await, Some(true));
        assert_eq!(begun("000000020000000000000003", held).await, Some(false));
        assert_eq!(begun("000000020000000000000004", held).await, Some(false));
        assert_eq!(begun("000000020000000000000005", held).await, Some(true));
        assert_eq!(begun("000000020000000000000007", held).await, Some(true));
        // The size's source gone, or the timeline's history: unknown.
        assert_eq!(
            begun("000000020000000000000007", "000000020000000000000009").await,
            None
        );
        assert_eq!(begun("00000003000000000000000A", held).await, None);
    }
}
