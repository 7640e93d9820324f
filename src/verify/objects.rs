//! Reading back every WAL-area object and history file: the envelope and its CRC-32, and
//! each segment's first page against its name and the cluster; and each segment's time
//! index, which must decode and describe its segment. A segment archived without a time
//! index (by an older walhalla, or whose index was deleted) is read whole instead, and its
//! index is made and stored.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Finding, Tally};
use crate::archive::{ClusterArchive, ObjectInfo, ObjectName, WalInventory, prepare_index};
use crate::envelope;
use crate::wal::{
    HeadCapture, LongPageHeader, SegmentName, SystemId, WalFileName, validate_file,
    validate_segment_head,
};

/// Reads every object of `inventory` stored at or after `since` (all without it), `parallel`
/// at a time; memory stays at about `parallel` stored objects, since segments are decoded
/// into a checksum and their first page only.
pub async fn check(
    cluster: &ClusterArchive,
    inventory: &WalInventory,
    indexed: &BTreeSet<SegmentName>,
    since: Option<jiff::Timestamp>,
    parallel: usize,
) -> (Tally, Vec<Finding>) {
    let recent = |info: &ObjectInfo| since.is_none_or(|s| info.modified.is_none_or(|m| m >= s));
    let histories = inventory
        .histories
        .iter()
        .map(|(t, info)| (ObjectName::File(WalFileName::History(*t)), *info));
    let all: Vec<(ObjectName, ObjectInfo)> =
        inventory.objects.iter().copied().chain(histories).collect();
    let wanted: Vec<ObjectName> = all
        .iter()
        .filter(|(_, info)| recent(info))
        .map(|(name, _)| *name)
        .collect();
    let mut tally = Tally {
        skipped: (all.len() - wanted.len()) as u64,
        ..Tally::default()
    };
    let system_id = cluster.system_id();
    let mut results = futures_util::stream::iter(wanted)
        .map(|name| async move {
            let index = match name {
                ObjectName::File(WalFileName::Segment(s)) => !indexed.contains(&s),
                _ => false,
            };
            let index_problem = match name {
                ObjectName::File(WalFileName::Segment(s)) if !index => {
                    check_index(cluster, s).await.map(|problem| Finding {
                        object: cluster.index_key(s),
                        problem,
                    })
                }
                _ => None,
            };
            (
                name,
                check_one(cluster, name, system_id, index).await,
                index_problem,
            )
        })
        .buffer_unordered(parallel.max(1));
    let mut findings = Vec::new();
    while let Some((name, result, index_problem)) = results.next().await {
        findings.extend(index_problem);
        tally.objects += 1;
        match result {
            Ok((bytes, indexed)) => {
                tally.bytes += bytes;
                tally.indexed += u64::from(indexed);
            }
            Err(problem) => findings.push(Finding {
                object: cluster.wal_object_key(&name),
                problem,
            }),
        }
    }
    (tally, findings)
}

/// What is wrong with `segment`'s time index, if anything. An index is derived data, so the
/// remedy is to delete it: the next verify makes it again from the segment.
async fn check_index(cluster: &ClusterArchive, segment: SegmentName) -> Option<String> {
    let problem = cluster.read_index(segment).await.err()?;
    Some(format!(
        "the time index is unusable ({problem}): restore and list go on without it; delete it, \
         and the next verify makes it again"
    ))
}

/// Reads and checks one object; its stored size and whether a time index was made for it
/// (when `index` asks), or what is wrong with it.
async fn check_one(
    cluster: &ClusterArchive,
    name: ObjectName,
    system_id: SystemId,
    index: bool,
) -> Result<(u64, bool), String> {
    let stored = match cluster.get_wal_object(&name).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Err("listed, but gone when read".into()),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let size = stored.len() as u64;
    if let (true, ObjectName::File(WalFileName::Segment(segment))) = (index, name) {
        let content = crate::blocking::run(move || {
            let content = envelope::decode(&stored).map_err(|e| e.to_string())?;
            validate_segment_head(segment, &content, content.len() as u64)
                .and_then(|facts| facts.check_cluster(system_id))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(Bytes::from(content))
        })
        .await?;
        let prepared = prepare_index(segment, content).await;
        let made = prepared.is_ok();
        cluster.store_index(segment, prepared).await;
        return Ok((size, made));
    }
    crate::blocking::run(move || {
        check_content(name, &stored, system_id).map_err(anyhow::Error::msg)
    })
    .await
    .map_err(|e| format!("{e:#}"))?;
    Ok((size, false))
}

/// Decodes an envelope and checks what it holds against the object's name.
fn check_content(name: ObjectName, stored: &[u8], system_id: SystemId) -> Result<(), String> {
    let (segment, snapshot) = match name {
        ObjectName::File(file @ (WalFileName::History(_) | WalFileName::Backup { .. })) => {
            // Small files: decoded and validated whole.
            let content = envelope::decode(stored).map_err(|e| e.to_string())?;
            return validate_file(&file, &content)
                .map(drop)
                .map_err(|e| e.to_string());
        }
        ObjectName::File(WalFileName::Segment(s) | WalFileName::Partial(s)) => (s, false),
        ObjectName::Snapshot { segment, .. } => (segment, true),
    };
    let mut head = HeadCapture::new(std::io::sink());
    let header = envelope::decode_into(stored, &mut head).map_err(|e| e.to_string())?;
    let length = if snapshot {
        // A snapshot holds the segment's start only: its header declares the full size.
        LongPageHeader::parse(head.head())
            .map_err(|e| e.to_string())?
            .segment_size_bytes
            .into()
    } else {
        header.content_len
    };
    validate_segment_head(segment, head.head(), length)
        .and_then(|facts| facts.check_cluster(system_id))
        .map(drop)
        .map_err(|e| e.to_string())
}
