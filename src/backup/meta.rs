//! A base backup's metadata (`backup.json` in its folder): what it is, where its WAL starts and
//! ends, what it holds, and whether it can be restored. Written once, last, create-only.

use serde::{Deserialize, Serialize};

use crate::archive::{BackupId, BackupObject};
use crate::wal::{Lsn, SegmentSize, SystemId, TimelineId};

/// The newest format of `backup.json`; readers refuse newer ones. Format 2 added
/// [`ArchiveMeta::compression`]; backups without it are written as format 1.
pub const META_FORMAT: u32 = 2;

/// `backup.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The backup's identifier (its folder's name).
    pub id: String,
    /// The label given at `walhalla backup --label`.
    pub label: String,
    /// The cluster's system identifier, as text (it does not fit a JSON number exactly).
    pub system_id: String,
    /// The server's version (`server_version`).
    pub server_version: String,
    /// The server's major version.
    pub server_major: u32,
    /// The walhalla version that took the backup.
    pub walhalla_version: String,
    /// The WAL segment size, in bytes.
    pub segment_size: u32,
    /// Where replay must start (the backup's checkpoint redo point), "X/Y".
    pub start_lsn: String,
    /// The timeline at the start.
    pub start_timeline: u32,
    /// Where the database is consistent, "X/Y": the restore must replay at least to here.
    pub stop_lsn: String,
    /// The timeline at the stop.
    pub stop_timeline: u32,
    /// When the backup started (RFC 3339, UTC, walhalla's clock).
    pub start_time: String,
    /// When the server reported the stop position (RFC 3339, UTC, walhalla's clock): every
    /// transaction the backup holds committed before it.
    pub stop_time: String,
    /// Taken on a standby.
    pub from_standby: bool,
    /// The tar streams: the data directory's, then one per tablespace.
    pub archives: Vec<ArchiveMeta>,
    /// Bytes of the server's manifest, and as stored.
    pub manifest_bytes: u64,
    /// Bytes as the server sent them (tar streams and manifest).
    pub bytes: u64,
    /// The size of the files the backup holds, by its manifest: the database's size, which
    /// `bytes` is not when the server compressed the streams. Absent in backups taken
    /// before walhalla recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    /// Bytes as stored (compressed, with envelopes).
    pub stored_bytes: u64,
    /// Whether every WAL segment from the start to the stop was in the archive.
    pub wal_complete: bool,
    /// When not, the first segment that was missing at the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_missing: Option<String>,
    /// The keys of the objects restore reads (pieces, manifest) that the archive no longer
    /// held when its catalogue was read ([`crate::backup::catalog::read`]); such a backup
    /// cannot be restored. Never in `backup.json`: a backup is stored only whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_objects: Vec<String>,
}

/// One tar stream of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMeta {
    /// `base`, or the tablespace's OID: the folder of its pieces.
    pub name: String,
    /// The tablespace's directory on the server; `None` for the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// How many pieces the stream was cut into.
    pub pieces: u32,
    /// The stream's length in bytes (compressed, when the server compressed it).
    pub bytes: u64,
    /// How the server compressed the stream (`--server-compression`): the pieces' contents
    /// put together are then a zstd stream of the tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<StreamCompression>,
    /// Bytes as stored.
    pub stored_bytes: u64,
}

/// A compression the server applied to a tar stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamCompression {
    /// zstd (`BASE_BACKUP` option `COMPRESSION 'zstd'`).
    Zstd,
}

/// The `backup.json` format a backup with these streams needs: readers older than a feature
/// refuse it instead of misreading it.
pub fn format_for(archives: &[ArchiveMeta]) -> u32 {
    if archives.iter().any(|a| a.compression.is_some()) {
        2
    } else {
        1
    }
}

impl BackupMeta {
    /// Parses `backup.json`, refusing formats newer than this walhalla reads.
    pub fn parse(bytes: &[u8]) -> Result<BackupMeta, String> {
        let meta: BackupMeta =
            serde_json::from_slice(bytes).map_err(|e| format!("backup.json: {e}"))?;
        if meta.format > META_FORMAT {
            return Err(format!(
                "backup.json has format {}, newer than this walhalla reads ({META_FORMAT}); upgrade walhalla",
                meta.format
            ));
        }
        Ok(meta)
    }

    /// The backup's identifier.
    pub fn backup_id(&self) -> Result<BackupId, String> {
        BackupId::parse(&self.id).ok_or_else(|| format!("backup.json names backup {:?}", self.id))
    }

    /// The size of the files it holds: by its manifest, or, for a backup that did not record
    /// that, as the server sent them.
    pub fn size(&self) -> u64 {
        self.data_bytes.unwrap_or(self.bytes)
    }

    /// Whether its WAL was all archived (else it was stored, marked incomplete).
    pub fn is_complete(&self) -> bool {
        self.wal_complete
    }

    /// Whether restore may choose it: complete, and every object it reads is still in the
    /// archive.
    pub fn is_restorable(&self) -> bool {
        self.is_complete() && self.missing_objects.is_empty()
    }

    /// The objects a restore of it reads: every piece of every tar stream, and the manifest.
    pub fn objects(&self) -> Vec<BackupObject> {
        self.archives
            .iter()
            .flat_map(|a| {
                (0..a.pieces).map(|index| BackupObject::Piece {
                    archive: a.name.clone(),
                    index,
                })
            })
            .chain([BackupObject::Manifest])
            .collect()
    }

    /// The start position.
    pub fn start(&self) -> Result<Lsn, String> {
        self.start_lsn.parse()
    }

    /// The consistency position.
    pub fn stop(&self) -> Result<Lsn, String> {
        self.stop_lsn.parse()
    }

    /// The start timeline.
    pub fn timeline(&self) -> TimelineId {
        TimelineId(self.start_timeline)
    }

    /// The cluster.
    pub fn system(&self) -> Result<SystemId, String> {
        self.system_id.parse()
    }

    /// The segment size.
    pub fn segment_size(&self) -> Result<SegmentSize, String> {
        SegmentSize::new(self.segment_size)
            .ok_or_else(|| format!("backup.json: segment size {}", self.segment_size))
    }

    /// When the backup became restorable, as a timestamp.
    pub fn stop_timestamp(&self) -> Result<jiff::Timestamp, String> {
        self.stop_time
            .parse()
            .map_err(|e| format!("backup.json: stop_time {:?}: {e}", self.stop_time))
    }
}

/// Backups to test with.
#[cfg(test)]
pub mod testing {
    use super::{BackupMeta, META_FORMAT};

    /// A complete backup of a PostgreSQL 17 cluster with 1 MiB segments on `timeline`, from
    /// `start` to `stop` ("X/Y"), stopped at `stop_time`.
    pub fn backup(id: &str, timeline: u32, start: &str, stop: &str, stop_time: &str) -> BackupMeta {
        BackupMeta {
            format: META_FORMAT,
            id: id.into(),
            label: String::new(),
            system_id: "7".into(),
            server_version: "17.2".into(),
            server_major: 17,
            walhalla_version: "0".into(),
            segment_size: 1 << 20,
            start_lsn: start.into(),
            start_timeline: timeline,
            stop_lsn: stop.into(),
            stop_timeline: timeline,
            start_time: stop_time.into(),
            stop_time: stop_time.into(),
            from_standby: false,
            archives: Vec::new(),
            manifest_bytes: 0,
            bytes: 0,
            data_bytes: None,
            stored_bytes: 0,
            wal_complete: true,
            wal_missing: None,
            missing_objects: Vec::new(),
        }
    }
}
