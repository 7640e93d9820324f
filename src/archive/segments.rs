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

    /// A complete segment of `segment`'s timeline after it, looked for in its group and the
    /// next (two listings at most): the archive goes on past `segment`, so its absence is a
    /// hole, not the archive's end. `None` also when `segment` lies before its timeline
    /// began, as the timeline's history file and the later segment's size tell: PostgreSQL
    /// 13 asks the newest timeline's name for every segment, and misses there are expected.
    pub async fn later_segment(&self, segment: SegmentName) -> Result<Option<SegmentName>> {
        let Some(later) = self.next_held(segment).await? else {
            return Ok(None);
        };
        match self.timeline_begin(segment.timeline, later).await? {
            Some(begin) if segment.segno(begin.1).is_some_and(|n| n >= begin.0) => Ok(Some(later)),
            // Timeline 1 begins at the start.
            None if segment.timeline.0 < 2 => Ok(Some(later)),
            // Before the timeline began, or its history is gone: not taken for a hole.
            _ => Ok(None),
        }
    }

    /// The nearest complete segment of `segment`'s timeline after it, in its group or the
    /// next.
    async fn next_held(&self, segment: SegmentName) -> Result<Option<SegmentName>> {
        let group = WalGroup::of(segment);
        let later = |segments: Vec<SegmentName>| {
            segments
                .into_iter()
                .filter(|s| {
                    s.timeline == segment.timeline && (s.log, s.seg) > (segment.log, segment.seg)
                })
                .min_by_key(|s| (s.log, s.seg))
        };
        if let Some(found) = later(self.segments_in(group).await?) {
            return Ok(Some(found));
        }
        let Some(log) = segment.log.checked_add(1) else {
            return Ok(None);
        };
        let next = WalGroup {
            timeline: segment.timeline,
            log,
        };
        Ok(later(self.segments_in(next).await?))
    }

    /// The first segment of `timeline` (the one holding its parent's switch point, as its
    /// history file says) and the cluster's segment size (the content length of `held`, a
    /// segment of it the archive holds). `None` for timeline 1, or when either is gone.
    async fn timeline_begin(
        &self,
        timeline: TimelineId,
        held: SegmentName,
    ) -> Result<Option<(SegNo, SegmentSize)>> {
        if timeline.0 < 2 {
            return Ok(None);
        }
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
    use std::time::Duration;

    use super::*;
    use crate::archive::{Archive, ArchiveOptions, Location, StoreOptions};
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

    /// A hole is a missing segment with a later one of its timeline held, from the timeline's
    /// first segment on (the history file's switch point, with the segment size the held
    /// one's envelope declares); before it, or past the last segment, a miss is no hole.
    #[tokio::test]
    async fn a_later_segment_tells_a_hole_from_the_end_and_from_before_a_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let options = ArchiveOptions {
            timeout: Duration::from_secs(10),
            deadline: None,
            create: false,
            store: StoreOptions::default(),
        };
        let archive = Archive::open(&Location::Local(dir.path().to_path_buf()), &options).unwrap();
        let cluster = archive.cluster(SystemId(7));
        let mut encoder = envelope::Encoder::new(1, 1).unwrap();
        let mut put = async |text: &str, content: Vec<u8>| {
            let envelope = encoder.encode(&content).unwrap();
            cluster
                .put(&name(text), content.into(), envelope)
                .await
                .unwrap();
        };
        let segment_bytes = vec![0u8; 1 << 20];
        for held in [
            "000000010000000000000002",
            "000000010000000000000004",
            // Timeline 2 begins in segment 5 (1-MiB segments: 0/500028 lies in it).
            "000000020000000000000005",
            "000000020000000000000006",
            "000000020000000000000008",
        ] {
            put(held, segment_bytes.clone()).await;
        }
        put(
            "00000002.history",
            b"1\t0/500028\tno recovery target specified\n".to_vec(),
        )
        .await;

        let later = async |text: &str| {
            cluster
                .later_segment(segment(text))
                .await
                .unwrap()
                .map(|s| s.to_string())
        };
        assert_eq!(
            later("000000010000000000000003").await.as_deref(),
            Some("000000010000000000000004")
        );
        assert_eq!(
            later("000000020000000000000007").await.as_deref(),
            Some("000000020000000000000008")
        );
        // Before timeline 2 began (PostgreSQL 13 asks its name first): no hole.
        assert_eq!(later("000000020000000000000003").await, None);
        assert_eq!(later("000000020000000000000004").await, None);
        // Past the end of each timeline: no hole.
        assert_eq!(later("000000010000000000000005").await, None);
        assert_eq!(later("000000020000000000000009").await, None);
        // A timeline whose history is gone is not judged.
        put("000000030000000000000009", segment_bytes.clone()).await;
        put("00000003000000000000000B", segment_bytes).await;
        assert_eq!(later("00000003000000000000000A").await, None);
    }
}
