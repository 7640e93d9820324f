//! Where WAL files come from, for `walhalla fetch` and the prefetch worker alike: the fetch
//! server (`--server`) first, then the archive; and the checks every file passes before it
//! gets its final name. A file that fails verification is never handed to PostgreSQL.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::namespace::NamespaceError;
use crate::archive::{self, Archive, ClusterArchive};
use crate::blocking;
use crate::client::{ClientSettings, ServerClient, ServerError};
use crate::config::Config;
use crate::wal::{SegmentName, SegmentSize, SystemId, WalFileName, system_id_from_control_file};
use checked::{decode_verified, say_served_snapshot, write_checked};

mod checked;
mod server;

pub use checked::check_segment_file;

/// How a fetch ended, short of an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was written to its destination.
    Restored,
    /// The archive does not hold the file.
    NotFound,
}

/// Where WAL files come from: the fetch server first, then the archive.
pub struct Sources {
    server: Option<ServerClient>,
    config: Config,
    /// When a hook's whole run must end; without one (the prefetch worker, which makes many
    /// restores) each restore gets its own `--timeout`.
    deadline: Option<Instant>,
    /// The archive, opened on first use.
    archive: tokio::sync::OnceCell<Archive>,
    /// Decodes (decompress, verify, write) allowed at once, when bounded: the prefetch worker
    /// keeps more requests in flight than it lets decode.
    decodes: Option<Arc<Semaphore>>,
    /// Asked on a miss: whether the archive is known to hold this cluster (a file of it was
    /// restored under the same settings), so that the miss is the archive's end and needs no
    /// listing to tell it from an archive that holds nothing for this cluster.
    vouch: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// Whether a restored file's new name is made durable (a directory fsync) before the
    /// restore counts as done.
    durable_names: bool,
    /// Whether a failure ends recovery (archive recovery, not a standby): a server that
    /// cannot be reached, with no archive to fall back to, is then asked again.
    failure_ends_recovery: bool,
}

impl Sources {
    /// The sources `config` and `client` name; at least one is required. With a `deadline`,
    /// every restore ends by then.
    pub fn new(
        config: &Config,
        client: &ClientSettings,
        deadline: Option<Instant>,
    ) -> anyhow::Result<Sources> {
        let server = ServerClient::new(client, Self::server_share(config))?;
        if server.is_none() {
            config.archive()?;
        }
        Ok(Sources {
            server,
            config: config.clone(),
            deadline,
            archive: tokio::sync::OnceCell::new(),
            decodes: None,
            vouch: None,
            durable_names: true,
            failure_ends_recovery: false,
        })
    }

    /// For a restore whose failure stops recovery (archive recovery, where a standby would
    /// stream instead): an unreachable server is asked again until the deadline.
    pub fn ending_recovery_on_failure(mut self) -> Sources {
        self.failure_ends_recovery = true;
        self
    }

    /// The sources of the readahead worker, started after a fetch under the same settings
    /// restored a file: at most `decodes` restores decode at once (more requests may be in
    /// flight beside them); a miss is the archive's end, with no listing to tell an empty
    /// archive (the worker never answers PostgreSQL); and a restored file's name is not made
    /// durable, since nothing trusts the cache after a crash (a new worker empties it), while
    /// its data is, so that PostgreSQL's own fsync of the segment finds nothing to write.
    pub fn for_readahead(mut self, decodes: usize) -> Sources {
        self.decodes = Some(Arc::new(Semaphore::new(decodes.max(1))));
        self.vouch = Some(Arc::new(|| true));
        self.durable_names = false;
        self
    }

    /// On a miss, asks `vouch` (on the blocking pool) whether a file of this cluster was
    /// already restored from the archive under the same settings; if so, the miss is taken as
    /// the archive's end without listing the archive.
    pub fn vouch_with(mut self, vouch: impl Fn() -> bool + Send + Sync + 'static) -> Sources {
        self.vouch = Some(Arc::new(vouch));
        self
    }

    /// Waits for a decode slot, when decodes are bounded.
    async fn decode_slot(&self) -> Option<OwnedSemaphorePermit> {
        let decodes = self.decodes.clone()?;
        // Never closed: the semaphore lives as long as `self`.
        decodes.acquire_owned().await.ok()
    }

    /// The part of `--timeout` the server gets: half when an archive is there to fall back
    /// to, else all of it.
    fn server_share(config: &Config) -> Duration {
        match config.archive {
            Some(_) => config.timeout / 2,
            None => config.timeout,
        }
    }

    /// The cluster named by `--system-id`, else by `pg_control` in the current directory.
    pub fn declared_system_id(&self) -> anyhow::Result<Option<SystemId>> {
        let control = system_id_from_control_file(Path::new(".")).context("read pg_control");
        match (self.config.system_id, control) {
            // In a data directory, another cluster's WAL is never what PostgreSQL asks for.
            (Some(id), Ok(Some(here))) if id != here => anyhow::bail!(
                "--system-id {id} names another cluster than this data directory's ({here}, in \
                 global/pg_control): its WAL would be refused by PostgreSQL; fix --system-id (or \
                 the config file), or fetch from outside the data directory"
            ),
            (Some(id), _) => Ok(Some(id)),
            (None, control) => control,
        }
    }

    /// Restores `name` to `dest`; for a segment, also says its size. One deadline covers
    /// the call (the hook's, else `--timeout` from now): the server, when configured, has
    /// until half of `--timeout` is left when an archive is there to fall back to, and the
    /// archive gets what is left.
    pub async fn restore(
        &self,
        name: &WalFileName,
        dest: &Path,
        partial: bool,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let timeout = self.config.timeout;
        let deadline = self.deadline.unwrap_or_else(|| Instant::now() + timeout);
        let declared = self.declared_system_id()?;
        if let Some(server) = &self.server {
            match self
                .restore_from_server(server, name, dest, declared, partial, deadline)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(e) if self.config.archive.is_some() => {
                    tracing::warn!("{e:#}; reading the archive directly");
                }
                Err(e) => return Err(e),
            }
        }
        tokio::time::timeout_at(deadline, self.read_archive(name, dest, partial, declared))
            .await
            .unwrap_or_else(|_| {
                Err(NoAnswer(format!(
                    "{name}: the archive gave no answer within --timeout ({}s)",
                    timeout.as_secs()
                ))
                .into())
            })
    }

    async fn read_archive(
        &self,
        name: &WalFileName,
        dest: &Path,
        partial: bool,
        declared: Option<SystemId>,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let archive = self.archive().await?;
        let system_id = super::resolve_system_id(declared, Path::new("."), None, archive)
            .await
            .with_context(|| format!("fetch {name}"))?;
        let cluster = archive.cluster(system_id);
        // PostgreSQL probes for history files that mostly do not exist: the check that tells
        // such a miss from an archive holding nothing for this cluster runs beside the read,
        // not a round trip after it.
        let early_check = async {
            match name {
                WalFileName::History(_) if !self.vouched().await => {
                    Some(cluster.ensure_not_empty().await)
                }
                _ => None,
            }
        };
        let (found, early_check) = tokio::join!(cluster.get(name), early_check);
        let (key, object, padded) = match found? {
            Some(object) => (cluster.key(name).to_string(), Found::Whole(object), false),
            None => match (partial, name) {
                (true, WalFileName::Segment(segment)) => {
                    match cluster.last_resort_copy(*segment).await? {
                        Some(copy) => (copy.key.clone(), Found::LastResort(copy), true),
                        None => return self.not_found(&cluster).await,
                    }
                }
                _ => match early_check {
                    Some(checked) => return Ok(checked.map(|()| (FetchOutcome::NotFound, None))?),
                    None => return self.not_found(&cluster).await,
                },
            },
        };
        let (name, dest, durable) = (*name, dest.to_path_buf(), self.durable_names);
        let _slot = self.decode_slot().await;
        let size = blocking::run(move || {
            write_checked(
                &name,
                system_id,
                &dest,
                padded,
                durable,
                |out| match object {
                    Found::Whole(object) => decode_verified(&object, out),
                    Found::LastResort(copy) => {
                        out.write_all(&copy.content)?;
                        Ok(copy.content.len() as u64)
                    }
                },
            )
        })
        .await
        .with_context(|| format!("fetch {name} (object {key})"))?;
        if padded {
            say_served_snapshot(&name, &key);
        }
        Ok((FetchOutcome::Restored, size))
    }

    /// Whether `segment` lies at or after where its timeline began (see
    /// [`ClusterArchive::timeline_begun_by`]; `sized_by` is a segment the archive holds, whose
    /// size is the cluster's), as the archive says; `None` when it cannot tell, or without an
    /// archive to ask.
    pub async fn timeline_begun_by(
        &self,
        segment: SegmentName,
        sized_by: SegmentName,
    ) -> anyhow::Result<Option<bool>> {
        if segment.timeline.0 < 2 {
            return Ok(Some(true));
        }
        if self.config.archive.is_none() {
            return Ok(None);
        }
        let archive = self.archive().await?;
        let declared = self.declared_system_id()?;
        let system_id = super::resolve_system_id(declared, Path::new("."), None, archive).await?;
        Ok(archive
            .cluster(system_id)
            .timeline_begun_by(segment, sized_by)
            .await?)
    }

    /// The archive, opened at its first use. A hook's archive ends every operation by its
    /// deadline; a worker's gives each its own `--timeout`, and `restore` bounds each call.
    async fn archive(&self) -> anyhow::Result<&Archive> {
        self.archive
            .get_or_try_init(|| super::open_archive(&self.config, false, self.deadline))
            .await
    }

    /// Quiet when the archive is simply at its end (PostgreSQL probes for history files that
    /// do not exist); an error ([`archive::Error::NothingArchived`]) when it holds nothing at
    /// all for this cluster, unless it is vouched for.
    async fn not_found(
        &self,
        cluster: &ClusterArchive,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        if !self.vouched().await {
            cluster.ensure_not_empty().await?;
        }
        Ok((FetchOutcome::NotFound, None))
    }

    /// Whether the archive is vouched for (see [`Sources::vouch_with`]): a miss is its end.
    async fn vouched(&self) -> bool {
        match self.vouch.clone() {
            Some(vouch) => blocking::run(move || vouch()).await,
            None => false,
        }
    }
}

/// What the archive gave for a file: its object, or for the last-resort recovery a copy of a
/// segment it lacks in full ([`archive::LastResortCopy`]).
enum Found {
    Whole(bytes::Bytes),
    LastResort(archive::LastResortCopy),
}

/// Whether `error` says that the archive holds nothing for this cluster (read directly, as
/// the fetch server reports it, or no cluster at all when none is named): the one refusal a
/// standby takes for "not found".
pub fn nothing_archived(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref(),
            Some(archive::Error::NothingArchived { .. })
        ) || matches!(
            cause.downcast_ref(),
            Some(ServerError::NothingArchived { .. })
        ) || matches!(cause.downcast_ref(), Some(NamespaceError::NoCluster(_)))
    })
}

/// A source that gave no answer by the deadline.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NoAnswer(String);

/// Whether `error` says that a source could not be reached in time: the fetch server
/// unreachable or answering 503 (its archive cannot be reached, or its receiver has not
/// started), the archive's store failing in a way that passes (a refused connection, a
/// timeout, a 503, a refused TLS certificate), or either silent until the deadline. Not a
/// refusal of the store, a missing bucket or a corrupt object, which need someone to act. In
/// standby mode such a miss is taken for "not available": the standby streams meanwhile and
/// asks again.
pub fn unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<NoAnswer>()
            || matches!(
                cause.downcast_ref(),
                Some(ServerError::Unreachable { .. } | ServerError::Unusable { .. })
                    | Some(ServerError::Status {
                        status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
                        ..
                    })
            )
            || cause
                .downcast_ref::<archive::Error>()
                .is_some_and(archive::Error::may_pass)
    })
}
