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

/// The tokens a request may carry (every line of the server's token file), and that file:
/// SIGHUP reads it again ([`ServedToken::reload`]), so a token is rotated without a restart
/// and one removed from the file is refused from then on.
#[derive(Debug)]
pub struct ServedToken {
    tokens: std::sync::Mutex<Vec<String>>,
    /// The file, with what to say when a token in it is short.
    file: Option<(std::path::PathBuf, &'static str)>,
}

impl ServedToken {
    /// `tokens`, as read from `file` (`remedy`: what to do about a short token there).
    pub fn new(tokens: Vec<String>, file: Option<(std::path::PathBuf, &'static str)>) -> Self {
        ServedToken {
            tokens: std::sync::Mutex::new(tokens),
            file,
        }
    }

    /// The tokens of `file`, followed on SIGHUP (`remedy`: what to do about a short one).
    pub fn read(file: std::path::PathBuf, remedy: &'static str) -> anyhow::Result<Self> {
        let tokens = super::token::read_served(&file, remedy)?;
        Ok(Self::new(tokens, Some((file, remedy))))
    }

    /// Reads the token file again (off the reactor); on an error the tokens read before stay,
    /// with a warning.
    pub async fn reload(&self) {
        let Some((file, remedy)) = self.file.clone() else {
            tracing::info!("SIGHUP: the fetch server has no token file to read again");
            return;
        };
        let shown = file.display().to_string();
        match crate::blocking::run(move || super::token::read_served(&file, remedy)).await {
            Ok(tokens) => {
                let count = tokens.len();
                *self
                    .tokens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = tokens;
                tracing::info!(path = %shown, count, "SIGHUP: read the token file again; its tokens are the ones accepted now");
            }
            Err(e) => tracing::warn!("SIGHUP: {e:#}; the tokens read before stay"),
        }
    }

    /// Whether `offered` is one of the tokens (each compared in constant time).
    fn accepts(&self, offered: &str) -> bool {
        let tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.iter().fold(false, |found, token| {
            constant_time_eq(offered.as_bytes(), token.as_bytes()) | found
        })
    }
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
        Some(Some(offered)) if token.accepts(offered) => next.run(request).await,
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
    fn every_token_of_the_file_is_accepted_and_a_reload_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(
            &file,
            "new-token-0123456789abcdef\n\nold-token-0123456789abcdef\n",
        )
        .unwrap();
        let tokens = ServedToken::read(file.clone(), "r").unwrap();
        assert!(tokens.accepts("new-token-0123456789abcdef"));
        assert!(tokens.accepts("old-token-0123456789abcdef"));
        assert!(!tokens.accepts("new-token"));
        std::fs::write(&file, "new-token-0123456789abcdef\n").unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        runtime.block_on(tokens.reload());
        assert!(tokens.accepts("new-token-0123456789abcdef"));
        assert!(!tokens.accepts("old-token-0123456789abcdef"));
        // An empty file keeps the tokens read before.
        std::fs::write(&file, "\n").unwrap();
        runtime.block_on(tokens.reload());
        assert!(tokens.accepts("new-token-0123456789abcdef"));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
