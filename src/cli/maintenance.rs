//! Options of the commands that check and trim the archive: `verify` and `prune`.

use clap::Args;

use crate::wal::Lsn;

/// Options of `walhalla verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Re-read only objects stored (and backups stopped) since then: an RFC 3339 time or a
    /// duration ago (`30m`, `12h`, `7d`, `2w`). History, continuity and the window are
    /// always checked in full, from the listing.
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<jiff::Timestamp>,
    /// Objects read at once [default: CPUs + 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallelism: Option<u64>,
    /// Print JSON (schema in docs/ARCHIVE-FORMAT.md).
    #[arg(long)]
    pub json: bool,
}

/// An RFC 3339 time, or a duration before now (`90s`, `30m`, `12h`, `7d`, `2w`).
fn parse_since(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at);
    }
    let ago = parse_duration(text).map_err(|e| {
        format!("{e}; or an RFC 3339 time with its offset, such as 2026-12-05T09:00:00Z")
    })?;
    let ago = jiff::SignedDuration::try_from(ago).map_err(|e| format!("{text:?}: {e}"))?;
    jiff::Timestamp::now()
        .checked_sub(ago)
        .map_err(|e| format!("{text:?}: {e}"))
}

/// A duration: a number and a unit (`s`, `m`, `h`, `d`, `w`), as `retention` reads it.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::retention::parse_duration(text)
}

/// Options of `walhalla prune`. Which of the rules applies when they come from several
/// sources: `crate::settings`' prune rule.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("rule").multiple(true))]
pub struct PruneArgs {
    /// Retain the newest N complete backups (the newest is always retained, and so is the
    /// one restore chooses by default).
    #[arg(long, value_name = "N", group = "rule", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_backups: Option<u64>,
    /// Retain every complete backup that stopped within this long (`14d`, `12h`, `2w`), and
    /// the newest before it on the newest timeline's path, so that every point of it can be
    /// restored; with --keep-backups, the union of both.
    #[arg(long, value_name = "DURATION", group = "rule", value_parser = parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// For an archive without backups: keep the WAL stored within this long, and at least
    /// each timeline's newest segment.
    #[arg(long, value_name = "DURATION", group = "rule", value_parser = parse_duration)]
    pub keep_wal_within: Option<std::time::Duration>,
    /// For an archive without backups: delete the WAL before the segment holding this
    /// position, on every timeline, keeping at least each timeline's newest segment.
    #[arg(long, value_name = "LSN", group = "rule")]
    pub before: Option<Lsn>,
    /// Say what would be deleted, with sizes; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Take backup folders without metadata for interrupted backups, not ones in progress,
    /// and delete them.
    #[arg(long)]
    pub assume_interrupted: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl PruneArgs {
    /// Whether a retention rule is given (by flag, variable or config file).
    pub fn has_rule(&self) -> bool {
        self.keep_backups.is_some()
            || self.keep_within.is_some()
            || self.keep_wal_within.is_some()
            || self.before.is_some()
    }
}
