//! Where each setting comes from: a flag, else its `WALHALLA_*` environment variable, else the
//! config file, else its default. [`crate::cli`] defines the flags; this module gives every
//! setting its variable, finds and checks the config file, and lays the file's values under the
//! flags as clap defaults, so one parser validates all four sources alike.
//!
//! A setting is every option but the per-invocation ones ([`INVOCATION_ONLY`], positional
//! arguments): those name what one run works on (a file, a target, `--json`) and are flags only.

mod conninfo_mask;
mod file;
mod prune_rule;
mod report;

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};

pub use conninfo_mask::mask_conninfo;
pub use file::ConfigFile;
pub use report::{Report, describe};

/// Options that name what one run works on, not how walhalla is set up: flags only, never an
/// environment variable or a config key.
pub const INVOCATION_ONLY: &[&str] = &[
    "config",
    "json",
    "dry_run",
    "force",
    "keep",
    "partial",
    "to_end",
    "to",
    "backup",
    "label",
    "target",
    "target_time",
    "target_lsn",
    "target_xid",
    "target_name",
    "target_action",
    "target_timeline",
    "target_exclusive",
    "standby",
    "tablespace_map",
    "start_lsn",
    "endpos",
    "since",
    "assume_interrupted",
    "healthz",
];

/// The config file read when neither `--config` nor `WALHALLA_CONFIG` names one, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/walhalla/walhalla.toml";

/// The options before the command name that each command reads; the others are hidden from
/// its help (still accepted, so a shared environment or config file never breaks a command).
fn uses_global(command: &str, global: &str) -> bool {
    match global {
        "config" | "log_format" => true,
        "archive" => !matches!(command, "status" | "demo"),
        "system_id" => !matches!(command, "status" | "demo" | "backup"),
        "compression_level" => matches!(command, "push" | "receive" | "backup" | "demo" | "config"),
        "timeout" => command != "demo",
        _ => true,
    }
}

/// The name of a setting's environment variable: `WALHALLA_` and its key in upper case.
pub fn env_name(id: &str) -> String {
    format!("WALHALLA_{}", id.to_ascii_uppercase())
}

/// Whether `arg` is a setting (see the module's documentation).
pub fn is_setting(arg: &Arg) -> bool {
    let id = arg.get_id().as_str();
    !arg.is_positional() && !INVOCATION_ONLY.contains(&id) && id != "help" && id != "version"
}

/// The command line's definition: every setting with its environment variable, each command
/// showing only the options it reads. `--help` and the man pages are made from it.
pub fn command() -> clap::Command {
    let root = crate::cli::help::explain(Cli::command()).mut_args(with_env);
    let globals: Vec<Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    root.mut_subcommands(|sub| {
        if sub.is_hide_set() {
            return sub;
        }
        let name = sub.get_name().to_owned();
        let mut sub = sub.mut_args(with_env);
        for global in &globals {
            // A copy on the command keeps clap from adding the visible one.
            if !uses_global(&name, global.get_id().as_str()) {
                sub = sub.arg(global.clone().hide(true));
            }
        }
        sub
    })
}

/// Gives a setting its environment variable; flags read it as a boolean (`1`, `true`, `on`…).
fn with_env(arg: Arg) -> Arg {
    if !is_setting(&arg) || arg.get_env().is_some() {
        return arg;
    }
    let env = env_name(arg.get_id().as_str());
    let arg = arg.env(env);
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        arg.value_parser(BoolishValueParser::new())
    } else {
        arg
    }
}

/// A parsed command line, with the config file it was read with.
pub struct Parsed {
    /// The command and its options.
    pub cli: Cli,
    /// The config file, when one was read.
    pub file: Option<ConfigFile>,
    /// clap's view of the same, which says where each given value came from.
    pub matches: ArgMatches,
    /// What the operator should hear once logging is set up: settings set aside.
    pub notes: Vec<String>,
}

/// Parses `args` (program name first) with the environment and the config file beneath.
/// Every mistake, in a flag, a variable or the file, is a clap usage error.
pub fn parse(args: &[OsString]) -> Result<Parsed, clap::Error> {
    let mut cmd = command();
    let file = match config_path(args) {
        Some((path, required)) => ConfigFile::read(&path, required)
            .map_err(|e| cmd.error(ErrorKind::InvalidValue, format!("{e:#}")))?,
        None => None,
    };
    if let Some(file) = &file {
        file.check(&cmd)
            .map_err(|e| cmd.error(ErrorKind::InvalidValue, format!("{e:#}")))?;
        cmd = file.apply(cmd);
    }
    let matches = cmd.try_get_matches_from_mut(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let mut notes = Vec::new();
    if let Command::Prune(prune) = &mut cli.command {
        let mut prune_cmd = subcommand(&mut cmd, "prune");
        let prune_matches = matches.subcommand_matches("prune").unwrap_or(&matches);
        notes = prune_rule::resolve(prune, prune_matches)
            .map_err(|e| prune_cmd.error(ErrorKind::ArgumentConflict, e))?;
        if !prune.has_rule() {
            return Err(prune_cmd.error(
                ErrorKind::MissingRequiredArgument,
                "prune needs a retention rule: --keep-backups, --keep-within, --keep-wal-within or --before (or the same keys in the config file)",
            ));
        }
    }
    if let Command::Restore(restore) = &cli.command
        && restore.server.is_none()
    {
        let restore_matches = matches.subcommand_matches("restore").unwrap_or(&matches);
        if let Some(flag) = unsent_server_option(restore_matches) {
            let mut restore_cmd = subcommand(&mut cmd, "restore");
            return Err(restore_cmd.error(
                ErrorKind::MissingRequiredArgument,
                format!(
                    "{flag} is for the fetch server the restore_command asks: give --server too \
                     (without it, restore_command reads the archive directly)"
                ),
            ));
        }
    }
    Ok(Parsed {
        cli,
        file,
        matches,
        notes,
    })
}

/// The definition of command `name`, whose errors print its own usage line, not walhalla's.
fn subcommand(cmd: &mut clap::Command, name: &str) -> clap::Command {
    cmd.find_subcommand_mut(name)
        .cloned()
        .unwrap_or_else(|| cmd.clone())
}

/// A restore without `--server` writes a restore_command that reads the archive alone: a
/// token file or CA given for it on the command line would go unused (set in the environment
/// or the config file, for `fetch` say, they are ignored). The flag, if one was.
fn unsent_server_option(restore: &ArgMatches) -> Option<&'static str> {
    [("token_file", "--token-file"), ("server_ca", "--server-ca")]
        .into_iter()
        .find(|(id, _)| restore.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(|(_, flag)| flag)
}

/// The config file to read and whether it must exist: `--config` (before or after the command
/// name), else `WALHALLA_CONFIG`, else [`DEFAULT_CONFIG_FILE`] if it exists.
fn config_path(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut words = args.iter().skip(1).map(OsString::as_os_str);
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        if word == "--config" {
            return words.next().map(|p| (PathBuf::from(p), true));
        }
        if let Some(path) = word.to_str().and_then(|w| w.strip_prefix("--config=")) {
            return Some((PathBuf::from(path), true));
        }
    }
    match std::env::var_os("WALHALLA_CONFIG").filter(|v| !v.is_empty()) {
        Some(path) => Some((PathBuf::from(path), true)),
        None => Some((PathBuf::from(DEFAULT_CONFIG_FILE), false)),
    }
}

/// The settings of `command` (a visible subcommand of [`command()`]), in help order; on a
/// command line not yet built, without the global options (see [`with_globals`]).
fn settings_of(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| is_setting(a))
}

/// The settings of `command`, a subcommand of the unbuilt `root`: its own and the global ones.
/// (clap copies global options into each command when it builds the command line, after
/// which its arguments must not change: the file's values go in before.)
fn with_globals<'a>(root: &'a clap::Command, command: &'a clap::Command) -> Vec<&'a Arg> {
    let mut all: Vec<&Arg> = settings_of(command).collect();
    for global in settings_of(root).filter(|a| a.is_global_set()) {
        if !all.iter().any(|a| a.get_id() == global.get_id()) {
            all.push(global);
        }
    }
    all
}

/// The visible commands of the command line.
fn commands(root: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    root.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

fn os_str_text(value: &OsStr) -> String {
    value.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests;
