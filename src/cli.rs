//! The command line: the only module that sees clap types. Flags take precedence over their
//! environment variables, which take precedence over the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod help;
mod maintenance;
mod restore;

pub use maintenance::{PruneArgs, VerifyArgs};
pub use restore::{ArchiveMode, RestoreArgs, tablespace_map};

use crate::backup::take::WalSource;
use crate::client::ClientSettings;
use crate::config::{COMPRESSION_LEVELS, Overrides};
use crate::logging::LogFormat;
use crate::server::ServerOptions;
use crate::wal::{Lsn, SegmentName, SystemId, WalFileName};

/// Keeps a PostgreSQL cluster's write-ahead log safe off the database host.
#[derive(Debug, Parser)]
#[command(
    name = "walhalla",
    // The range is `wal::version::SUPPORTED_RANGE`'s; a test keeps the two equal.
    version = concat!(env!("CARGO_PKG_VERSION"), ", for PostgreSQL 13 to 18"),
    after_help = crate::hooks::EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after the command name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Archive location: a directory (`/path` or `file:///path`), `s3://bucket/prefix`
    /// (region and endpoint from AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP; credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else AWS_PROFILE, web identity, ECS or
    /// the instance role), `gs://bucket/prefix` (GOOGLE_*) or `az://container/prefix`
    /// (AZURE_*).
    #[arg(long, global = true, env = "WALHALLA_ARCHIVE", value_name = "URL")]
    pub archive: Option<String>,

    /// TOML config file holding any setting, under its key (`walhalla config` lists them)
    /// [default: /etc/walhalla/walhalla.toml, if it exists].
    #[arg(long, global = true, env = "WALHALLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The cluster's system identifier (as pg_controldata prints it). By default push and
    /// fetch read it from global/pg_control in the current directory (the data directory
    /// when PostgreSQL runs them), receive and backup ask the server, list and verify show
    /// every cluster, and prune and restore take the archive's only cluster.
    #[arg(long, global = true, env = "WALHALLA_SYSTEM_ID", value_name = "ID")]
    pub system_id: Option<SystemId>,

    /// zstd compression level for new objects.
    #[arg(long, global = true, env = "WALHALLA_COMPRESSION_LEVEL", value_name = "LEVEL",
          default_value_t = crate::envelope::DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(*COMPRESSION_LEVELS.start() as i64..=*COMPRESSION_LEVELS.end() as i64))]
    pub compression_level: i32,

    /// Deadline in seconds, retries included: of a whole push or fetch (a --server gets half
    /// of it when --archive is there to fall back to), of each archive operation of the other
    /// commands, of each of check's steps (its round trip waits --wait).
    #[arg(long, global = true, env = "WALHALLA_TIMEOUT", value_name = "SECONDS",
          default_value_t = crate::config::DEFAULT_TIMEOUT.as_secs())]
    pub timeout: u64,

    /// Log lines as `text` or `json` (one object per line) [default: text].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter: a level (off, error, warn, info, debug, trace) and TARGET=LEVEL directives,
    /// comma-separated, e.g. `info,walhalla::archive=debug` [default: info for receive, serve,
    /// backup and restore; warn for the others].
    #[arg(long, global = true, env = "WALHALLA_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Storage class of new objects (S3: STANDARD_IA, GLACIER_IR…; GCS: NEARLINE…; Azure:
    /// the access tier, Cool…) [default: the bucket's].
    #[arg(long, global = true, value_name = "CLASS")]
    pub storage_class: Option<String>,

    /// S3 server-side encryption of new objects: AES256 (SSE-S3) or aws:kms (SSE-KMS)
    /// [default: the bucket's].
    #[arg(long, global = true, value_name = "KIND")]
    pub sse: Option<String>,

    /// The KMS key (id or ARN) for --sse aws:kms [default: the account's].
    #[arg(long, global = true, value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
}

impl GlobalArgs {
    /// The settings given here, for `Config::resolve`.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            archive: self.archive.clone(),
            system_id: self.system_id,
            compression_level: Some(self.compression_level),
            timeout_seconds: Some(self.timeout),
            storage_class: self.storage_class.clone(),
            sse: self.sse.clone(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file: archive_command = 'walhalla push %p'.
    ///
    /// Accepts segments, .partial segments, .history and .backup files; checks the content
    /// against the name and the cluster before storing it, create-only.
    Push {
        /// The file to archive (PostgreSQL's %p).
        path: PathBuf,
    },
    /// Take a base backup of a server into the archive.
    ///
    /// Streams the files over a replication connection (BASE_BACKUP), compressed and checked,
    /// with the server's manifest; then waits for the backup's WAL to be archived. Exit 0 when
    /// the backup is complete, 1 otherwise.
    Backup(BackupArgs),
    /// Restore a base backup into a new data directory, set up to recover to a target.
    ///
    /// Chooses the backup for the target, checks that the WAL it needs is archived, writes
    /// and verifies every file against the server's manifest, and adds restore_command and
    /// the target to postgresql.auto.conf. Start the server afterwards.
    Restore(RestoreArgs),
    /// List what the archive holds: per cluster its backups, its WAL per timeline (runs of
    /// segments, gaps named), history files, and the restorable window along each timeline.
    List {
        /// Print JSON (schema in docs/ARCHIVE-FORMAT.md).
        #[arg(long)]
        json: bool,
    },
    /// Read the archive back and report every problem: objects that do not decode or whose
    /// checksum or content does not match their name, history files that do not chain,
    /// backups whose files do not match their manifest, and missing WAL. Exit 0 when clean,
    /// 1 when anything is wrong.
    Verify(VerifyArgs),
    /// Delete backups outside the retention and the WAL no retained backup needs (along
    /// every timeline path it can follow), receiver snapshots of segments archived in full;
    /// history files always stay. Refuses while a backup may be in progress.
    Prune(PruneArgs),
    /// Is this cluster really protected? Checks the server's archiving settings (or a
    /// receiver's slot), the archive (reachable, writable, create-only), and a round trip:
    /// pg_switch_wal() on the primary and the switched segment in the archive. Exit 0 when
    /// every check passes, 1 otherwise.
    Check(CheckArgs),
    /// Stream WAL from a server over a physical replication slot and archive every segment.
    ///
    /// Runs until SIGTERM/SIGINT (then archives what is complete and exits 0), until --endpos
    /// is archived, or until a fatal problem (exit 1); reconnects after any other failure.
    Receive(ReceiveArgs),
    /// Show the main jobs on a throwaway PostgreSQL: its WAL streamed into a local archive,
    /// a base backup, rows deleted after a restore point and brought back by a point-in-time
    /// restore; then what it showed and what to run next.
    Demo {
        /// Keep the temporary directory (servers, archive, spool, logs) instead of removing it.
        #[arg(long)]
        keep: bool,
    },
    /// Restore one WAL file: restore_command = 'walhalla fetch %f %p'.
    ///
    /// Writes the verified original bytes to the destination atomically. Asks the fetch
    /// server first when one is given, and fetches the next segments ahead in the background
    /// into pg_wal/walhalla-prefetch, so the next calls only move a file into place.
    Fetch(FetchArgs),
    /// Serve the archive to restore_commands (GET /wal/NAME), with /metrics, /status and
    /// /healthz, for hosts that do not run `walhalla receive --listen`.
    Serve(ServeArgs),
    /// Print every command's settings as they resolve here, each with its source (flag,
    /// environment variable, config file or default), passwords masked; checks the config file.
    Config(ConfigArgs),
    /// Print a running server's /status for a person.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Print the JSON as the server sent it.
        #[arg(long)]
        json: bool,
        /// Only ask /healthz, which needs no token: exit 0 when the server answers, 1
        /// otherwise (a container's health check).
        #[arg(long, conflicts_with = "json")]
        healthz: bool,
    },
    /// The background readahead of `walhalla fetch`; started by it, not by hand.
    #[command(hide = true)]
    PrefetchWorker {
        /// The cache directory to fill.
        cache: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Segments to keep ahead.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_PREFETCH)]
        prefetch: u16,
    },
}

/// Options of `walhalla config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Only this command's settings.
    pub command: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Segments `walhalla fetch` keeps ahead by default, chosen by measurement
/// (benches/README.md).
pub const DEFAULT_PREFETCH: u16 = 8;

/// Options of `walhalla fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The file name PostgreSQL asks for (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// For a last recovery after losing the primary: serve a segment the archive lacks
    /// from the newest partial snapshot the receiver stored of it, zero-padded, so replay
    /// reaches the last archived byte. Never use it on a standby that keeps following.
    #[arg(long)]
    pub partial: bool,
    /// For a recovery that replays the archive to its end (no recovery target), as `walhalla
    /// restore` writes it: the newest segment it found the archive holding, with every one
    /// before it that recovery needs. A miss of a segment through it, on its timeline or an
    /// older one (deleted since), is a hole, and fetch fails so that recovery stops instead of
    /// ending early without the WAL after it (nor is the hole filled from a snapshot with
    /// --partial). A miss past it or on a newer timeline, of a segment before its timeline
    /// began, with a valid copy in pg_wal, or in standby mode is a plain miss.
    #[arg(long, value_name = "SEGMENT", value_parser = parse_segment_name)]
    pub to_end: Option<SegmentName>,
    /// Segments to fetch ahead in the background; 0 turns readahead off.
    #[arg(long, env = "WALHALLA_PREFETCH", value_name = "N", default_value_t = DEFAULT_PREFETCH,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub prefetch: u16,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A WAL segment's name, as `--to-end` takes it.
fn parse_segment_name(text: &str) -> Result<SegmentName, String> {
    match text.parse::<WalFileName>()? {
        WalFileName::Segment(segment) => Ok(segment),
        _ => Err(format!("{text:?} is not a WAL segment's name")),
    }
}

/// How a client reaches the fetch server.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// The fetch server (`walhalla receive --listen` or `walhalla serve`), such as
    /// http://127.0.0.1:7480; when it cannot answer, the archive is read directly.
    #[arg(long, env = "WALHALLA_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// File holding the bearer token to send to the server [default, for a server at localhost
    /// or a loopback address: ~/.local/state/walhalla/token, when it exists].
    #[arg(long, env = "WALHALLA_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) the server's certificate must chain to.
    #[arg(long, env = "WALHALLA_SERVER_CA", value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to the server.
    #[arg(
        long,
        env = "WALHALLA_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "WALHALLA_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The settings for `client::ServerClient`.
    pub fn settings(&self) -> ClientSettings {
        ClientSettings {
            server: self.server.clone(),
            token_file: self.token_file.clone(),
            server_ca: self.server_ca.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// How the fetch server listens and whom it lets in.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Listen on this address (loopback unless told otherwise).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token every request must carry (Authorization: Bearer …)
    /// [default: ~/.local/state/walhalla/token, created with a random token on first start,
    /// where local clients of the same user find it; not used with --tls-client-ca].
    #[arg(long, env = "WALHALLA_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve without authenticating clients: every local user can then download every WAL
    /// file, the whole database. Loopback only; logs a warning.
    #[arg(long, conflicts_with = "token_file")]
    pub no_auth: bool,
    /// Certificate chain (PEM) for TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS client certificates signed by these CA certificates (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds between surveys of the archive, which publish its gaps and restorable window
    /// in /metrics and /status (each lists the cluster's WAL and every backup's folders); 0
    /// turns them off.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub survey_interval: u64,
}

impl ListenArgs {
    /// How often the archive is surveyed, if at all.
    pub fn survey_interval(&self) -> Option<std::time::Duration> {
        (self.survey_interval > 0).then(|| std::time::Duration::from_secs(self.survey_interval))
    }

    /// The settings for `server::Server`.
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            listen: self.listen,
            token_file: self.token_file.clone(),
            no_auth: self.no_auth,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
        }
    }
}

/// Options of `walhalla serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// How to reach the server, for the commands that open a replication connection.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Connection string: key=value pairs or a postgres:// URI, libpq style (PGHOST, PGPORT,
    /// PGUSER, PGPASSWORD, PGPASSFILE, PGAPPNAME, PGSSLMODE fill in what it leaves out).
    /// Several hosts (host=a,b) are tried in order; add target_session_attrs=read-write to
    /// follow the primary. application_name defaults to walhalla.
    #[arg(
        short = 'd',
        long = "dbname",
        value_name = "CONNINFO",
        default_value = ""
    )]
    pub conninfo: String,
    /// File whose first line is the password, for a connection string without one (a
    /// password belongs in a file readable by walhalla's user only, never in the config
    /// file or on a command line; libpq's passfile= and PGPASSFILE work too).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// Options of `walhalla backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The backup's label (in backup_label, and in `walhalla list --json`) [default: walhalla ID].
    #[arg(long)]
    pub label: Option<String>,
    /// Start with an immediate checkpoint instead of a spread one (PostgreSQL's
    /// checkpoint_completion_target), so the backup begins at once at the cost of an I/O burst.
    #[arg(long)]
    pub fast: bool,
    /// Seconds to wait, once the files are stored, for the WAL from the backup's start to its
    /// stop to be archived (by archive_command or walhalla receive); a backup whose WAL did not
    /// arrive is kept, marked incomplete, and never chosen by restore.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub wal_timeout: u64,
    /// Where the backup's WAL comes from: `wait` for archive_command or `walhalla receive`
    /// to archive it, or `stream` it into the archive through a temporary replication slot
    /// while the backup runs (for a cluster whose WAL nothing else archives).
    #[arg(long, value_enum, value_name = "SOURCE", default_value = "wait")]
    pub wal: WalSource,
    /// Have the server compress the backup with zstd (at --compression-level) before sending
    /// it: less network traffic and CPU here, more CPU on the server (PostgreSQL 15 and
    /// later, built with zstd). By default this host compresses, on all its cores.
    #[arg(long)]
    pub server_compression: bool,
    /// Pieces (4 MiB of the backup each) compressed and stored at once [default: CPUs + 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallelism: Option<u64>,
    /// Print the backup's metadata as JSON instead of a summary line.
    #[arg(long)]
    pub json: bool,
}

/// Options of `walhalla check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The physical slot `walhalla receive` streams from, when it (not archive_command)
    /// archives the WAL: the slot must exist and be active, and the round trip goes through it.
    #[arg(short = 'S', long, value_name = "NAME", value_parser = parse_slot_name)]
    pub slot: Option<String>,
    /// Seconds the switched segment may take to reach the archive.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub wait: u64,
    /// Print JSON (shape in README).
    #[arg(long)]
    pub json: bool,
}

/// Options of `walhalla receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// The physical replication slot to stream from (strongly recommended: without it the
    /// primary may recycle WAL the archive does not have yet).
    #[arg(short = 'S', long, value_name = "NAME", value_parser = parse_slot_name)]
    pub slot: Option<String>,

    /// Create the slot if it does not exist, reserving WAL at once.
    #[arg(long, requires = "slot")]
    pub create_slot: bool,

    /// Where to start when neither the spool nor the archive holds WAL of the server's
    /// timeline yet (default: the slot's restart position, else the server's current one).
    #[arg(long, value_name = "LSN")]
    pub start_lsn: Option<Lsn>,

    /// Stop, exiting 0, once everything up to this position is archived.
    #[arg(long, value_name = "LSN")]
    pub endpos: Option<Lsn>,

    /// Local directory for WAL not yet archived, one per receiver (held while it runs)
    /// [default: $XDG_STATE_HOME/walhalla/spool-SYSTEMID, else
    /// ~/.local/state/walhalla/spool-SYSTEMID].
    #[arg(long, env = "WALHALLA_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,

    /// Stop reading from the server while the spool holds this much (the slot then keeps
    /// the WAL on the primary), at least two WAL segments; accepts kB, MB, GB suffixes
    /// (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "1GB", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,

    /// Seconds between uploads of the segment being received, as a partial object, so losing
    /// this host loses at most that much WAL; 0 turns them off.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub partial_interval: u64,

    /// Seconds between status updates to the server, at the most (and at most a third of the
    /// server's wal_sender_timeout).
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub status_interval: u64,

    /// Seconds without a message from the server after which the connection counts as dead
    /// and is made again; after half of it a reply is asked for, as PostgreSQL's
    /// wal_receiver_timeout does. 0 waits forever.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub receive_timeout: u64,

    /// Seconds a shutdown (SIGTERM, SIGINT) waits for uploads; what is not archived by then
    /// stays in the spool and is archived at the next start.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// Report WAL as flushed once it is fsynced in the spool, not once it is archived, so the
    /// receiver can be a synchronous standby (see README: what each mode guarantees).
    #[arg(long)]
    pub synchronous: bool,

    /// Segments uploaded in parallel at most.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub upload_parallelism: u64,

    /// The fetch server: without --listen, none runs.
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// A replication slot's name as PostgreSQL accepts it: lower-case letters, digits and
/// underscores, at most 63 bytes (a name it refuses can never become valid: say so now).
fn parse_slot_name(text: &str) -> Result<String, String> {
    let valid = (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a replication slot name: 1 to 63 lower-case letters, digits and underscores"
        ))
    }
}

/// Parses a byte count with an optional kB/MB/GB (or KiB/MiB/GiB) suffix, powers of 1024.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match text[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}")),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a byte count such as 1GB"))
}

impl Command {
    /// The name a log line or an error message gives the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Push { .. } => "push",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::List { .. } => "list",
            Command::Verify(_) => "verify",
            Command::Prune(_) => "prune",
            Command::Fetch { .. } => "fetch",
            Command::Check(_) => "check",
            Command::Receive(_) => "receive",
            Command::Demo { .. } => "demo",
            Command::Serve(_) => "serve",
            Command::Status { .. } => "status",
            Command::Config(_) => "config",
            Command::PrefetchWorker { .. } => "prefetch-worker",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_states_the_supported_range() {
        use clap::CommandFactory;
        let version = Cli::command().get_version().unwrap_or_default().to_string();
        assert!(
            version.ends_with(&format!(", for {}", crate::wal::version::SUPPORTED_RANGE)),
            "{version}"
        );
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1GB"), Ok(1 << 30));
        assert_eq!(parse_slot_name("walhalla_1"), Ok("walhalla_1".into()));
        for bad in ["BadName", "a-b", "", &"x".repeat(64)] {
            assert!(parse_slot_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "GB", "1XB", "-1MB", "99999999999999TB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }
}
