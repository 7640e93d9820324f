//! What the last-resort recovery (`fetch --partial`, `GET /wal/NAME?partial=1`) serves for a
//! segment the archive lacks in full: its newest snapshot, unless that snapshot ends where its
//! timeline has not begun yet.
//!
//! A receiver that follows a promotion streams the new timeline's first segment from the
//! segment's start: up to the switch point, that is the parent timeline's WAL. A snapshot taken
//! early holds only that part, and may end well before the switch point, while the parent's
//! copy of the segment (a complete segment, PostgreSQL's `.partial` file, a receiver's
//! snapshot) reaches it. PostgreSQL asks for the newest timeline's file first, so serving the
//! short snapshot would end recovery before WAL the archive holds. The parent's copy is served
//! instead, cut at the switch point: what the new timeline's file holds there, and nothing of
//! the parent's WAL past it. A parent's copy that fails verification, or whose valid WAL does
//! not reach further than the snapshot, is passed over.
//!
//! Copies are decoded whole (at most a segment) and verified here, on the blocking pool.

use bytes::Bytes;

use super::keys::{ObjectName, WalGroup, partial_snapshot_key};
use super::{ClusterArchive, Error, Result};
use crate::envelope;
use crate::wal::{
    LongPageHeader, Lsn, SegmentName, TimelineId, WalFileName, parse_history, scan_segment,
};

/// A copy of a segment for the last-resort recovery, verified, not yet zero-padded.
#[derive(Debug)]
pub struct LastResortCopy {
    /// The object it came from, for messages.
    pub key: String,
    /// Its content, cut at the switch point when it is the parent timeline's.
    pub content: Vec<u8>,
}

impl ClusterArchive {
    /// The copy of `segment` the last-resort recovery serves when the archive lacks it in
    /// full: its newest snapshot, or the parent timeline's copy cut at the switch point when
    /// that reaches further (see the module's comment); `None` without a snapshot.
    pub async fn last_resort_copy(&self, segment: SegmentName) -> Result<Option<LastResortCopy>> {
        let Some(end) = self.newest_snapshot_end(segment).await? else {
            return Ok(None);
        };
        if let Some((parent, switch)) = self.fork_of(segment.timeline).await?
            && end <= switch
            && let Some(copy) = self.parent_copy(segment, parent, switch, end).await?
        {
            tracing::info!(
                %segment,
                from = %copy.key,
                "the newest snapshot ends at {end}, before its timeline begins at {switch}: \
                 serving timeline {}'s copy up to there",
                parent.0
            );
            return Ok(Some(copy));
        }
        let key = partial_snapshot_key(&self.archive.root, self.system_id, segment, end);
        match self.get_key(&key).await? {
            Some(object) => Ok(Some(decoded(key.to_string(), object, None).await?)),
            None => Ok(None),
        }
    }

    /// The end of the newest snapshot of `segment`, by listing.
    pub async fn newest_snapshot_end(&self, segment: SegmentName) -> Result<Option<Lsn>> {
        Ok(self
            .group_objects(WalGroup::of(segment))
            .await?
            .into_iter()
            .filter_map(|object| match object {
                ObjectName::Snapshot { segment: s, end } if s == segment => Some(end),
                _ => None,
            })
            .max())
    }

    /// The parent timeline and switch point of `timeline`, from its history file; `None` for
    /// timeline 1, or when the archive has no readable history of it.
    async fn fork_of(&self, timeline: TimelineId) -> Result<Option<(TimelineId, Lsn)>> {
        if timeline.0 < 2 {
            return Ok(None);
        }
        let history = match self.get_verified(&WalFileName::History(timeline)).await {
            Ok(Some(history)) => history,
            Ok(None) | Err(Error::Corrupt { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(parse_history(timeline, &history)
            .ok()
            .and_then(|entries| entries.last().map(|e| (e.timeline, e.switch_point))))
    }

    /// The parent's first copy of `segment` whose valid WAL, cut at `switch`, reaches past
    /// `end`: its complete segment, PostgreSQL's `.partial` file of it, its newest snapshot.
    async fn parent_copy(
        &self,
        segment: SegmentName,
        parent: TimelineId,
        switch: Lsn,
        end: Lsn,
    ) -> Result<Option<LastResortCopy>> {
        let on_parent = SegmentName {
            timeline: parent,
            ..segment
        };
        let mut keys: Vec<String> = [
            WalFileName::Segment(on_parent),
            WalFileName::Partial(on_parent),
        ]
        .iter()
        .map(|name| self.key(name).to_string())
        .collect();
        if let Some(parent_end) = self.newest_snapshot_end(on_parent).await? {
            let key =
                partial_snapshot_key(&self.archive.root, self.system_id, on_parent, parent_end);
            keys.push(key.to_string());
        }
        for key in keys {
            let Some(object) = self.get_key(&key.as_str().into()).await? else {
                continue;
            };
            match decoded(key.clone(), object, Some(switch)).await {
                Ok(copy) if valid_end(&copy.content).is_some_and(|valid| valid > end) => {
                    return Ok(Some(copy));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%segment, "passing over {key}: {e}"),
            }
        }
        Ok(None)
    }
}

/// `object` decoded and verified, its content cut at `cut_at` (a position) when given.
async fn decoded(key: String, object: Bytes, cut_at: Option<Lsn>) -> Result<LastResortCopy> {
    crate::blocking::run(move || {
        let mut content = envelope::decode(&object).map_err(|error| Error::Corrupt {
            key: key.clone(),
            error,
        })?;
        if let Some(cut) = cut_at
            && let Ok(header) = LongPageHeader::parse(&content)
        {
            let keep = cut.0.saturating_sub(header.page_address.0);
            content.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        Ok(LastResortCopy { key, content })
    })
    .await
}

/// Where the valid WAL of `content`, a segment's first bytes, ends.
fn valid_end(content: &[u8]) -> Option<Lsn> {
    let start = LongPageHeader::parse(content).ok()?.page_address;
    scan_segment(content, start)
        .ok()
        .map(|found| found.valid_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_parents_copy_is_cut_at_the_switch_point_and_verified() {
        use crate::wal::sample::{START_7, segment_7};
        let segment = segment_7();
        let object = Bytes::from(
            envelope::Encoder::new(1, 1)
                .unwrap()
                .encode(&segment)
                .unwrap(),
        );
        let cut = |at| {
            let object = object.clone();
            async move { decoded("k".into(), object, at).await.unwrap().content }
        };
        assert_eq!(cut(None).await, segment);
        let cut_copy = cut(Some(Lsn(START_7.0 + 0x2000))).await;
        assert_eq!(cut_copy, segment[..0x2000]);
        // Cut, its valid WAL ends at or before the cut, and after the segment's start.
        let valid = valid_end(&cut_copy).unwrap();
        assert!(
            valid > START_7 && valid <= Lsn(START_7.0 + 0x2000),
            "{valid}"
        );
        // A cut past the copy keeps it whole.
        assert_eq!(cut(Some(Lsn(START_7.0 + (4 << 20)))).await, segment);
        let corrupt = Bytes::from(vec![1u8; 64]);
        assert!(matches!(
            decoded("k".into(), corrupt, None).await,
            Err(Error::Corrupt { .. })
        ));
    }
}
