use std::ffi::OsString;

use super::*;
use crate::cli::Command;

fn args(words: &[&str]) -> Vec<OsString> {
    std::iter::once("walhalla")
        .chain(words.iter().copied())
        .map(OsString::from)
        .collect()
}

/// Parses `words` with a config file holding `toml`.
fn with_file(toml: &str, words: &[&str]) -> Result<Parsed, clap::Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhalla.toml");
    std::fs::write(&path, toml).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(words);
    parse(&args(&all))
}

fn receive(parsed: &Parsed) -> &crate::cli::ReceiveArgs {
    match &parsed.cli.command {
        Command::Receive(r) => r,
        other => panic!("not receive: {other:?}"),
    }
}

#[test]
fn every_setting_has_its_variable_and_one_name_per_key() {
    let mut root = command();
    root.build();
    let mut seen = std::collections::BTreeMap::new();
    for command in commands(&root) {
        for arg in settings_of(command) {
            let env = arg.get_env().map(os_str_text);
            assert!(
                env.is_some(),
                "{} --{:?} has no variable",
                command.get_name(),
                arg.get_long()
            );
            let id = arg.get_id().to_string();
            if let Some(earlier) = seen.insert(id.clone(), env.clone()) {
                assert_eq!(earlier, env, "{id} has two variables");
            }
        }
    }
    assert!(
        seen.contains_key("slot") && seen.contains_key("listen") && seen.contains_key("conninfo")
    );
    assert!(!seen.contains_key("json") && !seen.contains_key("target_time"));
}

#[test]
fn a_file_section_sets_a_command_and_flags_win() {
    let toml = "archive = \"/from/file\"\ncompression_level = 7\nsystem_id = \"9300000000000000001\"\n\
                [receive]\nslot = \"from_file\"\nsynchronous = true\nspool_max_bytes = \"2GB\"\ncompression_level = 5\n";
    let parsed = with_file(toml, &["receive"]).unwrap();
    let r = receive(&parsed);
    assert_eq!(r.slot.as_deref(), Some("from_file"));
    assert!(r.synchronous);
    assert_eq!(r.spool_max_bytes, 2 << 30);
    assert_eq!(parsed.cli.global.archive.as_deref(), Some("/from/file"));
    assert_eq!(
        parsed.cli.global.compression_level, 5,
        "the section wins over the top"
    );
    assert_eq!(
        parsed.cli.global.system_id.map(|s| s.0),
        Some(9_300_000_000_000_000_001)
    );

    let parsed = with_file(
        toml,
        &[
            "--archive",
            "/from/flag",
            "receive",
            "-S",
            "from_flag",
            "--compression-level",
            "2",
        ],
    )
    .unwrap();
    assert_eq!(receive(&parsed).slot.as_deref(), Some("from_flag"));
    assert_eq!(parsed.cli.global.archive.as_deref(), Some("/from/flag"));
    assert_eq!(parsed.cli.global.compression_level, 2);

    // Another command sees the top, not [receive].
    let parsed = with_file(toml, &["list"]).unwrap();
    assert_eq!(parsed.cli.global.compression_level, 7);
}

#[test]
fn defaults_stay_when_the_file_is_silent() {
    let parsed = with_file("", &["receive"]).unwrap();
    let r = receive(&parsed);
    assert_eq!(r.slot, None);
    assert!(!r.synchronous);
    assert_eq!(r.spool_max_bytes, 1 << 30);
    assert_eq!(r.partial_interval, 60);
}

#[test]
fn the_file_is_checked_like_flags() {
    let cases = [
        ("slot = [\"a\", \"b\"]\n", "one value"),
        (
            "[receive]\nspool_max_bytes = \"lots\"\n",
            "[receive] spool_max_bytes",
        ),
        (
            "[serve]\nslot = \"x\"\n",
            "it belongs in [check], [receive]",
        ),
        ("[recieve]\nslot = \"x\"\n", "not a command"),
        ("colour = \"blue\"\n", "colour is not a setting"),
        ("json = true\n", "json is not a setting"),
        ("compression_level = 40\n", "compression_level"),
        (
            "[receive]\nconninfo = \"host=db password=hunter2\"\n",
            "password",
        ),
        ("archive = [", "config file"),
        // A connection string is read as the connection would read it (helper-73).
        (
            "[receive]\nconninfo = \"host=db bogus=1\"\n",
            "invalid connection option \"bogus\"",
        ),
        ("[receive]\nconninfo = 5\n", "[receive] conninfo"),
        // A syntax error on a secret's line: the parser's quotation of the line is left out.
        (
            "[backup]\nconninfo = \"host=db password=hunter2 user=rep\n",
            "line 2, column",
        ),
    ];
    for (toml, wanted) in cases {
        let error = with_file(toml, &["list"]).err().map(|e| e.to_string());
        let error = error.unwrap_or_else(|| panic!("{toml:?} accepted"));
        assert!(error.contains(wanted), "{toml:?}: {error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn a_named_config_file_must_exist() {
    let error = parse(&args(&["--config", "/nonexistent/walhalla.toml", "list"]))
        .err()
        .expect("a missing --config file is an error")
        .to_string();
    assert!(error.contains("/nonexistent/walhalla.toml"), "{error}");
}

#[test]
fn config_is_found_before_and_after_the_command() {
    for words in [
        ["--config", "/a.toml", "list"],
        ["list", "--config", "/a.toml"],
        ["list", "--config=/a.toml", "-v"],
    ] {
        let found = config_path(&args(&words));
        assert_eq!(found, Some((PathBuf::from("/a.toml"), true)), "{words:?}");
    }
}

#[test]
fn prune_without_a_rule_is_a_usage_error_and_the_file_can_give_one() {
    let error = with_file("", &["prune"]).err().expect("no rule");
    assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
    let parsed = with_file("[prune]\nkeep_backups = 7\n", &["prune"]).unwrap();
    let Command::Prune(prune) = parsed.cli.command else {
        panic!("not prune")
    };
    assert_eq!(prune.keep_backups, Some(7));
    assert!(
        error.to_string().contains("Usage: walhalla prune"),
        "prune's own usage: {error}"
    );
}

#[test]
fn a_prune_rule_from_a_more_binding_source_sets_the_others_aside() {
    let prune_of = |parsed: &Parsed| match &parsed.cli.command {
        Command::Prune(prune) => (prune.keep_backups, prune.keep_within, prune.before),
        other => panic!("not prune: {other:?}"),
    };
    // The file's backup rules give way to a flag's --before, with a note for each.
    let toml = "[prune]\nkeep_backups = 7\nkeep_within = \"14d\"\n";
    let parsed = with_file(toml, &["prune", "--before", "0/B000000"]).unwrap();
    assert_eq!(
        prune_of(&parsed),
        (None, None, Some("0/B000000".parse().unwrap()))
    );
    assert_eq!(parsed.notes.len(), 2, "{:?}", parsed.notes);
    assert!(
        parsed.notes[0].contains("the config file's keep_backups is set aside: --before"),
        "{:?}",
        parsed.notes
    );
    // Rules of one kind combine across sources, as any settings do.
    let parsed = with_file(toml, &["prune", "--keep-backups", "2"]).unwrap();
    let (keep, within, _) = prune_of(&parsed);
    assert_eq!((keep, within.is_some()), (Some(2), true));
    assert!(parsed.notes.is_empty());
    // Two kinds from the same source are a mistake, named with it.
    let error = with_file("", &["prune", "--before", "0/1", "--keep-backups", "2"])
        .err()
        .expect("two kinds on the command line");
    assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    assert!(
        error
            .to_string()
            .contains("--before and --keep-backups cannot be used together")
    );
    let error = with_file(
        "[prune]\nbefore = \"0/1\"\nkeep_wal_within = \"1d\"\n",
        &["prune"],
    )
    .err()
    .expect("two kinds in the file");
    assert!(
        error
            .to_string()
            .contains("the config file's keep_wal_within and the config file's before"),
        "{error}"
    );
}

#[test]
fn commands_show_only_the_options_they_read() {
    let mut root = command();
    root.build();
    let shown = |name: &str, id: &str| {
        let sub = root.find_subcommand(name).unwrap();
        sub.get_arguments()
            .any(|a| a.get_id() == id && !a.is_hide_set())
    };
    assert!(!shown("status", "archive"));
    assert!(!shown("fetch", "compression_level"));
    assert!(shown("push", "compression_level"));
    assert!(shown("fetch", "archive"));
    // Hidden is still accepted: a shared environment or file never breaks a command.
    assert!(parse(&args(&["--compression-level", "5", "fetch", "a", "/b"])).is_ok());
}

#[test]
fn the_report_names_each_source_and_masks_passwords() {
    let toml = "[receive]\nslot = \"s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhalla.toml");
    std::fs::write(&path, toml).unwrap();
    let parsed = parse(&args(&[
        "--config",
        path.to_str().unwrap(),
        "config",
        "--archive",
        "/flag",
    ]))
    .unwrap();
    let mut root = command();
    root.build();
    let config = parsed.matches.subcommand_matches("config").unwrap();
    let report = Report::new(&root, parsed.file.as_ref(), config, Some("receive")).unwrap();
    assert_eq!(report.commands.len(), 1);
    let setting = |key: &str| {
        report.commands[0]
            .settings
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .clone()
    };
    assert_eq!(
        setting("slot").source,
        report::Source::File {
            key: "[receive] slot".into()
        }
    );
    assert_eq!(setting("archive").source, report::Source::Flag);
    assert_eq!(setting("archive").values, ["/flag"]);
    assert_eq!(setting("partial_interval").source, report::Source::Default);
    assert_eq!(setting("partial_interval").values, ["60"]);
    // The logging defaults come from where logging starts, per command.
    assert_eq!(setting("log_level").source, report::Source::Default);
    assert_eq!(
        setting("log_level").values,
        ["info,aws_config=error,rustls_platform_verifier=off"]
    );
    assert_eq!(setting("log_format").values, ["text"]);
    assert!(
        report.commands[0]
            .settings
            .iter()
            .all(|s| s.key != "start_lsn"),
        "per-invocation options are not listed"
    );
}

/// The man pages in docs/man are made from the same definitions as `--help`; this test keeps
/// them equal (`WALHALLA_BLESS=1 cargo test --lib man_pages` writes them anew).
#[test]
fn man_pages_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/man");
    let mut root = command();
    root.build();
    let mut pages = vec![("walhalla.1".to_owned(), root.clone())];
    for sub in commands(&root) {
        let name = format!("walhalla-{}", sub.get_name());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    let bless = std::env::var_os("WALHALLA_BLESS").is_some();
    let mut stale = Vec::new();
    for (file, page) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .date("")
            .render(&mut text)
            .expect("render a man page");
        let path = dir.join(&file);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(text.as_slice()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "docs/man is stale ({stale:?}): run WALHALLA_BLESS=1 cargo test --lib man_pages"
    );
}
