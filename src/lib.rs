//! walhalla keeps a PostgreSQL cluster's write-ahead log safe off the database host and gives
//! it back when a replica or a restore needs it.
//!
//! # Layout
//! Dependencies point inward: `hooks`, `receiver`, `server` → `archive` → `envelope` → `wal`;
//! `archive`, `restore`, `server` → `timeindex` → `wal`;
//! `receiver`, `backup` → `protocol` → `wal`; `receiver`, `server` → `spool`; `hooks` →
//! `client` → `server`'s header names; `restore` → `backup` → `archive`; `backup` →
//! `receiver` (a backup that streams its own WAL). The archive's tools sit on top: `list` →
//! `coverage` (pure) → `restore::plan`; `verify`, `prune`, `survey` → `list`; `prune` →
//! `retention` (pure) → `restore::plan`; `check` → `archive`, `protocol`. `cli` sees
//! `restore::settings`' value types and `restore::plan`'s time format; `settings` → `cli` (the definitions it gives variables
//! and config-file keys); `protocol`, `server` → `pem`; `protocol`, `server`, `receiver`, `spool` →
//! `osuser`; `archive`, `check` → `mask`.
//!
//! - [`wal`]: PostgreSQL's WAL concepts, pure: positions, file names, page headers, histories.
//! - [`envelope`]: the archived-object byte format (zstd + CRC-32), pure.
//! - [`timeindex`]: a segment's time index (commit times, restore points), its JSON, pure;
//!   written beside each complete segment by `push` and the receiver, read by `restore`.
//! - [`archive`]: object keys and the create-only, verified store on a directory or S3.
//! - [`hooks`]: `push` (archive_command) and `fetch` (restore_command), with its readahead
//!   worker; [`client`] reaches a fetch server.
//! - [`settings`]: where each setting comes from (flag, `WALHALLA_*` variable, config file,
//!   default) and `walhalla config`; [`config`]: the shared settings checked; [`logging`]:
//!   log format and filter.
//! - [`coverage`]: what the archive covers, pure: WAL runs and gaps per timeline, the
//!   restorable window along each timeline path.
//! - [`demo`]: `walhalla demo`, the main job on a throwaway PostgreSQL.
//! - [`cli`]: the command line.
//! - [`list`]: `walhalla list`: backups, WAL runs and gaps, the restorable window.
//! - [`prune`]: `walhalla prune`: the retention rule ([`retention`], pure) carried out.
//! - [`check`]: `walhalla check`: the server's archiving settings, the archive and a WAL
//!   round trip, each with a verdict; over SQL.
//! - [`verify`]: `walhalla verify`: every object read back, histories, backups against their
//!   manifests, continuity.
//! - [`protocol`]: the replication client: conninfo, connection, TLS, message framing; and
//!   an ordinary SQL connection from the same settings (tokio-postgres), for `check` and for
//!   what the receiver can ask only over SQL.
//! - [`receiver`]: `receive`, streaming into a spool and uploading complete segments.
//! - [`survey`]: the daemon's periodic look at its archive: gaps and the restorable window as
//!   metrics.
//! - [`spool`]: the receiver's local spool, which the fetch server also reads.
//! - [`backup`]: `walhalla backup` (`BASE_BACKUP` streamed into the archive in pieces), the
//!   backups' metadata and catalogue; [`backup::manifest`] parses and verifies PostgreSQL's
//!   manifest.
//! - [`restore`]: `walhalla restore`: the plan (backup, timeline path, WAL needed; for a
//!   restore point or a time, what the time indexes say: [`restore::targets`]), then
//!   [`restore::extract`] unpacks the pieces, verified and durable, and the recovery settings.
//! - [`retention`]: `walhalla prune`'s retention rule, pure: which backups and WAL go.
//! - [`server`]: the fetch server (`/wal`, `/metrics`, `/status`); [`metrics`] and [`daemon`]
//!   hold what it shares with the receiver.
//! - [`osuser`]: the operating-system user: name, home, state directory.
//! - [`mask`]: secrets hidden in text shown but not written here (a command read from the
//!   server, a URL in a store's message), pure.
//! - [`pem`]: certificates and keys from PEM files, for every TLS endpoint.
//! - [`fsutil`], [`mapped`], [`blocking`], [`backoff`], [`progress`]: durable file writes;
//!   files read through a mapping, and a mapped page that cannot be read; blocking work off
//!   the reactor; jittered backoff; a progress line on a terminal.

pub mod archive;
pub mod backoff;
pub mod backup;
pub mod blocking;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod coverage;
pub mod daemon;
pub mod demo;
pub mod envelope;
pub mod failpoint;
pub mod fsutil;
pub mod hooks;
pub mod list;
pub mod logging;
pub mod mapped;
pub mod mask;
pub mod metrics;
pub mod osuser;
pub mod pem;
pub mod progress;
pub mod protocol;
pub mod prune;
pub mod receiver;
pub mod restore;
pub mod retention;
pub mod server;
pub mod settings;
pub mod spool;
pub mod survey;
pub mod timeindex;
pub mod verify;
pub mod wal;
