//! Hides secrets in text walhalla shows but did not write, pure: a shell command read from the
//! server (`archive_command`, `restore_command`) and messages that quote a URL (a store's
//! endpoint with a user and password in it).

/// The mask put in place of a secret.
const MASK: &str = "********";

/// Whether a variable or parameter named `name` holds a secret, by its name.
pub(crate) fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "PRIVATE",
        "SIGNATURE",
    ]
    .iter()
    .any(|word| upper.contains(word))
        || upper == "PGPASS"
        || upper.ends_with("_KEY")
        || upper == "KEY"
}

/// `text` with every URL's user information (`scheme://user:password@host`) and the values of
/// its query parameters named like secrets (`?secret=…`, `password=…`) replaced by the mask.
pub fn mask_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`'))
            .unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        out.push_str(&mask_url_tail(url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// One URL (a setting's whole value), masked as [`mask_urls`] says, white space and quotes
/// in it included: the user information is whatever precedes the last `@` before the path.
pub fn mask_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", mask_url_tail(rest)),
        None => url.to_owned(),
    }
}

/// A URL after its `scheme://`, masked as [`mask_urls`] says.
fn mask_url_tail(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = (query.split('&'))
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if secret_name(key) => format!("{key}={MASK}"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{authority}{path}")
}

/// A shell command with its secrets masked: assignments to variables named like secrets
/// (`PGPASSWORD=…`, `AWS_SECRET_ACCESS_KEY=…`, quoted or not), `password=` in a connection
/// string, and what [`mask_urls`] masks.
pub fn mask_command(command: &str) -> String {
    let bytes = command.as_bytes();
    let mut out = String::with_capacity(command.len());
    let mut i = 0;
    while i < bytes.len() {
        // A word: a name, `=`, a value bare or quoted, up to white space.
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let name = &command[start..i];
        // At a word's start (or after `--`), not inside one such as a URL's query.
        let word_start = start == 0
            || bytes[start - 1].is_ascii_whitespace()
            || b";&|(-".contains(&bytes[start - 1]);
        if word_start && i > start && i < bytes.len() && bytes[i] == b'=' && secret_name(name) {
            out.push_str(name);
            out.push('=');
            i += 1;
            i = value_end(bytes, i);
            out.push_str(MASK);
            continue;
        }
        if i == start {
            // Not a name: copy one character.
            let c = command[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        } else {
            out.push_str(name);
        }
    }
    mask_urls(&out)
}

/// Where a value starting at `i` ends: a quoted one at its closing quote (backslash escapes
/// followed inside double quotes), a bare one at white space, `;` or a quote that belongs to
/// the text around it.
fn value_end(bytes: &[u8], mut i: usize) -> usize {
    if let Some(&quote @ (b'\'' | b'"')) = bytes.get(i) {
        i += 1;
        while i < bytes.len() && bytes[i] != quote {
            if quote == b'"' && bytes[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        return (i + 1).min(bytes.len());
    }
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b";'\"".contains(&bytes[i]) {
        i += if bytes[i] == b'\\' { 2 } else { 1 };
    }
    i.min(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_a_command_are_masked_and_the_rest_kept() {
        let cases = [
            (
                "AWS_SECRET_ACCESS_KEY=S3cret /usr/bin/walhalla --archive s3://b/x push %p",
                "AWS_SECRET_ACCESS_KEY=******** /usr/bin/walhalla --archive s3://b/x push %p",
            ),
            (
                "PGPASSWORD='two words' wrapper %p",
                "PGPASSWORD=******** wrapper %p",
            ),
            (
                "env TOKEN=\"a\\\"b c\" AWS_REGION=eu walhalla push %p",
                "env TOKEN=******** AWS_REGION=eu walhalla push %p",
            ),
            (
                "walhalla --archive 's3://b/x?secret=abc&region=eu' push %p",
                "walhalla --archive 's3://b/x?secret=********&region=eu' push %p",
            ),
            (
                "curl -T %p https://user:pw@host/path/%f",
                "curl -T %p https://********@host/path/%f",
            ),
            (
                "test ! -f /a/%f && cp %p /a/%f",
                "test ! -f /a/%f && cp %p /a/%f",
            ),
        ];
        for (command, masked) in cases {
            assert_eq!(mask_command(command), masked, "{command}");
        }
    }

    #[test]
    fn urls_in_messages_lose_their_user_information() {
        assert_eq!(
            mask_urls("HEAD http://u:S3cret@127.0.0.1:9000/b/k: connection refused"),
            "HEAD http://********@127.0.0.1:9000/b/k: connection refused"
        );
        assert_eq!(mask_urls("no url here"), "no url here");
        for (url, masked) in [
            ("https://pw@h:99999/x?y", "https://********@h:99999/x?y"),
            ("http://h:7480/wal?a=b@c", "http://h:7480/wal?a=b@c"),
            (
                "http://h:7480/wal?token=t0k&a=b",
                "http://h:7480/wal?token=********&a=b",
            ),
            ("http://127.0.0.1:7480", "http://127.0.0.1:7480"),
        ] {
            assert_eq!(mask_urls(url), masked, "{url}");
            assert_eq!(mask_url(url), masked, "{url}");
        }
        // A setting's whole value: quotes and spaces in the user information are masked too.
        for url in [
            "http://u:p'w@h:1/x",
            "http://u:p w@h:1/x",
            "s3://u:p\"w@bucket/p",
        ] {
            let masked = mask_url(url);
            assert!(
                masked.ends_with("********@h:1/x") || masked.ends_with("********@bucket/p"),
                "{masked}"
            );
        }
        assert_eq!(mask_url("/var/lib/walhalla"), "/var/lib/walhalla");
    }
}
