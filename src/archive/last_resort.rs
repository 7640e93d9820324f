//! What the last-resort recovery (`fetch --partial`, `GET /wal/NAME?partial=1`) serves for a
//! segment the archive lacks in full: its newest snapshot, unless that snapshot ends where its
//! timeline has not begun yet.
//!
//! A receiver that follows a promotion streams the new timeline's first segment from the
//! segment's start: up to the switch point, that is the parent timeline's WAL. A snapshot taken
//! early holds only that part, and may end well before the switch point, while the parent's
//! copy of the segment (a receiver's snapshot, PostgreSQL's `.partial` file) reaches it.
//! PostgreSQL asks for the newest timeline's file first, so serving the short snapshot would end
//! recovery before WAL the archive holds. The parent's copy is served instead, cut at the switch
//! point: what the new timeline's file holds there, and nothing of the parent's WAL past it.

use bytes::Bytes;

use super::keys::{ObjectName, WalGroup, partial_snapshot_key};
use super::{ClusterArchive, Result};
use crate::envelope;
use crate::wal::{Lsn, SegmentName, TimelineId, WalFileName, parse_history};

/// A copy of a segment for the last-resort recovery: an archived object, and where its WAL
/// must be cut.
#[derive(Debug)]
pub struct PartialCopy {
    /// The object's key, for messages.
    pub key: String,
    /// The object (an envelope, not yet verified).
    pub object: Bytes,
    /// The position past which the content is not served (the rest reads as zeros): the
    /// switch point, when the copy is the parent timeline's.
    pub cut_at: Option<Lsn>,
}

impl PartialCopy {
    /// How many of the content's leading bytes to serve, for a segment starting at
    /// `segment_start`: all of them, or those before [`PartialCopy::cut_at`].
    pub fn served_len(&self, segment_start: Lsn, content_len: u64) -> u64 {
        self.cut_at
            .map_or(content_len, |cut| cut.0.saturating_sub(segment_start.0))
            .min(content_len)
    }
}

impl ClusterArchive {
    /// The copy of `segment` the last-resort recovery serves when the archive lacks it in
    /// full: its newest snapshot, or the parent timeline's copy cut at the switch point when
    /// that reaches further (see the module's comment); `None` without a snapshot.
    pub async fn last_resort_copy(&self, segment: SegmentName) -> Result<Option<PartialCopy>> {
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
        self.snapshot_copy(segment, end).await
    }

    /// The end of the newest snapshot of `segment`, by listing.
    async fn newest_snapshot_end(&self, segment: SegmentName) -> Result<Option<Lsn>> {
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

    /// The snapshot of `segment` ending at `end`, served whole.
    async fn snapshot_copy(&self, segment: SegmentName, end: Lsn) -> Result<Option<PartialCopy>> {
        let key = partial_snapshot_key(&self.archive.root, self.system_id, segment, end);
        Ok(self.get_key(&key).await?.map(|object| PartialCopy {
            key: key.to_string(),
            object,
            cut_at: None,
        }))
    }

    /// The parent timeline and switch point of `timeline`, from its history file; `None` for
    /// timeline 1, or when the archive has no readable history of it.
    async fn fork_of(&self, timeline: TimelineId) -> Result<Option<(TimelineId, Lsn)>> {
        if timeline.0 < 2 {
            return Ok(None);
        }
        let history = match self.get_verified(&WalFileName::History(timeline)).await {
            Ok(Some(history)) => history,
            Ok(None) | Err(super::Error::Corrupt { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(parse_history(timeline, &history)
            .ok()
            .and_then(|entries| entries.last().map(|e| (e.timeline, e.switch_point))))
    }

    /// The parent's copy of `segment` when it reaches past `end`: its complete segment, or
    /// PostgreSQL's `.partial` file of it, or its newest snapshot; cut at `switch`.
    async fn parent_copy(
        &self,
        segment: SegmentName,
        parent: TimelineId,
        switch: Lsn,
        end: Lsn,
    ) -> Result<Option<PartialCopy>> {
        let on_parent = SegmentName {
            timeline: parent,
            ..segment
        };
        for name in [
            WalFileName::Segment(on_parent),
            WalFileName::Partial(on_parent),
        ] {
            if let Some(object) = self.get(&name).await? {
                return Ok(Some(PartialCopy {
                    key: self.key(&name).to_string(),
                    object,
                    cut_at: Some(switch),
                }));
            }
        }
        match self.newest_snapshot_end(on_parent).await? {
            Some(parent_end) if parent_end > end => Ok(self
                .snapshot_copy(on_parent, parent_end)
                .await?
                .map(|copy| PartialCopy {
                    cut_at: Some(switch),
                    ..copy
                })),
            _ => Ok(None),
        }
    }
}

/// Decodes `copy` verified, and returns the bytes it serves (before its cut).
pub fn decode_served(copy: &PartialCopy) -> std::result::Result<Vec<u8>, String> {
    let mut content = envelope::decode(&copy.object).map_err(|e| e.to_string())?;
    let start = crate::wal::LongPageHeader::parse(&content)
        .map_err(|e| e.to_string())?
        .page_address;
    let len = copy.served_len(start, content.len() as u64);
    content.truncate(len as usize);
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parents_copy_is_cut_at_the_switch_point() {
        let copy = |cut_at| PartialCopy {
            key: String::new(),
            object: Bytes::new(),
            cut_at,
        };
        let start = Lsn(0x700_0000);
        assert_eq!(copy(None).served_len(start, 0x64_7AA0), 0x64_7AA0);
        assert_eq!(
            copy(Some(Lsn(0x764_7AA0))).served_len(start, 0x100_0000),
            0x64_7AA0
        );
        // A copy shorter than the cut is served whole.
        assert_eq!(
            copy(Some(Lsn(0x764_7AA0))).served_len(start, 0x4_0000),
            0x4_0000
        );
        // A switch point in an earlier segment serves nothing of this one.
        assert_eq!(copy(Some(Lsn(0x600_0000))).served_len(start, 0x4_0000), 0);
    }
}
