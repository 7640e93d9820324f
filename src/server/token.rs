//! The fetch server's bearer token and the file it lives in. Unless told otherwise the server
//! uses `token` in the user's state directory ([`default_path`]), creating it on first start;
//! clients of the same user on the same host find it there on their own. The token itself is
//! never logged.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use tokio_rustls::rustls::crypto::aws_lc_rs;

use crate::fsutil;

/// The default token file's name in the state directory.
const FILE_NAME: &str = "token";
/// Random bytes in a new token (written as twice as many hexadecimal digits).
const TOKEN_BYTES: usize = 32;

/// The token file a server and its same-user clients use when none is given:
/// `$XDG_STATE_HOME/walhalla/token`, else `~/.local/state/walhalla/token`.
pub fn default_path() -> PathBuf {
    crate::osuser::state_dir().join(FILE_NAME)
}

/// Reads the token from its file: the first line, without surrounding whitespace. Warns when
/// other users can read the file.
pub fn read(path: &Path) -> anyhow::Result<String> {
    warn_if_others_read(path, false)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the token file {}", path.display()))?;
    let token = token_of(text.lines().next().unwrap_or(""));
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    if let Some(refusal) = unsendable(path, 1, token) {
        bail!("{refusal}: write a token of printable ASCII, e.g. openssl rand -hex 32");
    }
    Ok(token.to_string())
}

/// Warns when other users can read the token file at `path`: a client once per file in a
/// process (`check` reads it more than once), the server at every reading (`repeat`), since
/// the file may have been replaced.
fn warn_if_others_read(path: &Path, repeat: bool) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("read the token file {}", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 && (warns_first(path) || repeat) {
        tracing::warn!(
            path = %path.display(),
            "other users can read the token file: chmod 600 it"
        );
    }
    Ok(())
}

/// Whether this is the process's first warning about the token file at `path`.
fn warns_first(path: &Path) -> bool {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    warned.insert(path.to_path_buf())
}

/// A line's token: without surrounding white space, nor the byte-order mark an editor may
/// put at a file's start.
fn token_of(line: &str) -> &str {
    line.trim().trim_start_matches('\u{feff}').trim()
}

/// Why a token (on line `line` of `path`) cannot be used, if it cannot: an HTTP client sends
/// only printable ASCII, spaces and tabs in an `Authorization` header, so no client could
/// ever offer it.
fn unsendable(path: &Path, line: usize, token: &str) -> Option<String> {
    let sendable = token.chars().all(|c| c == '\t' || (' '..='~').contains(&c));
    (!sendable).then(|| {
        format!(
            "line {line} of the token file {} holds characters other than printable ASCII, \
             which an HTTP client cannot send as a bearer token",
            path.display()
        )
    })
}

/// The token in `path`, or a new random one written there first when the file does not
/// exist: mode 0600, fsynced under a temporary name, then linked into place (so two servers
/// starting at once agree on one token) and the directory fsynced.
pub fn read_or_create(path: &Path) -> anyhow::Result<Vec<String>> {
    match std::fs::metadata(path) {
        Ok(_) => {
            return read_served(path, "remove the file to have the server make a random one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read the token file {}", path.display())),
    }
    create(path).with_context(|| format!("create the token file {}", path.display()))?;
    tracing::info!(path = %path.display(), "created the fetch server's token file");
    Ok(vec![read(path)?])
}

/// A token shorter than this (in characters) is warned about: a new one has 64.
const SHORT_TOKEN: usize = 16;

/// Reads the tokens the server accepts: every non-empty line of its file (clients send the
/// first line of theirs), so that a token can be rotated without refusing anyone: the new one
/// added, the clients given it, the old one removed. Warns when other users can read the file
/// or when a token is short enough to guess (`remedy` says what to do then).
pub fn read_served(path: &Path, remedy: &str) -> anyhow::Result<Vec<String>> {
    warn_if_others_read(path, true)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the token file {}", path.display()))?;
    let mut tokens = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let token = token_of(line);
        match unsendable(path, number + 1, token) {
            _ if token.is_empty() => {}
            // Passed over: it could never match, and the other lines still serve.
            Some(refusal) => tracing::warn!("{refusal}: passed over ({remedy})"),
            None => {
                let length = token.chars().count();
                if length < SHORT_TOKEN {
                    tracing::warn!(
                        path = %path.display(),
                        "the token on line {} is {length} characters long: a short token can be \
                         guessed ({remedy}, or write at least {SHORT_TOKEN})",
                        number + 1
                    );
                }
                tokens.push(token.to_string());
            }
        }
    }
    if tokens.is_empty() {
        bail!(
            "the token file {} holds no token a client can send ({remedy})",
            path.display()
        );
    }
    Ok(tokens)
}

/// Writes a new token to `path` unless a file is there already.
fn create(path: &Path) -> std::io::Result<()> {
    let dir = fsutil::parent_dir(path);
    fsutil::create_dir_all_durable(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".token-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    writeln!(temp.as_file_mut(), "{}", generate())?;
    temp.as_file().sync_all()?;
    match std::fs::hard_link(temp.path(), path) {
        Ok(()) => {}
        // Another server created it meanwhile: its token stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    drop(temp);
    fsutil::fsync_dir(dir)
}

/// A new token: random bytes from the TLS library's generator, in hexadecimal.
fn generate() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_line_and_refuses_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cr3t \nignored\n").unwrap();
        assert_eq!(read(&path).unwrap(), "s3cr3t");
        std::fs::write(&path, "\n").unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn a_readable_token_file_is_warned_about_once_per_file() {
        let (a, b) = (
            Path::new("/nonexistent/a/token"),
            Path::new("/nonexistent/b/token"),
        );
        assert!(warns_first(a));
        assert!(!warns_first(a), "a second reading of the same file");
        assert!(warns_first(b));
    }

    #[test]
    fn a_token_no_client_can_send_is_passed_over_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        // A byte-order mark is not part of the token.
        std::fs::write(&path, "\u{feff}good-token-0123456789\nsécret-0123456789\n").unwrap();
        assert_eq!(
            read_served(&path, "remedy").unwrap(),
            ["good-token-0123456789"]
        );
        assert_eq!(read(&path).unwrap(), "good-token-0123456789");
        // No line left: refused, the line named, the token never shown.
        std::fs::write(&path, "sécret-0123456789\n").unwrap();
        let error = format!("{:#}", read_served(&path, "remedy").unwrap_err());
        assert!(
            error.contains("holds no token a client can send"),
            "{error}"
        );
        let error = format!("{:#}", read(&path).unwrap_err());
        assert!(error.contains("line 1 of the token file"), "{error}");
        assert!(
            !error.contains("sécret"),
            "the token is never shown: {error}"
        );
        // Inner spaces and tabs can be sent.
        std::fs::write(&path, "a token\twith spaces\n").unwrap();
        assert_eq!(
            read_served(&path, "remedy").unwrap(),
            ["a token\twith spaces"]
        );
    }

    #[test]
    fn a_missing_file_is_created_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/walhalla/token");
        let tokens = read_or_create(&path).unwrap();
        let [token] = tokens.as_slice() else {
            panic!("one token: {tokens:?}")
        };
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read_or_create(&path).unwrap(),
            tokens,
            "the same token again"
        );
        // Only the token file is left, no temporary one.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token"]);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(read_or_create(&other.path().join("t")).unwrap(), tokens);
    }
}
