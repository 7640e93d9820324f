//! An ordinary SQL connection (tokio-postgres) built from the same connection settings as the
//! replication connection ([`ConnParams`]: libpq keywords, `PG*` variables, the password
//! file), without `replication=true`. The socket is opened here and handed to tokio-postgres:
//! TLS goes through rustls with the replication connection's client configuration
//! ([`tls::client_config`]), each `sslmode` tries with and without TLS in libpq's order, and
//! `require_auth`, which tokio-postgres lacks, is applied to the server's messages
//! ([`AuthGuard`]), so every setting means what it means for `receive` and `backup`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::Client;
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::tls::{ChannelBinding, NoTls, TlsConnect, TlsStream};

use crate::protocol::attempts::{self, Failed};
use crate::protocol::auth_guard::{AuthGuard, AuthRefused};
use crate::protocol::conninfo::{ConnParams, HostAddr, TargetSessionAttrs};
use crate::protocol::tls;

/// How long connecting to one host may take unless `connect_timeout` says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The database connected to first when none is named.
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

/// Connects to `host`: to the database `params` names; else to `postgres` or the user's
/// database (libpq's default), trying the other when the first does not exist or the user
/// may not connect to it. The queries asked are about the whole cluster, so either serves.
/// `postgres` comes first, since a role made for replication rarely has a database of its
/// name and each refused try leaves a FATAL line in the server's log; the user's database
/// first when only it has a password in the password file, or when it was the one reached on
/// this host before (a receiver connects again at every session).
async fn connect_host(
    params: &ConnParams,
    host: &HostAddr,
    attrs: TargetSessionAttrs,
) -> anyhow::Result<Client> {
    let own = params.user.as_str();
    if let Some(database) = &params.dbname {
        return connect_to(params, host, attrs, database).await;
    }
    if own == FALLBACK_DATABASE {
        return connect_to(params, host, attrs, own).await;
    }
    let key = (host.to_string(), own.to_string());
    let remembered = reached().get(&key).cloned();
    let only_own_password = params
        .password_for_database(host, FALLBACK_DATABASE)
        .is_none()
        && params.password_for_database(host, own).is_some();
    let (first, then) = match remembered {
        Some(db) if db == own => (own, FALLBACK_DATABASE),
        None if only_own_password => (own, FALLBACK_DATABASE),
        _ => (FALLBACK_DATABASE, own),
    };
    let (client, database) = match connect_to(params, host, attrs, first).await {
        Err(e) if refused_database(&e) => {
            tracing::debug!("{host}: database {first:?} refused ({e:#}); connecting to {then:?}");
            let client = connect_to(params, host, attrs, then)
                .await
                .map_err(|second| {
                    anyhow::anyhow!(
                        "database {first:?} (no dbname given): {e:#}; database {then:?}: {second:#}"
                    )
                })?;
            (client, then)
        }
        connected => (connected?, first),
    };
    reached().insert(key, database.to_string());
    Ok(client)
}

/// The database reached per host and user when none was named, for this process's life.
fn reached() -> std::sync::MutexGuard<'static, std::collections::HashMap<(String, String), String>>
{
    static REACHED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    > = std::sync::OnceLock::new();
    REACHED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether connecting failed because of the database: it does not exist (SQLSTATE 3D000), no
/// pg_hba.conf line lets the user into it (28000; a wrong password is 28P01), or the user
/// lacks its CONNECT privilege (42501).
fn refused_database(e: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|code| {
            *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE
        })
}

/// Connects to `database` on `host`, trying with and without TLS as `sslmode` says
/// ([`SslMode::attempts`]) within one `connect_timeout`, then checks `attrs`.
async fn connect_to(
    params: &ConnParams,
    host: &HostAddr,
    attrs: TargetSessionAttrs,
    database: &str,
) -> anyhow::Result<Client> {
    let timeout = params.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let ways = attempts::ways(params.sslmode, host);
    let within = |tls| async move {
        match tokio::time::timeout_at(deadline, attempt(params, host, database, tls)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Failed {
                error: anyhow!("no answer within {timeout:?}"),
                other_way: false,
            }),
        }
    };
    let client = attempts::each_way(host, ways, within)
        .await
        .map_err(|mut failed| {
            let (tls, last) = failed.pop().expect("an attempt was made");
            if failed.is_empty() {
                return last;
            }
            let earlier: Vec<String> = (failed.iter())
                .map(|(tls, e)| format!("{}: {e:#}", attempts::way(*tls)))
                .collect();
            last.context(format!("{}; {}", earlier.join("; "), attempts::way(tls)))
        })?;
    check_session_attrs(&client, attrs).await?;
    Ok(client)
}

/// One connection attempt, with TLS or without: the socket is opened here and followed by an
/// [`AuthGuard`] (applying `require_auth`) below TLS or, without, right on it.
async fn attempt(
    params: &ConnParams,
    host: &HostAddr,
    database: &str,
    tls: bool,
) -> Result<Client, Failed<anyhow::Error>> {
    let unreachable = |error: io::Error| Failed {
        error: anyhow::Error::new(error).context(format!("connect to {host}")),
        other_way: false,
    };
    let mut config = tokio_postgres::Config::new();
    config
        .user(&params.user)
        .dbname(database)
        .application_name(&params.application_name)
        .channel_binding(match params.channel_binding {
            crate::protocol::conninfo::ChannelBinding::Disable => PgChannelBinding::Disable,
            crate::protocol::conninfo::ChannelBinding::Prefer => PgChannelBinding::Prefer,
            crate::protocol::conninfo::ChannelBinding::Require => PgChannelBinding::Require,
        })
        // TLS, when used, is asked for here and set up by `RustlsConnect`, which verifies the
        // certificate as `sslmode` demands.
        .ssl_mode(if tls {
            PgSslMode::Require
        } else {
            PgSslMode::Disable
        });
    if let Some(password) = params.password_for_database(host, database) {
        config.password(password);
    }
    let policy = params.require_auth.clone();
    let logged_in = Arc::new(AtomicBool::new(false));
    let failed = |e: tokio_postgres::Error, set_up: bool| {
        let refused = e.as_db_error().is_some() && !logged_in.load(Ordering::Relaxed);
        Failed {
            other_way: !set_up || refused,
            error: refusal_or(e),
        }
    };
    match host {
        HostAddr::Tcp { host: name, port } => {
            let tcp = TcpStream::connect((name.as_str(), *port))
                .await
                .map_err(unreachable)?;
            let _ = tcp.set_nodelay(true);
            if !tls {
                let guarded = AuthGuard::new(tcp, policy, logged_in.clone());
                return start(&config, guarded, NoTls)
                    .await
                    .map_err(|e| failed(e, true));
            }
            let connect =
                rustls_connect(params, name, policy, logged_in.clone()).map_err(|error| {
                    Failed {
                        error,
                        other_way: true,
                    }
                })?;
            let handshaken = connect.handshaken.clone();
            start(&config, tcp, connect)
                .await
                .map_err(|e| failed(e, handshaken.load(Ordering::Relaxed)))
        }
        // libpq does not use TLS on unix sockets either.
        HostAddr::Unix { .. } => {
            let path = host.socket_path().expect("a unix host has a socket path");
            let unix = UnixStream::connect(path).await.map_err(unreachable)?;
            let guarded = AuthGuard::new(unix, policy, logged_in.clone());
            start(&config, guarded, NoTls)
                .await
                .map_err(|e| failed(e, true))
        }
    }
}

/// Starts a session on `stream` (TLS set up by `tls` when the config asks for it), its
/// connection on a task of its own.
async fn start<S, T>(
    config: &tokio_postgres::Config,
    stream: S,
    tls: T,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: TlsConnect<S> + Send + 'static,
    T::Stream: Send + 'static,
    T::Future: Send,
{
    let (client, connection) = config.connect_raw(stream, tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The error as is, or `require_auth`'s refusal alone when that is what ended the attempt.
fn refusal_or(error: tokio_postgres::Error) -> anyhow::Error {
    match AuthRefused::in_chain(&error) {
        Some(refused) => anyhow::anyhow!("{refused}"),
        None => error.into(),
    }
}

/// The TLS handshake for `name` with the replication connection's client configuration.
fn rustls_connect(
    params: &ConnParams,
    name: &str,
    policy: Option<crate::protocol::require_auth::RequireAuth>,
    logged_in: Arc<AtomicBool>,
) -> anyhow::Result<RustlsConnect> {
    let identity = tls::client_identity(params.sslcert.as_deref(), params.sslkey.as_deref())?;
    let config = tls::client_config(params.sslmode, params.sslrootcert.as_deref(), identity)?
        .context("TLS without a configuration")?;
    let server_name =
        tls::server_name(name).ok_or_else(|| anyhow::anyhow!("invalid server name {name:?}"))?;
    Ok(RustlsConnect {
        connector: tokio_rustls::TlsConnector::from(config),
        server_name,
        policy,
        handshaken: Arc::new(AtomicBool::new(false)),
        logged_in,
    })
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

/// One TLS handshake to a named server (tokio-postgres' TLS hook over the replication
/// connection's rustls configuration), the stream then guarded by `require_auth`.
struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    policy: Option<crate::protocol::require_auth::RequireAuth>,
    /// Set once the handshake succeeded: an attempt that failed before, failed to set up TLS.
    handshaken: Arc<AtomicBool>,
    /// Set by the guard when the server lets the client in.
    logged_in: Arc<AtomicBool>,
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
            self.handshaken.store(true, Ordering::Relaxed);
            Ok(RustlsStream(AuthGuard::new(
                tls,
                self.policy,
                self.logged_in,
            )))
        })
    }
}

/// A TLS stream, offering SCRAM channel binding to the server's certificate
/// (`tls-server-end-point`), as the replication connection does.
struct RustlsStream<S>(AuthGuard<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let certificate = self
            .0
            .get_ref()
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
