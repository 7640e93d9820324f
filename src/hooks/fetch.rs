//! `walhalla fetch <name> <dest>`, the restore_command: read the object, verify it, and write
//! the original bytes to `dest` atomically. A file that fails verification is never handed to
//! PostgreSQL.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};

use tokio::time::Instant;

use crate::archive::{Archive, ClusterArchive};

use crate::blocking;
use crate::config::Config;
use crate::envelope;
use crate::fsutil::TempFile;
use crate::wal::{LONG_HEADER_BYTES, LongPageHeader, SystemId, WalFileName};

/// How a fetch ended, short of an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was written to its destination.
    Restored,
    /// The archive does not hold the file.
    NotFound,
}

/// Restores `name` from the archive to `dest`; the data directory is the current directory.
/// With `partial`, a segment the archive lacks is served from the newest snapshot the
/// receiver stored of it, zero-padded: for a last recovery after losing the primary.
pub async fn fetch(
    config: &Config,
    name: &str,
    dest: &Path,
    partial: bool,
) -> anyhow::Result<FetchOutcome> {
    let name: WalFileName = name.parse().map_err(|e: String| anyhow!(e))?;
    let deadline = Instant::now() + config.timeout;
    let archive = super::open_archive(config, false, deadline).await?;
    let system_id = super::resolve_system_id(config.system_id, Path::new("."), None, &archive)
        .await
        .with_context(|| format!("fetch {name}"))?;
    let cluster = archive.cluster(system_id);
    let (object, key, padded) = match cluster.get(&name).await? {
        Some(object) => (object, cluster.key(&name).to_string(), false),
        None => match (partial, name) {
            (true, WalFileName::Segment(segment)) => {
                match cluster.newest_partial_snapshot(segment).await? {
                    Some((key, object)) => (object, key, true),
                    None => return not_found(&cluster, &archive).await,
                }
            }
            _ => return not_found(&cluster, &archive).await,
        },
    };
    let dest = dest.to_path_buf();
    blocking::run(move || write_verified(&object, &name, system_id, &dest, padded))
        .await
        .with_context(|| format!("fetch {name} (object {key})"))?;
    Ok(FetchOutcome::Restored)
}

/// Quiet when the archive is simply at its end (PostgreSQL probes for history files that do
/// not exist); an error when it holds nothing at all for this cluster.
async fn not_found(cluster: &ClusterArchive, archive: &Archive) -> anyhow::Result<FetchOutcome> {
    if !cluster.has_objects().await? {
        bail!(
            "archive {} holds nothing for cluster {}: wrong --archive location or prefix, or an unmounted directory?",
            archive.location(),
            cluster.system_id()
        );
    }
    Ok(FetchOutcome::NotFound)
}

/// Decodes `object` into a temporary file beside `dest`, checks it, and renames it into place.
fn write_verified(
    object: &[u8],
    name: &WalFileName,
    system_id: SystemId,
    dest: &Path,
    pad_to_segment: bool,
) -> anyhow::Result<()> {
    let mut temp = TempFile::create(dest)
        .with_context(|| format!("create a temporary file beside {}", dest.display()))?;
    let mut out = HeadCapture {
        inner: temp.early_writeback_writer(),
        head: Vec::with_capacity(LONG_HEADER_BYTES),
    };
    let header = match envelope::decode_into(object, &mut out) {
        Ok(header) => header,
        Err(envelope::Error::Write(e)) => {
            return Err(e).with_context(|| format!("write {}", dest.display()));
        }
        Err(e) => {
            return Err(e).context("the archived object failed verification; nothing was written");
        }
    };
    let mut length = header.content_len;
    if let Some(segment) = name
        .segment()
        .filter(|_| !matches!(name, WalFileName::Backup { .. }))
    {
        let page = LongPageHeader::parse(&out.head)
            .context("the archived content is not a WAL segment")?;
        if pad_to_segment {
            // A snapshot holds the segment up to the last byte received: the rest reads as
            // the end of the WAL.
            let size = u64::from(page.segment_size()?.bytes());
            if length > size {
                bail!("the snapshot is longer than a segment");
            }
            std::io::copy(&mut std::io::repeat(0).take(size - length), &mut out)?;
            length = size;
        }
        page.check_segment(segment, length)
            .context("the archived content does not match its name")?;
        if page.system_id != system_id {
            bail!(
                "the archived segment belongs to cluster {}, not {system_id}",
                page.system_id
            );
        }
    }
    out.inner.flush()?;
    temp.persist()
        .with_context(|| format!("write {} durably", dest.display()))
}

/// Passes writes through, keeping the first bytes (a segment's page header) for checks.
struct HeadCapture<W: Write> {
    inner: W,
    head: Vec<u8>,
}

impl<W: Write> Write for HeadCapture<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let wanted = LONG_HEADER_BYTES.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..wanted]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
