//! `walhalla backup`: a base backup streamed from the server straight into the archive.
//!
//! The tar streams arrive over one replication connection (`BASE_BACKUP`) and go to the
//! archive in pieces, a bounded number at once (`upload`). The server's manifest is stored
//! verbatim. The metadata goes last, once the WAL from the backup's start to its stop is in
//! the archive (or the wait for it gave up, which marks the backup incomplete: restore never
//! chooses it).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use tokio::time::Instant;

use super::label::{BackupLabel, LabelFinder};
use super::meta::{ArchiveMeta, BackupMeta, StreamCompression, format_for};
use super::protocol::{self, BackupRequest, CopyPayload, TYPED_MESSAGES_SINCE};
use super::upload::{PieceWriter, Uploads, envelope};
use super::wal::{WalStream, wait_for_wal};
use crate::archive::{Archive, BackupId, BackupObject, ClusterArchive};
use crate::progress::Progress;
use crate::protocol::commands;
use crate::protocol::connection::{Connection, Response, Row};
use crate::protocol::conninfo::ConnParams;
use crate::wal::{Lsn, SegmentSize, SystemId, TimelineId, version};

/// The largest manifest accepted (the server's is about 150 bytes per file).
const MAX_MANIFEST_BYTES: usize = 1 << 30;

/// What `walhalla backup` was asked for.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The server to back up (a replication connection is made).
    pub conn: ConnParams,
    /// The label; default `walhalla ID`.
    pub label: Option<String>,
    /// Checkpoint at once instead of spreading it.
    pub fast: bool,
    /// How long to wait for the backup's WAL to reach the archive.
    pub wal_timeout: Duration,
    /// zstd level.
    pub compression_level: i32,
    /// Pieces compressed and stored at once.
    pub parallelism: usize,
    /// Where the backup's WAL comes from.
    pub wal: WalSource,
    /// Have the server compress the tar streams (at `compression_level`), saving network
    /// bandwidth and this host's CPU at the cost of the server's (PostgreSQL 15 and later).
    pub server_compression: bool,
}

/// Where a backup's WAL comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WalSource {
    /// Wait for archive_command or `walhalla receive` to archive it.
    Wait,
    /// Stream it into the archive, through a temporary slot, beside the backup.
    Stream,
}

/// Takes a base backup of the server `options.conn` names into `archive`.
pub async fn run(options: &BackupOptions, archive: &Archive) -> anyhow::Result<BackupMeta> {
    let mut conn = Connection::connect(&options.conn)
        .await
        .context("connect to the server")?;
    let server_version = conn
        .parameter("server_version")
        .unwrap_or_default()
        .to_string();
    let major = conn
        .server_major_version()
        .ok_or_else(|| anyhow!("the server did not report its version"))?;
    if let Err(why) = version::by_number(major) {
        bail!("{} runs PostgreSQL {server_version}, {why}", conn.host());
    }
    if options.server_compression && major < TYPED_MESSAGES_SINCE {
        bail!(
            "--server-compression needs PostgreSQL {TYPED_MESSAGES_SINCE} or later; {} runs {server_version}",
            conn.host()
        );
    }
    let system_id = commands::identify_system(&mut conn).await?.system_id;
    let segment_size = commands::segment_size(&mut conn).await?;
    let cluster = archive.cluster(system_id);
    let started = jiff::Timestamp::now();
    let id = free_id(&cluster, started, options.compression_level).await?;
    let backup = Backup {
        options,
        archive,
        cluster: &cluster,
        id: &id,
        system_id,
        server_version,
        major,
        segment_size,
        started,
    };
    // Once reserved, the folder is this backup's: a failure removes it, so that no folder
    // of a backup that ended looks like one in progress (prune would wait for it).
    let taken = backup.take(&mut conn).await;
    if taken.is_err() {
        match cluster.delete_backup(&id).await {
            Ok(_) => tracing::info!(backup = %id, "removed the failed backup's objects"),
            Err(e) => tracing::warn!(
                backup = %id,
                "the failed backup's folder stays ({e:#}); prune --assume-interrupted removes it"
            ),
        }
    }
    taken
}

/// One backup under way: what it was asked, where it goes, and what the server said of itself.
struct Backup<'a> {
    options: &'a BackupOptions,
    archive: &'a Archive,
    cluster: &'a ClusterArchive,
    id: &'a BackupId,
    system_id: SystemId,
    server_version: String,
    major: u32,
    segment_size: SegmentSize,
    started: jiff::Timestamp,
}

impl Backup<'_> {
    /// Streams the backup into the archive, waits for its WAL, and stores its metadata last.
    async fn take(&self, conn: &mut Connection) -> anyhow::Result<BackupMeta> {
        let (options, id) = (self.options, self.id);
        let label = options
            .label
            .clone()
            .unwrap_or_else(|| format!("walhalla {id}"));
        tracing::info!(backup = %id, host = %conn.host(), "starting a base backup");
        if !options.fast {
            tracing::info!(
                "the server begins once its checkpoint is done, spread over \
                 checkpoint_completion_target: this can take minutes (--fast asks for an \
                 immediate one)"
            );
        }
        let stream = match options.wal {
            WalSource::Wait => None,
            WalSource::Stream => Some(
                WalStream::start(
                    &options.conn,
                    self.archive,
                    self.system_id,
                    self.segment_size,
                    options.compression_level,
                    &id.to_string(),
                )
                .await?,
            ),
        };
        let received = self.stream(conn, &label, stream.as_ref()).await?;
        let stopped = jiff::Timestamp::now();

        let (start_lsn, start_timeline) = position(received.sets.first(), "start")?;
        let (stop_lsn, stop_timeline) = position(received.sets.get(2), "stop")?;
        let found = received
            .label
            .ok_or_else(|| anyhow!("the backup's main archive held no backup_label"))?;
        if found.start_lsn != start_lsn {
            bail!(
                "backup_label starts at {}, the server said {start_lsn}",
                found.start_lsn
            );
        }
        tracing::info!(backup = %id, start = %start_lsn, stop = %stop_lsn, "backup streamed; waiting for its WAL in the archive");

        let missing = wait_for_wal(
            self.cluster,
            [start_timeline, stop_timeline],
            start_lsn,
            stop_lsn,
            self.segment_size,
            Instant::now() + options.wal_timeout,
            stream.as_ref(),
        )
        .await?;
        if let Some(stream) = stream {
            if let Err(e) = stream.stop().await {
                tracing::error!("{e:#}");
            }
        }
        let meta = BackupMeta {
            format: format_for(&received.archives),
            id: id.to_string(),
            label,
            system_id: self.system_id.to_string(),
            server_version: self.server_version.clone(),
            server_major: self.major,
            walhalla_version: env!("CARGO_PKG_VERSION").to_string(),
            segment_size: self.segment_size.bytes(),
            start_lsn: start_lsn.to_string(),
            start_timeline: start_timeline.0,
            stop_lsn: stop_lsn.to_string(),
            stop_timeline: stop_timeline.0,
            start_time: utc(self.started),
            stop_time: utc(stopped),
            from_standby: found.from_standby,
            manifest_bytes: received.manifest_bytes,
            bytes: received.archives.iter().map(|a| a.bytes).sum::<u64>() + received.manifest_bytes,
            data_bytes: Some(received.data_bytes),
            stored_bytes: received.stored_bytes,
            archives: received.archives,
            wal_complete: missing.is_none(),
            wal_missing: missing.map(|s| s.to_string()),
            missing_objects: Vec::new(),
        };
        self.store_meta(&meta).await?;
        Ok(meta)
    }

    /// Asks for the backup and stores what the server sends, showing progress to a person.
    async fn stream(
        &self,
        conn: &mut Connection,
        label: &str,
        stream: Option<&WalStream>,
    ) -> anyhow::Result<Received> {
        let options = self.options;
        let request = BackupRequest {
            label: label.to_string(),
            fast: options.fast,
            // The server's size estimate costs a scan of the data directory: only for a
            // person, and not when compressed streams could not be compared with it.
            progress: Progress::wanted() && !options.server_compression,
            server_zstd: options
                .server_compression
                .then_some(options.compression_level),
        };
        conn.send_query(&protocol::command(self.major, &request))
            .await
            .context("send BASE_BACKUP")?;
        let uploads = Uploads::new(self.cluster.clone(), self.id.clone(), options);
        let progress = Progress::start("backup");
        let compression = options
            .server_compression
            .then_some(StreamCompression::Zstd);
        let received = receive(
            conn,
            (self.major, compression),
            self.system_id,
            uploads,
            &progress,
            stream,
        )
        .await;
        progress.finish().await;
        received.map_err(|e| {
            if options.server_compression && format!("{e:#}").contains("does not support compression")
            {
                e.context("the server cannot compress with zstd: leave out --server-compression (walhalla then compresses on this host)")
            } else {
                e
            }
        })
    }

    /// Stores `meta`, the object that makes the backup one restore may choose, once every
    /// piece and the manifest it lists are still in the archive.
    async fn store_meta(&self, meta: &BackupMeta) -> anyhow::Result<()> {
        let (cluster, id) = (self.cluster, self.id);
        let absent = cluster.absent_backup_objects(id, &meta.objects()).await?;
        if let Some(first) = absent.first() {
            bail!(
                "{} of backup {id}'s objects are no longer in the archive (the first: {}), so no metadata was written \
                 and the backup is not restorable: was its folder pruned with --assume-interrupted while it ran?",
                absent.len(),
                cluster.backup_object_key(id, first)
            );
        }
        let content = Bytes::from(serde_json::to_vec_pretty(meta).context("encode backup.json")?);
        let envelope = envelope(&content, self.options.compression_level).await?;
        cluster
            .put_backup_object(id, &BackupObject::Meta, content, envelope)
            .await?;
        Ok(())
    }
}

/// `YYYYMMDDTHHMMSSZ` of `at`, with `-N` if earlier backups of this second exist, reserved
/// by storing [`BackupObject::Reservation`] create-only: a backup started meanwhile that
/// took the same identifier stored its own first, and the next one is tried.
async fn free_id(
    cluster: &ClusterArchive,
    at: jiff::Timestamp,
    level: i32,
) -> anyhow::Result<BackupId> {
    let taken = cluster.backup_ids().await?;
    // Content no other backup has: this host, this process, this moment.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let token = format!(
        "{} {} {}\n",
        host.trim(),
        std::process::id(),
        jiff::Timestamp::now()
    );
    reserve(cluster, at, &taken, token, level).await
}

/// The first identifier of second `at` not in `taken` whose reservation, holding `token`,
/// this call stores.
async fn reserve(
    cluster: &ClusterArchive,
    at: jiff::Timestamp,
    taken: &[BackupId],
    token: String,
    level: i32,
) -> anyhow::Result<BackupId> {
    let second = at.strftime("%Y%m%dT%H%M%SZ").to_string();
    let token = Bytes::from(token);
    let envelope = envelope(&token, level).await?;
    for id in (1..1000).filter_map(|n| BackupId::new(&second, n)) {
        if taken.contains(&id) {
            continue;
        }
        let stored = cluster
            .put_backup_object(
                &id,
                &BackupObject::Reservation,
                token.clone(),
                envelope.clone(),
            )
            .await;
        match stored {
            Ok(_) => return Ok(id),
            Err(crate::archive::Error::Conflict { .. }) => {
                tracing::debug!(backup = %id, "taken by a backup started meanwhile");
            }
            Err(e) => return Err(e).context("reserve the backup's identifier"),
        }
    }
    bail!("too many backups started at {second}")
}

/// RFC 3339 in UTC with seconds.
fn utc(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// What the response to BASE_BACKUP delivered.
struct Received {
    /// The ordinary result sets: start position, tablespaces, stop position.
    sets: Vec<Vec<Row>>,
    archives: Vec<ArchiveMeta>,
    manifest_bytes: u64,
    /// The files' sizes by the manifest, summed.
    data_bytes: u64,
    stored_bytes: u64,
    label: Option<BackupLabel>,
}

/// Reads the whole response, storing the tar streams and the manifest as they arrive.
async fn receive(
    conn: &mut Connection,
    (major, compression): (u32, Option<StreamCompression>),
    system_id: SystemId,
    mut uploads: Uploads,
    progress: &Progress,
    stream: Option<&WalStream>,
) -> anyhow::Result<Received> {
    let done = progress.counter();
    let typed = major >= TYPED_MESSAGES_SINCE;
    let mut sets: Vec<Vec<Row>> = Vec::new();
    let mut archives = Vec::new();
    let mut current: Option<PieceWriter> = None;
    let mut manifest: Option<Vec<u8>> = None;
    let mut copy_outs = 0usize;
    let mut finder = LabelFinder::new(compression.is_some());
    let mut label = None;
    loop {
        let response = conn.next_response().await.context("BASE_BACKUP")?;
        let data = match response {
            Response::Columns => {
                sets.push(Vec::new());
                continue;
            }
            Response::Row(row) => {
                sets.last_mut()
                    .ok_or_else(|| anyhow!("a row before its result set"))?
                    .push(row);
                continue;
            }
            Response::Complete(_) => {
                if let (Some(stream), 1) = (stream, sets.len()) {
                    let (lsn, timeline) = position(sets.first(), "start")?;
                    stream.begin_at(lsn, timeline);
                }
                continue;
            }
            Response::Ready => break,
            Response::CopyOut => {
                copy_outs += 1;
                if copy_outs == 1 {
                    // The second result set's sizes, in kB, when PROGRESS was asked for.
                    let kib: u64 = sets
                        .get(1)
                        .into_iter()
                        .flatten()
                        .filter_map(|row| row.get(2).cloned().flatten()?.parse::<u64>().ok())
                        .sum();
                    progress.set_total(kib * 1024);
                }
                if !typed {
                    // One CopyOut per tablespace, in the order of the second result set,
                    // then one for the manifest.
                    let tablespaces = tablespaces(sets.get(1))?;
                    match tablespaces.get(copy_outs - 1) {
                        Some((name, location)) => {
                            current = Some(PieceWriter::new(name.clone(), location.clone(), None))
                        }
                        None => manifest = Some(Vec::new()),
                    }
                }
                continue;
            }
            Response::CopyDone => {
                if let Some(mut writer) = current.take() {
                    if !typed {
                        // Before 15 the server leaves out the end-of-archive blocks (its
                        // client adds them); store a complete tar, as 15 and later send it.
                        writer.write(&[0; 1024], &mut uploads).await?;
                    }
                    archives.push(writer.finish(&mut uploads).await?);
                }
                continue;
            }
            Response::CopyData(data) if !typed => data,
            Response::CopyData(payload) => match protocol::parse_payload(payload)? {
                CopyPayload::NewArchive { name, location } => {
                    if let Some(writer) = current.take() {
                        archives.push(writer.finish(&mut uploads).await?);
                    }
                    let suffix = match compression {
                        Some(StreamCompression::Zstd) => ".tar.zst",
                        None => ".tar",
                    };
                    let name = name.strip_suffix(suffix).unwrap_or(&name).to_string();
                    let location = (!location.is_empty()).then_some(location);
                    current = Some(PieceWriter::new(
                        archive_name(&name)?,
                        location,
                        compression,
                    ));
                    continue;
                }
                CopyPayload::Manifest => {
                    if let Some(writer) = current.take() {
                        archives.push(writer.finish(&mut uploads).await?);
                    }
                    manifest = Some(Vec::new());
                    continue;
                }
                CopyPayload::Progress(_) => continue,
                CopyPayload::Data(data) => data,
            },
        };
        if let Some(manifest) = manifest.as_mut() {
            if manifest.len() + data.len() > MAX_MANIFEST_BYTES {
                bail!("the backup manifest is larger than {MAX_MANIFEST_BYTES} bytes");
            }
            manifest.extend_from_slice(&data);
            continue;
        }
        let writer = current
            .as_mut()
            .ok_or_else(|| anyhow!("backup data before any archive began"))?;
        if writer.name == "base" && label.is_none() {
            label = finder.feed(&data)?;
        }
        done.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        writer.write(&data, &mut uploads).await?;
    }
    if current.is_some() {
        bail!("the server ended the backup in the middle of an archive");
    }
    let manifest = manifest.ok_or_else(|| anyhow!("the server sent no backup manifest"))?;
    // Restore will need it: a manifest it would refuse makes the backup fail now.
    let parsed = super::manifest::parse(&manifest).context("the server's backup manifest")?;
    if parsed.system_id.is_some_and(|id| id != system_id.0) {
        bail!(
            "the backup manifest names cluster {:?}, the server {system_id}",
            parsed.system_id
        );
    }
    let manifest_bytes = manifest.len() as u64;
    let data_bytes = parsed.files.iter().map(|f| f.size).sum();
    uploads
        .submit(BackupObject::Manifest, Bytes::from(manifest), uploads.level)
        .await?;
    let stored = uploads.finish().await?;
    for archive in &mut archives {
        archive.stored_bytes = stored.get(&archive.name).copied().unwrap_or(0);
    }
    let stored_bytes = stored.values().sum();
    if !archives.iter().any(|a| a.name == "base") {
        bail!("the server sent no archive of the data directory");
    }
    Ok(Received {
        sets,
        archives,
        manifest_bytes,
        data_bytes,
        stored_bytes,
        label,
    })
}

/// `base` or a tablespace OID, the only names an archive folder may have.
fn archive_name(name: &str) -> anyhow::Result<String> {
    if name == "base" || (name.parse::<u32>().is_ok_and(|oid| oid > 0) && !name.starts_with('0')) {
        Ok(name.to_string())
    } else {
        bail!("the server sent an archive named {name:?}, neither base nor a tablespace OID")
    }
}

/// The second result set (spcoid, spclocation, size) as archive names and locations.
fn tablespaces(set: Option<&Vec<Row>>) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let rows = set.ok_or_else(|| anyhow!("BASE_BACKUP sent no tablespace list"))?;
    rows.iter()
        .map(|row| {
            match (
                row.first().cloned().flatten(),
                row.get(1).cloned().flatten(),
            ) {
                (None, _) => Ok(("base".to_string(), None)),
                (Some(oid), location) => Ok((archive_name(&oid)?, location)),
            }
        })
        .collect()
}

/// The position and timeline in the one-row result set `set` (the start or the stop).
fn position(set: Option<&Vec<Row>>, what: &str) -> anyhow::Result<(Lsn, TimelineId)> {
    let row = set
        .and_then(|rows| rows.first())
        .ok_or_else(|| anyhow!("BASE_BACKUP sent no {what} position"))?;
    let field = |i: usize| row.get(i).cloned().flatten();
    let lsn = field(0)
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| anyhow!("BASE_BACKUP {what} position {:?}", field(0)))?;
    let timeline = field(1)
        .and_then(|t| t.parse().ok())
        .map(TimelineId)
        .ok_or_else(|| anyhow!("BASE_BACKUP {what} timeline {:?}", field(1)))?;
    Ok((lsn, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_backups_started_in_one_second_reserve_two_ids() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::archive::ArchiveOptions {
            timeout: Duration::from_secs(10),
            deadline: None,
            create: false,
            store: Default::default(),
        };
        let location = crate::archive::Location::Local(dir.path().to_path_buf());
        let archive = Archive::open(&location, &options).unwrap();
        let cluster = archive.cluster(SystemId(7));
        let at: jiff::Timestamp = "2026-12-04T20:00:00Z".parse().unwrap();
        // Both listed the backups before either reserved: the second finds the first's
        // reservation and takes the next identifier.
        let first = reserve(&cluster, at, &[], "one".into(), 1).await.unwrap();
        let second = reserve(&cluster, at, &[], "two".into(), 1).await.unwrap();
        assert_eq!(first.as_str(), "20261204T200000Z");
        assert_eq!(second.as_str(), "20261204T200000Z-2");
        // A later listing sees both.
        let third = free_id(&cluster, at, 1).await.unwrap();
        assert_eq!(third.as_str(), "20261204T200000Z-3");
    }
}
