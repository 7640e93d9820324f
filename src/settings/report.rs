//! `walhalla config`: every command's settings as they resolve here and now, each with where
//! its value came from, the password in a connection string masked.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::ArgMatches;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use serde::Serialize;

use super::{ConfigFile, commands, env_name, mask_conninfo, os_str_text, settings_of};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Given on this command line.
    Flag,
    /// Its environment variable.
    Env,
    /// The config file, at `key` (`[receive] slot` or `slot`).
    File {
        /// Where in the file.
        key: String,
    },
    /// walhalla's default.
    Default,
    /// Not set: the command does without it or works it out (see its help).
    Unset,
}

/// One setting of one command.
#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    /// Its key in the config file.
    pub key: String,
    /// Its flag.
    pub flag: String,
    /// Its environment variable.
    pub variable: String,
    /// Its values (one for most), secrets masked; empty when unset.
    pub values: Vec<String>,
    /// Where they came from.
    pub source: Source,
}

/// The settings of each command.
#[derive(Clone, Debug, Serialize)]
pub struct CommandSettings {
    /// The command.
    pub command: String,
    /// Its settings, in the order of its help.
    pub settings: Vec<Setting>,
}

/// What `walhalla config` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// Per command, its settings.
    pub commands: Vec<CommandSettings>,
}

impl Report {
    /// The settings of every visible command of `root` (or only `only`), as this process
    /// resolves them: `config` holds the `config` command's own matches, whose flags (those
    /// before or after `config`) count as given for every command.
    ///
    /// A value from the environment the command itself would refuse is an error here too
    /// (the file's values are checked when it is read).
    pub fn new(
        root: &clap::Command,
        file: Option<&ConfigFile>,
        config: &ArgMatches,
        only: Option<&str>,
    ) -> Result<Report, String> {
        let commands = commands(root)
            .filter(|c| c.get_name() != "config" && only.is_none_or(|o| o == c.get_name()))
            .map(|command| {
                check_env_values(root, command.get_name())?;
                Ok(CommandSettings {
                    command: command.get_name().to_owned(),
                    settings: settings_of(command)
                        .filter(|a| !a.is_hide_set())
                        .map(|arg| {
                            let id = arg.get_id().as_str();
                            let (values, source) = resolve(command.get_name(), arg, file, config);
                            let values = match id {
                                "conninfo" => values.iter().map(|v| mask_conninfo(v)).collect(),
                                "server" | "archive" => {
                                    values.iter().map(|v| crate::mask::mask_url(v)).collect()
                                }
                                _ => values,
                            };
                            Ok(Setting {
                                key: id.to_owned(),
                                flag: arg
                                    .get_long()
                                    .map_or_else(|| id.to_owned(), |l| format!("--{l}")),
                                variable: arg.get_env().map_or_else(|| env_name(id), os_str_text),
                                values,
                                source,
                            })
                        })
                        .collect::<Result<_, String>>()?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Report {
            file: file.map(|f| f.path.clone()),
            commands,
        })
    }
}

/// Refuses what `command` would refuse of the environment's values: clap reads them when the
/// command is parsed, before it asks for what the command requires.
fn check_env_values(root: &clap::Command, command: &str) -> Result<(), String> {
    match root.clone().try_get_matches_from(["walhalla", command]) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            let why = e.to_string();
            let why = why.lines().next().unwrap_or_default();
            Err(format!(
                "{command}, from the environment: {}",
                why.trim_start_matches("error: ")
            ))
        }
        _ => Ok(()),
    }
}

/// A setting's values and their source, by precedence.
fn resolve(
    command: &str,
    arg: &clap::Arg,
    file: Option<&ConfigFile>,
    config: &ArgMatches,
) -> (Vec<String>, Source) {
    let id = arg.get_id().as_str();
    let given = config
        .try_contains_id(id)
        .unwrap_or(false)
        .then(|| config.value_source(id))
        .flatten();
    if given == Some(ValueSource::CommandLine)
        && let Ok(Some(raw)) = config.try_get_raw(id)
    {
        return (raw.map(os_str_text).collect(), Source::Flag);
    }
    let variable = arg.get_env().map_or_else(|| env_name(id), os_str_text);
    if let Some(value) = std::env::var_os(&variable).filter(|v| !v.is_empty()) {
        return (vec![os_str_text(&value)], Source::Env);
    }
    if let Some((values, key)) = file.and_then(|f| f.value(command, id)) {
        return (values.to_vec(), Source::File { key });
    }
    // The logging settings' defaults are chosen where logging starts, not by clap.
    let defaults: Vec<String> = match id {
        "log_format" => vec!["text".to_owned()],
        "log_level" => vec![crate::logging::default_filter(command).to_owned()],
        _ => (arg.get_default_values().iter())
            .map(|v| os_str_text(v))
            .collect(),
    };
    if defaults.is_empty() {
        (Vec::new(), Source::Unset)
    } else {
        (defaults, Source::Default)
    }
}

/// The report for a person: per command, `key = value   # source`.
pub fn describe(report: &Report) -> String {
    let mut out = String::new();
    match &report.file {
        Some(path) => {
            let _ = writeln!(out, "# config file: {}", path.display());
        }
        None => {
            let _ = writeln!(
                out,
                "# no config file (--config FILE or WALHALLA_CONFIG names one; {} is read if it exists)",
                super::DEFAULT_CONFIG_FILE
            );
        }
    }
    for command in &report.commands {
        let _ = writeln!(out, "\n[{}]", command.command);
        for s in &command.settings {
            let value = match s.values.as_slice() {
                [] => String::new(),
                [one] => format!("= {}", toml_string(one)),
                many => format!(
                    "= [{}]",
                    many.iter()
                        .map(|v| toml_string(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let source = match &s.source {
                Source::Flag => format!("flag {}", s.flag),
                Source::Env => format!("env {}", s.variable),
                Source::File { key } => format!("file: {key}"),
                Source::Default => "default".to_owned(),
                Source::Unset => format!("unset ({}, {})", s.flag, s.variable),
            };
            let line = format!("{} {value}", s.key);
            let _ = writeln!(out, "{line:<48} # {source}");
        }
    }
    out
}

/// A value as a TOML string, so the output can be pasted into the file.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}
