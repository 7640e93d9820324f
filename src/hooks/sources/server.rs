//! The fetch server as a source: asked first, again while it cannot be reached when nothing
//! else can serve the file, and checked to answer for this cluster with what it announced.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::header::CONTENT_ENCODING;
use tokio::time::Instant;

use super::checked::{decode_verified, say_served_snapshot, write_checked};
use super::{FetchOutcome, NoAnswer, Sources, unreachable};
use crate::blocking;
use crate::client::{ServerClient, ServerError};
use crate::envelope;
use crate::server::{CRC_HEADER, LENGTH_HEADER, SNAPSHOT_HEADER, SYSTEM_ID_HEADER};
use crate::wal::{SegmentSize, SystemId, WalFileName};

/// The first pause before asking an unreachable server again, and the longest.
const SERVER_RETRY_FIRST: Duration = Duration::from_millis(500);
const SERVER_RETRY_MAX: Duration = Duration::from_secs(5);

/// A failed request to the server, to be asked again when `patient` and the server could not
/// be reached (see [`unreachable`]).
struct Asked {
    error: anyhow::Error,
    patient: bool,
}

impl crate::backoff::Transient for Asked {
    fn is_transient(&self) -> bool {
        let unusable = (self.error.chain())
            .any(|cause| matches!(cause.downcast_ref(), Some(ServerError::Unusable { .. })));
        self.patient && unreachable(&self.error) && !unusable
    }
}

impl Sources {
    /// Restores `name` to `dest` from `server`, within the server's share of the call's
    /// `deadline` ([`Sources::server_share`]).
    pub(super) async fn restore_from_server(
        &self,
        server: &ServerClient,
        name: &WalFileName,
        dest: &Path,
        declared: Option<SystemId>,
        partial: bool,
        deadline: Instant,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let share = Sources::server_share(&self.config);
        let server_until = deadline
            .checked_sub(self.config.timeout - share)
            .unwrap_or_else(Instant::now);
        // With no archive to fall back to, in a recovery that a failure stops, a server
        // that cannot be reached (restarting, say) is asked again until its deadline.
        let patient = self.failure_ends_recovery && self.config.archive.is_none();
        let backoff = crate::backoff::Backoff::new(SERVER_RETRY_FIRST, SERVER_RETRY_MAX);
        let asking = crate::backoff::retry(
            backoff,
            Some(server_until),
            || async {
                self.ask_server(server, name, dest, declared, partial)
                    .await
                    .map_err(|error| Asked { error, patient })
            },
            |asked, pause| {
                tracing::warn!(
                    "{:#}; asking again in {:.1} s",
                    asked.error,
                    pause.as_secs_f32()
                )
            },
        );
        match asking.await {
            Ok(answer) => Ok(answer),
            Err(crate::backoff::GaveUp::Error(asked)) => Err(asked.error),
            Err(crate::backoff::GaveUp::Deadline(_)) => Err(NoAnswer(format!(
                "server {} gave no answer for {name} within {}s",
                server.url(),
                share.as_secs_f32()
            ))
            .into()),
        }
    }

    /// One request to `server` for `name`: the answer must say it is for this cluster, and
    /// the file is written only once it matches the CRC and length the server announced.
    async fn ask_server(
        &self,
        server: &ServerClient,
        name: &WalFileName,
        dest: &Path,
        declared: Option<SystemId>,
        partial: bool,
    ) -> anyhow::Result<(FetchOutcome, Option<SegmentSize>)> {
        let mut response = match server.wal(name, declared, partial).await {
            Ok(response) => response,
            Err(ServerError::NothingArchived { system_id, .. })
                if declared.is_some_and(|ours| ours != system_id) =>
            {
                bail!(
                    "server {} answered for cluster {system_id}, not this cluster",
                    server.url()
                )
            }
            Err(e) => return Err(e.into()),
        };
        let header = |h: &str| {
            response
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
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
        // A 404 counts as "not archived" only from a walhalla server that answered for this
        // cluster (not, say, a proxy's or a wrong URL's 404).
        if server_system_id.is_none() {
            bail!(
                "server {} answered {} without saying which cluster it serves: is --server a walhalla server?",
                server.url(),
                response.status()
            );
        }
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok((FetchOutcome::NotFound, None));
        }
        let crc = header(CRC_HEADER)
            .and_then(|v| u32::from_str_radix(&v, 16).ok())
            .ok_or_else(|| anyhow!("the server sent no valid {CRC_HEADER} header"))?;
        let length: u64 = header(LENGTH_HEADER)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n <= envelope::MAX_CONTENT_BYTES)
            .ok_or_else(|| anyhow!("the server sent no valid {LENGTH_HEADER} header"))?;
        let encoded = header(CONTENT_ENCODING.as_str()).is_some_and(|v| v == "zstd");
        let snapshot = header(SNAPSHOT_HEADER);
        // An encoded body is at most a little larger than its content.
        let body_length = response.content_length().unwrap_or(0);
        if body_length > length + length / 8 + 4096 {
            bail!("the server announced {body_length} bytes for {name} of {length}");
        }
        let mut body = Vec::with_capacity(body_length as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("read {name} from the server"))?
        {
            if (body.len() + chunk.len()) as u64 > body_length {
                bail!("the server sent more than the {body_length} bytes it announced for {name}");
            }
            body.extend_from_slice(&chunk);
        }
        if body.len() as u64 != body_length {
            bail!(
                "the server sent {} of the {body_length} bytes of {name}",
                body.len()
            );
        }
        let (name, dest, durable) = (*name, dest.to_path_buf(), self.durable_names);
        let _slot = self.decode_slot().await;
        let size = blocking::run(move || {
            write_checked(&name, system_id, &dest, false, durable, |out| {
                if encoded {
                    let recorded = envelope::Header::parse(&body)?;
                    if (recorded.content_crc, recorded.content_len) != (crc, length) {
                        bail!("the object does not match the server's {CRC_HEADER} and {LENGTH_HEADER}");
                    }
                    return decode_verified(&body, out);
                }
                let found = crc32fast::hash(&body);
                if (found, body.len() as u64) != (crc, length) {
                    bail!(
                        "{} bytes with CRC {found:08x} arrived, the server announced {length} with {crc:08x}",
                        body.len()
                    );
                }
                out.write_all(&body)?;
                Ok(length)
            })
        })
        .await
        .with_context(|| format!("{name} from the server failed verification; nothing was written"))?;
        if let Some(object) = snapshot {
            say_served_snapshot(&name, &object);
        }
        Ok((FetchOutcome::Restored, size))
    }
}
