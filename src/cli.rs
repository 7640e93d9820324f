//! The command line: the only module that sees clap types. Flags take precedence over their
//! environment variables, which take precedence over the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{COMPRESSION_LEVELS, Overrides};
use crate::wal::SystemId;

/// Keeps a PostgreSQL cluster's write-ahead log safe off the database host.
#[derive(Debug, Parser)]
#[command(name = "walhalla", version, after_help = crate::hooks::EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after the command name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Archive location: a directory (`/path` or `file:///path`) or `s3://bucket/prefix`
    /// (credentials, region and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
    #[arg(long, global = true, env = "WALHALLA_ARCHIVE", value_name = "URL")]
    pub archive: Option<String>,

    /// TOML config file with any of: archive, system_id, compression_level, timeout_seconds.
    #[arg(long, global = true, env = "WALHALLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The cluster's system identifier (as pg_controldata prints it); by default read from
    /// global/pg_control in the current directory, which is the data directory when
    /// PostgreSQL runs the command.
    #[arg(long, global = true, env = "WALHALLA_SYSTEM_ID", value_name = "ID")]
    pub system_id: Option<SystemId>,

    /// zstd compression level for new objects [default: 3].
    #[arg(long, global = true, env = "WALHALLA_COMPRESSION_LEVEL", value_name = "LEVEL",
          value_parser = clap::value_parser!(i32).range(*COMPRESSION_LEVELS.start() as i64..=*COMPRESSION_LEVELS.end() as i64))]
    pub compression_level: Option<i32>,

    /// Deadline in seconds for one archive operation, retries included [default: 60].
    #[arg(long, global = true, env = "WALHALLA_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

impl GlobalArgs {
    /// The settings given here, for `Config::resolve`.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            archive: self.archive.clone(),
            config_file: self.config.clone(),
            system_id: self.system_id,
            compression_level: self.compression_level,
            timeout_seconds: self.timeout,
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
    /// Restore one WAL file: restore_command = 'walhalla fetch %f %p'.
    ///
    /// Writes the verified original bytes to the destination atomically.
    Fetch {
        /// The file name PostgreSQL asks for (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
    },
}

impl Command {
    /// The name a log line or an error message gives the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Push { .. } => "push",
            Command::Fetch { .. } => "fetch",
        }
    }
}
