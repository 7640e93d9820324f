//! Reading `archive_command` and `restore_command` as a person would: whether they run
//! walhalla, which command, with PostgreSQL's placeholders, into which archive, from which
//! fetch server. Pure.

use crate::archive::Location;
use crate::client::ClientSettings;

/// What a shell command line says about the walhalla it runs.
#[derive(Debug, Default)]
pub struct HookCommand {
    /// Whether a word of it is a program named `walhalla`.
    pub runs_walhalla: bool,
    /// The walhalla command it runs (`push`, `fetch`, ...), when it runs walhalla.
    pub subcommand: Option<String>,
    /// The archive it names with `--archive URL`, `--archive=URL` or `WALHALLA_ARCHIVE=URL`.
    pub archive: Option<String>,
    /// The config file it names (`--config`).
    pub config_file: Option<String>,
    /// Whether `archive` was read from that file.
    pub archive_in_config_file: bool,
    /// The fetch server it asks (`--server URL`, `--server=URL` or `WALHALLA_SERVER=URL`), with
    /// the TLS files it names for it (`--server-ca`, `--client-cert`, `--client-key`) and its
    /// token file (`--token-file`, `WALHALLA_TOKEN_FILE=`).
    pub fetch_server: ClientSettings,
}

/// The largest config file read: a few settings.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Options that take a value, so their value is not taken for the command.
const VALUE_OPTIONS: [&str; 10] = [
    "--archive",
    "--config",
    "--system-id",
    "--compression-level",
    "--timeout",
    "--server",
    "--server-ca",
    "--client-cert",
    "--client-key",
    "--token-file",
];

impl HookCommand {
    /// Reads `command` (PostgreSQL runs it through `sh -c`).
    pub fn parse(command: &str) -> HookCommand {
        let words = shell_words(command);
        let mut parsed = HookCommand::default();
        for word in &words {
            if let Some(url) = word.strip_prefix("WALHALLA_ARCHIVE=") {
                parsed.archive = Some(url.to_owned());
            }
            if let Some(url) = word.strip_prefix("WALHALLA_SERVER=") {
                parsed.fetch_server.server = Some(url.to_owned());
            }
            if let Some(file) = word.strip_prefix("WALHALLA_TOKEN_FILE=") {
                parsed.fetch_server.token_file = Some(file.into());
            }
        }
        let Some(start) = words
            .iter()
            .position(|w| w.rsplit('/').next() == Some("walhalla"))
        else {
            return parsed;
        };
        parsed.runs_walhalla = true;
        let mut rest = words[start + 1..].iter();
        while let Some(word) = rest.next() {
            if matches!(word.as_str(), ";" | "&&" | "||" | "|") {
                break;
            }
            let (option, inline) = match word.split_once('=') {
                Some((option, value)) if option.starts_with("--") => (option, Some(value)),
                _ => (word.as_str(), None),
            };
            if VALUE_OPTIONS.contains(&option) {
                let value = inline.map(str::to_owned).or_else(|| rest.next().cloned());
                let server = &mut parsed.fetch_server;
                match option {
                    "--archive" => parsed.archive = value,
                    "--config" => parsed.config_file = value,
                    "--server" => server.server = value,
                    "--server-ca" => server.server_ca = value.map(Into::into),
                    "--client-cert" => server.client_cert = value.map(Into::into),
                    "--client-key" => server.client_key = value.map(Into::into),
                    "--token-file" => server.token_file = value.map(Into::into),
                    _ => {}
                }
            } else if !word.starts_with('-') && parsed.subcommand.is_none() {
                parsed.subcommand = Some(word.clone());
            }
        }
        parsed
    }

    /// When it names no archive but a config file that this host can read, takes the file's
    /// `archive` (a file that cannot be read or parsed leaves it unknown).
    pub async fn read_config_file(&mut self) {
        let Some(file) = self
            .config_file
            .as_deref()
            .filter(|_| self.archive.is_none())
        else {
            return;
        };
        let small = tokio::fs::metadata(file)
            .await
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_CONFIG_BYTES);
        if !small {
            return;
        }
        let Ok(text) = tokio::fs::read_to_string(file).await else {
            return;
        };
        #[derive(serde::Deserialize)]
        struct ArchiveKey {
            archive: Option<String>,
        }
        if let Ok(ArchiveKey { archive: Some(url) }) = toml::from_str(&text) {
            self.archive = Some(url);
            self.archive_in_config_file = true;
        }
    }

    /// Where its archive was named, for messages: nothing, or ` (in its config file FILE)`.
    pub fn source(&self) -> String {
        match (&self.config_file, self.archive_in_config_file) {
            (Some(file), true) => format!(" (in its config file {file})"),
            _ => String::new(),
        }
    }

    /// Whether the archive it names is another than `checked`; `None` when it names none or
    /// one that does not parse.
    pub fn names_another_archive(&self, checked: &Location) -> Option<bool> {
        let named: Location = self.archive.as_deref()?.parse().ok()?;
        Some(named != *checked)
    }
}

/// Splits a command line into words as `sh` would for simple commands: white space
/// separates, single and double quotes group, a backslash escapes the next character.
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_walhalla_commands() {
        let push = HookCommand::parse("/usr/local/bin/walhalla --archive /var/lib/wh push %p");
        assert!(push.runs_walhalla);
        assert_eq!(push.subcommand.as_deref(), Some("push"));
        assert_eq!(push.archive.as_deref(), Some("/var/lib/wh"));
        assert_eq!(push.config_file, None);
        assert!(!push.archive_in_config_file);
        assert_eq!(push.fetch_server.server, None);
        let fetch = HookCommand::parse(
            "walhalla --timeout 30 fetch --archive='s3://b/p q' %f \"%p\" --prefetch 4",
        );
        assert_eq!(fetch.subcommand.as_deref(), Some("fetch"));
        assert_eq!(fetch.archive.as_deref(), Some("s3://b/p q"));
        let env =
            HookCommand::parse("WALHALLA_ARCHIVE=s3://b/x walhalla --config /etc/w.toml push %p");
        assert_eq!(env.archive.as_deref(), Some("s3://b/x"));
        assert_eq!(env.config_file.as_deref(), Some("/etc/w.toml"));
        assert_eq!(env.subcommand.as_deref(), Some("push"));
    }

    #[test]
    fn reads_the_fetch_server() {
        let fetch = HookCommand::parse(
            "walhalla fetch --server https://wh:7480 --server-ca /etc/wh/ca.pem --client-cert c.pem --client-key=k.pem --token-file t %f %p",
        );
        assert_eq!(fetch.subcommand.as_deref(), Some("fetch"));
        assert_eq!(fetch.archive, None);
        let server = &fetch.fetch_server;
        assert_eq!(server.server.as_deref(), Some("https://wh:7480"));
        assert_eq!(server.server_ca, Some("/etc/wh/ca.pem".into()));
        assert_eq!(server.client_cert, Some("c.pem".into()));
        assert_eq!(server.client_key, Some("k.pem".into()));
        assert_eq!(server.token_file, Some("t".into()));
        let env = HookCommand::parse(
            "WALHALLA_SERVER=http://127.0.0.1:7480 WALHALLA_TOKEN_FILE=/t walhalla fetch %f %p",
        );
        assert_eq!(
            env.fetch_server.server.as_deref(),
            Some("http://127.0.0.1:7480")
        );
        assert_eq!(env.fetch_server.token_file, Some("/t".into()));
    }

    #[test]
    fn other_commands_are_not_walhalla() {
        for command in ["", "cp %p /mnt/archive/%f", "/usr/bin/walhalla-wrapper %p"] {
            let parsed = HookCommand::parse(command);
            assert!(!parsed.runs_walhalla, "{command:?}");
            assert_eq!(parsed.subcommand, None);
        }
    }

    #[tokio::test]
    async fn reads_the_archive_of_a_config_file_it_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("walhalla.toml");
        std::fs::write(&file, "timeout_seconds = 5\narchive = \"/srv/other\"\n").unwrap();
        let command = format!("walhalla --config {} push %p", file.display());
        let mut hook = HookCommand::parse(&command);
        hook.read_config_file().await;
        assert_eq!(hook.archive.as_deref(), Some("/srv/other"));
        assert!(hook.source().contains("walhalla.toml"), "{}", hook.source());

        // An archive on the command line wins, as it does for walhalla itself.
        let mut given = HookCommand::parse(&format!("{command} --archive /srv/wh"));
        given.read_config_file().await;
        assert_eq!(given.archive.as_deref(), Some("/srv/wh"));
        assert_eq!(given.source(), "");

        let mut unreadable = HookCommand::parse("walhalla --config /nonexistent.toml push %p");
        unreadable.read_config_file().await;
        assert_eq!(unreadable.archive, None);
    }

    #[test]
    fn compares_archives_by_location() {
        let checked: Location = "/var/lib/wh".parse().unwrap();
        let same = HookCommand::parse("walhalla --archive file:///var/lib/wh push %p");
        assert_eq!(same.names_another_archive(&checked), Some(false));
        let other = HookCommand::parse("walhalla --archive /srv/other push %p");
        assert_eq!(other.names_another_archive(&checked), Some(true));
        let none = HookCommand::parse("walhalla push %p");
        assert_eq!(none.names_another_archive(&checked), None);
    }
}
