//! Segments' time indexes ([`crate::timeindex`]) in a cluster's part of the archive: made
//! where a complete segment is in hand (`push`, the receiver's upload), stored create-only
//! beside the WAL, and read back by `restore`.
//!
//! An index is an aid, never a condition: failing to make or store one is logged and the
//! segment stays archived; a missing or unreadable index makes its segment count as
//! unindexed, and whoever reads indexes falls back to what it did without them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::keys::{WalGroup, index_group_prefix, index_key, index_prefix, parse_index_object};
use super::{ClusterArchive, Error, PutOutcome, Result};
use crate::envelope::{self, Encoder};
use crate::timeindex::{IndexEnd, SegmentIndex};
use crate::wal::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// zstd level of index objects: they are small, and compress well at any level.
const INDEX_COMPRESSION_LEVEL: i32 = 3;
/// Index objects read at once.
const READ_PARALLELISM: usize = 16;

/// A segment's index, ready to store.
#[derive(Debug)]
pub struct PreparedIndex {
    /// The segment.
    segment: SegmentName,
    /// The JSON.
    json: Bytes,
    /// Its envelope.
    envelope: Vec<u8>,
    /// Why the scan stopped.
    end: IndexEnd,
    /// Where the segment's WAL switch record ends, when it ends in one.
    switch_end: Option<Lsn>,
}

impl PreparedIndex {
    /// Where valid WAL ends early in the segment, and why ([`IndexEnd::damage`]).
    pub fn damage(&self) -> Option<String> {
        self.end.damage()
    }

    /// Where valid WAL ends, when it ends before the segment does.
    pub fn valid_end(&self) -> Option<Lsn> {
        self.end.valid_end()
    }

    /// Where the segment's WAL switch record ends, when it ends in one
    /// ([`SegmentIndex::switch_end`]).
    pub fn switch_end(&self) -> Option<Lsn> {
        self.switch_end
    }
}

/// Scans complete segment `segment` and makes its index object, on the blocking pool.
pub async fn prepare_index(
    segment: SegmentName,
    content: Bytes,
) -> std::result::Result<PreparedIndex, String> {
    crate::blocking::run(move || index_now(segment, &content, &mut |_| {})).await
}

/// Scans complete segment `segment` and makes its index object, on this thread; the scan
/// tells `done_before` how far it has passed ([`SegmentIndex::of_segment_sequentially`]).
pub fn index_now(
    segment: SegmentName,
    content: &[u8],
    done_before: &mut dyn FnMut(usize),
) -> std::result::Result<PreparedIndex, String> {
    let started = Instant::now();
    let index = SegmentIndex::of_segment_sequentially(segment, content, done_before)?;
    let scanned = started.elapsed();
    let json = index.to_json()?;
    let envelope = Encoder::new(INDEX_COMPRESSION_LEVEL, 1)
        .and_then(|mut e| e.encode(&json))
        .map_err(|e| format!("compress the index of {segment}: {e}"))?;
    tracing::debug!(
        %segment,
        scan_ms = scanned.as_secs_f64() * 1000.0,
        restore_points = index.restore_points.len(),
        "indexed"
    );
    Ok(PreparedIndex {
        segment,
        json: Bytes::from(json),
        envelope,
        switch_end: index.switch_end(),
        end: index.end,
    })
}

impl ClusterArchive {
    /// Stores a segment's index made by [`prepare_index`], once the segment itself is
    /// archived. Never fails: a scan or store error is logged (warn), and an index already
    /// stored with other content (written by another walhalla version) is kept (debug).
    pub async fn store_index(
        &self,
        segment: SegmentName,
        prepared: std::result::Result<PreparedIndex, String>,
    ) {
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::warn!(%segment, "archived without a time index: {e}");
                return;
            }
        };
        crate::failpoint::hit(crate::failpoint::TIME_INDEX_WRITE);
        let key = index_key(&self.archive.root, self.system_id, prepared.segment);
        match self.put_key(key, prepared.json, prepared.envelope).await {
            Ok(PutOutcome::Stored | PutOutcome::AlreadyArchived | PutOutcome::AtFork) => {}
            Err(e @ Error::Conflict { .. }) => {
                tracing::debug!(%segment, "keeping the time index already stored: {e}")
            }
            Err(e) => tracing::warn!(%segment, "archived without a time index: {e}"),
        }
    }

    /// The key of `segment`'s time index, for messages.
    pub fn index_key(&self, segment: SegmentName) -> String {
        index_key(&self.archive.root, self.system_id, segment).to_string()
    }

    /// `segment`'s time index read and verified: `Ok(None)` when there is none, `Err` with
    /// what is wrong when it cannot be read, is corrupt or does not describe the segment.
    pub async fn read_index(
        &self,
        segment: SegmentName,
    ) -> std::result::Result<Option<SegmentIndex>, String> {
        let key = index_key(&self.archive.root, self.system_id, segment);
        let Some(envelope) = self.get_key(&key).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        crate::blocking::run(move || {
            let json = envelope::decode(&envelope).map_err(|e| e.to_string())?;
            SegmentIndex::parse(segment, &json).map(Some)
        })
        .await
    }

    /// Every segment of the cluster with a time index (listed, not read).
    pub async fn indexed_segments(&self) -> Result<BTreeSet<SegmentName>> {
        let root = index_prefix(&self.archive.root, self.system_id);
        let groups = self
            .archive
            .list(&root)
            .await?
            .folders_as(&root, WalGroup::parse);
        let mut indexed = BTreeSet::new();
        for group in groups {
            let dir = index_group_prefix(&self.archive.root, self.system_id, group);
            let listing = self.archive.list(&dir).await?;
            indexed.extend(listing.objects_as(&dir, |name| parse_index_object(group, name)));
        }
        Ok(indexed)
    }

    /// The time indexes the archive holds of segments `from..to` of `timeline`, read and
    /// verified. An index that is corrupt or unreadable is left out (with a warning): its
    /// segment counts as unindexed.
    pub async fn segment_indexes(
        &self,
        timeline: TimelineId,
        from: SegNo,
        to: SegNo,
        size: SegmentSize,
    ) -> Result<BTreeMap<SegNo, SegmentIndex>> {
        let mut found = Vec::new();
        for group in WalGroup::spanning(timeline, from, to, size) {
            let dir = index_group_prefix(&self.archive.root, self.system_id, group);
            let listing = self.archive.list(&dir).await?;
            found.extend(
                listing
                    .objects_as(&dir, |name| parse_index_object(group, name))
                    .into_iter()
                    .filter_map(|s| Some((s.segno(size)?, s)))
                    .filter(|(n, _)| (from..to).contains(n)),
            );
        }
        let stored: Vec<(SegNo, SegmentName, Option<Bytes>)> = futures_util::stream::iter(found)
            .map(|(n, segment)| async move {
                let key = index_key(&self.archive.root, self.system_id, segment);
                Ok::<_, Error>((n, segment, self.get_key(&key).await?))
            })
            .buffered(READ_PARALLELISM)
            .try_collect()
            .await?;
        let indexes = crate::blocking::run(move || {
            stored
                .into_iter()
                .filter_map(|(n, segment, envelope)| {
                    let read = envelope::decode(&envelope?)
                        .map_err(|e| e.to_string())
                        .and_then(|json| SegmentIndex::parse(segment, &json));
                    match read {
                        Ok(index) => Some((n, index)),
                        Err(e) => {
                            tracing::warn!(%segment, "ignoring the segment's time index: {e}");
                            None
                        }
                    }
                })
                .collect()
        })
        .await;
        Ok(indexes)
    }
}
