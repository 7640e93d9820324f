//! `walhalla fetch <name> <dest>`, the restore_command: take the file from the prefetch cache
//! when a worker already fetched it, else ask the fetch server (`--server`), else read the
//! archive directly; verify it, and write the original bytes to `dest` atomically. A file
//! that fails verification is never handed to PostgreSQL.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use tokio::time::Instant;

use super::prefetch::{self, Cache};
use crate::archive::{Archive, ClusterArchive};
use crate::blocking;
use crate::client::{ClientSettings, ServerClient};
use crate::config::Config;
use crate::envelope;
use crate::fsutil::TempFile;
use crate::server::{CRC_HEADER, SYSTEM_ID_HEADER};
use crate::wal::{
    LONG_HEADER_BYTES, LongPageHeader, SegmentName, SegmentSize, SystemId, WalFileName,
    system_id_from_control_file,
};

/// How a fetch ended, short of an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was written to its destination.
    Restored,
    /// The archive does not hold the file.
    NotFound,
}

/// Options of `walhalla fetch`.
#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    /// Serve a segment the archive lacks from the newest partial snapshot, zero-padded.
    pub partial: bool,
    /// The fetch server to ask first.
    pub client: ClientSettings,
    /// Segments to fetch ahead in the background (0: none).
    pub prefetch: usize,
}

/// Restores `name` to `dest`; the data directory is the current directory.
pub async fn fetch(
    config: &Config,
    name: &str,
    dest: &Path,
    options: &FetchOptions,
) -> anyhow::Result<FetchOutcome> {
    let name: WalFileName = name.parse().map_err(|e: String| anyhow!(e))?;
    let deadline = Instant::now() + config.timeout;
    let sources = Sources::new(config, &options.client)?;
    let prefetching = match name {
        WalFileName::Segment(segment) if options.prefetch > 0 && !options.partial => {
            Some((segment, Cache::beside(dest)?))
        }
        _ => None,
    };
    if let Some((segment, cache)) = &prefetching {
        let expected = sources.declared_system_id()?;
        let (taker, segment, to) = (cache.clone(), *segment, dest.to_path_buf());
        let taken = blocking::run(move || taker.take(segment, &to, expected)).await?;
        if let Some(size) = taken {
            prefetch::request(cache, segment, size, config, options).await;
            return Ok(FetchOutcome::Restored);
        }
    }
    let (outcome, size) = sources
        .restore(&name, dest, options.partial, deadline)
        .await?;
    if let (Some((segment, cache)), Some(size)) = (&prefetching, size) {
        prefetch::request(cache, *segment, size, config, options).await;
    }
    Ok(outcome)
}

/// Where WAL files come from: the fetch server first, then the archive.
pub struct Sources {
    server: Option<ServerClient>,
    config: Config,
    /// The archive, opened on first use.
    archive: tokio::sync::OnceCell<Archive>,
}

impl Sources {
    /// The sources `config` and `client` name; at least one is required.
    pub fn new(config: &Config, client: &ClientSettings) -> anyhow::Result<Sources> {
        let server = ServerClient::new(client, config.timeout)?;
        if server.is_none() {
            config.archive()?;
        }
        Ok(Sources {
            server,
            config: config.clone(),
            archive: tokio::sync::OnceCell::new(),
        })
    }

    /// The cluster named by `--system-id`, else by `pg_control` in the current directory.
    pub fn declared_system_id(&self) -> anyhow::Result<Option<SystemId>> {
        match self.config.system_id {
            Some(id) => Ok(Some(id)),
            None => system_id_from_control_file(Path::new(".")).context("read pg_control"),
        }
    }

    /// Restores `name` to `dest`; for a segment, also says its size.
    pub async fn restore(
        &self,
        name: &WalFileName,
        dest: &Path,
        partial: bool,
        deadline: Instant,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let declared = self.declared_system_id()?;
        if let (Some(server), false) = (&self.server, partial) {
            match self.ask_server(server, name, dest, declared).await {
                Ok(answer) => return Ok(answer),
                Err(e) if self.config.archive.is_some() => {
                    tracing::warn!("{e:#}; reading the archive directly");
                }
                Err(e) => return Err(e),
            }
        }
        self.read_archive(name, dest, partial, declared, deadline)
            .await
    }

    async fn ask_server(
        &self,
        server: &ServerClient,
        name: &WalFileName,
        dest: &Path,
        declared: Option<SystemId>,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let Some(mut response) = server.wal(name).await? else {
            return Ok((FetchOutcome::NotFound, None));
        };
        let header = |h: &str| {
            response
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let crc = header(CRC_HEADER)
            .and_then(|v| u32::from_str_radix(&v, 16).ok())
            .ok_or_else(|| anyhow!("the server sent no valid {CRC_HEADER} header"))?;
        let server_system_id: Option<SystemId> =
            header(SYSTEM_ID_HEADER).and_then(|v| v.parse().ok());
        let system_id = match (declared, server_system_id) {
            (Some(ours), Some(theirs)) if ours != theirs => bail!(
                "server {} serves cluster {theirs}, not this cluster {ours}",
                server.url()
            ),
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => bail!("the server did not say which cluster it serves"),
        };
        let length = response.content_length().unwrap_or(0);
        if length > envelope::MAX_CONTENT_BYTES {
            bail!("the server announced {length} bytes for {name}");
        }
        let mut content = Vec::with_capacity(length as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("read {name} from the server"))?
        {
            if content.len() + chunk.len() > length as usize {
                bail!("the server sent more than the {length} bytes it announced for {name}");
            }
            content.extend_from_slice(&chunk);
        }
        if content.len() as u64 != length || crc32fast::hash(&content) != crc {
            bail!(
                "{name} from the server failed verification: {} bytes with CRC {:08x}, announced {length} with {crc:08x}",
                content.len(),
                crc32fast::hash(&content)
            );
        }
        let (name, dest) = (*name, dest.to_path_buf());
        let size = blocking::run(move || {
            write_checked(&name, system_id, &dest, false, |out| {
                out.write_all(&content)?;
                Ok(content.len() as u64)
            })
        })
        .await?;
        Ok((FetchOutcome::Restored, size))
    }

    async fn read_archive(
        &self,
        name: &WalFileName,
        dest: &Path,
        partial: bool,
        declared: Option<SystemId>,
        deadline: Instant,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let archive = self
            .archive
            .get_or_try_init(|| super::open_archive(&self.config, false, deadline))
            .await?;
        let system_id = super::resolve_system_id(declared, Path::new("."), None, archive)
            .await
            .with_context(|| format!("fetch {name}"))?;
        let cluster = archive.cluster(system_id);
        let (object, key, padded) = match cluster.get(name).await? {
            Some(object) => (object, cluster.key(name).to_string(), false),
            None => match (partial, name) {
                (true, WalFileName::Segment(segment)) => {
                    match cluster.newest_partial_snapshot(*segment).await? {
                        Some((key, object)) => (object, key, true),
                        None => return not_found(&cluster, archive).await,
                    }
                }
                _ => return not_found(&cluster, archive).await,
            },
        };
        let (name, dest) = (*name, dest.to_path_buf());
        let size = blocking::run(move || {
            write_checked(
                &name,
                system_id,
                &dest,
                padded,
                |out| match envelope::decode_into(&object, out) {
                    Ok(header) => Ok(header.content_len),
                    Err(envelope::Error::Write(e)) => Err(e.into()),
                    Err(e) => Err(anyhow::Error::new(e)
                        .context("the archived object failed verification; nothing was written")),
                },
            )
        })
        .await
        .with_context(|| format!("fetch {name} (object {key})"))?;
        Ok((FetchOutcome::Restored, size))
    }
}

/// Quiet when the archive is simply at its end (PostgreSQL probes for history files that do
/// not exist); an error when it holds nothing at all for this cluster.
async fn not_found(
    cluster: &ClusterArchive,
    archive: &Archive,
) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
    if !cluster.has_objects().await? {
        bail!(
            "archive {} holds nothing for cluster {}: wrong --archive location or prefix, or an unmounted directory?",
            archive.location(),
            cluster.system_id()
        );
    }
    Ok((FetchOutcome::NotFound, None))
}

/// Writes what `produce` writes into a temporary file beside `dest`, checks it against its
/// name and cluster, and renames it into place; for a segment, returns its size.
/// `produce` returns the length it wrote and must fail on content it cannot vouch for.
fn write_checked(
    name: &WalFileName,
    system_id: SystemId,
    dest: &Path,
    pad_to_segment: bool,
    produce: impl FnOnce(&mut HeadCapture<crate::fsutil::EarlyWriteback<'_>>) -> anyhow::Result<u64>,
) -> anyhow::Result<Option<SegmentSize>> {
    let mut temp = TempFile::create(dest)
        .with_context(|| format!("create a temporary file beside {}", dest.display()))?;
    let mut out = HeadCapture {
        inner: temp.early_writeback_writer(),
        head: Vec::with_capacity(LONG_HEADER_BYTES),
    };
    let mut length = produce(&mut out).with_context(|| format!("write {}", dest.display()))?;
    let mut segment_size = None;
    if let Some(segment) = name
        .segment()
        .filter(|_| !matches!(name, WalFileName::Backup { .. }))
    {
        let page = LongPageHeader::parse(&out.head).context("the content is not a WAL segment")?;
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
        page.check_segment(segment, length)
            .context("the content does not match its name")?;
        if page.system_id != system_id {
            bail!(
                "the segment belongs to cluster {}, not {system_id}",
                page.system_id
            );
        }
        segment_size = Some(size);
    }
    out.inner.flush()?;
    temp.persist()
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
    let page = LongPageHeader::parse(&head)?;
    page.check_segment(segment, file.metadata()?.len())?;
    if let Some(expected) = system_id.filter(|id| *id != page.system_id) {
        bail!(
            "{} belongs to cluster {}, not {expected}",
            path.display(),
            page.system_id
        );
    }
    Ok(page.segment_size()?)
}

/// Passes writes through, keeping the first bytes (a segment's page header) for checks.
pub struct HeadCapture<W: Write> {
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
