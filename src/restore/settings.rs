//! The recovery settings a restore writes into `postgresql.auto.conf`, pure: the
//! `restore_command` that calls this walhalla, and the recovery target.

use std::path::Path;

use super::plan::Target;

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
    /// Where recovery stops.
    pub target: Target,
    /// What happens there; `None` leaves PostgreSQL's default (pause).
    pub action: Option<TargetAction>,
    /// Along which timeline.
    pub timeline: Option<TimelineChoice>,
    /// Stop just before the target instead of just after it.
    pub exclusive: bool,
}

impl Recovery {
    /// The settings, as name and unquoted value, in the order they are written.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut command = format!(
            "{} --archive {}",
            shell_quote(&self.walhalla),
            shell_quote(&self.archive)
        );
        if let Some(server) = &self.server {
            command.push_str(&format!(" --server {}", shell_quote(server)));
        }
        command.push_str(" fetch %f %p");
        let mut settings = vec![("restore_command", command)];
        match &self.target {
            Target::End => {}
            Target::Immediate => settings.push(("recovery_target", "immediate".into())),
            Target::Time { text, .. } => settings.push(("recovery_target_time", text.clone())),
            Target::Lsn(lsn) => settings.push(("recovery_target_lsn", lsn.to_string())),
            Target::Xid(xid) => settings.push(("recovery_target_xid", xid.clone())),
            Target::Name(name) => settings.push(("recovery_target_name", name.clone())),
        }
        if self.exclusive {
            settings.push(("recovery_target_inclusive", "off".into()));
        }
        if let Some(action) = self.action {
            let action = match action {
                TargetAction::Promote => "promote",
                TargetAction::Pause => "pause",
                TargetAction::Shutdown => "shutdown",
            };
            settings.push(("recovery_target_action", action.into()));
        }
        if let Some(timeline) = self.timeline {
            let value = match timeline {
                TimelineChoice::Latest => "latest".into(),
                TimelineChoice::Current => "current".into(),
                TimelineChoice::Id(n) => n.to_string(),
            };
            settings.push(("recovery_target_timeline", value));
        }
        settings
    }
}

/// The block appended to `postgresql.auto.conf` (later lines win over the backup's own).
pub fn conf_block(backup_id: &str, settings: &[(&str, String)]) -> String {
    let mut block = format!("\n# Added by walhalla restore of backup {backup_id}\n");
    for (name, value) in settings {
        block.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    block
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
    fn settings_quote_what_needs_quoting() {
        let recovery = Recovery {
            walhalla: "/usr/local/bin/walhalla".into(),
            archive: "/srv/my archive".into(),
            server: Some("http://127.0.0.1:7480".into()),
            target: Target::Name("before 'b'".into()),
            action: Some(TargetAction::Promote),
            timeline: Some(TimelineChoice::Latest),
            exclusive: true,
        };
        let block = conf_block("20260101T000000Z", &recovery.settings());
        assert_eq!(
            block,
            "\n# Added by walhalla restore of backup 20260101T000000Z\n\
             restore_command = '/usr/local/bin/walhalla --archive ''/srv/my archive'' --server http://127.0.0.1:7480 fetch %f %p'\n\
             recovery_target_name = 'before ''b'''\n\
             recovery_target_inclusive = 'off'\n\
             recovery_target_action = 'promote'\n\
             recovery_target_timeline = 'latest'\n"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn timeline_choices() {
        assert_eq!("latest".parse(), Ok(TimelineChoice::Latest));
        assert_eq!("3".parse(), Ok(TimelineChoice::Id(3)));
        assert!("0".parse::<TimelineChoice>().is_err());
        assert!("newest".parse::<TimelineChoice>().is_err());
    }
}
