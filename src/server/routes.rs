//! The fetch server's endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::auth;
use crate::archive;
use crate::blocking;
use crate::daemon::{ServedCluster, Shared};
use crate::envelope;
use crate::metrics::FetchSource;
use crate::spool::complete_path as spooled_segment;
use crate::timeindex::SegmentIndex;
use crate::wal::page_stream::check_stored;
use crate::wal::{
    HeadCapture, LongPageHeader, SystemId, WalFileName, validate_file, validate_segment_head,
};

/// Response header: the CRC-32 (IEEE) of the body, 8 hexadecimal digits.
pub const CRC_HEADER: &str = "x-walhalla-crc32";
/// Response header: the system identifier of the cluster the file belongs to.
pub const SYSTEM_ID_HEADER: &str = "x-walhalla-system-id";
/// Response header: where the file came from (`spool` or `archive`).
pub const SOURCE_HEADER: &str = "x-walhalla-source";
/// Response header: the length of the original bytes (the body may be zstd-encoded).
pub const LENGTH_HEADER: &str = "x-walhalla-length";
/// Response header of a segment answered with its last-resort copy (`?partial=1`: its newest
/// snapshot, or its parent timeline's copy cut at the switch point), zero-padded: the name of
/// the object served.
pub const SNAPSHOT_HEADER: &str = "x-walhalla-snapshot";
/// Response header of a 500: the archive holds nothing for the cluster `X-Walhalla-System-Id`
/// names (which a standby takes for "not found").
pub const NOTHING_ARCHIVED_HEADER: &str = "x-walhalla-nothing-archived";

/// Files read and verified at once, at most: each holds up to a segment in memory until sent.
const CONCURRENT_FILES: usize = 8;
/// How long a look at the archive showing it holds the cluster's WAL is trusted.
const ARCHIVE_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// The body is sent in pieces of this size.
const BODY_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    files: Arc<Semaphore>,
    /// When the archive was last seen to hold something for the cluster.
    archive_seen: Arc<std::sync::Mutex<HashMap<SystemId, Instant>>>,
}

/// The routes, each answered request logged, behind the bearer-token check when a token is
/// configured; but `/healthz`, which says only that the server answers (for container and
/// Kubernetes health checks, which hold no secret).
pub fn router(shared: Arc<Shared>, token: Option<Arc<auth::ServedToken>>) -> Router {
    let state = AppState {
        shared,
        files: Arc::new(Semaphore::new(CONCURRENT_FILES)),
        archive_seen: Arc::default(),
    };
    let log = || axum::middleware::from_fn(auth::log_request);
    let guarded = Router::new()
        .route("/wal/{name}", get(wal))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
        .layer(log());
    let guarded = match token {
        Some(token) => guarded.layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        )),
        None => guarded,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(log())
        .merge(guarded)
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `GET /wal/{name}`: the verified original bytes, 404 (naming the cluster) when nobody has
/// the file, 400 for a name that is not a WAL file name, 500 when the file exists but cannot
/// be served intact, the store refuses, or the archive holds nothing for the cluster, 503 when
/// the archive cannot be reached for now or neither the request nor the receiver names a
/// cluster yet ([`failure_status`]). The cluster is the one the request names
/// (`X-Walhalla-System-Id`), else the receiver's.
///
/// With `?partial=1`, a segment nobody has in full is answered with the newest receiver
/// snapshot of it, or the parent timeline's copy cut at the switch point when that snapshot
/// ends before its timeline begins ([`crate::archive::LastResortCopy`]), zero-padded to the
/// segment size (for a last-resort recovery, as `fetch --partial` reads the archive); the
/// server logs which object it served.
///
/// A client that accepts `zstd` (`Accept-Encoding`) gets an archived object as it is stored,
/// `Content-Encoding: zstd` (the envelope is a zstd stream), after the server verified it:
/// about a tenth of the bytes on the wire, and decoding happens on the client.
async fn wal(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<WalQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let started = Instant::now();
    let name: WalFileName = match name.parse() {
        Ok(name) => name,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The client names its cluster when it knows it: served from the archive even before
    // the receiver has connected, or when it is not the receiver's.
    let requested = match headers.get(SYSTEM_ID_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => match text.parse::<SystemId>() {
            Ok(id) => Some(id),
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("{SYSTEM_ID_HEADER}: {e}\n"),
                );
            }
        },
        Some(Err(_)) => return plain(StatusCode::BAD_REQUEST, format!("bad {SYSTEM_ID_HEADER}\n")),
    };
    let cluster = match (state.shared.served(), requested, state.shared.archive()) {
        (Some(served), None, _) => served.clone(),
        (Some(served), Some(id), _) if id == served.archive.system_id() => served.clone(),
        (_, Some(id), Some(archive)) => ServedCluster {
            archive: archive.cluster(id),
            spool: None,
        },
        _ => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver has not identified its cluster yet, and the request names none\n"
                    .into(),
            );
        }
    };
    let cluster = &cluster;
    let accepts_zstd = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().map(str::trim) == Some("zstd"));
    let permit = state
        .files
        .clone()
        .acquire_owned()
        .await
        .expect("never closed");
    let metrics = &state.shared.metrics;
    let found = match find(cluster, &name, &state.archive_seen, accepts_zstd).await {
        Ok(None) if query.partial == Some(1) => snapshot(cluster, &name).await,
        other => other.map(|found| found.map(|(payload, source)| (payload, source, None))),
    };
    match found {
        Ok(Some((payload, source, snapshot))) => {
            metrics.fetch_answered(Some(source), started.elapsed());
            tracing::debug!(%name, source = source.label(), "served");
            let response = Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(SYSTEM_ID_HEADER, cluster.archive.system_id().to_string())
                .header(SOURCE_HEADER, source.label());
            // The object's name: a prefix may hold what a header cannot.
            let snapshot = snapshot.and_then(|key| {
                let name = key.rsplit('/').next().unwrap_or_default();
                header::HeaderValue::from_str(name).ok()
            });
            let response = match snapshot {
                Some(name) => response.header(SNAPSHOT_HEADER, name),
                None => response,
            };
            let (response, bytes) = match payload {
                Payload::Original { content, crc } => {
                    let response = response
                        .header(CRC_HEADER, format!("{crc:08x}"))
                        .header(LENGTH_HEADER, content.len());
                    (response, content)
                }
                Payload::Encoded { object, header: h } => {
                    let response = response
                        .header(header::CONTENT_ENCODING, "zstd")
                        .header(CRC_HEADER, format!("{:08x}", h.content_crc))
                        .header(LENGTH_HEADER, h.content_len);
                    (response, object)
                }
            };
            response
                .header(header::CONTENT_LENGTH, bytes.len())
                .body(body(bytes, permit))
                .expect("valid headers")
        }
        Ok(None) => {
            metrics.fetch_answered(None, started.elapsed());
            // Clients take a 404 for "not archived" only with the cluster it is about.
            let mut response = plain(StatusCode::NOT_FOUND, format!("{name} is not archived\n"));
            response.headers_mut().insert(
                SYSTEM_ID_HEADER,
                cluster
                    .archive
                    .system_id()
                    .to_string()
                    .parse()
                    .expect("digits"),
            );
            response
        }
        Err(e) => {
            metrics.fetch_failed();
            let status = failure_status(&e);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(%name, "cannot serve for now: {e:#}");
            } else {
                tracing::error!(%name, "cannot serve: {e:#}");
            }
            let mut response = plain(status, format!("{e:#}\n"));
            let nothing = e.chain().any(|cause| {
                matches!(
                    cause.downcast_ref(),
                    Some(archive::Error::NothingArchived { .. })
                )
            });
            if nothing {
                let headers = response.headers_mut();
                let id = cluster.archive.system_id().to_string();
                headers.insert(SYSTEM_ID_HEADER, id.parse().expect("digits"));
                headers.insert(NOTHING_ARCHIVED_HEADER, "true".parse().expect("ASCII"));
            }
            response
        }
    }
}

/// The answer to a WAL file the server could not serve: 503 for an archive that cannot be
/// reached for now (connections refused, a timeout, a store error that passes, a refused TLS
/// certificate), which a client
/// in standby mode takes for "not available" and asks again; 500 for a file that cannot be
/// served intact, a refusal of the store, or anything else.
fn failure_status(error: &anyhow::Error) -> StatusCode {
    let passing = error.chain().any(|cause| {
        cause
            .downcast_ref::<archive::Error>()
            .is_some_and(archive::Error::may_pass)
    });
    if passing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// The query of `GET /wal/{name}`.
#[derive(Debug, Deserialize)]
struct WalQuery {
    /// `1`: a missing segment may be answered with its newest snapshot, zero-padded.
    partial: Option<u8>,
}

/// The last-resort copy of a segment the archive lacks in full (its newest snapshot, or the
/// parent timeline's copy), zero-padded to the segment size and verified like a segment.
async fn snapshot(
    cluster: &ServedCluster,
    name: &WalFileName,
) -> anyhow::Result<Option<(Payload, FetchSource, Option<String>)>> {
    let WalFileName::Segment(segment) = *name else {
        return Ok(None);
    };
    let Some(copy) = cluster.archive.last_resort_copy(segment).await? else {
        return Ok(None);
    };
    let key = copy.key.clone();
    let system_id = cluster.archive.system_id();
    let name = *name;
    let padded = blocking::run(move || -> anyhow::Result<Vec<u8>> {
        let mut content = copy.content;
        let size = LongPageHeader::parse(&content)?.segment_size()?.bytes() as usize;
        if content.len() > size {
            anyhow::bail!("the snapshot is longer than a segment");
        }
        content.resize(size, 0);
        verify(&name, &content, system_id)?;
        Ok(content)
    })
    .await
    .with_context(|| format!("snapshot {key}"))?;
    tracing::info!(%name, snapshot = %key, "served a snapshot, zero-padded");
    Ok(Some((original(padded), FetchSource::Archive, Some(key))))
}

/// What a request is answered with.
enum Payload {
    /// The original bytes, and their CRC-32.
    Original { content: Bytes, crc: u32 },
    /// The archived object, verified, whose content is the original bytes.
    Encoded {
        object: Bytes,
        header: envelope::Header,
    },
}

/// The file's verified content and where it came from: the spool while a complete segment
/// waits there for upload, else the archive (as stored, when `encoded` is acceptable).
async fn find(
    cluster: &ServedCluster,
    name: &WalFileName,
    archive_seen: &std::sync::Mutex<HashMap<SystemId, Instant>>,
    encoded: bool,
) -> anyhow::Result<Option<(Payload, FetchSource)>> {
    let system_id = cluster.archive.system_id();
    if let (Some(spool), WalFileName::Segment(segment)) = (&cluster.spool, name) {
        let path = spooled_segment(spool, *segment);
        let name = *name;
        let read = blocking::run(move || match std::fs::read(&path) {
            Ok(content) => match verify_spooled(&name, &content, system_id) {
                Ok(()) => Ok(Some(original(content))),
                Err(e) => {
                    // Not what PostgreSQL wrote (the uploader archives only what reads back as
                    // received): the archive may hold a good copy.
                    tracing::warn!("not serving spool file {}: {e:#}", path.display());
                    Ok(None)
                }
            },
            // Not complete in the spool, or already uploaded and removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        });
        if let Some(payload) = read.await? {
            return Ok(Some((payload, FetchSource::Spool)));
        }
    }
    let Some(object) = cluster.archive.get(name).await? else {
        // A miss in an archive that holds nothing for the cluster (an unmounted directory, a
        // wrong prefix) is not the end of the WAL; checked again every few seconds.
        let seen = archive_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&system_id)
            .copied();
        if seen.is_none_or(|at| at.elapsed() > ARCHIVE_RECHECK) {
            cluster.archive.ensure_not_empty().await?;
            archive_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(system_id, Instant::now());
        }
        return Ok(None);
    };
    let key = cluster.archive.key(name).to_string();
    let name = *name;
    let payload = blocking::run(move || -> anyhow::Result<Payload> {
        match (name, encoded) {
            (WalFileName::Segment(segment) | WalFileName::Partial(segment), true) => {
                // Decoded only to be checked: nothing but the first page is kept.
                let mut head = HeadCapture::new(std::io::sink());
                let header = envelope::decode_into(&object, &mut head)?;
                validate_segment_head(segment, head.head(), header.content_len)
                    .and_then(|facts| facts.check_cluster(system_id))
                    .map_err(|e| anyhow!("{name}: {e}"))?;
                Ok(Payload::Encoded { object, header })
            }
            _ => {
                let content = envelope::decode(&object)?;
                verify(&name, &content, system_id)?;
                Ok(original(content))
            }
        }
    })
    .await
    .with_context(|| format!("archived object {key}"))?;
    Ok(Some((payload, FetchSource::Archive)))
}

/// Verified content, with its CRC-32 computed here (on the blocking pool).
fn original(content: Vec<u8>) -> Payload {
    let crc = crc32fast::hash(&content);
    Payload::Original {
        content: content.into(),
        crc,
    }
}

/// Checks that `content` fits its name and belongs to the cluster.
fn verify(
    name: &WalFileName,
    content: &[u8],
    system_id: crate::wal::SystemId,
) -> anyhow::Result<()> {
    validate_file(name, content)
        .and_then(|facts| facts.check_cluster(system_id))
        .map_err(|e| anyhow!("{name}: {e}"))
}

/// [`verify`] for a complete segment waiting in the spool; then every page header after the
/// first ([`check_stored`]), and every record to the segment's end or its switch, each with
/// its CRC-32C ([`crate::timeindex::IndexEnd::damage`]). A spool that lost writes (it is not
/// fsynced in the default mode) shows them as zeros or as a file cut short; a filesystem
/// repaired after an error can leave other bytes inside a page, which only the records show.
fn verify_spooled(
    name: &WalFileName,
    content: &[u8],
    system_id: crate::wal::SystemId,
) -> anyhow::Result<()> {
    verify(name, content, system_id)?;
    if let WalFileName::Segment(segment) = *name {
        let size = crate::wal::SegmentSize::new(content.len() as u32)
            .ok_or_else(|| anyhow!("{name}: {} bytes is no segment size", content.len()))?;
        check_stored(segment, content, size, system_id, true, &mut |_| {})
            .map_err(|e| anyhow!("{name}: {e}"))?;
        let index =
            SegmentIndex::of_segment(segment, content).map_err(|e| anyhow!("{name}: {e}"))?;
        if let Some(damage) = index.end.damage() {
            return Err(anyhow!("{name}: {damage}"));
        }
    }
    Ok(())
}

/// The body in pieces; the permit is held until the last piece is handed over.
fn body(content: Bytes, permit: OwnedSemaphorePermit) -> Body {
    let pieces =
        futures_util::stream::unfold((content, Some(permit)), |(mut rest, permit)| async move {
            if rest.is_empty() {
                drop(permit);
                return None;
            }
            let piece = rest.split_to(rest.len().min(BODY_CHUNK_BYTES));
            Some((Ok::<_, std::io::Error>(piece), (rest, permit)))
        });
    Body::from_stream(pieces)
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.shared.snapshot().to_prometheus(),
    )
        .into_response()
}

/// `GET /status`: JSON, see [`status`](super::status).
async fn status(State(state): State<AppState>) -> Response {
    let status = super::status::report(&state.shared).await;
    match serde_json::to_string_pretty(&status) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response(),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{LongPageHeader, sample};

    #[test]
    fn only_an_archive_out_of_reach_for_now_is_a_503() {
        let store = |error: object_store::Error| archive::Error::Store {
            op: "read",
            key: "k".into(),
            error,
        };
        let location: archive::Location = "s3://b/p".parse().unwrap();
        let passing = [
            store(object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            }),
            archive::Error::Timeout {
                op: "read",
                key: "k".into(),
                seconds: 3,
                attempts: 2,
                last: None,
            },
        ];
        let lasting = [
            archive::Error::NothingArchived {
                location: location.clone(),
                system_id: crate::wal::SystemId(7),
            },
            archive::Error::Refused {
                location,
                refusal: archive::Refusal::AccessDenied,
                reason: "access denied".into(),
            },
        ];
        let passing = passing.map(|e| (e, StatusCode::SERVICE_UNAVAILABLE));
        let lasting = lasting.map(|e| (e, StatusCode::INTERNAL_SERVER_ERROR));
        for (error, status) in passing.into_iter().chain(lasting) {
            let error = anyhow::Error::new(error).context("read 000000010000000000000003");
            assert_eq!(failure_status(&error), status, "{error:#}");
        }
        let corrupt = anyhow!("the object failed verification");
        assert_eq!(failure_status(&corrupt), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_spool_segment_damaged_inside_a_page_is_not_served() {
        let good = sample::segment_7();
        let head = LongPageHeader::parse(&good).unwrap();
        let name = WalFileName::Segment(sample::name(7));
        verify_spooled(&name, &good, head.system_id).unwrap();
        // One byte inside a commit record, far from any page header: every page header
        // still passes, the record's CRC-32C does not.
        let mut bad = good.clone();
        bad[0x35140 + 30] ^= 0x10;
        let e = verify_spooled(&name, &bad, head.system_id).unwrap_err();
        assert!(e.to_string().contains("invalid WAL at 0/735140"), "{e:#}");
        // A block of zeros inside a page, as a filesystem that lost a block leaves it.
        let mut bad = good.clone();
        bad[0x40000 + 4096..0x40000 + 8192].fill(0);
        assert!(verify_spooled(&name, &bad, head.system_id).is_err());
        // Another cluster's segment is refused by its first page, as before.
        let other = crate::wal::SystemId(head.system_id.0 ^ 1);
        assert!(verify_spooled(&name, &good, other).is_err());
    }
}
