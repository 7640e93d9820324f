//! The recovery settings a restore writes into `postgresql.auto.conf`, pure: the
//! `restore_command` that calls this walhalla, and the recovery target.

use std::path::Path;

use super::plan::Target;
use crate::wal::{SegmentName, SystemId};

/// What happens when the target is reached (`recovery_target_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// End recovery and accept writes.
    Promote,
    /// Stay read-only until `pg_wal_replay_resume()` (PostgreSQL's default).
    Pause,
    /// Stop the server.
    Shutdown,
}

impl std::str::FromStr for TargetAction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "promote" => Ok(TargetAction::Promote),
            "pause" => Ok(TargetAction::Pause),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(format!("{text:?} is not promote, pause or shutdown")),
        }
    }
}

/// The timeline to recover along (`recovery_target_timeline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineChoice {
    /// The newest timeline in the archive (PostgreSQL's default).
    Latest,
    /// The backup's own timeline.
    Current,
    /// This timeline.
    Id(u32),
}

impl std::str::FromStr for TimelineChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(TimelineChoice::Id)
                .ok_or_else(|| format!("{text:?} is not latest, current or a timeline number")),
        }
    }
}

/// Everything about how the restored server recovers.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The walhalla binary the restore_command calls.
    pub walhalla: String,
    /// The archive, as `--archive` takes it.
    pub archive: String,
    /// A fetch server for `fetch --server`.
    pub server: Option<String>,
    /// What fetch needs to reach it, as flags after `--server` (`--token-file`, `--server-ca`,
    /// each with an absolute path).
    pub server_flags: Vec<(&'static str, String)>,
    /// Where recovery stops.
    pub target: Target,
    /// What happens there; `None`: PostgreSQL's default (pause).
    pub action: Option<TargetAction>,
    /// Along which timeline; `None`: PostgreSQL's default (latest).
    pub timeline: Option<TimelineChoice>,
    /// Stop just before the target instead of just after it.
    pub exclusive: bool,
    /// Turn archiving off (`archive_mode = off`), for a copy that must archive nothing.
    pub archive_off: bool,
    /// `fetch --partial`: a segment the archive lacks in full is served from its newest
    /// snapshot, for the last recovery after losing the primary and the receiver's host.
    pub partial: bool,
}

impl Recovery {
    /// Refuses options PostgreSQL would ignore for this target: `recovery_target_action`
    /// without a target (recovery runs to the end of the WAL and, without standby.signal,
    /// promotes), and `recovery_target_inclusive` for a restore point or `immediate`
    /// (`recoveryStopsBefore`/`After` in xlogrecovery.c read it for a time, an xid or an LSN
    /// only).
    pub fn check(&self) -> Result<(), String> {
        if self.action.is_some() && self.target == Target::End {
            return Err(
                "--target-action needs a recovery target (--target-time, --target-lsn, \
                 --target-xid, --target-name or --target immediate): without one PostgreSQL \
                 ignores it and recovers to the end of the WAL"
                    .into(),
            );
        }
        let inclusive_applies = matches!(
            self.target,
            Target::Time { .. } | Target::Lsn(_) | Target::Xid(_)
        );
        if self.exclusive && !inclusive_applies {
            return Err(
                "--target-exclusive applies to --target-time, --target-lsn and \
                 --target-xid only: PostgreSQL stops at a restore point or at consistency \
                 (immediate) either way"
                    .into(),
            );
        }
        Ok(())
    }

    /// The settings for restoring cluster `system_id`, as name and unquoted value, in the
    /// order they are written. `checked_through`: the newest segment the archive was found
    /// holding, with every one before it that recovery needs.
    pub fn settings(
        &self,
        system_id: SystemId,
        checked_through: Option<SegmentName>,
    ) -> Vec<(&'static str, String)> {
        // PostgreSQL replaces %f, %p and %r in restore_command, and from 16 on refuses any
        // other %: a literal one is written %%.
        let part = |text: &str| shell_quote(text).replace('%', "%%");
        // `--server` is fetch's own option: it goes after the subcommand.
        // The cluster named, not left to fetch: a config file's system_id (another cluster's,
        // say the one a major upgrade made) would otherwise win over pg_control.
        let mut command = format!(
            "{} --archive {} --system-id {system_id} fetch",
            part(&self.walhalla),
            part(&self.archive)
        );
        if self.partial {
            command.push_str(" --partial");
        }
        // Without a target, recovery replays to the archive's end: a segment deleted since it
        // was checked must not pass for that end.
        if let (Target::End, Some(last)) = (&self.target, checked_through) {
            command.push_str(&format!(" --to-end {last}"));
        }
        if let Some(server) = &self.server {
            command.push_str(&format!(" --server {}", part(server)));
            for (flag, value) in &self.server_flags {
                command.push_str(&format!(" {flag} {}", part(value)));
            }
        }
        command.push_str(" %f %p");
        let mut settings = vec![("restore_command", command)];
        let chosen = match &self.target {
            Target::End => None,
            Target::Immediate => Some(("recovery_target", "immediate".to_string())),
            // PostgreSQL's own format, in UTC: its check refuses the RFC 3339 `T…Z` form.
            Target::Time { at, .. } => Some((
                "recovery_target_time",
                at.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
            )),
            Target::Lsn(lsn) => Some(("recovery_target_lsn", lsn.to_string())),
            Target::Xid(xid) => Some(("recovery_target_xid", xid.clone())),
            Target::Name(name) => Some(("recovery_target_name", name.clone())),
        };
        // A target the backup's own postgresql.auto.conf may set (ALTER SYSTEM) is cleared
        // first: two targets make PostgreSQL refuse to start.
        for name in TARGET_SETTINGS {
            if chosen.as_ref().is_none_or(|(chosen, _)| *chosen != name) {
                settings.push((name, String::new()));
            }
        }
        settings.extend(chosen);
        // Written even at PostgreSQL's defaults: a backup of a server restored this way
        // carries the earlier restore's values in its own postgresql.auto.conf.
        let inclusive = if self.exclusive { "off" } else { "on" };
        settings.push(("recovery_target_inclusive", inclusive.into()));
        let action = match self.action.unwrap_or(TargetAction::Pause) {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        settings.push(("recovery_target_action", action.into()));
        let timeline = match self.timeline.unwrap_or(TimelineChoice::Latest) {
            TimelineChoice::Latest => "latest".into(),
            TimelineChoice::Current => "current".into(),
            TimelineChoice::Id(n) => n.to_string(),
        };
        settings.push(("recovery_target_timeline", timeline));
        if self.archive_off {
            settings.push(("archive_mode", "off".into()));
        }
        settings
    }
}

/// The settings that each name a recovery target; PostgreSQL accepts at most one.
const TARGET_SETTINGS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// The block appended to `postgresql.auto.conf` (later lines win over the backup's own).
pub fn conf_block(backup_id: &str, settings: &[(&str, String)]) -> String {
    let mut block = format!("\n# Added by walhalla restore of backup {backup_id}\n");
    for (name, value) in settings {
        block.push_str(&format!("{name} = '{}'\n", conf_quote(value)));
    }
    block
}

/// Escapes a value for a quoted string in a PostgreSQL configuration file, whose reader
/// (guc-file.l, GUC_scanstr) takes `\` escapes as well as doubled quotes.
pub fn conf_quote(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// `text` quoted for the shell PostgreSQL runs restore_command with, when it needs to be.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@%+,".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// How to start the restored server, for the summary.
pub fn start_hint(dest: &Path) -> String {
    format!(
        "pg_ctl -D {} start",
        shell_quote(&dest.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_postgresql_would_ignore_are_refused() {
        let recovery = |target: Target, action: Option<TargetAction>, exclusive: bool| Recovery {
            walhalla: "walhalla".into(),
            archive: "/a".into(),
            server: None,
            server_flags: Vec::new(),
            target,
            action,
            timeline: None,
            exclusive,
            archive_off: false,
            partial: false,
        };
        let lsn = || Target::Lsn("0/3000000".parse().unwrap());
        let shutdown = Some(TargetAction::Shutdown);
        for (target, action, exclusive, refused) in [
            (
                Target::End,
                shutdown,
                false,
                Some("--target-action needs a recovery target"),
            ),
            (Target::End, None, true, Some("--target-exclusive applies")),
            (
                Target::Immediate,
                None,
                true,
                Some("--target-exclusive applies"),
            ),
            (
                Target::Name("p".into()),
                None,
                true,
                Some("--target-exclusive applies"),
            ),
            (Target::End, None, false, None),
            (Target::Immediate, shutdown, false, None),
            (lsn(), shutdown, true, None),
            (Target::Xid("700".into()), None, true, None),
        ] {
            let what = format!("{target:?} {action:?} {exclusive}");
            match (recovery(target, action, exclusive).check(), refused) {
                (Ok(()), None) => {}
                (Err(error), Some(wanted)) => assert!(error.contains(wanted), "{what}: {error}"),
                (outcome, _) => panic!("{what}: {outcome:?}"),
            }
        }
    }

    #[test]
    fn settings_quote_what_needs_quoting() {
        let recovery = Recovery {
            walhalla: "/usr/local/bin/walhalla".into(),
            archive: "/srv/it's 100%".into(),
            server: Some("http://127.0.0.1:7480".into()),
            server_flags: vec![("--token-file", "/etc/walhalla/token file".into())],
            target: Target::Name(r"before 'b' \ c".into()),
            action: Some(TargetAction::Promote),
            timeline: Some(TimelineChoice::Latest),
            exclusive: true,
            archive_off: true,
            partial: false,
        };
        let block = conf_block("20260101T000000Z", &recovery.settings(SystemId(7), None));
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(
            lines,
            [
                "",
                "# Added by walhalla restore of backup 20260101T000000Z",
                r"restore_command = '/usr/local/bin/walhalla --archive ''/srv/it''\\''''s 100%%'' --system-id 7 fetch --server http://127.0.0.1:7480 --token-file ''/etc/walhalla/token file'' %f %p'",
                "recovery_target = ''",
                "recovery_target_lsn = ''",
                "recovery_target_time = ''",
                "recovery_target_xid = ''",
                r"recovery_target_name = 'before ''b'' \\ c'",
                "recovery_target_inclusive = 'off'",
                "recovery_target_action = 'promote'",
                "recovery_target_timeline = 'latest'",
                "archive_mode = 'off'",
            ]
        );
        // Without the options, PostgreSQL's defaults are written all the same, so that none
        // of a backup's own (an earlier restore's) stays in force.
        let defaults = Recovery {
            target: Target::End,
            action: None,
            timeline: None,
            exclusive: false,
            archive_off: false,
            ..recovery
        };
        let last = match "00000002000000000000000A".parse() {
            Ok(crate::wal::WalFileName::Segment(s)) => Some(s),
            other => panic!("{other:?}"),
        };
        let settings = defaults.settings(SystemId(7), last);
        assert!(settings.iter().all(|(name, _)| *name != "archive_mode"));
        // Without a target, fetch tells a hole from the archive's end.
        let command = &settings[0].1;
        assert!(command.ends_with(" --to-end 00000002000000000000000A --server http://127.0.0.1:7480 --token-file '/etc/walhalla/token file' %f %p"), "{command}");
        for (name, value) in [
            ("recovery_target_inclusive", "on"),
            ("recovery_target_action", "pause"),
            ("recovery_target_timeline", "latest"),
        ] {
            assert!(
                settings.contains(&(name, value.to_string())),
                "{name}: {settings:?}"
            );
        }
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(conf_quote("a\nb"), r"a\nb");
    }

    #[test]
    fn timeline_choices() {
        assert_eq!("latest".parse(), Ok(TimelineChoice::Latest));
        assert_eq!("3".parse(), Ok(TimelineChoice::Id(3)));
        assert!("0".parse::<TimelineChoice>().is_err());
        assert!("newest".parse::<TimelineChoice>().is_err());
    }
}
