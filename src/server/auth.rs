//! Bearer-token authentication of the fetch server's requests, and the log of requests.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The client's address, which the server attaches to each request of a connection.
fn peer(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

/// The token requests must carry, and the file it was read from: when a request offers
/// another one and the file has changed since (a rotation), the file is read again, so a new
/// token works without a restart and the old one stops working.
#[derive(Debug)]
pub struct ServedToken {
    /// The token and the modification time of its file when read.
    current: std::sync::Mutex<(String, Option<std::time::SystemTime>)>,
    /// Its file, when there is one to follow.
    file: Option<std::path::PathBuf>,
}

impl ServedToken {
    /// `token`, as read from `file` (followed for changes) or given.
    pub fn new(token: String, file: Option<std::path::PathBuf>) -> ServedToken {
        let modified = file.as_deref().and_then(modified);
        ServedToken {
            current: std::sync::Mutex::new((token, modified)),
            file,
        }
    }

    /// Whether `offered` is the token, reading the file again first (off the reactor) when it
    /// changed since.
    async fn accepts(&self, offered: &str) -> bool {
        let read_at = {
            let current = self.lock();
            if constant_time_eq(offered.as_bytes(), current.0.as_bytes()) {
                return true;
            }
            current.1
        };
        let Some(file) = self.file.clone() else {
            return false;
        };
        // A stat per refused request; the file is read only when it changed.
        let reread = crate::blocking::run(move || {
            let now = modified(&file);
            (now.is_some() && now != read_at).then(|| (super::token::read(&file), now, file))
        })
        .await;
        let Some((read, now, file)) = reread else {
            return false;
        };
        let mut current = self.lock();
        match read {
            Ok(token) => {
                tracing::info!(path = %file.display(), "the token file changed: its token is the one accepted now");
                *current = (token, now);
                constant_time_eq(offered.as_bytes(), current.0.as_bytes())
            }
            Err(e) => {
                tracing::warn!("{e:#}: keeping the token read before");
                current.1 = now;
                false
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (String, Option<std::time::SystemTime>)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The modification time of `path`, if it can be read.
fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Lets a request through only with `Authorization: Bearer <token>`; otherwise 401, logged
/// with the client's address (never with what it offered).
pub async fn require_token(
    State(token): State<std::sync::Arc<ServedToken>>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().ok().and_then(bearer_token));
    match header {
        Some(Some(offered)) if token.accepts(offered).await => next.run(request).await,
        _ => {
            let client = peer(&request).map(|p| p.to_string()).unwrap_or_default();
            let why = match header {
                Some(Some(_)) => "a wrong bearer token",
                Some(None) => "an Authorization header that is not a bearer token",
                None => "no Authorization header",
            };
            tracing::warn!(%client, path = request.uri().path(), "refused a request with {why}");
            unauthorized()
        }
    }
}

/// The token of an `Authorization` value `Bearer <token>`, the scheme in any case (RFC 9110
/// 11.1: schemes are case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a valid bearer token is required\n",
    )
        .into_response()
}

/// Logs each answered request: a WAL file at `info`, like each file the receiver archives (a
/// catch-up asks for one per segment, which is the story an operator follows); the periodic
/// `/metrics`, `/status` and `/healthz` at `debug`, where a scrape every few seconds would
/// otherwise drown it.
pub async fn log_request(request: Request, next: Next) -> Response {
    let client = peer(&request).map(|p| p.to_string()).unwrap_or_default();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let millis = started.elapsed().as_millis() as u64;
    if path.starts_with("/wal/") {
        tracing::info!(%client, %method, %path, status, millis, "request");
    } else {
        tracing::debug!(%client, %method, %path, status, millis, "request");
    }
    response
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
