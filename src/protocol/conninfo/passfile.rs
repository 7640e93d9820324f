//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile`): read only when it is a plain
//! file no one else may read, and matched line by line as libpq does.

use std::path::Path;

/// The password file's contents, or `None` if it is missing, unreadable, not a plain file, or
/// (on unix) accessible to group or others.
pub(super) fn read_passfile(path: &Path) -> Option<String> {
    // Checked before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; permissions should be u=rw (0600) \
                 or less; ignoring it"
            );
            return None;
        }
    }
    std::fs::read_to_string(path).ok()
}

/// Matches one password-file line against host, port, database and user; returns its
/// password (the rest of the line, unescaped) on a match.
pub fn match_passfile_line(line: &str, wanted: &[&str; 4]) -> Option<String> {
    let mut chars = line.chars();
    for want in wanted {
        let (mut field, mut escaped) = (String::new(), false);
        loop {
            match chars.next()? {
                ':' => break,
                '\\' => {
                    escaped = true;
                    field.extend(chars.next());
                }
                c => field.push(c),
            }
        }
        let wildcard = field == "*" && !escaped;
        if !wildcard && field != *want {
            return None;
        }
    }
    let mut password = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => password.extend(chars.next()),
            c => password.push(c),
        }
    }
    Some(password)
}
