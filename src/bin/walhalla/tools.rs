//! The archive's one-shot tools: `backup`, `restore`, `list`, `verify`, `check` and `prune`,
//! each printing its report for a person or as JSON, and returning its exit code.

use std::time::Duration;

use anyhow::Context;
use walhalla::cli::{ArchiveMode, BackupArgs, CheckArgs, PruneArgs, RestoreArgs, VerifyArgs};
use walhalla::config::{Config, UsageError};
use walhalla::hooks;

use crate::output::{emit, pretty_json};
use crate::services::connection;

/// `walhalla backup`: exit 0 when the backup is complete, 1 when its WAL did not arrive.
pub async fn backup(config: &Config, args: BackupArgs) -> anyhow::Result<u8> {
    let conn = connection(&args.conn)?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = walhalla::backup::take::BackupOptions {
        conn,
        label: args.label,
        fast: args.fast,
        wal_timeout: Duration::from_secs(args.wal_timeout),
        compression_level: config.compression_level,
        parallelism: args.parallelism.map_or(cpus + 1, |n| n as usize),
        wal: args.wal,
        server_compression: args.server_compression,
    };
    let archive = hooks::open_archive(config, true, None).await?;
    let meta = walhalla::backup::take::run(&options, &archive).await?;
    if args.json {
        emit(&pretty_json(&meta)?)?;
    } else {
        emit(&(walhalla::backup::describe(&meta) + "\n"))?;
    }
    Ok(if meta.is_complete() { 0 } else { 1 })
}

/// `walhalla restore`.
pub async fn restore(config: &Config, args: RestoreArgs) -> anyhow::Result<()> {
    use walhalla::restore::plan::{Target, parse_time};
    use walhalla::restore::settings::Recovery;
    let target = if let Some(text) = args.target_time {
        Target::Time {
            at: parse_time(&text).map_err(|e| anyhow::anyhow!(e))?,
            text,
        }
    } else if let Some(lsn) = args.target_lsn {
        Target::Lsn(lsn)
    } else if let Some(xid) = args.target_xid {
        Target::Xid(xid)
    } else if let Some(name) = args.target_name {
        Target::Name(name)
    } else if args.target.is_some() {
        Target::Immediate
    } else {
        Target::End
    };
    let walhalla = std::env::current_exe().context("the path of this walhalla")?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = walhalla::restore::RestoreOptions {
        dest: std::path::absolute(&args.to).context("the data directory's path")?,
        backup: Some(args.backup),
        system_id: config.system_id,
        recovery: Recovery {
            walhalla: walhalla.display().to_string(),
            archive: config.archive()?.to_string(),
            server_flags: server_flags(
                args.server.as_deref(),
                [
                    ("--token-file", args.token_file),
                    ("--server-ca", args.server_ca),
                ],
            )?,
            server: args.server,
            target,
            action: args
                .target_action
                .map(|a| a.parse())
                .transpose()
                .map_err(|e: String| anyhow::anyhow!(e))?,
            timeline: args.target_timeline,
            exclusive: args.target_exclusive,
            archive_off: args.archive_mode == ArchiveMode::Off,
            partial: args.partial,
        },
        standby: args.standby,
        force: args.force,
        tablespace_map: walhalla::cli::tablespace_map(args.tablespace_map).map_err(UsageError)?,
        parallelism: args.parallelism.map_or(cpus + 1, |n| n as usize),
    };
    options.recovery.check().map_err(UsageError)?;
    if walhalla::osuser::is_root() {
        tracing::warn!(
            "restoring as root: the files will be root's, and PostgreSQL does not run as root; \
             run walhalla restore as the user PostgreSQL runs as, or give that user the directories before starting it"
        );
    }
    let archive = hooks::open_archive(config, false, None).await?;
    let report = walhalla::restore::run(&options, &archive).await?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&(walhalla::restore::describe(&report) + "\n"))?;
    }
    Ok(())
}

/// The flags restore_command's `fetch --server` gets, with absolute paths (it runs in the
/// data directory); none without a server.
fn server_flags<const N: usize>(
    server: Option<&str>,
    files: [(&'static str, Option<std::path::PathBuf>); N],
) -> anyhow::Result<Vec<(&'static str, String)>> {
    if server.is_none() {
        return Ok(Vec::new());
    }
    let mut flags = Vec::new();
    for (flag, file) in files {
        if let Some(file) = file {
            let file =
                std::path::absolute(&file).with_context(|| format!("{flag} {}", file.display()))?;
            flags.push((flag, file.display().to_string()));
        }
    }
    Ok(flags)
}

/// `walhalla list`.
pub async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let archive = hooks::open_archive(config, false, None).await?;
    let listing = walhalla::list::listing(&archive, config.system_id).await?;
    if json {
        emit(&pretty_json(&listing)?)?;
    } else {
        emit(&walhalla::list::describe(&listing))?;
    }
    Ok(())
}

/// `walhalla verify`: exit 0 when clean, 1 when anything is wrong.
pub async fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<u8> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = walhalla::verify::VerifyOptions {
        since: args.since,
        parallelism: args.parallelism.map_or(cpus + 1, |n| n as usize),
    };
    let archive = hooks::open_archive(config, false, None).await?;
    let report = walhalla::verify::run(&archive, config.system_id, options).await?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&walhalla::verify::describe(&report))?;
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}

/// `walhalla check`: exit 0 when every check passes, 1 otherwise.
pub async fn check(config: &Config, args: CheckArgs) -> anyhow::Result<u8> {
    let conn = connection(&args.conn)?;
    let options = walhalla::check::CheckOptions {
        conn,
        slot: args.slot,
        wait: Duration::from_secs(args.wait),
        archive: config.archive.clone(),
        system_id: config.system_id,
        timeout: config.timeout,
        store: config.store.clone(),
    };
    let report = walhalla::check::run(&options).await;
    let text = if args.json {
        pretty_json(&report)?
    } else {
        walhalla::check::describe(&report)
    };
    emit(&text)?;
    Ok(if report.ok { 0 } else { 1 })
}

/// `walhalla prune`.
pub async fn prune(config: &Config, args: PruneArgs) -> anyhow::Result<()> {
    use walhalla::retention::{Policy, Rule};
    let rule = if let Some(within) = args.keep_wal_within {
        Rule::WalWithin(within)
    } else if let Some(lsn) = args.before {
        Rule::WalBefore(lsn)
    } else {
        Rule::Backups {
            keep: args.keep_backups.map(|n| n as usize),
            within: args.keep_within,
        }
    };
    let options = walhalla::prune::PruneOptions {
        policy: Policy {
            rule,
            now: jiff::Timestamp::now(),
            assume_interrupted: args.assume_interrupted,
        },
        dry_run: args.dry_run,
    };
    let archive = hooks::open_archive(config, false, None).await?;
    let system_id = archive.chosen_cluster(config.system_id).await?;
    let report = walhalla::prune::run(&archive.cluster(system_id), options).await?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&walhalla::prune::describe(&report))?;
    }
    Ok(())
}
