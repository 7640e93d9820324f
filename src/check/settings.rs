//! Verdicts on the server's settings, pure: `wal_level`, `archive_mode`, `archive_command`,
//! `restore_command`, the archiver's recent failures and a receiver's slot.

use super::Check;
use super::commands::HookCommand;
use super::server::{ArchiverStats, ServerFacts, SlotFacts};
use crate::archive::Location;
use crate::mask::{mask_command, mask_url};

/// The check `wal_level`.
pub fn wal_level(facts: &ServerFacts) -> Check {
    match facts.wal_level.as_str() {
        "replica" | "logical" => Check::pass("wal_level", facts.wal_level.clone()),
        other => Check::fail(
            "wal_level",
            format!("{other}: WAL cannot be archived or streamed"),
            "set wal_level = replica and restart the server",
        ),
    }
}

/// The checks `archive_mode` and `archive_command`, for a server whose WAL archive_command
/// must archive (no `-S`). `checked` is the archive `check` looks at.
pub fn archiving(facts: &ServerFacts, checked: Option<&Location>) -> Vec<Check> {
    let mode = facts.archive_mode.as_str();
    let mode_check = match (mode, facts.in_recovery) {
        ("always", _) | ("on", false) => Check::pass("archive_mode", mode),
        ("on", true) => {
            return vec![
                Check::skip(
                    "archive_mode",
                    "on: a standby does not archive (the primary does; archive_mode = always would)",
                ),
                Check::skip(
                    "archive_command",
                    "not run on a standby with archive_mode = on",
                ),
            ];
        }
        (_, true) => {
            return vec![
                Check::fail(
                    "archive_mode",
                    format!("{mode} on a standby: promoted, it would archive nothing"),
                    "set archive_mode = on (a standby does not archive until it is promoted) and restart the server",
                ),
                Check::skip(
                    "archive_command",
                    "not run on a standby; PostgreSQL hides it while archive_mode is off",
                ),
            ];
        }
        _ => Check::fail(
            "archive_mode",
            format!("{mode}: the server archives nothing"),
            "set archive_mode = on and restart the server (or stream with walhalla receive and check with -S SLOT)",
        ),
    };
    vec![mode_check, archive_command(facts, checked)]
}

/// What PostgreSQL shows for archive_command while archive_mode is off
/// (`show_archive_command`): not the command, which it does not run.
const DISABLED: &str = "(disabled)";

/// The check `archive_command`.
fn archive_command(facts: &ServerFacts, checked: Option<&Location>) -> Check {
    const NAME: &str = "archive_command";
    // Shown with its secrets masked; read unmasked.
    let shown = mask_command(&facts.archive_command);
    let command = shown.as_str();
    let set_it = "set archive_command = 'walhalla --archive URL push %p' and reload";
    if command.trim().is_empty() {
        return Check::fail(NAME, "empty: nothing archives the WAL", set_it);
    }
    if command == DISABLED {
        return Check::fail(
            NAME,
            "(disabled): archive_mode is off, so PostgreSQL runs no archive_command and does not show it",
            "set archive_mode = on and restart the server, then check again",
        );
    }
    let parsed = &facts.archive_hook;
    if !parsed.runs_walhalla {
        return Check::pass(
            NAME,
            format!(
                "{command:?} does not run walhalla directly (a wrapper?): the round trip shows where its segments go"
            ),
        );
    }
    if parsed.subcommand.as_deref() != Some("push") {
        return Check::fail(
            NAME,
            format!("{command:?} does not run walhalla push"),
            set_it,
        );
    }
    if !command.contains("%p") {
        return Check::fail(
            NAME,
            format!("{command:?} does not pass the file (%p)"),
            set_it,
        );
    }
    named_archive(NAME, command, parsed, checked)
}

/// The check `restore_command`, where set; on a standby, where it is not set too.
pub fn restore_command(facts: &ServerFacts, checked: Option<&Location>) -> Check {
    const NAME: &str = "restore_command";
    let shown = mask_command(&facts.restore_command);
    let command = shown.as_str();
    let set_it = "set restore_command = 'walhalla --archive URL fetch %f %p'";
    if command.trim().is_empty() {
        return if facts.in_recovery {
            Check::fail(
                NAME,
                "empty on a standby: WAL the primary has recycled cannot be fetched from the archive",
                set_it,
            )
        } else {
            Check::skip(
                NAME,
                "not set (standbys and restores need it, the primary does not)",
            )
        };
    }
    let parsed = &facts.restore_hook;
    if !parsed.runs_walhalla {
        return Check::pass(
            NAME,
            format!("{command:?} does not run walhalla directly (a wrapper?)"),
        );
    }
    if parsed.subcommand.as_deref() != Some("fetch") {
        return Check::fail(
            NAME,
            format!("{command:?} does not run walhalla fetch"),
            set_it,
        );
    }
    if !(command.contains("%f") && command.contains("%p")) {
        return Check::fail(NAME, format!("{command:?} lacks %f or %p"), set_it);
    }
    if let (Some(server), None) = (&parsed.fetch_server.server, &parsed.archive) {
        return Check::pass(
            NAME,
            format!("walhalla fetch from the fetch server {server} (see fetch_server)"),
        );
    }
    named_archive(NAME, command, parsed, checked)
}

/// Passes a walhalla command unless the archive it names is not the one checked.
fn named_archive(
    name: &'static str,
    command: &str,
    parsed: &HookCommand,
    checked: Option<&Location>,
) -> Check {
    match (parsed.archive.as_deref(), checked) {
        (Some(url), Some(checked)) if parsed.names_another_archive(checked) == Some(true) => {
            Check::fail(
                name,
                format!(
                    "{command:?} names archive {}{}, not the one checked ({checked})",
                    mask_url(url),
                    parsed.source()
                ),
                format!(
                    "point it at {checked}, or check the archive it names (--archive {})",
                    mask_url(url)
                ),
            )
        }
        (Some(url), _) => Check::pass(
            name,
            format!("walhalla into {}{}", mask_url(url), parsed.source()),
        ),
        (None, _) => {
            let from = match &parsed.config_file {
                Some(file) => format!("its config file {file}, which cannot be read here"),
                None => "the server's environment (WALHALLA_ARCHIVE)".to_owned(),
            };
            Check::pass(
                name,
                format!("{command:?}: the archive comes from {from}, not compared"),
            )
        }
    }
}

/// The check `archiver`: whether archive_command's last attempt failed.
pub fn archiver(stats: &ArchiverStats) -> Check {
    if !stats.failing {
        return Check::pass(
            "archiver",
            format!(
                "last archived: {}; {} failures in all",
                stats.last_archived_wal.as_deref().unwrap_or("nothing yet"),
                stats.failed_count
            ),
        );
    }
    Check::fail(
        "archiver",
        format!(
            "archive_command last failed on {} at {}",
            stats.last_failed_wal.as_deref().unwrap_or("?"),
            stats.last_failed_time.as_deref().unwrap_or("?")
        ),
        "see the server log for archive_command's error",
    )
}

/// Slot `name` as found (`facts`), when walhalla receive can stream from it; else what is
/// wrong with it and what to do.
pub fn usable_slot<'a>(
    name: &str,
    facts: Option<&'a SlotFacts>,
) -> Result<&'a SlotFacts, (String, String)> {
    match facts {
        None => Err((
            format!("there is no replication slot {name:?}"),
            format!("start walhalla receive -S {name} --create-slot once"),
        )),
        Some(facts) if facts.slot_type != "physical" => Err((
            format!("{name:?} is a {} slot", facts.slot_type),
            "walhalla receive streams from a physical slot: give one".to_owned(),
        )),
        Some(facts) if facts.wal_status.as_deref() == Some("lost") => Err((
            format!(
                "slot {name:?} was invalidated (wal_status 'lost', by max_slot_wal_keep_size): it \
                 keeps no WAL, and from PostgreSQL 16 on it never will again"
            ),
            format!(
                "SELECT pg_drop_replication_slot('{name}'), then start walhalla receive -S {name} \
                 --create-slot (which, from PostgreSQL 16 on, drops and creates an invalidated \
                 slot itself); WAL the server removed meanwhile shows as lost in walhalla list"
            ),
        )),
        Some(facts) => Ok(facts),
    }
}

/// The checks `slot` and `slot_active` for `-S name`, with the lag when a client streams.
pub fn slot(name: &str, facts: Option<&SlotFacts>) -> Vec<Check> {
    let facts = match usable_slot(name, facts) {
        Ok(facts) => facts,
        Err((detail, hint)) => {
            return vec![
                Check::fail("slot", detail, hint),
                Check::skip("slot_active", "no usable physical slot of that name"),
            ];
        }
    };
    let lag = format!(
        "lag {} bytes, {}",
        facts
            .lag_bytes
            .map_or_else(|| "unknown".to_owned(), |b| b.to_string()),
        facts
            .lag_seconds
            .map_or_else(|| "no recent flush lag".to_owned(), |s| format!("{s:.1} s")),
    );
    let exists = if facts.wal_status.as_deref() == Some("unreserved") {
        Check::fail(
            "slot",
            format!(
                "slot {name:?} is past max_slot_wal_keep_size (wal_status 'unreserved'; {lag}): \
                 the next checkpoint may remove WAL it needs and invalidate it (on PostgreSQL 16, \
                 a slot already invalidated that a client streams from reads the same)"
            ),
            "let the receiver catch up (its log says why it lags), or raise max_slot_wal_keep_size",
        )
    } else {
        Check::pass("slot", format!("physical slot {name:?}; {lag}"))
    };
    let active = if facts.active {
        Check::pass(
            "slot_active",
            format!(
                "{} streams from it",
                facts.client.as_deref().unwrap_or("a client")
            ),
        )
    } else {
        Check::fail(
            "slot_active",
            format!("nothing streams from slot {name:?}: the WAL it keeps piles up on the server"),
            format!(
                "start walhalla --archive URL receive -S {name}; if one runs, its log says why it does not stream (a primary it cannot reach, or a server on an older timeline than the archive holds)"
            ),
        )
    };
    vec![exists, active]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Verdict;
    use crate::wal::SystemId;

    fn facts(archive_mode: &str, archive_command: &str, in_recovery: bool) -> ServerFacts {
        ServerFacts {
            system_id: SystemId(7),
            version: "15.10".into(),
            in_recovery,
            wal_level: "replica".into(),
            archive_mode: archive_mode.into(),
            archive_command: archive_command.into(),
            restore_command: String::new(),
            archive_hook: HookCommand::parse(archive_command),
            restore_hook: HookCommand::default(),
            may_switch_wal: true,
            database: "postgres".into(),
            user: "postgres".into(),
            ssl: false,
        }
    }

    fn set_restore(facts: &mut ServerFacts, command: &str) {
        facts.restore_command = command.into();
        facts.restore_hook = HookCommand::parse(command);
    }

    fn verdicts(checks: &[Check]) -> Vec<(&str, Verdict)> {
        checks.iter().map(|c| (c.name, c.verdict)).collect()
    }

    #[test]
    fn commands_are_shown_without_their_secrets() {
        let here: Location = "/srv/wh".parse().unwrap();
        for command in [
            "AWS_SECRET_ACCESS_KEY=S3cret /usr/bin/walhalla --archive /srv/wh push",
            "PGPASSWORD=S3cret wrapper %p",
            "walhalla --archive 's3://b/x?secret=S3cret' push %p",
        ] {
            let checks = archiving(&facts("on", command, false), Some(&here));
            let shown = format!("{checks:?}");
            assert!(!shown.contains("S3cret"), "{shown}");
            assert!(shown.contains("********"), "{shown}");
        }
    }

    #[test]
    fn archiving_verdicts() {
        let here: Location = "/srv/wh".parse().unwrap();
        let good = facts("on", "walhalla --archive /srv/wh push %p", false);
        let checks = archiving(&good, Some(&here));
        assert_eq!(
            verdicts(&checks),
            [
                ("archive_mode", Verdict::Pass),
                ("archive_command", Verdict::Pass)
            ]
        );
        let off = archiving(&facts("off", "", false), Some(&here));
        assert_eq!(off[0].verdict, Verdict::Fail);
        assert_eq!(off[1].verdict, Verdict::Fail);
        assert!(off[1].detail.contains("empty"), "{:?}", off[1]);
        // What PostgreSQL 15 and older show while archive_mode is off is no command.
        let disabled = archiving(&facts("off", "(disabled)", false), Some(&here));
        assert_eq!(disabled[1].verdict, Verdict::Fail);
        assert!(
            disabled[1].detail.contains("archive_mode is off"),
            "{:?}",
            disabled[1]
        );
        let elsewhere = archiving(
            &facts("on", "walhalla --archive /srv/other push %p", false),
            Some(&here),
        );
        assert_eq!(elsewhere[1].verdict, Verdict::Fail);
        assert!(
            elsewhere[1].detail.contains("/srv/other"),
            "{:?}",
            elsewhere[1]
        );
        let no_file = archiving(&facts("on", "walhalla push", false), Some(&here));
        assert_eq!(no_file[1].verdict, Verdict::Fail);
        let standby = archiving(&facts("on", "", true), Some(&here));
        assert_eq!(standby[0].verdict, Verdict::Skip);
        // A standby with archive_mode off fails once, for what it would do promoted.
        let off = archiving(&facts("off", "(disabled)", true), Some(&here));
        assert_eq!(
            off.iter().map(|c| c.verdict).collect::<Vec<_>>(),
            [Verdict::Fail, Verdict::Skip]
        );
        assert!(off[0].detail.contains("promoted"), "{:?}", off[0]);
    }

    #[test]
    fn restore_command_verdicts() {
        let here: Location = "/srv/wh".parse().unwrap();
        let mut standby = facts("on", "", true);
        assert_eq!(
            restore_command(&standby, Some(&here)).verdict,
            Verdict::Fail
        );
        set_restore(&mut standby, "walhalla --archive /srv/wh fetch %f %p");
        assert_eq!(
            restore_command(&standby, Some(&here)).verdict,
            Verdict::Pass
        );
        set_restore(&mut standby, "walhalla fetch --server http://wh:7480 %f %p");
        let served = restore_command(&standby, Some(&here));
        assert_eq!(served.verdict, Verdict::Pass);
        assert!(
            served.detail.contains("fetch server http://wh:7480"),
            "{served:?}"
        );
        set_restore(&mut standby, "walhalla --archive /srv/wh push %p");
        assert_eq!(
            restore_command(&standby, Some(&here)).verdict,
            Verdict::Fail
        );
        let primary = facts("on", "", false);
        assert_eq!(
            restore_command(&primary, Some(&here)).verdict,
            Verdict::Skip
        );
    }

    #[test]
    fn slot_verdicts() {
        let missing = slot("wh", None);
        assert_eq!(
            verdicts(&missing),
            [("slot", Verdict::Fail), ("slot_active", Verdict::Skip)]
        );
        let mut facts = SlotFacts {
            slot_type: "physical".into(),
            active: false,
            client: None,
            wal_status: Some("reserved".into()),
            lag_bytes: Some(4096),
            lag_seconds: None,
            flush_lsn: None,
        };
        let idle = slot("wh", Some(&facts));
        assert_eq!(
            verdicts(&idle),
            [("slot", Verdict::Pass), ("slot_active", Verdict::Fail)]
        );
        assert!(idle[0].detail.contains("4096 bytes"), "{:?}", idle[0]);
        facts.active = true;
        assert_eq!(slot("wh", Some(&facts))[1].verdict, Verdict::Pass);
        // Past max_slot_wal_keep_size: about to lose WAL.
        facts.wal_status = Some("unreserved".into());
        let unreserved = slot("wh", Some(&facts));
        assert_eq!(unreserved[0].verdict, Verdict::Fail, "{unreserved:?}");
        // Invalidated: streaming from it (PostgreSQL 16 and 17 allow that) protects nothing.
        facts.wal_status = Some("lost".into());
        let lost = slot("wh", Some(&facts));
        assert_eq!(
            verdicts(&lost),
            [("slot", Verdict::Fail), ("slot_active", Verdict::Skip)]
        );
        assert!(lost[0].detail.contains("invalidated"), "{lost:?}");
    }
}
