//! Connection settings for the replication connection, read the way libpq reads them.
//!
//! This module owns turning `walhalla receive -d CONNINFO` into [`ConnParams`]: the
//! `key=value` and `postgres://` URI syntaxes, the `PG*` environment variables, the defaults,
//! multiple hosts, and the password file (`~/.pgpass`). It does no I/O besides reading the
//! password file; the environment is passed in as a lookup function.
//!
//! Accepted keywords: `host`, `hostaddr`, `port`, `user`, `password`, `dbname`,
//! `application_name`, `fallback_application_name`, `sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, `channel_binding`, `require_auth`, `connect_timeout`, `target_session_attrs` and
//! `passfile`. Accepted and ignored: `replication` (walhalla always asks for a physical
//! replication connection), `options` and `keepalives*`. `sslcrl` is refused: revocation is
//! not checked, and a revoked server certificate must not pass silently. Any other keyword is
//! an error, as in libpq. Without `user` or `PGUSER`, the user is the effective operating-system
//! user's name (not `USER`), as in libpq.
//!
//! Where walhalla differs from libpq: an empty value counts as not set (so the environment
//! or the default applies); `hostaddr` is used as the host list only when no `host` is given
//! (explicit settings first, then `PGHOST`, then `PGHOSTADDR`), and both set are refused;
//! service files are not read (`PGSERVICE` and `PGSERVICEFILE` set are refused), nor the
//! system's roots (`sslrootcert=system` is refused); in a URI, the last `@` ends the user
//! information.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use super::require_auth::RequireAuth;

mod passfile;
mod syntax;

pub use passfile::match_passfile_line;
use passfile::read_passfile;
pub(crate) use syntax::{is_space, percent_decode};
use syntax::{parse_key_value, parse_uri};

/// The port used when none is given.
pub const DEFAULT_PORT: u16 = 5432;
/// The unix-socket directory used when no host is given (Debian's libpq default).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// `application_name` when neither the settings nor `PGAPPNAME` give one.
pub const DEFAULT_APPLICATION_NAME: &str = "walhalla";
/// The database libpq looks up in the password file for physical replication connections.
const REPLICATION_DATABASE: &str = "replication";

/// Every keyword accepted; those from `replication` on are ignored.
const KEYWORDS: &str = "host hostaddr port user password dbname application_name \
    fallback_application_name sslmode sslrootcert sslcert sslkey channel_binding require_auth \
    connect_timeout target_session_attrs passfile \
    replication options keepalives keepalives_idle keepalives_interval keepalives_count";

/// Why connection settings could not be parsed. Messages never contain the password.
#[derive(Debug, Error)]
pub enum ConninfoError {
    /// A keyword libpq does not know, or that walhalla does not support.
    #[error("invalid connection option \"{0}\"")]
    UnknownKeyword(String),
    /// A keyword not followed by `=`.
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    /// A single-quoted value without its closing quote.
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    /// A malformed `postgres://` URI.
    #[error("invalid connection URI: {0}")]
    InvalidUri(&'static str),
    /// A value the keyword does not accept (a port, `sslmode`, a timeout, ...).
    #[error("invalid {keyword} value: \"{value}\"")]
    InvalidValue {
        /// The keyword, e.g. `port`.
        keyword: &'static str,
        /// The value given.
        value: String,
    },
    /// A port list whose length is neither one nor the number of hosts.
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    HostPortMismatch {
        /// Number of hosts.
        hosts: usize,
        /// Number of ports.
        ports: usize,
    },
    /// A host starting with `@` (Linux abstract socket namespace), which walhalla does not support.
    #[error("unix sockets in the abstract namespace are not supported: \"{0}\"")]
    AbstractSocket(String),
    /// No user given, and the effective operating-system user has no name.
    #[error(
        "cannot determine user name: the effective user has no entry in the password database; \
         set user in the connection string or PGUSER"
    )]
    NoUser,
    /// Both `host` and `hostaddr` (or their variables) set.
    #[error(
        "host and hostaddr are both set: walhalla connects to one of them only (give the address \
         as host; TLS then verifies it), where libpq would connect to hostaddr and verify host"
    )]
    HostAndHostaddr,
    /// A service file named by the environment, which walhalla does not read.
    #[error(
        "{0} is set, but walhalla does not read service files: put the settings in the connection string"
    )]
    Service(&'static str),
    /// `sslrootcert=system` (libpq 16: the system's trusted roots), which walhalla does not offer.
    #[error(
        "sslrootcert=system (the system's trusted roots) is not supported: name the root \
         certificate file"
    )]
    SystemRootCert,
    /// A `require_auth` list libpq would refuse (mixed negation, a repeated method).
    #[error("{0}")]
    RequireAuth(String),
}

/// Defines a settings enum spelled in connection strings as libpq spells it, with `Display`
/// and `FromStr` (errors name `$keyword`).
macro_rules! keyword_enum {
    ($(#[$doc:meta])* $name:ident, $keyword:literal,
     { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The name used in connection strings.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ConninfoError;

            fn from_str(s: &str) -> Result<Self, ConninfoError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(invalid($keyword, s)),
                }
            }
        }
    };
}

keyword_enum! {
    /// Whether and how TLS is used (`sslmode`).
    SslMode, "sslmode", {
        /// Plain connection only.
        Disable = "disable",
        /// Plain first, TLS if the server refuses that.
        Allow = "allow",
        /// TLS if the server offers it and the TLS attempt works, else plain (the default).
        Prefer = "prefer",
        /// TLS, without verifying the server certificate.
        Require = "require",
        /// TLS, with the server certificate verified against the root certificate.
        VerifyCa = "verify-ca",
        /// TLS, with the certificate verified and matching the host name.
        VerifyFull = "verify-full",
    }
}

impl SslMode {
    /// Whether each connection attempt uses TLS, in libpq's order (fe-connect.c,
    /// `select_next_encryption_method`): `prefer` tries TLS, then without when the TLS attempt
    /// fails (its handshake, or the server's error before the session starts, such as a
    /// `pg_hba.conf` with `hostnossl` lines only); `allow` the other way round.
    pub fn attempts(self) -> &'static [bool] {
        match self {
            SslMode::Disable => &[false],
            SslMode::Allow => &[false, true],
            SslMode::Prefer => &[true, false],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[true],
        }
    }
}

keyword_enum! {
    /// Whether SCRAM binds the authentication to the TLS channel (`channel_binding`), proving
    /// the server that authenticates the client is the one at the other end of the TLS
    /// connection (SCRAM-SHA-256-PLUS, `tls-server-end-point`).
    ChannelBinding, "channel_binding", {
        /// Never.
        Disable = "disable",
        /// When the connection uses TLS and the server offers it (the default).
        Prefer = "prefer",
        /// Always: the connection fails unless the server authenticates with channel binding.
        Require = "require",
    }
}

keyword_enum! {
    /// Which kind of server a host must be to be accepted (`target_session_attrs`).
    TargetSessionAttrs, "target_session_attrs", {
        /// Any server (the default).
        Any = "any",
        /// A server accepting read-write transactions by default.
        ReadWrite = "read-write",
        /// A server accepting only read-only transactions by default.
        ReadOnly = "read-only",
        /// A server not in hot standby.
        Primary = "primary",
        /// A server in hot standby.
        Standby = "standby",
        /// A standby if any host is one, else any server.
        PreferStandby = "prefer-standby",
    }
}

impl TargetSessionAttrs {
    /// The kinds of server to look for, one pass over the hosts each, in order:
    /// `prefer-standby` looks for a standby first, then takes any server.
    pub fn passes(self) -> &'static [TargetSessionAttrs] {
        use TargetSessionAttrs::*;
        match self {
            PreferStandby => &[Standby, Any],
            Any => &[Any],
            ReadWrite => &[ReadWrite],
            ReadOnly => &[ReadOnly],
            Primary => &[Primary],
            Standby => &[Standby],
        }
    }
}

/// One server to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAddr {
    /// A TCP host name or IP address.
    Tcp {
        /// Host name or address, without brackets for IPv6.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix-domain socket in a directory.
    Unix {
        /// The directory holding the socket.
        socket_dir: PathBuf,
        /// The port, which names the socket file.
        port: u16,
    },
}

impl HostAddr {
    /// The port (for a unix socket, the one in the socket file name).
    pub fn port(&self) -> u16 {
        match self {
            HostAddr::Tcp { port, .. } | HostAddr::Unix { port, .. } => *port,
        }
    }

    /// The socket file, `<dir>/.s.PGSQL.<port>`, for a unix socket; `None` for TCP.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            HostAddr::Tcp { .. } => None,
            HostAddr::Unix { socket_dir, port } => {
                Some(socket_dir.join(format!(".s.PGSQL.{port}")))
            }
        }
    }

    /// The name used for password-file matching and TLS server name: the host for TCP;
    /// `localhost` for a socket in the default directory and the directory itself for any
    /// other, as libpq matches the password file (empty for a directory that is not UTF-8).
    pub fn host_name(&self) -> &str {
        match self {
            HostAddr::Tcp { host, .. } => host,
            HostAddr::Unix { socket_dir, .. } if socket_dir == Path::new(DEFAULT_SOCKET_DIR) => {
                "localhost"
            }
            HostAddr::Unix { socket_dir, .. } => socket_dir.to_str().unwrap_or(""),
        }
    }
}

impl fmt::Display for HostAddr {
    /// `host:port` (`[addr]:port` for IPv6), or the socket file's path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            HostAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            HostAddr::Unix { .. } => self.socket_path().unwrap_or_default().display().fmt(f),
        }
    }
}

/// The resolved settings of the replication connection.
#[derive(Clone)]
pub struct ConnParams {
    /// The servers to try, in order; never empty.
    pub hosts: Vec<HostAddr>,
    /// The user to connect as.
    pub user: String,
    /// The password from the settings or `PGPASSWORD`; the password file is consulted per
    /// host by [`ConnParams::password_for`].
    pub password: Option<String>,
    /// The database name, if given (physical replication does not use it).
    pub dbname: Option<String>,
    /// The `application_name` sent to the server.
    pub application_name: String,
    /// Whether and how TLS is used.
    pub sslmode: SslMode,
    /// Root certificates for `verify-ca` and `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// The client certificate (`sslcert`), else `~/.postgresql/postgresql.crt` if it exists.
    pub sslcert: Option<PathBuf>,
    /// Its private key (`sslkey`), else `~/.postgresql/postgresql.key`.
    pub sslkey: Option<PathBuf>,
    /// Whether SCRAM authentication is bound to the TLS channel.
    pub channel_binding: ChannelBinding,
    /// Which authentication requests the client answers; `None` answers every one it knows.
    pub require_auth: Option<RequireAuth>,
    /// Deadline for connecting to one host; `None` waits indefinitely.
    pub connect_timeout: Option<Duration>,
    /// Which kind of server is acceptable.
    pub target_session_attrs: TargetSessionAttrs,
    /// The password file: `passfile`, else `PGPASSFILE`, else `$HOME/.pgpass`.
    pub passfile: Option<PathBuf>,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("passfile", &self.passfile)
            .finish()
    }
}

impl ConnParams {
    /// Parses `conninfo` (`key=value` form, a `postgres://` or `postgresql://` URI, or an
    /// empty string), filling unset keys from `env` (a lookup function, so tests do not touch
    /// the process environment), then defaults.
    pub fn parse(
        conninfo: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnParams, ConninfoError> {
        let given = match conninfo
            .strip_prefix("postgresql://")
            .or_else(|| conninfo.strip_prefix("postgres://"))
        {
            Some(uri) => parse_uri(uri)?,
            None => parse_key_value(conninfo)?,
        };
        let given_of = |key: &str| given.get(key).filter(|v| !v.is_empty()).cloned();
        let env_of = |var: &str| env(var).filter(|v| !v.is_empty());
        let lookup = |key: &str, var: &str| given_of(key).or_else(|| env_of(var));

        // libpq connects to hostaddr and uses host for TLS and the password file; walhalla
        // takes one of them, so both would connect elsewhere than libpq does: refused. Not a
        // hostaddr given with PGHOST alone: walhalla takes hostaddr, where libpq connects too.
        let host = given_of("host").or_else(|| env_of("PGHOST"));
        let hostaddr = given_of("hostaddr").or_else(|| env_of("PGHOSTADDR"));
        let (host_given, hostaddr_given) =
            (given_of("host").is_some(), given_of("hostaddr").is_some());
        if host.is_some() && hostaddr.is_some() && (host_given || !hostaddr_given) {
            return Err(ConninfoError::HostAndHostaddr);
        }
        // Service files are not read: a service named would be ignored silently.
        if let Some(var) = ["PGSERVICE", "PGSERVICEFILE"]
            .into_iter()
            .find(|v| env_of(v).is_some())
        {
            return Err(ConninfoError::Service(var));
        }
        if given_of("sslrootcert")
            .or_else(|| env_of("PGSSLROOTCERT"))
            .as_deref()
            == Some("system")
        {
            return Err(ConninfoError::SystemRootCert);
        }
        let host_spec = given_of("host")
            .map(|h| (h, false))
            .or_else(|| given_of("hostaddr").map(|h| (h, true)))
            .or_else(|| env_of("PGHOST").map(|h| (h, false)))
            .or_else(|| env_of("PGHOSTADDR").map(|h| (h, true)));
        let hosts = parse_hosts(host_spec, lookup("port", "PGPORT"))?;
        let user = lookup("user", "PGUSER")
            .or_else(crate::osuser::name)
            .ok_or(ConninfoError::NoUser)?;
        let application_name = lookup("application_name", "PGAPPNAME")
            .or_else(|| given_of("fallback_application_name"))
            .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_owned());
        let connect_timeout = match lookup("connect_timeout", "PGCONNECT_TIMEOUT") {
            None => None,
            Some(value) => match value.trim().parse::<i64>() {
                Ok(..=0) => None,
                // libpq raises one second to two, as rounding could make it expire at once.
                Ok(1) => Some(Duration::from_secs(2)),
                Ok(secs) => Some(Duration::from_secs(secs.unsigned_abs())),
                Err(_) => return Err(invalid("connect_timeout", &value)),
            },
        };
        Ok(ConnParams {
            hosts,
            user,
            password: lookup("password", "PGPASSWORD"),
            dbname: lookup("dbname", "PGDATABASE"),
            application_name,
            sslmode: lookup("sslmode", "PGSSLMODE").map_or(Ok(SslMode::Prefer), |v| v.parse())?,
            sslrootcert: lookup("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
            sslcert: lookup("sslcert", "PGSSLCERT").map(PathBuf::from),
            sslkey: lookup("sslkey", "PGSSLKEY").map(PathBuf::from),
            channel_binding: lookup("channel_binding", "PGCHANNELBINDING")
                .map_or(Ok(ChannelBinding::Prefer), |v| v.parse())?,
            require_auth: lookup("require_auth", "PGREQUIREAUTH")
                .map(|v| RequireAuth::parse(&v))
                .transpose()?,
            connect_timeout,
            target_session_attrs: lookup("target_session_attrs", "PGTARGETSESSIONATTRS")
                .map_or(Ok(TargetSessionAttrs::Any), |v| v.parse())?,
            passfile: lookup("passfile", "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env_of("HOME").map(|home| Path::new(&home).join(".pgpass"))),
        })
    }

    /// The password for connecting to `host`: the one from the settings or `PGPASSWORD`, else
    /// the first line of the password file matching the host name ([`HostAddr::host_name`]),
    /// port, database `replication` and user (`*` matches anything, `\` escapes `:` and `\`).
    /// `None` if there is none, or the file cannot be read, is not a plain file, or (on unix)
    /// is accessible to group or others, which libpq also refuses, with a warning.
    pub fn password_for(&self, host: &HostAddr) -> Option<String> {
        self.password_for_database(host, REPLICATION_DATABASE)
    }

    /// The password for an ordinary SQL connection to `database` on `host`, looked up as
    /// [`ConnParams::password_for`] does, with that database's name in the password file.
    pub fn password_for_database(&self, host: &HostAddr, database: &str) -> Option<String> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        let contents = read_passfile(self.passfile.as_deref()?)?;
        let port = host.port().to_string();
        let wanted = [host.host_name(), &port, database, &self.user];
        contents
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| match_passfile_line(line, &wanted))
            .filter(|password| !password.is_empty())
    }
}

/// The error for `value` not being valid for `keyword`.
fn invalid(keyword: &'static str, value: &str) -> ConninfoError {
    ConninfoError::InvalidValue {
        keyword,
        value: value.to_owned(),
    }
}

/// Builds the host list from comma-separated hosts (`numeric`: from `hostaddr`, so IP
/// addresses) and ports: one port for all hosts, or one per host.
fn parse_hosts(
    spec: Option<(String, bool)>,
    ports: Option<String>,
) -> Result<Vec<HostAddr>, ConninfoError> {
    let (names, numeric) = match &spec {
        Some((list, numeric)) => (list.split(',').collect::<Vec<_>>(), *numeric),
        None => (vec![""], false),
    };
    let ports = match ports {
        Some(list) => list
            .split(',')
            .map(parse_port)
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![DEFAULT_PORT],
    };
    let (hosts, ports_len) = (names.len(), ports.len());
    if ports_len != 1 && ports_len != hosts {
        return Err(ConninfoError::HostPortMismatch {
            hosts,
            ports: ports_len,
        });
    }
    let ports = ports.iter().cycle();
    names
        .into_iter()
        .zip(ports)
        .map(|(name, &port)| host_addr(name, port, numeric))
        .collect()
}

/// One port; empty means the default.
fn parse_port(port: &str) -> Result<u16, ConninfoError> {
    let port = port.trim();
    if port.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    match port.parse::<u16>() {
        Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(invalid("port", port)),
    }
}

/// One host entry: empty means the default socket directory, `/...` a socket directory.
fn host_addr(name: &str, port: u16, numeric: bool) -> Result<HostAddr, ConninfoError> {
    if name.is_empty() {
        host_addr(DEFAULT_SOCKET_DIR, port, false)
    } else if name.starts_with('/') {
        let socket_dir = PathBuf::from(name);
        Ok(HostAddr::Unix { socket_dir, port })
    } else if name.starts_with('@') {
        Err(ConninfoError::AbstractSocket(name.to_owned()))
    } else if numeric && name.parse::<IpAddr>().is_err() {
        Err(invalid("hostaddr", name))
    } else {
        let host = name.to_owned();
        Ok(HostAddr::Tcp { host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    /// Parses with only `PGUSER=alice` in the environment.
    fn parse(conninfo: &str) -> Result<ConnParams, ConninfoError> {
        ConnParams::parse(conninfo, &env_with(&[("PGUSER", "alice")]))
    }

    fn hosts(conninfo: &str) -> Vec<HostAddr> {
        parse(conninfo).unwrap().hosts
    }

    fn error(conninfo: &str) -> String {
        parse(conninfo).unwrap_err().to_string()
    }

    fn tcp(host: &str, port: u16) -> HostAddr {
        let host = host.to_owned();
        HostAddr::Tcp { host, port }
    }

    fn unix(dir: &str, port: u16) -> HostAddr {
        let socket_dir = PathBuf::from(dir);
        HostAddr::Unix { socket_dir, port }
    }

    #[test]
    fn key_value_quoting_and_escapes() {
        let p = parse(r"host = db1  user='al ice' password='it\'s \\ x' dbname=a\ b").unwrap();
        assert_eq!(p.hosts, [tcp("db1", 5432)]);
        assert_eq!(p.user, "al ice");
        assert_eq!(p.password.as_deref(), Some(r"it's \ x"));
        assert_eq!(p.dbname.as_deref(), Some("a b"));
        // A quoted value may touch the next keyword; later keys win; `=` then spaces then value.
        let p = parse("user='bob'port=6000 port=6001\tsslmode=verify-full").unwrap();
        assert_eq!(p.user, "bob");
        assert_eq!(p.hosts, [unix(DEFAULT_SOCKET_DIR, 6001)]);
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(parse("password= x").unwrap().password.unwrap(), "x");
        // Accepted and ignored.
        let ignored = "replication=true options='-c a=b' keepalives=1 keepalives_idle=5 \
                       keepalives_interval=5 keepalives_count=3";
        assert_eq!(hosts(ignored), [unix(DEFAULT_SOCKET_DIR, 5432)]);
        let tls = parse("sslcert=c.pem sslkey=k.pem channel_binding=require require_auth=!md5");
        let tls = tls.unwrap();
        assert_eq!(tls.sslcert, Some(PathBuf::from("c.pem")));
        assert_eq!(tls.sslkey, Some(PathBuf::from("k.pem")));
        assert_eq!(tls.channel_binding, ChannelBinding::Require);
        assert_eq!(tls.require_auth.unwrap().to_string(), "!md5");
        assert!(
            parse("sslcrl=/etc/crl.pem").is_err(),
            "revocation lists are not checked: refuse"
        );
    }

    #[test]
    fn errors_have_clear_messages() {
        let cases = [
            ("hots=db1", "invalid connection option \"hots\""),
            ("=x", "invalid connection option \"\""),
            (
                "host db1",
                "missing \"=\" after \"host\" in connection info string",
            ),
            (
                "host",
                "missing \"=\" after \"host\" in connection info string",
            ),
            (
                "password='abc",
                "unterminated quoted string in connection info string",
            ),
            (
                r"password='abc\",
                "unterminated quoted string in connection info string",
            ),
            (
                "host=a,b,c port=1,2",
                "could not match 2 port numbers to 3 hosts",
            ),
            ("port=0", "invalid port value: \"0\""),
            ("port=70000", "invalid port value: \"70000\""),
            ("port=+5432", "invalid port value: \"+5432\""),
            ("port=-1", "invalid port value: \"-1\""),
            ("sslmode=required", "invalid sslmode value: \"required\""),
            (
                "target_session_attrs=master",
                "invalid target_session_attrs value: \"master\"",
            ),
            (
                "connect_timeout=ten",
                "invalid connect_timeout value: \"ten\"",
            ),
            (
                "hostaddr=db.example.com",
                "invalid hostaddr value: \"db.example.com\"",
            ),
            (
                "host=@abstract",
                "unix sockets in the abstract namespace are not supported: \"@abstract\"",
            ),
            ("postgres://db?foo=1", "invalid connection option \"foo\""),
            (
                "postgres://db?ssl=false",
                "invalid connection option \"ssl\"",
            ),
            ("postgres://a,b:1:2", "invalid port value: \"1:2\""),
        ];
        for (input, message) in cases {
            assert_eq!(error(input), message, "{input}");
        }
        let uri_cases = [
            ("db%zz", "invalid percent-encoded token"),
            ("db%4", "invalid percent-encoded token"),
            ("db%00", "forbidden value %00 in percent-encoded value"),
            ("db%C3", "percent-encoded value is not valid UTF-8"),
            ("[::1", "missing \"]\" after IPv6 host address"),
            ("[]:5432", "IPv6 host address may not be empty"),
            ("[::1]x", "unexpected character after IPv6 address"),
            ("db?sslmode", "missing \"=\" in query parameter"),
            ("db?a=b=c", "extra \"=\" in query parameter"),
        ];
        for (uri, message) in uri_cases {
            assert_eq!(
                error(&format!("postgresql://{uri}")),
                format!("invalid connection URI: {message}")
            );
        }
        assert_eq!(
            error("channel_binding=yes"),
            "invalid channel_binding value: \"yes\""
        );
        assert_eq!(
            error("require_auth=md5,!password"),
            "negative require_auth method \"!password\" cannot be mixed with non-negative methods"
        );
    }

    #[test]
    fn uri_with_credentials_and_query() {
        let p = parse(
            "postgresql://bob:s%40cr%3At@db1:5433/my%20db?sslmode=require&application_name=x\
             &connect_timeout=10&target_session_attrs=prefer-standby&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(p.hosts, [tcp("db1", 5433)]);
        assert_eq!(p.user, "bob");
        assert_eq!(p.password.as_deref(), Some("s@cr:t"));
        assert_eq!(p.dbname.as_deref(), Some("my db"));
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.application_name, "x");
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(p.target_session_attrs, TargetSessionAttrs::PreferStandby);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        let ssl = parse("postgres://db1?ssl=true&").unwrap();
        assert_eq!(ssl.sslmode, SslMode::Require);
        assert_eq!(hosts("postgres://"), [unix(DEFAULT_SOCKET_DIR, 5432)]);
    }

    #[test]
    fn uri_multiple_hosts_ipv6_and_sockets() {
        let env = env_with(&[("USER", "alice"), ("PGPORT", "6000")]);
        let uri_hosts = |uri: &str| ConnParams::parse(uri, &env).unwrap().hosts;
        // An empty port in a list is the built-in default, not PGPORT (as in libpq).
        let expected = [tcp("h1", 5432), tcp("::1", 5433), tcp("h3", 5432)];
        assert_eq!(uri_hosts("postgres://h1:5432,[::1]:5433,h3/db"), expected);
        let expected = [tcp("h1", 6000), tcp("fe80::1%eth0", 6000)];
        assert_eq!(uri_hosts("postgres://h1,[fe80::1%25eth0]"), expected);
        let socket = hosts("postgresql://%2Fvar%2Frun%2Fpostgresql:5433/db");
        assert_eq!(socket, [unix("/var/run/postgresql", 5433)]);
        let socket = hosts("postgresql:///db?host=/tmp&port=5434");
        let path = PathBuf::from("/tmp/.s.PGSQL.5434");
        assert_eq!(socket[0].socket_path(), Some(path));
    }

    #[test]
    fn host_lists_and_hostaddr() {
        let expected = [
            tcp("a", 5433),
            unix(DEFAULT_SOCKET_DIR, 5433),
            unix("/tmp", 5433),
        ];
        assert_eq!(hosts("host=a,,/tmp port=5433"), expected);
        assert_eq!(hosts("host=a,b port=1,"), [tcp("a", 1), tcp("b", 5432)]);
        // hostaddr stands in for host when host is absent; both are refused, since libpq
        // would connect to hostaddr (helper-73: walhalla connected to host).
        let expected = [tcp("10.0.0.1", 5432), tcp("::1", 5432)];
        assert_eq!(hosts("hostaddr=10.0.0.1,::1"), expected);
        let none = |_: &str| None;
        let both = ConnParams::parse("host=db hostaddr=10.0.0.1", &none).unwrap_err();
        assert!(matches!(both, ConninfoError::HostAndHostaddr), "{both}");
        let env = |var: &str| (var == "PGHOSTADDR").then(|| "10.0.0.1".to_owned());
        let both = ConnParams::parse("host=db", &env).unwrap_err();
        assert!(matches!(both, ConninfoError::HostAndHostaddr), "{both}");
    }

    #[test]
    fn settings_walhalla_cannot_honour_are_refused_not_ignored() {
        let env = |var: &str| (var == "PGSERVICE").then(|| "main".to_owned());
        let refused = ConnParams::parse("host=db", &env).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "PGSERVICE is set, but walhalla does not read service files: put the settings in the connection string"
        );
        let none = |_: &str| None;
        let system = ConnParams::parse("host=db sslrootcert=system", &none).unwrap_err();
        assert!(matches!(system, ConninfoError::SystemRootCert), "{system}");
    }

    #[test]
    fn environment_fallbacks() {
        let env = env_with(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGSSLMODE", "verify-ca"),
            ("PGSSLROOTCERT", "/ca.pem"),
            ("PGCONNECT_TIMEOUT", "30"),
            ("PGTARGETSESSIONATTRS", "standby"),
            ("PGPASSFILE", "/pgpass"),
            ("HOME", "/home/alice"),
        ]);
        let p = ConnParams::parse("", &env).unwrap();
        assert_eq!(p.hosts, [tcp("envhost", 7000)]);
        assert_eq!(p.user, "envuser");
        assert_eq!(p.password.as_deref(), Some("envpw"));
        assert_eq!(p.dbname.as_deref(), Some("envdb"));
        assert_eq!(p.application_name, "envapp");
        assert_eq!(p.sslmode, SslMode::VerifyCa);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.target_session_attrs, TargetSessionAttrs::Standby);
        assert_eq!(p.passfile, Some(PathBuf::from("/pgpass")));
        // Explicit settings win; an empty value counts as unset.
        let p = ConnParams::parse("host=db port=1 user=u password='' sslmode=disable", &env);
        let p = p.unwrap();
        assert_eq!(p.hosts, [tcp("db", 1)]);
        assert_eq!(p.user, "u");
        assert_eq!(p.password.as_deref(), Some("envpw"));
        assert_eq!(p.sslmode, SslMode::Disable);
        // An explicit hostaddr beats PGHOST; PGHOSTADDR is used when nothing else is given.
        let p = ConnParams::parse("hostaddr=10.0.0.1", &env).unwrap();
        assert_eq!(p.hosts, [tcp("10.0.0.1", 7000)]);
        let p = ConnParams::parse("", &env_with(&[("USER", "a"), ("PGHOSTADDR", "::1")]));
        assert_eq!(p.unwrap().hosts, [tcp("::1", 5432)]);
    }

    #[test]
    fn application_name_precedence() {
        let env = env_with(&[("USER", "alice"), ("PGAPPNAME", "envapp")]);
        let with_env = |conninfo: &str| ConnParams::parse(conninfo, &env).unwrap().application_name;
        let name = |conninfo: &str| parse(conninfo).unwrap().application_name;
        let both = "application_name=given fallback_application_name=fb";
        assert_eq!(with_env(both), "given");
        assert_eq!(with_env("fallback_application_name=fb"), "envapp");
        assert_eq!(name("fallback_application_name=fb"), "fb");
        assert_eq!(name("application_name=''"), "walhalla");
    }

    #[test]
    fn defaults() {
        let p = parse("").unwrap();
        assert_eq!(p.hosts, [unix(DEFAULT_SOCKET_DIR, DEFAULT_PORT)]);
        assert_eq!(p.user, "alice");
        assert_eq!((p.password, p.dbname, p.sslrootcert), (None, None, None));
        assert_eq!((p.connect_timeout, p.passfile), (None, None));
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.target_session_attrs, TargetSessionAttrs::Any);
        assert_eq!(p.channel_binding, ChannelBinding::Prefer);
        assert_eq!((p.sslcert, p.sslkey, p.require_auth), (None, None, None));
        let env = env_with(&[("HOME", "/h/bob")]);
        let p = ConnParams::parse("  ", &env).unwrap();
        assert_eq!(p.passfile, Some(PathBuf::from("/h/bob/.pgpass")));
    }

    #[test]
    fn without_user_or_pguser_the_user_is_the_effective_os_users_name() {
        // Neither USER nor LOGNAME counts, as in libpq: a hook started with USER unset (or
        // set to another user) connects as the user it runs as.
        let os_user = crate::osuser::name().expect("the test user has a name");
        for env in [
            vec![],
            vec![("USER", "someone-else"), ("LOGNAME", "another")],
        ] {
            let p = ConnParams::parse("host=db", &env_with(&env)).unwrap();
            assert_eq!(p.user, os_user);
        }
        let env = env_with(&[("PGUSER", "replicator"), ("USER", "x")]);
        assert_eq!(ConnParams::parse("", &env).unwrap().user, "replicator");
        assert_eq!(parse("user=given").unwrap().user, "given");
    }

    #[test]
    fn connect_timeout_values() {
        let timeout = |v: &str| {
            parse(&format!("connect_timeout={v}"))
                .unwrap()
                .connect_timeout
        };
        assert_eq!(timeout("0"), None);
        assert_eq!(timeout("-5"), None);
        assert_eq!(timeout("1"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("3"), Some(Duration::from_secs(3)));
    }

    #[test]
    fn names_and_display() {
        for mode in "disable allow prefer require verify-ca verify-full".split(' ') {
            assert_eq!(mode.parse::<SslMode>().unwrap().to_string(), mode);
        }
        for attrs in "any read-write read-only primary standby prefer-standby".split(' ') {
            let parsed: TargetSessionAttrs = attrs.parse().unwrap();
            assert_eq!(parsed.to_string(), attrs);
        }
        assert!("Require".parse::<SslMode>().is_err());
        assert_eq!(tcp("db", 5432).to_string(), "db:5432");
        assert_eq!(tcp("::1", 5433).to_string(), "[::1]:5433");
        assert_eq!(unix("/tmp", 5432).to_string(), "/tmp/.s.PGSQL.5432");
        assert_eq!(tcp("db", 5432).socket_path(), None);
        assert_eq!(tcp("db", 1).host_name(), "db");
        assert_eq!(unix("/var/run/postgresql/", 1).host_name(), "localhost");
        assert_eq!(unix("/tmp", 1).host_name(), "/tmp");
    }

    #[test]
    fn debug_and_errors_redact_password() {
        let debug = format!("{:?}", parse("password=hunter2").unwrap());
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains(r#"password: Some("<redacted>")"#), "{debug}");
        assert!(format!("{:?}", parse("").unwrap()).contains("password: None"));
        assert!(!error("postgresql://u:hunter2%zz@db").contains("hunter2"));
    }

    #[test]
    fn malformed_non_ascii_input_is_an_error_not_a_panic() {
        assert_eq!(error("hôst=x"), "invalid connection option \"hôst\"");
        let inputs = "host='ünï|port=５４３２|postgresql://[é|postgresql://db:é|postgresql://db%é|é|é=|='|\\|'|postgresql://é@x:é|ü ü";
        for input in inputs.split('|') {
            assert!(parse(input).is_err(), "{input}");
        }
        let p = parse("postgresql://j%C3%B6rg@h%C3%B4st/d%C3%A9").unwrap();
        assert_eq!(p.user, "jörg");
        assert_eq!(p.hosts, [tcp("hôst", 5432)]);
        assert_eq!(p.dbname.as_deref(), Some("dé"));
    }

    /// A password file with mode 0600 (tempfile's default on unix).
    fn passfile(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    fn with_passfile(conninfo: &str, file: &tempfile::NamedTempFile) -> ConnParams {
        parse(&format!("{conninfo} passfile='{}'", file.path().display())).unwrap()
    }

    #[test]
    fn pgpass_matching() {
        let file = passfile(
            "# comment\n\
             db1:5432:mydb:alice:not-replication\n\
             db1:5432:replication:alice:first\n\
             db1:5432:replication:alice:second\n\
             \\:\\:1:*:*:alice:colon\\:and\\\\backslash\n\
             localhost:5432:*:*:local\r\n\
             /tmp:*:*:*:tmpdir\n\
             \\*:*:*:*:\n\
             *:*:*:bob:wild:card\n",
        );
        let alice = with_passfile("user=alice dbname=mydb", &file);
        let password = |host: HostAddr| alice.password_for(&host).unwrap_or_default();
        assert_eq!(password(tcp("db1", 5432)), "first");
        // An ordinary SQL connection (walhalla check) looks up its own database's line.
        let sql = alice.password_for_database(&tcp("db1", 5432), "mydb");
        assert_eq!(sql.as_deref(), Some("not-replication"));
        assert_eq!(password(tcp("db1", 5433)), "");
        assert_eq!(password(tcp("::1", 1)), r"colon:and\backslash");
        assert_eq!(password(tcp("localhost", 5432)), "local");
        assert_eq!(password(unix(DEFAULT_SOCKET_DIR, 5432)), "local");
        assert_eq!(password(unix("/tmp", 5432)), "tmpdir");
        assert_eq!(password(unix("/run", 5432)), "");
        // An escaped `*` is literal; a matching empty password is no password.
        assert_eq!(alice.password_for(&tcp("*", 5432)), None);
        let bob = with_passfile("user=bob", &file);
        assert_eq!(bob.password_for(&tcp("any", 1)).unwrap(), "wild:card");
        let explicit = with_passfile("user=alice password=given", &file);
        assert_eq!(explicit.password_for(&tcp("db1", 5432)).unwrap(), "given");
    }

    #[test]
    fn pgpass_unusable_files_are_ignored() {
        let db = tcp("db", 5432);
        let missing = parse("passfile=/nonexistent/pgpass").unwrap();
        assert_eq!(missing.password_for(&db), None);
        assert_eq!(parse("").unwrap().password_for(&db), None);
        let dir = tempfile::tempdir().unwrap();
        let directory = parse(&format!("passfile='{}'", dir.path().display())).unwrap();
        assert_eq!(directory.password_for(&db), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = passfile("*:*:*:*:secret\n");
            let p = with_passfile("", &file);
            assert_eq!(p.password_for(&db).unwrap(), "secret");
            let group_readable = std::fs::Permissions::from_mode(0o640);
            std::fs::set_permissions(file.path(), group_readable).unwrap();
            assert_eq!(p.password_for(&db), None);
        }
    }
}
