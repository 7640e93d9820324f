//! A backup's tar stream read back from its pieces: fetched and verified a few at a time in
//! parallel, handed in order to a blocking reader (the extractor), with backpressure.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::archive::{BackupId, BackupObject, ClusterArchive};
use crate::backup::meta::StreamCompression;
use crate::{blocking, envelope};

/// Starts fetching the `pieces` pieces of stream `archive` of backup `id`, `parallel` at a
/// time; the returned reader yields the stream's bytes in order, or the first error (which
/// names the object), and adds what it yields to `counted`.
pub fn open(
    cluster: ClusterArchive,
    id: BackupId,
    archive: String,
    pieces: u32,
    parallel: usize,
    counted: Arc<AtomicU64>,
) -> PieceReader {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let fetches = futures_util::stream::iter(0..pieces)
            .map(|index| fetch(&cluster, &id, &archive, index))
            .buffered(parallel.max(1));
        futures_util::pin_mut!(fetches);
        while let Some(piece) = fetches.next().await {
            let failed = piece.is_err();
            // The reader stopped (an extraction error): nothing more to fetch.
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    PieceReader {
        rx,
        current: Bytes::new(),
        counted,
    }
}

/// One piece, its envelope verified (length and CRC-32).
async fn fetch(
    cluster: &ClusterArchive,
    id: &BackupId,
    archive: &str,
    index: u32,
) -> anyhow::Result<Bytes> {
    let object = BackupObject::Piece {
        archive: archive.to_string(),
        index,
    };
    let key = cluster.backup_object_key(id, &object);
    let stored = cluster
        .get_backup_object(id, &object)
        .await?
        .with_context(|| format!("{key} is missing from the archive"))?;
    let content = blocking::run(move || envelope::decode(&stored))
        .await
        .with_context(|| format!("{key} is corrupt"))?;
    Ok(Bytes::from(content))
}

/// The blocking side: a [`Read`] over the pieces as they arrive. Must be used on a blocking
/// thread.
pub struct PieceReader {
    rx: mpsc::Receiver<anyhow::Result<Bytes>>,
    current: Bytes,
    counted: Arc<AtomicU64>,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(piece)) => self.current = piece,
                Some(Err(e)) => return Err(std::io::Error::other(format!("{e:#}"))),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        self.counted.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The tar stream `pieces` carry: as they are, or decompressed when the server compressed it.
pub fn tar_stream(
    pieces: PieceReader,
    compression: Option<StreamCompression>,
) -> std::io::Result<Box<dyn Read + Send>> {
    Ok(match compression {
        None => Box::new(pieces),
        Some(StreamCompression::Zstd) => Box::new(zstd::stream::read::Decoder::new(pieces)?),
    })
}
