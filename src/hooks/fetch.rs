//! `walhalla fetch <name> <dest>`, the restore_command: read the object, verify it, and write
//! the original bytes to `dest` atomically. A file that fails verification is never handed to
//! PostgreSQL.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow, bail};

use tokio::time::Instant;

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
pub async fn fetch(config: &Config, name: &str, dest: &Path) -> anyhow::Result<FetchOutcome> {
    let name: WalFileName = name.parse().map_err(|e: String| anyhow!(e))?;
    let deadline = Instant::now() + config.timeout;
    let archive = super::open_archive(config, false, deadline).await?;
    let system_id = super::resolve_system_id(config.system_id, Path::new("."), None, &archive)
        .await
        .with_context(|| format!("fetch {name}"))?;
    let cluster = archive.cluster(system_id);
    let Some(object) = cluster.get(&name).await? else {
        // Quiet when the archive is simply at its end (PostgreSQL probes for history files
        // that do not exist); an error when it holds nothing at all for this cluster.
        if !cluster.has_objects().await? {
            bail!(
                "archive {} holds nothing for cluster {system_id}: wrong --archive location or prefix, or an unmounted directory?",
                archive.location()
            );
        }
        return Ok(FetchOutcome::NotFound);
    };
    let key = cluster.key(&name).to_string();
    let dest = dest.to_path_buf();
    blocking::run(move || write_verified(&object, &name, system_id, &dest))
        .await
        .with_context(|| format!("fetch {name} (object {key})"))?;
    Ok(FetchOutcome::Restored)
}

/// Decodes `object` into a temporary file beside `dest`, checks it, and renames it into place.
fn write_verified(
    object: &[u8],
    name: &WalFileName,
    system_id: SystemId,
    dest: &Path,
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
    if let Some(segment) = name
        .segment()
        .filter(|_| !matches!(name, WalFileName::Backup { .. }))
    {
        let page = LongPageHeader::parse(&out.head)
            .context("the archived content is not a WAL segment")?;
        page.check_segment(segment, header.content_len)
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
