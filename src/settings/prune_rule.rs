//! Which retention rule `prune` applies when its settings come from several sources. The
//! rules are three kinds that exclude each other: `keep_wal_within`, `before`, and the backup
//! rules (`keep_backups`, `keep_within`, which combine). As for every setting, a flag beats
//! its environment variable, which beats the config file: a rule from a more binding source
//! sets aside a rule of another kind from a less binding one (a scheduled job's
//! `--keep-wal-within` over a config file's `keep_backups`). Two kinds from the same source
//! are a mistake, named with that source.

use clap::ArgMatches;
use clap::parser::ValueSource;

use super::env_name;
use crate::cli::PruneArgs;

/// The rule kinds, each with the settings that give it.
const KINDS: [&[&str]; 3] = [
    &["keep_wal_within"],
    &["before"],
    &["keep_backups", "keep_within"],
];

/// How binding a source is: a flag 3, a variable 2, the config file 1 (its values are the
/// parser's defaults), not given 0.
fn rank(source: Option<ValueSource>) -> u8 {
    match source {
        Some(ValueSource::CommandLine) => 3,
        Some(ValueSource::EnvVariable) => 2,
        Some(ValueSource::DefaultValue) => 1,
        _ => 0,
    }
}

/// Keeps the rule of the most binding source in `args` (`matches` are prune's), clearing the
/// others; the settings set aside, each with what replaced it, for a note. Two kinds from the
/// same source are an error, the message naming them and the source.
pub fn resolve(args: &mut PruneArgs, matches: &ArgMatches) -> Result<Vec<String>, String> {
    let given = |id: &str| rank(matches.value_source(id));
    let kind_rank = |kind: &[&str]| kind.iter().map(|id| given(id)).max().unwrap_or(0);
    let top = KINDS.iter().map(|k| kind_rank(k)).max().unwrap_or(0);
    if top == 0 {
        return Ok(Vec::new());
    }
    let named = |id: &str| match given(id) {
        3 => format!("--{}", id.replace('_', "-")),
        2 => env_name(id),
        _ => format!("the config file's {id}"),
    };
    let winners: Vec<&str> = KINDS
        .iter()
        .filter(|k| kind_rank(k) == top)
        .flat_map(|k| k.iter().copied().filter(|id| given(id) == top))
        .collect();
    if KINDS.iter().filter(|k| kind_rank(k) == top).count() > 1 {
        let names: Vec<String> = winners.iter().map(|id| named(id)).collect();
        let backups = KINDS[2].iter().any(|id| winners.contains(id));
        let why = if backups {
            "--keep-wal-within and --before are for an archive without backups, \
             --keep-backups and --keep-within for one with"
        } else {
            "--keep-wal-within and --before are two ways of saying which WAL goes: give one"
        };
        return Err(format!(
            "{} cannot be used together: {why}",
            names.join(" and ")
        ));
    }
    let winner = winners
        .iter()
        .map(|id| named(id))
        .collect::<Vec<_>>()
        .join(" and ");
    let verb = if winners.len() == 1 {
        "replaces"
    } else {
        "replace"
    };
    let mut set_aside = Vec::new();
    for kind in KINDS.iter().filter(|k| kind_rank(k) < top) {
        for id in kind.iter().filter(|id| given(id) > 0) {
            set_aside.push(format!("{} is set aside: {winner} {verb} it", named(id)));
            match *id {
                "keep_wal_within" => args.keep_wal_within = None,
                "before" => args.before = None,
                "keep_backups" => args.keep_backups = None,
                _ => args.keep_within = None,
            }
        }
    }
    Ok(set_aside)
}
