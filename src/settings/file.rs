//! The TOML config file: keys at the top apply to every command that has the setting, keys in a
//! section named for a command (`[receive]`, `[serve]`) to that command only, and win there.
//!
//! ```toml
//! archive = "s3://bucket/prod"
//! [receive]
//! conninfo = "host=db1 user=walhalla"
//! password_file = "/etc/walhalla/password"
//! slot = "walhalla"
//! listen = "127.0.0.1:7480"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Arg;

use super::{commands, is_setting, mask_conninfo, with_globals};

/// A config file read and parsed: its values as the text a flag would carry.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    top: BTreeMap<String, Vec<String>>,
    sections: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl ConfigFile {
    /// Reads `path`; `None` when it does not exist and need not (the default file).
    pub fn read(path: &Path, required: bool) -> anyhow::Result<Option<ConfigFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("read config file {}", path.display()));
            }
        };
        Self::parse(path, &text).map(Some)
    }

    /// Parses `text`, the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<ConfigFile> {
        let context = || format!("config file {}", path.display());
        let table: toml::Table = text
            .parse()
            .map_err(|e| anyhow::anyhow!(without_source(&e, text)))
            .with_context(context)?;
        let mut file = ConfigFile {
            path: path.to_owned(),
            top: BTreeMap::new(),
            sections: BTreeMap::new(),
        };
        for (key, value) in table {
            match value {
                toml::Value::Table(section) => {
                    let mut values = BTreeMap::new();
                    for (inner, value) in section {
                        let text = texts(&value)
                            .with_context(|| format!("[{key}] {inner}"))
                            .with_context(context)?;
                        values.insert(inner, text);
                    }
                    file.sections.insert(key, values);
                }
                value => {
                    let text = texts(&value)
                        .with_context(|| key.clone())
                        .with_context(context)?;
                    file.top.insert(key, text);
                }
            }
        }
        Ok(file)
    }

    /// The file's value of setting `id` for `command` (a section's, else the top's), and
    /// where in the file it is (`[receive] slot` or `slot`).
    pub fn value(&self, command: &str, id: &str) -> Option<(&[String], String)> {
        if let Some(values) = self.sections.get(command).and_then(|s| s.get(id)) {
            return Some((values, format!("[{command}] {id}")));
        }
        self.top.get(id).map(|v| (v.as_slice(), id.to_owned()))
    }

    /// Refuses what the command line would not take: unknown sections and keys, values a flag
    /// would refuse, and a password written into the file.
    pub fn check(&self, root: &clap::Command) -> anyhow::Result<()> {
        let context = || format!("config file {}", self.path.display());
        for (key, values) in &self.top {
            let mut known = false;
            for command in commands(root) {
                if let Some(arg) = with_globals(root, command)
                    .into_iter()
                    .find(|a| a.get_id() == key)
                {
                    known = true;
                    check_value(command, arg, values)
                        .with_context(|| key.clone())
                        .with_context(context)?;
                }
            }
            if !known {
                return Err(unknown(root, None, key)).with_context(context);
            }
        }
        for (name, section) in &self.sections {
            let command = commands(root)
                .find(|c| c.get_name() == name)
                .ok_or_else(|| {
                    let names: Vec<_> = commands(root).map(|c| c.get_name()).collect();
                    anyhow!(
                        "[{name}] is not a command; sections are named for one of: {}",
                        names.join(", ")
                    )
                })
                .with_context(context)?;
            for (key, values) in section {
                let arg = with_globals(root, command)
                    .into_iter()
                    .find(|a| a.get_id() == key)
                    .ok_or_else(|| unknown(root, Some(command), key))
                    .with_context(context)?;
                check_value(command, arg, values)
                    .with_context(|| format!("[{name}] {key}"))
                    .with_context(context)?;
            }
        }
        Ok(())
    }

    /// `root` (not yet built) with the file's values as the defaults of the settings they
    /// set. A command's section may set a global option for that command alone: the command
    /// then gets its own copy of the option, which clap prefers to the global one unless the
    /// global one was given as a flag or variable.
    pub fn apply(&self, root: clap::Command) -> clap::Command {
        let globals: Vec<Arg> = root
            .get_arguments()
            .filter(|a| a.is_global_set() && is_setting(a))
            .cloned()
            .collect();
        let mut root = root;
        for global in &globals {
            if let Some(values) = self.top.get(global.get_id().as_str()) {
                let values = values.clone();
                root = root.mut_arg(global.get_id(), |a| a.default_values(values));
            }
        }
        let names: Vec<String> = commands(&root).map(|c| c.get_name().to_owned()).collect();
        for name in names {
            root = root.mut_subcommand(&name, |mut sub| {
                let own: Vec<String> = sub
                    .get_arguments()
                    .filter(|a| is_setting(a))
                    .map(|a| a.get_id().to_string())
                    .collect();
                for id in &own {
                    if let Some((values, _)) = self.value(&name, id) {
                        let values = values.to_vec();
                        sub = sub.mut_arg(id, |a| a.default_values(values));
                    }
                }
                let sections = self.sections.get(&name);
                for global in globals
                    .iter()
                    .filter(|g| !own.iter().any(|id| g.get_id() == id))
                {
                    if let Some(values) = sections.and_then(|s| s.get(global.get_id().as_str())) {
                        sub = sub.arg(global.clone().default_values(values.clone()));
                    }
                }
                sub
            });
        }
        root
    }
}

/// The flag texts of a TOML value: a string as it is, numbers and booleans as written, an
/// array as one text per element.
/// A syntax error's message and place, without the source line the parser quotes: the line
/// may hold a secret (a password in a connection string, refused after parsing).
fn without_source(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

fn texts(value: &toml::Value) -> anyhow::Result<Vec<String>> {
    Ok(match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(n) => vec![n.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Datetime(d) => vec![d.to_string()],
        toml::Value::Array(items) => {
            let mut all = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        bail!("a list may hold only plain values")
                    }
                    item => all.extend(texts(item)?),
                }
            }
            all
        }
        toml::Value::Table(_) => bail!("sections are named for a command and hold no sections"),
    })
}

/// Parses `values` as the flag would, so a wrong value is named with its place in the file.
fn check_value(command: &clap::Command, arg: &Arg, values: &[String]) -> anyhow::Result<()> {
    let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1)
        || matches!(arg.get_action(), clap::ArgAction::Append);
    if values.len() > 1 && !many {
        bail!("takes one value, not a list");
    }
    if arg.get_id() == "conninfo" && values.iter().any(|v| mask_conninfo(v) != *v) {
        bail!(
            "a password does not belong in the config file: put it in a file named by password_file (or in a .pgpass file named by passfile=), readable by walhalla's user only"
        );
    }
    if arg.get_id() == "conninfo" {
        // Read as the connection would read it (the environment left out): a mistyped
        // keyword fails here, not at the first connection.
        for value in values {
            crate::protocol::conninfo::ConnParams::parse(value, &|_| None)
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    // The flag alone, with its parser: parsing the value as a flag names what is wrong.
    let long = arg.get_long().unwrap_or(arg.get_id().as_str()).to_owned();
    let mut flag = clap::Arg::new("value")
        .long(long.clone())
        .value_parser(arg.get_value_parser().clone())
        .action(clap::ArgAction::Set);
    if let Some(names) = arg.get_value_names() {
        flag = flag.value_names(names.to_vec());
    }
    let probe = clap::Command::new(command.get_name().to_owned())
        .no_binary_name(true)
        .arg(flag);
    for value in values {
        probe
            .clone()
            .try_get_matches_from([format!("--{long}={value}")])
            .map_err(|e| anyhow!("{}", first_line(&e.to_string())))?;
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

/// An unknown key, with the commands that do have a setting of that name.
fn unknown(root: &clap::Command, section: Option<&clap::Command>, key: &str) -> anyhow::Error {
    let place = match section {
        Some(command) => format!("[{}] {key}", command.get_name()),
        None => key.to_owned(),
    };
    let owners: Vec<_> = commands(root)
        .filter(|c| with_globals(root, c).iter().any(|a| a.get_id() == key))
        .map(|c| format!("[{}]", c.get_name()))
        .collect();
    if owners.is_empty() {
        anyhow!("{place} is not a setting (`walhalla config` lists every setting with its key)")
    } else {
        anyhow!(
            "{place} is not a setting of that command; it belongs in {}",
            owners.join(", ")
        )
    }
}
