//! Options of `walhalla restore`: the backup, the recovery target and where the data goes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use crate::restore::plan::parse_time;
use crate::restore::settings::TimelineChoice;
use crate::wal::Lsn;

/// Options of `walhalla restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The new data directory (created, or empty).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The backup: `latest` chooses the newest complete one from which the target can be
    /// reached; or a backup's id from `walhalla list`.
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub backup: String,
    /// Recover to this time, with a time zone: an offset or Z (2026-12-02T14:05:00Z,
    /// 2026-12-02 14:05:00+01), UTC, or a zone's full name (2026-12-02 14:05:00
    /// Europe/Berlin); read as PostgreSQL reads it, written in UTC.
    #[arg(long, value_name = "TIME", group = "target_kind", value_parser = checked_time)]
    pub target_time: Option<String>,
    /// Recover to this WAL position.
    #[arg(long, value_name = "LSN", group = "target_kind")]
    pub target_lsn: Option<Lsn>,
    /// Recover to this transaction id.
    #[arg(long, value_name = "XID", group = "target_kind", value_parser = checked_xid)]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target_kind", value_parser = checked_restore_point)]
    pub target_name: Option<String>,
    /// `immediate`: stop as soon as the backup is consistent.
    #[arg(long, value_name = "immediate", value_parser = ["immediate"], group = "target_kind")]
    pub target: Option<String>,
    /// What the server does at the target: promote, pause or shutdown [default: PostgreSQL's,
    /// pause].
    #[arg(long, value_name = "ACTION", value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: Option<String>,
    /// The timeline to recover along: latest, current (the backup's) or a number
    /// [default: latest].
    #[arg(long, value_name = "TIMELINE")]
    pub target_timeline: Option<TimelineChoice>,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub target_exclusive: bool,
    /// Whether the restored server archives: `off` keeps a copy from ever adding its timeline
    /// to the archive it came from, even once promoted.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = ArchiveMode::Preserve)]
    pub archive_mode: ArchiveMode,
    /// Write standby.signal instead of recovery.signal: the server stays a standby.
    #[arg(long, conflicts_with = "partial")]
    pub standby: bool,
    /// The last recovery after losing the primary and the receiver's host: restore_command
    /// runs `fetch --partial`, so recovery replays the receiver's snapshots past the last
    /// complete segment, to the last byte archived. Without a target, a segment missing
    /// before the archive's end that a snapshot holds (a lost segment's WAL up to its damage)
    /// is replayed from it, and recovery ends there, with a warning.
    #[arg(long)]
    pub partial: bool,
    /// Empty the data directory, and the tablespace directories named with --tablespace-map,
    /// first if they hold anything (a tablespace's original location is never emptied).
    #[arg(long)]
    pub force: bool,
    /// Put tablespace OID in DIR instead of where it was (repeatable).
    #[arg(long, value_name = "OID=DIR", value_parser = parse_tablespace_mapping)]
    pub tablespace_map: Vec<(u32, PathBuf)>,
    /// The fetch server the restore_command asks first.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The token file the restore_command's fetch sends to --server (PostgreSQL's user must
    /// be able to read it).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) --server's certificate must chain to, for the restore_command.
    #[arg(long, value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// Pieces fetched at once [default: CPUs + 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallelism: Option<u64>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A time `restore` can read (see [`parse_time`]), kept as given for messages.
fn checked_time(text: &str) -> Result<String, String> {
    parse_time(text).map(|_| text.to_string())
}

/// A transaction id: a number (PostgreSQL's `recovery_target_xid` also takes a 64-bit one,
/// and compares its low 32 bits with each commit's). 0 (invalid), 1 (bootstrap) and 2
/// (frozen) are never a transaction's: no commit matches them, and recovery would replay to
/// the end and fail.
fn checked_xid(text: &str) -> Result<String, String> {
    const FIRST_NORMAL_XID: u64 = 3;
    match text.parse::<u64>() {
        Ok(xid) if xid & u64::from(u32::MAX) < FIRST_NORMAL_XID => Err(format!(
            "{text} is not a transaction's id: transaction ids start at {FIRST_NORMAL_XID}"
        )),
        Ok(_) => Ok(text.to_string()),
        Err(_) => Err(format!("{text:?} is not a transaction id (a number)")),
    }
}

/// A name `pg_create_restore_point` can have given: not empty (PostgreSQL reads an empty
/// `recovery_target_name` as no target at all), at most 63 bytes (MAXFNAMELEN - 1).
fn checked_restore_point(text: &str) -> Result<String, String> {
    match text.len() {
        0 => Err("a restore point's name cannot be empty".into()),
        1..=63 => Ok(text.to_string()),
        n => Err(format!(
            "{n} bytes is longer than a restore point's name can be (63)"
        )),
    }
}

/// Parses `OID=DIR`.
fn parse_tablespace_mapping(text: &str) -> Result<(u32, PathBuf), String> {
    let (oid, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not OID=DIR"))?;
    let oid = oid
        .parse()
        .map_err(|_| format!("{oid:?} is not a tablespace OID"))?;
    if !dir.starts_with('/') {
        return Err(format!("{dir:?} is not an absolute path"));
    }
    Ok((oid, PathBuf::from(dir)))
}

/// The `--tablespace-map` pairs by OID: each tablespace mapped once, each directory given to
/// one tablespace.
pub fn tablespace_map(pairs: Vec<(u32, PathBuf)>) -> Result<BTreeMap<u32, PathBuf>, String> {
    let mut map = BTreeMap::new();
    for (oid, dir) in pairs {
        if let Some((other, _)) = map.iter().find(|(_, mapped)| **mapped == dir) {
            return Err(format!(
                "--tablespace-map gives {} to tablespaces {other} and {oid}: each needs its own directory",
                dir.display()
            ));
        }
        if let Some(first) = map.insert(oid, dir) {
            return Err(format!(
                "--tablespace-map maps tablespace {oid} twice (to {} and {})",
                first.display(),
                map[&oid].display()
            ));
        }
    }
    Ok(map)
}

/// What a restored server does about archiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveMode {
    /// Archive as the backup's own settings say.
    Preserve,
    /// Write archive_mode = off: archive nothing.
    Off,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    #[test]
    fn a_tablespace_is_mapped_once_to_a_directory_of_its_own() {
        use std::path::PathBuf;
        let map = |pairs: &[(u32, &str)]| {
            super::tablespace_map(pairs.iter().map(|(o, d)| (*o, PathBuf::from(d))).collect())
        };
        assert_eq!(map(&[(1, "/a"), (2, "/b")]).unwrap().len(), 2);
        let twice = map(&[(16385, "/a"), (16385, "/b")]).unwrap_err();
        assert!(twice.contains("maps tablespace 16385 twice"), "{twice}");
        let shared = map(&[(1, "/a"), (2, "/a")]).unwrap_err();
        assert!(shared.contains("to tablespaces 1 and 2"), "{shared}");
    }

    #[test]
    fn a_target_that_cannot_be_is_a_usage_error() {
        for bad in [
            ["--target-xid", "abc"],
            ["--target-xid", "0"],
            ["--target-xid", "2"],
            ["--target-xid", "4294967298"], // epoch 1, xid 2
            ["--target-name", ""],
            ["--target-name", &"x".repeat(64)],
            ["--target-time", "yesterday"],
            // No time zone: PostgreSQL would read it in the server's, walhalla cannot.
            ["--target-time", "2026-12-04 13:18:14"],
        ] {
            let args = ["walhalla", "restore", "--to", "/tmp/x"]
                .into_iter()
                .chain(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
        for good in [
            ["--target-xid", "746"],
            ["--target-xid", "3"],
            ["--target-name", "before_b"],
            ["--target-time", "2026-12-04 13:18:14+01"],
        ] {
            let args = ["walhalla", "restore", "--to", "/tmp/x"]
                .into_iter()
                .chain(good);
            assert!(Cli::try_parse_from(args).is_ok(), "{good:?} refused");
        }
    }
}
