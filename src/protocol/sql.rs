//! An ordinary SQL connection (tokio-postgres) built from the same connection settings as the
//! replication connection ([`ConnParams`]: libpq keywords, `PG*` variables, the password
//! file), without `replication=true`. TLS goes through rustls with the replication
//! connection's client configuration ([`tls::client_config`]), so every `sslmode` means what
//! it means for `receive` and `backup`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Client;
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, NoTls, TlsConnect, TlsStream};
use tokio_rustls::rustls::ClientConfig;

use crate::protocol::conninfo::{ConnParams, HostAddr, SslMode, TargetSessionAttrs};
use crate::protocol::tls;

/// How long connecting to one host may take unless `connect_timeout` says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The database connected to when none is named and the user's name is not one.
const FALLBACK_DATABASE: &str = "postgres";

/// A connected client and the host it reached.
pub struct SqlConnection {
    /// The client; its connection runs on a task of its own.
    pub client: Client,
    /// The host that answered.
    pub host: HostAddr,
}

/// Connects to the first host of `params` that accepts an SQL connection and matches its
/// `target_session_attrs`, trying them in order; the error names every host's failure.
pub async fn connect(params: &ConnParams) -> anyhow::Result<SqlConnection> {
    let mut failures = Vec::new();
    for attrs in params.target_session_attrs.passes() {
        for host in &params.hosts {
            match connect_host(params, host, *attrs).await {
                Ok(client) => {
                    return Ok(SqlConnection {
                        client,
                        host: host.clone(),
                    });
                }
                Err(e) => failures.push(format!("{host}: {e:#}")),
            }
        }
    }
    anyhow::bail!("{}", failures.join("; "))
}

/// Connects to `host` alone, whatever it is (primary or standby): to ask the server a
/// replication connection reached what only SQL tells.
pub async fn connect_to_host(params: &ConnParams, host: &HostAddr) -> anyhow::Result<Client> {
    connect_host(params, host, TargetSessionAttrs::Any).await
}

/// Connects to `host`: to the database `params` names, else to libpq's default, the user's
/// name; when that one does not exist or pg_hba.conf lets the user into `postgres` only, to
/// `postgres`. A role made for replication alone rarely has a database of its name, and the
/// connection string `receive` takes needs none.
async fn connect_host(
    params: &ConnParams,
    host: &HostAddr,
    attrs: TargetSessionAttrs,
) -> anyhow::Result<Client> {
    let database = params.dbname.as_deref().unwrap_or(&params.user);
    match connect_to(params, host, attrs, database).await {
        Err(e)
            if params.dbname.is_none() && database != FALLBACK_DATABASE && refused_database(&e) =>
        {
            tracing::debug!(
                "{host}: database {database:?} refused ({e:#}); connecting to {FALLBACK_DATABASE:?}"
            );
            connect_to(params, host, attrs, FALLBACK_DATABASE)
                .await
                .map_err(|fallback| {
                    anyhow::anyhow!(
                        "database {database:?} (no dbname given): {e:#}; database {FALLBACK_DATABASE:?}: {fallback:#}"
                    )
                })
        }
        connected => connected,
    }
}

/// Whether connecting failed because of the database: it does not exist (SQLSTATE 3D000), or
/// no pg_hba.conf line lets the user into it (28000; a wrong password is 28P01).
fn refused_database(e: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|code| {
            *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        })
}

async fn connect_to(
    params: &ConnParams,
    host: &HostAddr,
    attrs: TargetSessionAttrs,
    database: &str,
) -> anyhow::Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&params.user)
        .dbname(database)
        .application_name(&params.application_name)
        .port(host.port())
        .connect_timeout(params.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
        .channel_binding(match params.channel_binding {
            crate::protocol::conninfo::ChannelBinding::Disable => PgChannelBinding::Disable,
            crate::protocol::conninfo::ChannelBinding::Prefer => PgChannelBinding::Prefer,
            crate::protocol::conninfo::ChannelBinding::Require => PgChannelBinding::Require,
        });
    if let Some(password) = params.password_for_database(host, database) {
        config.password(password);
    }
    let tls_config = match host {
        HostAddr::Tcp { host: name, .. } => {
            config.host(name);
            config.ssl_mode(match params.sslmode {
                // tokio-postgres has no "allow"; like the replication connection, it connects
                // without TLS and does not retry with it.
                SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                // The rustls configuration verifies the certificate as these modes demand.
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
            });
            let identity =
                tls::client_identity(params.sslcert.as_deref(), params.sslkey.as_deref())?;
            tls::client_config(params.sslmode, params.sslrootcert.as_deref(), identity)?
        }
        // libpq does not use TLS on unix sockets either.
        HostAddr::Unix { socket_dir, .. } => {
            config.host_path(socket_dir).ssl_mode(PgSslMode::Disable);
            None
        }
    };
    let client = match tls_config {
        Some(tls_config) => {
            let (client, connection) = config.connect(MakeRustls(tls_config)).await?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(connection);
            client
        }
    };
    check_session_attrs(&client, attrs).await?;
    Ok(client)
}

/// Refuses a server that is not the kind `attrs` asks for, as libpq does.
async fn check_session_attrs(client: &Client, attrs: TargetSessionAttrs) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await
        .context("ask whether the server is a standby")?;
    let (standby, read_only): (bool, bool) = (row.get(0), row.get(1));
    let ok = match attrs {
        TargetSessionAttrs::Any => true,
        TargetSessionAttrs::Primary => !standby,
        TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => standby,
        TargetSessionAttrs::ReadWrite => !read_only,
        TargetSessionAttrs::ReadOnly => read_only,
    };
    anyhow::ensure!(
        ok,
        "server is not {attrs} ({})",
        if standby {
            "it is a standby"
        } else {
            "it is a primary"
        }
    );
    Ok(())
}

/// tokio-postgres' TLS hook over the replication connection's rustls configuration.
#[derive(Clone)]
struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let server_name = tls::server_name(domain).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid server name {domain:?}"),
            )
        })?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            server_name,
        })
    }
}

/// One TLS handshake to a named server.
struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.server_name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream, offering SCRAM channel binding to the server's certificate
/// (`tls-server-end-point`), as the replication connection does.
struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let certificate = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match certificate.map(|c| crate::protocol::channel_binding::tls_server_end_point(c)) {
            Some(Ok(hash)) => ChannelBinding::tls_server_end_point(hash),
            _ => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
