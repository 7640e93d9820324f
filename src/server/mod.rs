//! The fetch server: `walhalla receive --listen ADDR` and `walhalla serve`. It answers
//! `GET /wal/{name}` with the verified original bytes of a WAL file (from the receiver's spool
//! while a complete segment waits for upload, else from the archive), and exposes `/metrics`
//! (Prometheus text), `/status` (JSON) and `/healthz`.
//!
//! Security: it listens on loopback unless told otherwise, and authenticates every request on
//! every address: by bearer token (`--token-file`, else the user's default token file, created
//! on first start: [`token`]) or by TLS client certificates (`--tls-client-ca`). `--no-auth`
//! turns that off, with a warning, and only on loopback.

pub mod auth;
mod routes;
mod stall;
mod status;
mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::blocking;
use crate::config::UsageError;
use crate::daemon::{ServerFacts, Shared};

pub use routes::{
    CRC_HEADER, LENGTH_HEADER, NOTHING_ARCHIVED_HEADER, SNAPSHOT_HEADER, SOURCE_HEADER,
    SYSTEM_ID_HEADER, router,
};
pub use status::describe_status;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// A client silent this long (request headers, TLS handshake, HTTP/2 pings), or not reading
/// what it asked for, is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Address the server listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";

/// How the server listens and whom it lets in.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// The address to listen on.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token clients must send; by default [`token::default_path`]
    /// (unless client certificates authenticate).
    pub token_file: Option<PathBuf>,
    /// Serve without authenticating clients (loopback only).
    pub no_auth: bool,
    /// The server's certificate chain (PEM): turns TLS on.
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to: requires TLS client
    /// certificates.
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerOptions {
    /// Checks the settings before anything starts; returns the address to listen on. A
    /// listener other hosts can reach must authenticate its clients. Each refusal is a usage
    /// error (exit 255): no run of the same settings can succeed.
    pub fn check(&self) -> anyhow::Result<SocketAddr> {
        let listen = match self.listen {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse().expect("valid default"),
        };
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(usage(
                "--tls-client-ca needs TLS: give --tls-cert and --tls-key too".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(usage("TLS needs both --tls-cert and --tls-key".into()));
        }
        if self.no_auth && self.token_file.is_some() {
            return Err(usage(
                "--no-auth and --token-file contradict each other: give one".into(),
            ));
        }
        if !listen.ip().is_loopback() && self.no_auth && self.tls_client_ca.is_none() {
            return Err(usage(format!(
                "refusing to listen on {listen}, which other hosts can reach, without client \
                 authentication: leave out --no-auth (bearer token), give --tls-client-ca (TLS \
                 client certificates), or listen on a loopback address"
            )));
        }
        Ok(listen)
    }
}

/// A refusal of settings no run can succeed with (exit 255).
fn usage(message: String) -> anyhow::Error {
    UsageError(message).into()
}

/// A server bound to its address, ready to run.
pub struct Server {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    token: Option<Arc<auth::ServedToken>>,
}

impl Server {
    /// Checks the security settings, reads (or creates) the token file and binds the
    /// listener. A listener reachable from other hosts without authentication is refused.
    pub async fn bind(options: &ServerOptions, shared: Arc<Shared>) -> anyhow::Result<Server> {
        let listen = options.check()?;
        const GIVEN: &str = "write a random one, e.g. openssl rand -hex 32";
        const DEFAULT: &str = "remove the file to have the server make a random one";
        let token = match (&options.token_file, options.no_auth) {
            (Some(path), _) => Some(auth::ServedToken::read(path.clone(), GIVEN)?),
            (None, true) => {
                tracing::warn!(
                    %listen,
                    "--no-auth: every local user (any process that can connect to {listen}) may \
                     download every WAL file, and so the whole database"
                );
                None
            }
            // Client certificates authenticate.
            (None, false) if options.tls_client_ca.is_some() => None,
            (None, false) => {
                let path = token::default_path();
                let reading = path.clone();
                let tokens = blocking::run(move || token::read_or_create(&reading)).await?;
                Some(auth::ServedToken::new(tokens, Some((path, DEFAULT))))
            }
        };
        let tls = match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls::acceptor(cert, key, options.tls_client_ca.as_deref())?)
            }
            _ => None,
        };
        if !listen.ip().is_loopback() && tls.is_none() {
            tracing::warn!(
                %listen,
                "without TLS the bearer token and the WAL cross the network in the clear: add --tls-cert and --tls-key"
            );
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        shared.server_started(ServerFacts {
            listen: listener.local_addr().unwrap_or(listen),
            tls: tls.is_some(),
        });
        let token = token.map(Arc::new);
        let router = routes::router(shared, token.clone());
        Ok(Server {
            listener,
            tls,
            router,
            token,
        })
    }

    /// The tokens it accepts, when it requires one: SIGHUP reads their file again.
    pub fn token(&self) -> Option<Arc<auth::ServedToken>> {
        self.token.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(
            listen = %self.local_addr()?,
            tls = self.tls.is_some(),
            "fetch server ready"
        );
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            // At the limit, new connections wait in the kernel's backlog.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.changed() => return Ok(()),
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return Ok(()),
            };
            // Each request carries its client's address, for the logs.
            let router = self
                .router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = TowerToHyperService::new(router);
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // A client that stops sending or answering loses its connection.
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(IDLE_TIMEOUT);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(IDLE_TIMEOUT)
                    .keep_alive_timeout(IDLE_TIMEOUT);
                let (stream, watchdog) = stall::watch(stream);
                let serving = async {
                    match tls {
                        Some(acceptor) => {
                            match tokio::time::timeout(IDLE_TIMEOUT, acceptor.accept(stream)).await
                            {
                                Ok(Ok(stream)) => {
                                    builder
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await
                                }
                                Ok(Err(e)) => Err(format!("TLS handshake failed: {e}").into()),
                                Err(_) => Err("TLS handshake timed out".into()),
                            }
                        }
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                    }
                };
                tokio::select! {
                    served = serving => if let Err(e) = served {
                        tracing::debug!(%peer, "connection ended: {e}");
                    },
                    // Dropping the connection frees what its response held.
                    _ = watchdog.stalled(IDLE_TIMEOUT, Duration::from_secs(1)) => {
                        tracing::warn!(%peer, "client stopped reading for {}s: disconnected", IDLE_TIMEOUT.as_secs());
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(listen: &str, no_auth: bool, token: bool, client_ca: bool) -> Result<(), String> {
        let options = ServerOptions {
            listen: Some(listen.parse().unwrap()),
            token_file: token.then(|| "token".into()),
            no_auth,
            tls_cert: client_ca.then(|| "cert.pem".into()),
            tls_key: client_ca.then(|| "key.pem".into()),
            tls_client_ca: client_ca.then(|| "ca.pem".into()),
        };
        options.check().map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_address_authenticates_unless_no_auth_on_loopback() {
        // The default token authenticates anywhere.
        assert_eq!(check("0.0.0.0:7480", false, false, false), Ok(()));
        assert_eq!(check("127.0.0.1:7480", true, false, false), Ok(()));
        assert_eq!(check("[::1]:7480", true, false, false), Ok(()));
        let open = check("0.0.0.0:7480", true, false, false).unwrap_err();
        assert!(
            open.contains("refusing to listen on 0.0.0.0:7480"),
            "{open}"
        );
        assert_eq!(check("0.0.0.0:7480", true, false, true), Ok(()));
        let both = check("127.0.0.1:7480", true, true, false).unwrap_err();
        assert!(both.contains("--no-auth and --token-file"), "{both}");
    }
}
