//! The client side of the fetch server: `walhalla fetch --server`, the prefetch worker and
//! `walhalla status` talk to a server through this.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{StatusCode, Url};

use crate::config::UsageError;
use crate::server::token;
use crate::server::{NOTHING_ARCHIVED_HEADER, SYSTEM_ID_HEADER};
use crate::wal::{SystemId, WalFileName};

/// How to reach a fetch server.
#[derive(Clone, Debug, Default)]
pub struct ClientSettings {
    /// The server's base URL, such as `http://127.0.0.1:7480`.
    pub server: Option<String>,
    /// A file holding the bearer token to send; by default, to a server at a loopback address, the
    /// user's own default token file when there is one ([`token::default_path`]).
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) the server's certificate must chain to, instead of the system's.
    pub server_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// The token in the user's default token file, if there is a readable one, and that file.
fn default_token() -> Option<(String, PathBuf)> {
    let path = token::default_path();
    if !path.exists() {
        return None;
    }
    match token::read(&path) {
        Ok(token) => Some((token, path)),
        Err(e) => {
            tracing::warn!("{e:#}: sending no bearer token");
            None
        }
    }
}

/// A connection to one fetch server.
#[derive(Clone, Debug)]
pub struct ServerClient {
    base: Url,
    http: LazyHttp,
    /// The bearer token sent, and the file it was read from.
    token: Option<(String, PathBuf)>,
    /// Whether TLS is used without a client certificate.
    tls_without_identity: bool,
}

/// The HTTP client, built at its first request. Building it loads the system's root
/// certificates: milliseconds (benches/README.md) that a `fetch` taking its file from the
/// readahead cache, which asks no server, would spend on every call.
#[derive(Clone)]
struct LazyHttp {
    timeout: Duration,
    /// The CA certificates the server's must chain to, instead of the system's.
    roots: Option<Vec<reqwest::Certificate>>,
    /// The client certificate and key presented.
    identity: Option<reqwest::Identity>,
    built: std::sync::OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for LazyHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyHttp")
            .field("timeout", &self.timeout)
            .field("roots", &self.roots.as_ref().map(Vec::len))
            .field("identity", &self.identity.is_some())
            .field("built", &self.built.get().is_some())
            .finish()
    }
}

impl LazyHttp {
    /// The client, built now if it was not; a failure (which asking again cannot mend) is
    /// told as [`ServerError::Unusable`] for `url`.
    fn client(&self, url: &Url) -> Result<&reqwest::Client, ServerError> {
        if let Some(client) = self.built.get() {
            return Ok(client);
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .timeout(self.timeout);
        if let Some(roots) = &self.roots {
            builder = builder.tls_certs_only(roots.iter().cloned());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        let client = builder.build().map_err(|source| ServerError::Unusable {
            url: url.to_string(),
            source,
        })?;
        Ok(self.built.get_or_init(|| client))
    }
}

/// Said of a connection an https server closed once the handshake was done, when the client
/// has no certificate: in TLS 1.3 a server that requires one refuses it only then, and the
/// client may see its alert or only the connection closing.
const CLIENT_CERT_HINT: &str = "a server that requires a client certificate closes the \
    connection at the first request: give --client-cert and --client-key";

/// Why a request to the server did not give an answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server could not be reached or did not answer in time. (The transport error,
    /// stripped of the URL it repeats, is the source: `{:#}` prints it after this.)
    #[error("server {url} unreachable{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What may be wrong, when the way it failed suggests it.
        hint: Option<&'static str>,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The request cannot be made as configured: the TLS handshake failed (a certificate
    /// refused either way, a client certificate the server requires), or the request could not
    /// be built (a token that is no header value). Asking again cannot help.
    #[error("server {url}: the request cannot be made")]
    Unusable {
        /// The URL asked.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server's archive holds nothing for the cluster it answered for (a 500 marked
    /// `X-Walhalla-Nothing-Archived`).
    #[error("server {url}: its archive holds nothing for cluster {system_id}")]
    NothingArchived {
        /// The URL asked.
        url: String,
        /// The cluster the server answered for.
        system_id: SystemId,
    },
    /// The server answered with an error status.
    #[error("server {url} answered {status}: {body}{}", hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
        /// What to do, when the status says (a refused or missing token).
        hint: Option<String>,
    },
}

impl ServerError {
    /// Whether `error` comes of the server refusing the token sent (401): its file's token
    /// was rotated away, or the wrong file was given.
    pub fn refused_token(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| {
            matches!(
                cause.downcast_ref(),
                Some(ServerError::Status {
                    status: StatusCode::UNAUTHORIZED,
                    ..
                })
            )
        })
    }
}

impl ServerClient {
    /// A client for `settings.server`; `None` when no server is configured.
    pub fn new(settings: &ClientSettings, timeout: Duration) -> anyhow::Result<Option<Self>> {
        let Some(server) = &settings.server else {
            return Ok(None);
        };
        // A URL walhalla cannot use is a usage error (exit 255), whichever command reads it.
        let usage = |message: String| anyhow::Error::new(UsageError(message));
        if crate::mask::mask_url(server) != *server {
            // Not quoted: the URL holds the secret.
            return Err(usage(
                "the server URL carries a user, a password or a secret parameter, which would \
                 show in every message naming it: the fetch server authenticates with a bearer \
                 token (--token-file)"
                    .into(),
            ));
        }
        // Quoted with anything before an `@` hidden: a URL that does not parse, or has no
        // scheme, may still carry a password there, one with a `/` in it too, which ends the
        // authority for `mask_url` (`http://u:pa/ss@host`).
        let shown = server
            .rsplit_once('@')
            .map_or_else(|| server.clone(), |(_, host)| format!("********@{host}"));
        let base = Url::parse(server).map_err(|e| {
            usage(format!(
                "server URL {shown:?}: {e} (a URL such as http://127.0.0.1:7480)"
            ))
        })?;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(usage(format!(
                "server URL {shown:?} carries a user or password: the fetch server authenticates with a bearer token (--token-file)"
            )));
        }
        if !matches!(base.scheme(), "http" | "https") {
            return Err(usage(format!(
                "server URL {shown:?}: only http:// and https:// are supported"
            )));
        }
        // The files are read and parsed now, so that a wrong one is told at once; the client
        // is built at the first request ([`LazyHttp`]).
        let roots = match &settings.server_ca {
            Some(ca) => Some(
                crate::pem::certificates(ca)?
                    .iter()
                    .map(|cert| reqwest::Certificate::from_der(cert))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("certificates in {}", ca.display()))?,
            ),
            None => None,
        };
        let identity = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem =
                    std::fs::read(cert).with_context(|| format!("read {}", cert.display()))?;
                pem.extend(std::fs::read(key).with_context(|| format!("read {}", key.display()))?);
                Some(reqwest::Identity::from_pem(&pem).context("the client certificate and key")?)
            }
            (None, None) => None,
            _ => bail!("a client certificate needs both --client-cert and --client-key"),
        };
        let loopback = match base.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        let token = match &settings.token_file {
            Some(path) => Some((token::read(path)?, path.clone())),
            // The token a server of this user created; never sent to another host.
            None if loopback => default_token(),
            None => None,
        };
        if token.is_some() && base.scheme() == "http" && !loopback {
            tracing::warn!(
                "sending the bearer token to {base} without TLS: use https:// to keep it secret"
            );
        }
        Ok(Some(ServerClient {
            tls_without_identity: base.scheme() == "https" && settings.client_cert.is_none(),
            base,
            http: LazyHttp {
                timeout,
                roots,
                identity,
                built: std::sync::OnceLock::new(),
            },
            token,
        }))
    }

    /// The server's base URL.
    pub fn url(&self) -> &Url {
        &self.base
    }

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, ServerError> {
        if let Some((token, _)) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await.map_err(|source| {
            let (url, source) = (url.to_string(), source.without_url());
            if source.is_builder() || is_tls_failure(&source) {
                ServerError::Unusable { url, source }
            } else {
                let closed = !source.is_connect() && !source.is_timeout();
                let hint = (closed && self.tls_without_identity).then_some(CLIENT_CERT_HINT);
                ServerError::Unreachable { url, source, hint }
            }
        })
    }

    async fn error_status(&self, response: reqwest::Response) -> ServerError {
        let (url, status) = (response.url().to_string(), response.status());
        // Only a walhalla server's own refusal (a bearer challenge) is about its token: a
        // proxy in front may ask for its own login.
        let bearer = (response.headers().get(reqwest::header::WWW_AUTHENTICATE))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer"));
        let body = response.text().await.unwrap_or_default();
        let hint = (status == StatusCode::UNAUTHORIZED && bearer).then(|| self.token_hint());
        ServerError::Status {
            url,
            status,
            body: body.trim().chars().take(500).collect(),
            hint,
        }
    }

    /// What to do about a 401: the token this client sent (and the file it came from), or
    /// its lack of one.
    fn token_hint(&self) -> String {
        match &self.token {
            Some((_, file)) => format!(
                "the server refused the token sent, from {}: is it the server's own token file \
                 (rotated since?)",
                file.display()
            ),
            None => "the server wants its bearer token: give its file with --token-file (a \
                     server keeps it in its user's $XDG_STATE_HOME/walhalla/token, by default \
                     ~/.local/state/walhalla/token, unless told otherwise)"
                .into(),
        }
    }

    /// Asks for a WAL file of cluster `system_id` (the server's own when `None`): a 200
    /// answer to read the body of, or a 404 (whose headers say which cluster the server
    /// answered for); any other answer is an error, [`ServerError::NothingArchived`] when the
    /// server says its archive holds nothing for the cluster.
    /// With `partial`, a segment nobody has in full may come from its newest snapshot,
    /// zero-padded.
    pub async fn wal(
        &self,
        name: &WalFileName,
        system_id: Option<SystemId>,
        partial: bool,
    ) -> Result<reqwest::Response, ServerError> {
        let query = if partial { "?partial=1" } else { "" };
        let url = self
            .base
            .join(&format!("wal/{name}{query}"))
            .expect("a relative path joins");
        // The archived object as stored (a zstd stream) is a tenth of the bytes.
        let mut request = (self.http.client(&url)?)
            .get(url.clone())
            .header(reqwest::header::ACCEPT_ENCODING, "zstd");
        if let Some(id) = system_id {
            request = request.header(SYSTEM_ID_HEADER, id.to_string());
        }
        let response = self.send(request, &url).await?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        let nothing_archived = match header(NOTHING_ARCHIVED_HEADER) {
            Some(_) => header(SYSTEM_ID_HEADER).and_then(|id| id.parse().ok()),
            None => None,
        };
        match (response.status(), nothing_archived) {
            (StatusCode::OK | StatusCode::NOT_FOUND, _) => Ok(response),
            (StatusCode::INTERNAL_SERVER_ERROR, Some(system_id)) => {
                Err(ServerError::NothingArchived {
                    url: url.to_string(),
                    system_id,
                })
            }
            _ => Err(self.error_status(response).await),
        }
    }

    /// Asks `/healthz`, which needs no token: `Ok` when the server answers `ok`.
    pub async fn healthz(&self) -> anyhow::Result<()> {
        Ok(self.answers_ok("healthz").await?)
    }

    /// Whether the server accepts this client's token (or its lack of one): asks `/metrics`,
    /// which the token guards as it guards `/wal`.
    pub async fn authorized(&self) -> Result<(), ServerError> {
        self.answers_ok("metrics").await
    }

    /// `Ok` when `GET path` answers 200 (the body unread), else the answer as an error.
    async fn answers_ok(&self, path: &str) -> Result<(), ServerError> {
        let url = self.base.join(path).expect("a relative path joins");
        let response = self
            .send(self.http.client(&url)?.get(url.clone()), &url)
            .await?;
        if response.status() != StatusCode::OK {
            return Err(self.error_status(response).await);
        }
        Ok(())
    }

    /// Asks `/status`: the server's state as JSON.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let url = self.base.join("status").expect("a relative path joins");
        let response = self
            .send(self.http.client(&url)?.get(url.clone()), &url)
            .await?;
        if response.status() != StatusCode::OK {
            return Err(self.error_status(response).await.into());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow!("read /status: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| anyhow!("/status is not JSON: {e}"))
    }
}

/// Whether `error` is a TLS failure: a certificate refused by either side, a protocol
/// mismatch. The TLS layer hands rustls's error up as an `InvalidData` I/O error, by its text
/// alone; a connection dropped during the handshake is not one.
fn is_tls_failure(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<tokio_rustls::rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
            && let Some(inner) = io.get_ref()
        {
            let text = inner.to_string();
            return inner.is::<tokio_rustls::rustls::Error>()
                || TLS_FAILURES.iter().any(|prefix| text.starts_with(prefix));
        }
        cause = e.source();
    }
    false
}

/// How rustls's errors about the peer begin (its `Display`), as they reach here as text.
const TLS_FAILURES: [&str; 5] = [
    "received fatal alert",
    "invalid peer certificate",
    "peer sent no certificates",
    "peer is incompatible",
    "peer misbehaved",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_still_words_its_peer_errors_as_the_tls_check_reads_them() {
        use tokio_rustls::rustls::{AlertDescription, CertificateError, Error, PeerMisbehaved};
        let errors = [
            Error::AlertReceived(AlertDescription::CertificateRequired),
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Error::NoCertificatesPresented,
            Error::PeerIncompatible(tokio_rustls::rustls::PeerIncompatible::Tls12NotOffered),
            Error::PeerMisbehaved(PeerMisbehaved::IllegalMiddleboxChangeCipherSpec),
        ];
        for error in errors {
            let text = error.to_string();
            assert!(
                TLS_FAILURES.iter().any(|prefix| text.starts_with(prefix)),
                "{text}"
            );
        }
    }

    #[test]
    fn a_secret_in_a_server_url_is_refused_and_never_quoted_even_unparsed() {
        for url in [
            "http://u:s3cret@127.0.0.1:bad",
            "http://u:pa/s3cret@127.0.0.1:7480",
            "u:s3cret@127.0.0.1:7480",
            "http://127.0.0.1:7480/?token=s3cret",
        ] {
            let settings = ClientSettings {
                server: Some(url.into()),
                ..Default::default()
            };
            let error = ServerClient::new(&settings, Duration::from_secs(1))
                .expect_err("refused")
                .to_string();
            assert!(!error.contains("s3cret"), "{url}: {error}");
        }
    }

    #[test]
    fn the_http_client_is_built_at_the_first_request_once() {
        let settings = ClientSettings {
            server: Some("https://127.0.0.1:9".into()),
            ..Default::default()
        };
        let server = ServerClient::new(&settings, Duration::from_secs(1))
            .expect("valid settings")
            .expect("a server is set");
        assert!(server.http.built.get().is_none(), "built before a request");
        let first: *const reqwest::Client = server.http.client(&server.base).expect("built");
        let again: *const reqwest::Client = server.http.client(&server.base).expect("built");
        assert_eq!(first, again, "built once");
    }
}
