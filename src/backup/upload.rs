//! The pieces of a backup on their way to the archive: each tar stream cut into pieces of
//! [`PIECE_BYTES`], each piece compressed into its envelope and stored create-only by at most
//! `parallelism` tasks at once, so memory stays at a few pieces whatever the database's size,
//! and a slow store slows the reading down instead of filling memory.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::meta::{ArchiveMeta, StreamCompression};
use super::take::BackupOptions;
use crate::archive::{self, BackupId, BackupObject, ClusterArchive};
use crate::blocking;
use crate::envelope::Encoder;

/// Bytes of a tar stream per stored piece: large enough to compress well, small enough that
/// a few in flight stay well within the memory budget.
pub const PIECE_BYTES: usize = 4 << 20;

/// Cuts one tar stream into pieces and hands them to the uploads.
pub(super) struct PieceWriter {
    /// `base` or a tablespace OID.
    pub(super) name: String,
    location: Option<String>,
    buf: BytesMut,
    pieces: u32,
    bytes: u64,
    compression: Option<StreamCompression>,
}

impl PieceWriter {
    pub(super) fn new(
        name: String,
        location: Option<String>,
        compression: Option<StreamCompression>,
    ) -> PieceWriter {
        PieceWriter {
            name,
            location,
            compression,
            buf: BytesMut::new(),
            pieces: 0,
            bytes: 0,
        }
    }

    pub(super) async fn write(&mut self, data: &[u8], uploads: &mut Uploads) -> anyhow::Result<()> {
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        while self.buf.len() >= PIECE_BYTES {
            let piece = self.buf.split_to(PIECE_BYTES).freeze();
            self.submit(piece, uploads).await?;
        }
        Ok(())
    }

    async fn submit(&mut self, piece: Bytes, uploads: &mut Uploads) -> anyhow::Result<()> {
        let object = BackupObject::Piece {
            archive: self.name.clone(),
            index: self.pieces,
        };
        self.pieces += 1;
        // The server compressed it already: a light pass only wraps it in its envelope.
        let level = match self.compression {
            Some(_) => 1,
            None => uploads.level,
        };
        uploads.submit(object, piece, level).await
    }

    pub(super) async fn finish(mut self, uploads: &mut Uploads) -> anyhow::Result<ArchiveMeta> {
        if !self.buf.is_empty() || self.pieces == 0 {
            let rest = std::mem::take(&mut self.buf).freeze();
            self.submit(rest, uploads).await?;
        }
        Ok(ArchiveMeta {
            name: self.name,
            location: self.location,
            pieces: self.pieces,
            bytes: self.bytes,
            compression: self.compression,
            stored_bytes: 0,
        })
    }
}

/// Compresses and stores objects with at most `parallelism` in flight.
pub(super) struct Uploads {
    cluster: ClusterArchive,
    id: BackupId,
    /// The zstd level of pieces walhalla compresses.
    pub(super) level: i32,
    slots: Arc<Semaphore>,
    tasks: JoinSet<anyhow::Result<(String, u64)>>,
    /// Stored bytes per archive (`manifest`, `base`, OIDs).
    stored: HashMap<String, u64>,
}

impl Uploads {
    pub(super) fn new(cluster: ClusterArchive, id: BackupId, options: &BackupOptions) -> Self {
        Uploads {
            cluster,
            id,
            level: options.compression_level,
            slots: Arc::new(Semaphore::new(options.parallelism.max(1))),
            tasks: JoinSet::new(),
            stored: HashMap::new(),
        }
    }

    /// Starts storing `object`, waiting first for a free slot (the backpressure).
    pub(super) async fn submit(
        &mut self,
        object: BackupObject,
        content: Bytes,
        level: i32,
    ) -> anyhow::Result<()> {
        let slot = self.slots.clone().acquire_owned().await?;
        while let Some(done) = self.tasks.try_join_next() {
            self.record(done)?;
        }
        let (cluster, id) = (self.cluster.clone(), self.id.clone());
        self.tasks.spawn(async move {
            let envelope = envelope(&content, level).await?;
            let stored = envelope.len() as u64;
            // The archive's error names the operation and the key, but for a refusal.
            let put = cluster
                .put_backup_object(&id, &object, content, envelope)
                .await;
            if let Err(e @ (archive::Error::Refused { .. } | archive::Error::Unsafe { .. })) = put {
                let key = cluster.backup_object_key(&id, &object);
                return Err(anyhow::Error::new(e).context(format!("store {key}")));
            }
            put?;
            drop(slot);
            let archive = match object {
                BackupObject::Piece { archive, .. } => archive,
                _ => "manifest".to_string(),
            };
            Ok((archive, stored))
        });
        Ok(())
    }

    fn record(
        &mut self,
        done: Result<anyhow::Result<(String, u64)>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let (archive, stored) = done.context("an upload task failed")??;
        *self.stored.entry(archive).or_default() += stored;
        Ok(())
    }

    /// Waits for every upload; the stored bytes per archive.
    pub(super) async fn finish(mut self) -> anyhow::Result<HashMap<String, u64>> {
        while let Some(done) = self.tasks.join_next().await {
            self.record(done)?;
        }
        Ok(self.stored)
    }
}

/// `content` compressed at `level` into its envelope, on the blocking pool.
pub(super) async fn envelope(content: &Bytes, level: i32) -> anyhow::Result<Vec<u8>> {
    let body = content.clone();
    Ok(blocking::run(move || Encoder::new(level, 1)?.encode(&body)).await?)
}
