//! The checks every restored file passes before it gets its final name: an archived object
//! decoded and verified, a segment's first page matching its name and cluster, the file
//! fsynced under a temporary name and renamed into place.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};

use crate::envelope;
use crate::fsutil::TempFile;
use crate::wal::{
    HeadCapture, LONG_HEADER_BYTES, LongPageHeader, SegmentName, SegmentSize, SystemId,
    WalFileName, validate_segment_head,
};

/// Decodes an archived object into `out`, verifying it; returns the content's length.
pub(super) fn decode_verified(object: &[u8], out: &mut impl Write) -> anyhow::Result<u64> {
    match envelope::decode_into(object, out) {
        Ok(header) => Ok(header.content_len),
        Err(envelope::Error::Write(e)) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e)
            .context("the archived object failed verification; nothing was written")),
    }
}

/// Says that segment `name`, which the archive lacks in full, was written from last-resort
/// copy `object` (`--partial`: its newest snapshot, or its parent timeline's copy cut at the
/// switch point): PostgreSQL logs "restored log file" for it as for a whole segment.
pub(super) fn say_served_snapshot(name: &WalFileName, object: &str) {
    tracing::warn!(
        copy = %object,
        "{name} is not archived whole: wrote its last-resort copy, zero-padded (--partial); its \
         WAL ends where the copy ends (a snapshot's end, or the switch point for a parent \
         timeline's copy), which PostgreSQL takes for the end of the WAL"
    );
}

/// Writes what `produce` writes into a temporary file beside `dest`, checks it against its
/// name and cluster, fsyncs it and renames it into place (fsyncing the directory too when
/// `durable_name`); for a segment, returns its size.
/// `produce` returns the length it wrote and must fail on content it cannot vouch for.
pub(super) fn write_checked(
    name: &WalFileName,
    system_id: SystemId,
    dest: &Path,
    pad_to_segment: bool,
    durable_name: bool,
    produce: impl FnOnce(&mut HeadCapture<crate::fsutil::EarlyWriteback<'_>>) -> anyhow::Result<u64>,
) -> anyhow::Result<Option<SegmentSize>> {
    let mut temp = TempFile::create(dest)
        .with_context(|| format!("create a temporary file beside {}", dest.display()))?;
    let mut out = HeadCapture::new(temp.early_writeback_writer());
    let mut length = produce(&mut out).with_context(|| format!("write {}", dest.display()))?;
    let mut segment_size = None;
    if let Some(segment) = name
        .segment()
        .filter(|_| !matches!(name, WalFileName::Backup { .. }))
    {
        let page = LongPageHeader::parse(out.head()).context("the content is not a WAL segment")?;
        let size = page.segment_size()?;
        if pad_to_segment {
            // A snapshot holds the segment up to the last byte received: the rest reads as
            // the end of the WAL.
            let size = u64::from(size.bytes());
            if length > size {
                bail!("the snapshot is longer than a segment");
            }
            std::io::copy(&mut std::io::repeat(0).take(size - length), &mut out)?;
            length = size;
        }
        validate_segment_head(segment, out.head(), length)
            .and_then(|facts| facts.check_cluster(system_id))
            .context("the content does not match its name and cluster")?;
        segment_size = Some(size);
    }
    out.flush()?;
    if durable_name {
        temp.persist()
    } else {
        temp.persist_data()
    }
    .with_context(|| format!("write {} durably", dest.display()))?;
    Ok(segment_size)
}

/// Checks a segment file already in place: its first page must match its name and cluster,
/// and its length the segment size. Returns the segment size.
pub fn check_segment_file(
    path: &Path,
    segment: SegmentName,
    system_id: Option<SystemId>,
) -> anyhow::Result<SegmentSize> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; LONG_HEADER_BYTES];
    file.read_exact(&mut head)?;
    let facts = validate_segment_head(segment, &head, file.metadata()?.len())?;
    if let Some(expected) = system_id {
        facts.check_cluster(expected)?;
    }
    Ok(LongPageHeader::parse(&head)?.segment_size()?)
}
