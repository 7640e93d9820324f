//! One connection to a PostgreSQL server in physical replication mode: TCP or unix socket,
//! TLS negotiated per `sslmode`, authentication (trust, password, md5, SCRAM-SHA-256), simple
//! queries (the replication commands and `SHOW`), and the CopyBoth sub-protocol that
//! `START_REPLICATION` opens. Messages are framed with `postgres-protocol`; CopyBothResponse
//! (`W`), which it does not know, and CopyData, the hot path, are handled here.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::attempts::{self, Failed};
use super::conninfo::{ConnParams, HostAddr, SslMode, TargetSessionAttrs};
use super::frame::{Frame, FrameError, take_frame};
use super::tls::{self, TlsError};

mod auth;
mod response;
#[cfg(test)]
mod tests;
pub use response::Response;

/// How long connecting and authenticating to one host may take unless `connect_timeout` says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An error the server reported (ErrorResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// ERROR, FATAL or PANIC.
    pub severity: String,
    /// The SQLSTATE code.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The detail, if any.
    pub detail: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "; {detail}")?;
        }
        Ok(())
    }
}

impl ServerError {
    /// The fields of an ErrorResponse or NoticeResponse.
    pub fn from_fields(mut fields: ErrorFields<'_>) -> io::Result<ServerError> {
        let mut error = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
        };
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => error.severity = value,
                b'S' if error.severity.is_empty() => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                _ => {}
            }
        }
        Ok(error)
    }
}

/// What went wrong on a connection.
#[derive(Debug, Error)]
pub enum Error {
    /// The network failed or the server closed the connection.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Connecting and authenticating took longer than the connect timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server reported an error.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The server asked for a password and none is configured.
    #[error(
        "the server requires a password and none was given (password, PGPASSWORD or the password file, whose lines for a replication connection name the database replication, as libpq reads them)"
    )]
    NoPassword,
    /// The server asked for an authentication method this client does not support.
    #[error("unsupported authentication method {0} (use trust, password, md5 or scram-sha-256)")]
    UnsupportedAuthentication(&'static str),
    /// The server's authentication request is not one the settings accept (`require_auth`,
    /// `channel_binding=require`); worded as libpq words it.
    #[error("{0}")]
    AuthenticationRefused(String),
    /// TLS could not be set up or the server's certificate was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// TLS is required but the server does not offer it.
    #[error("sslmode={0} but the server does not support SSL")]
    TlsRefused(SslMode),
    /// The server does not match `target_session_attrs`.
    #[error("server is not {0} ({1})")]
    WrongSessionKind(TargetSessionAttrs, String),
    /// No host could be used; the error of each, in order.
    #[error("{}", .0.iter().map(|(h, e)| format!("{h}: {e}")).collect::<Vec<_>>().join("; "))]
    AllHostsFailed(Vec<(String, Error)>),
    /// Each attempt `sslmode` allows failed, with TLS (`true`) or without; in order.
    #[error("{}", .0.iter().map(|(tls, e)| format!("{}: {e}", attempts::way(*tls))).collect::<Vec<_>>().join("; "))]
    Attempts(Vec<(bool, Error)>),
}

impl Error {
    /// Whether retrying cannot help: bad credentials or configuration, not a passing outage.
    pub fn is_fatal(&self) -> bool {
        match self {
            // Class 28: invalid authorization (bad password, no pg_hba.conf entry).
            Error::Server(e) => e.code.starts_with("28"),
            Error::NoPassword
            | Error::AuthenticationRefused(_)
            | Error::UnsupportedAuthentication(_)
            | Error::Tls(_)
            | Error::TlsRefused(_) => true,
            Error::AllHostsFailed(errors) => errors.iter().all(|(_, e)| e.is_fatal()),
            Error::Attempts(errors) => errors.last().is_some_and(|(_, e)| e.is_fatal()),
            Error::Io(_) | Error::Timeout(_) | Error::Protocol(_) | Error::WrongSessionKind(..) => {
                false
            }
        }
    }

    /// The server's error, when that is what this is (for one host, the last one's).
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server(e) => Some(e),
            Error::AllHostsFailed(errors) => errors.last().and_then(|(_, e)| e.server_error()),
            Error::Attempts(errors) => errors.last().and_then(|(_, e)| e.server_error()),
            _ => None,
        }
    }

    /// Whether libpq would try the other way after this failure of an attempt, before the
    /// server let the client in ([`SslMode::attempts`]): TLS could not be set up, or the
    /// server refused the session (`CONNECTION_FAILED()` in fe-connect.c). What the client
    /// itself refuses (`require_auth`, a missing password) and an unreachable server end the
    /// attempts.
    fn fails_the_encryption(&self) -> bool {
        matches!(
            self,
            Error::Tls(_) | Error::TlsRefused(_) | Error::Server(_)
        )
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { .. } => Error::Protocol(e.to_string()),
            FrameError::Malformed(io) => Error::Io(io),
        }
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::Tls(e.to_string())
    }
}

/// Result of connection operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A row of a simple query's result, every column as text.
pub type Row = Vec<Option<String>>;

/// How the server answered START_REPLICATION.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyStart {
    /// It streams (CopyBoth mode).
    Streaming,
    /// The timeline asked for ends where streaming would start: the rows name the next
    /// timeline and where it begins, as at the end of a stream.
    TimelineEnded(Vec<Row>),
}

/// A row with every column's bytes as the server sent them (TIMELINE_HISTORY's content).
pub type RawRow = Vec<Option<Vec<u8>>>;

/// What arrives on a connection in CopyBoth mode.
#[derive(Debug)]
pub enum CopyMessage {
    /// A CopyData payload.
    Data(Bytes),
    /// The server ended its side of the copy (end of a timeline).
    Done,
    /// The command finished without CopyDone, e.g. when the server shuts down.
    Complete(String),
}

/// A refused certificate or a TLS protocol error is a configuration problem; a connection
/// dropped during the handshake is an ordinary network failure.
fn tls_handshake_error(error: io::Error) -> Error {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
    {
        Some(tls) => Error::Tls(tls.to_string()),
        None => Error::Io(error),
    }
}

/// A DataRow's columns as the server sent them.
fn raw_row(body: &postgres_protocol::message::backend::DataRowBody) -> io::Result<RawRow> {
    let buffer = body.buffer();
    body.ranges()
        .map(|range| Ok(range.map(|r| buffer[r].to_vec())))
        .collect()
}

fn text_row(row: RawRow) -> Row {
    row.into_iter()
        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect()
}

/// Why a read found the end of the connection: between messages, or in the middle of one.
fn closed_while_reading(buffered: &[u8]) -> String {
    match incomplete(buffered) {
        None => "the server closed the connection".into(),
        Some(part) => format!(
            "the server closed the connection in the middle of a message: {part} had arrived"
        ),
    }
}

/// What the buffer holds of a message that has not arrived whole: which message, and how
/// much of it (`None` when it is empty).
fn incomplete(buffered: &[u8]) -> Option<String> {
    match buffered {
        [] => None,
        [tag, length @ ..] if length.len() >= 4 => {
            let declared = u32::from_be_bytes(length[..4].try_into().expect("4 bytes"));
            Some(format!(
                "{} bytes of a {:?} message of {} bytes",
                buffered.len(),
                char::from(*tag),
                u64::from(declared) + 1
            ))
        }
        _ => Some(format!(
            "{} of the 5 bytes of a message header",
            buffered.len()
        )),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An authenticated connection in replication mode.
pub struct Connection {
    io: Box<dyn Io>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    host: HostAddr,
    /// The server's certificate (DER) when the connection uses TLS.
    server_certificate: Option<Vec<u8>>,
    parameters: HashMap<String, String>,
}

/// What kind of message a frame is, for protocol errors.
fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::CopyData(_) => "CopyData",
        Frame::CopyBothResponse => "CopyBothResponse",
        Frame::Other(Message::ReadyForQuery(_)) => "ReadyForQuery without a result",
        Frame::Other(Message::CopyOutResponse(_)) => "CopyOutResponse",
        Frame::Other(Message::CopyInResponse(_)) => "CopyInResponse",
        Frame::Other(Message::NoticeResponse(_)) => "NoticeResponse",
        Frame::Other(_) => "another message",
    }
}

impl Connection {
    /// Connects to the first host of `params` that accepts the connection and matches its
    /// `target_session_attrs`, trying them in order.
    pub async fn connect(params: &ConnParams) -> Result<Connection> {
        Self::connect_trying_last(params, &[]).await
    }

    /// [`Self::connect`], trying the hosts in `last` after the others (in each pass of
    /// `target_session_attrs`): hosts found unfit for a reason the server's own attributes do
    /// not tell, such as an old primary left running after a failover.
    pub async fn connect_trying_last(params: &ConnParams, last: &[HostAddr]) -> Result<Connection> {
        let (later, first): (Vec<&HostAddr>, Vec<&HostAddr>) =
            params.hosts.iter().partition(|host| last.contains(host));
        let mut errors = Vec::new();
        for attrs in params.target_session_attrs.passes() {
            for host in first.iter().chain(&later).copied() {
                match Self::connect_host(params, host, *attrs).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => errors.push((host.to_string(), e)),
                }
            }
        }
        Err(Error::AllHostsFailed(errors))
    }

    async fn connect_host(
        params: &ConnParams,
        host: &HostAddr,
        attrs: TargetSessionAttrs,
    ) -> Result<Connection> {
        let timeout = params.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut conn = match tokio::time::timeout(timeout, Self::open(params, host)).await {
            Ok(result) => result?,
            Err(_) => return Err(Error::Timeout(timeout)),
        };
        conn.check_session_attrs(attrs).await?;
        Ok(conn)
    }

    /// Opens an authenticated connection to `host`, trying with and without TLS as
    /// `sslmode` says ([`SslMode::attempts`]).
    async fn open(params: &ConnParams, host: &HostAddr) -> Result<Connection> {
        let ways = attempts::ways(params.sslmode, host);
        attempts::each_way(host, ways, |tls| Self::open_with(params, host, tls))
            .await
            .map_err(|mut failed| match failed.len() {
                1 => failed.pop().expect("one attempt").1,
                _ => Error::Attempts(failed),
            })
    }

    /// [`Self::open`] with TLS or without (`tls`).
    async fn open_with(
        params: &ConnParams,
        host: &HostAddr,
        tls: bool,
    ) -> std::result::Result<Connection, Failed<Error>> {
        // Until the server has let the client in, a failure may be tried the other way.
        let before_login = |error: Error| Failed {
            other_way: error.fails_the_encryption(),
            error,
        };
        let (io, server_certificate): (Box<dyn Io>, _) = match host {
            // libpq does not use TLS on unix sockets either.
            HostAddr::Unix { .. } => {
                let path = host.socket_path().expect("a unix host has a socket path");
                let unix = UnixStream::connect(path).await;
                (Box::new(unix.map_err(|e| before_login(e.into()))?), None)
            }
            HostAddr::Tcp { host: name, port } => {
                let tcp = TcpStream::connect((name.as_str(), *port)).await;
                let tcp = tcp.map_err(|e| before_login(e.into()))?;
                tcp.set_nodelay(true).map_err(|e| before_login(e.into()))?;
                match Self::negotiate_tls(params, name, tcp, tls).await {
                    Ok(Ok((tls, certificate))) => (tls, Some(certificate)),
                    Ok(Err(plain)) => (Box::new(plain), None),
                    Err(e) => return Err(before_login(e)),
                }
            }
        };
        let mut conn = Connection {
            io,
            read_buf: BytesMut::with_capacity(256 * 1024),
            write_buf: BytesMut::with_capacity(8 * 1024),
            host: host.clone(),
            server_certificate,
            parameters: HashMap::new(),
        };
        conn.log_in(params).await.map_err(before_login)?;
        // Past AuthenticationOk an error ends the attempts, as in libpq: the password was
        // accepted, and trying again without TLS would only send it in the clear.
        conn.settle().await.map_err(|error| Failed {
            error,
            other_way: false,
        })?;
        Ok(conn)
    }

    /// Sends SSLRequest when this attempt uses TLS (`tls`); returns the TLS stream and the
    /// server's certificate, or the plain stream when TLS is not to be used.
    async fn negotiate_tls(
        params: &ConnParams,
        name: &str,
        mut tcp: TcpStream,
        tls: bool,
    ) -> Result<Result<(Box<dyn Io>, Vec<u8>), TcpStream>> {
        let mode = params.sslmode;
        if !tls {
            return Ok(Err(tcp));
        }
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        // Exactly one byte: anything after it would be unencrypted data (CVE-2021-23222).
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                // Only now, as libpq: a server without TLS never needs the client's files.
                let identity =
                    tls::client_identity(params.sslcert.as_deref(), params.sslkey.as_deref())?;
                let config = tls::client_config(mode, params.sslrootcert.as_deref(), identity)?
                    .expect("TLS modes have a config");
                let server_name = tls::server_name(name)
                    .ok_or_else(|| Error::Tls(format!("invalid server name {name:?}")))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await
                    .map_err(tls_handshake_error)?;
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| cert.to_vec())
                    .ok_or_else(|| Error::Tls("the server presented no certificate".into()))?;
                Ok(Ok((Box::new(stream), certificate)))
            }
            b'N' if mode == SslMode::Prefer => Ok(Err(tcp)),
            b'N' => Err(Error::TlsRefused(mode)),
            other => Err(Error::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            ))),
        }
    }

    /// Sends the startup message and answers the server's authentication requests, up to
    /// AuthenticationOk.
    async fn log_in(&mut self, params: &ConnParams) -> Result<()> {
        let startup = [
            ("user", params.user.as_str()),
            ("replication", "true"),
            ("application_name", params.application_name.as_str()),
        ];
        frontend::startup_message(startup.iter().copied(), &mut self.write_buf)?;
        self.flush().await?;
        self.authenticate(params).await
    }

    /// Reads what follows AuthenticationOk up to the first ReadyForQuery.
    async fn settle(&mut self) -> Result<()> {
        loop {
            match self.read_message().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::BackendKeyData(_) => {}
                Message::ErrorResponse(body) => {
                    return Err(Error::Server(ServerError::from_fields(body.fields())?));
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message after authentication".into(),
                    ));
                }
            }
        }
    }

    async fn check_session_attrs(&mut self, attrs: TargetSessionAttrs) -> Result<()> {
        let hot_standby = match self.parameters.get("in_hot_standby") {
            Some(value) => value == "on",
            // Before PostgreSQL 14 the server does not report it.
            None => self.show("transaction_read_only").await? == "on",
        };
        let ok = match attrs {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::Primary => !hot_standby,
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => hot_standby,
            TargetSessionAttrs::ReadWrite => self.show("transaction_read_only").await? == "off",
            TargetSessionAttrs::ReadOnly => self.show("transaction_read_only").await? == "on",
        };
        if ok {
            return Ok(());
        }
        let what = if hot_standby {
            "it is a standby"
        } else {
            "it is a primary or read-only"
        };
        Err(Error::WrongSessionKind(attrs, what.into()))
    }

    /// The value of a server setting (`SHOW name`).
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let rows = self.simple_query(&format!("SHOW {name}")).await?;
        rows.into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .ok_or_else(|| Error::Protocol(format!("SHOW {name} returned no value")))
    }

    /// The host this connection reached.
    pub fn host(&self) -> &HostAddr {
        &self.host
    }

    /// Whether the connection is encrypted with TLS.
    pub fn is_encrypted(&self) -> bool {
        self.server_certificate.is_some()
    }

    /// Runs `sql` with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>> {
        let rows = self.simple_query_raw(sql).await?;
        Ok(rows.into_iter().map(text_row).collect())
    }

    /// Runs `sql` and returns its rows' bytes untouched.
    pub async fn simple_query_raw(&mut self, sql: &str) -> Result<Vec<RawRow>> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        self.read_raw_results().await
    }

    /// Reads result rows until ReadyForQuery; a server error is returned after the server is
    /// ready again, so the connection stays usable.
    pub async fn read_results(&mut self) -> Result<Vec<Row>> {
        Ok(self
            .read_raw_results()
            .await?
            .into_iter()
            .map(text_row)
            .collect())
    }

    async fn read_raw_results(&mut self) -> Result<Vec<RawRow>> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::DataRow(body) => rows.push(raw_row(&body)?),
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => {
                    error = Some(ServerError::from_fields(body.fields())?)
                }
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(Error::Server(e)),
                        None => Ok(rows),
                    };
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in a query result".into(),
                    ));
                }
            }
        }
    }

    /// Sends `sql` (START_REPLICATION) and waits for the server to enter CopyBoth mode. A
    /// server asked for a past timeline exactly where that timeline ends has nothing to
    /// stream: it answers at once with the result set naming the next timeline, which is
    /// returned as [`CopyStart::TimelineEnded`] (walsender.c, `StartReplication`).
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<CopyStart> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        loop {
            match self.read_frame().await? {
                Frame::CopyBothResponse => return Ok(CopyStart::Streaming),
                Frame::Other(Message::ErrorResponse(body)) => {
                    let error = ServerError::from_fields(body.fields())?;
                    // Drain to ReadyForQuery so the connection can be reused. A server that
                    // ends the session instead (FATAL) closes it: its message is the answer.
                    if let Err(e) = self.read_results().await {
                        tracing::debug!(host = %self.host, "after the server's error: {e}");
                    }
                    return Err(Error::Server(error));
                }
                Frame::Other(Message::DataRow(body)) => rows.push(text_row(raw_row(&body)?)),
                Frame::Other(Message::RowDescription(_) | Message::CommandComplete(_)) => {}
                Frame::Other(Message::ReadyForQuery(_)) if !rows.is_empty() => {
                    return Ok(CopyStart::TimelineEnded(rows));
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "expected CopyBothResponse or the next timeline, got {}",
                        frame_kind(&other)
                    )));
                }
            }
        }
    }

    /// The next message of a CopyBoth stream.
    pub async fn read_copy(&mut self) -> Result<CopyMessage> {
        match self.read_frame().await? {
            Frame::CopyData(data) => Ok(CopyMessage::Data(data)),
            Frame::Other(Message::CopyDone) => Ok(CopyMessage::Done),
            Frame::Other(Message::CommandComplete(body)) => {
                Ok(CopyMessage::Complete(body.tag()?.to_string()))
            }
            Frame::Other(Message::ErrorResponse(body)) => {
                Err(Error::Server(ServerError::from_fields(body.fields())?))
            }
            _ => Err(Error::Protocol(
                "unexpected message in CopyBoth mode".into(),
            )),
        }
    }

    /// What has arrived of a message still incomplete, for errors (`None`: nothing).
    pub fn incomplete_message(&self) -> Option<String> {
        incomplete(&self.read_buf)
    }

    /// Whether a complete message is already buffered, so reading it will not wait on the
    /// network: the end of a batch is when this turns false.
    pub fn has_buffered_message(&self) -> bool {
        match Header::parse(&self.read_buf) {
            Ok(Some(header)) => self.read_buf.len() > header.len() as usize,
            _ => false,
        }
    }

    /// A setting the server reported at startup (ParameterStatus).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version, from the `server_version` it reported.
    pub fn server_major_version(&self) -> Option<u32> {
        let version = self.parameters.get("server_version")?;
        version
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Queues a CopyData message; [`Connection::flush`] sends it.
    pub fn queue_copy_data(&mut self, payload: &[u8]) {
        frontend::CopyData::new(payload)
            .expect("small payload")
            .write(&mut self.write_buf);
    }

    /// Sends CopyDone, ending the client's side of the copy.
    pub async fn send_copy_done(&mut self) -> Result<()> {
        frontend::copy_done(&mut self.write_buf);
        self.flush().await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        self.io.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        self.io.flush().await?;
        Ok(())
    }

    async fn read_message(&mut self) -> Result<Message> {
        match self.read_frame().await? {
            Frame::Other(message) => Ok(message),
            Frame::CopyData(_) | Frame::CopyBothResponse => {
                Err(Error::Protocol("unexpected copy message".into()))
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(frame);
            }
            if self.io.read_buf(&mut self.read_buf).await? == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    closed_while_reading(&self.read_buf),
                )));
            }
        }
    }

    /// Takes one complete message off the read buffer, skipping notices and parameter reports.
    fn parse_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            let message = match take_frame(&mut self.read_buf)? {
                None => return Ok(None),
                Some(Frame::Other(message)) => message,
                Some(frame) => return Ok(Some(frame)),
            };
            match message {
                Message::NoticeResponse(body) => {
                    let notice = ServerError::from_fields(body.fields())?;
                    tracing::info!(host = %self.host, "server notice: {notice}");
                }
                Message::ParameterStatus(body) => {
                    self.parameters
                        .insert(body.name()?.to_string(), body.value()?.to_string());
                }
                other => return Ok(Some(Frame::Other(other))),
            }
        }
    }
}
