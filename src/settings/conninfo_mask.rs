//! Hides the secrets in a libpq connection string, in either of its forms: the values of the
//! keys [`secret_name`] names (`password`, and `sslpassword`, the client key's passphrase, which
//! libpq takes and walhalla refuses at use), by the rule every mask shares.

use crate::mask::secret_name;
use crate::protocol::conninfo::{is_space, percent_decode};

/// `conninfo` with the value of every key named like a secret ([`crate::mask`]: `password`,
/// `sslpassword`, `oauth_client_secret`) replaced by `********`: in `key=value` form
/// (values bare or single-quoted, `\` escaping) and in a `postgres://user:password@host` URI
/// (there and as a `password=` parameter, its key percent-encoded or not). White space and
/// keys are read as [`crate::protocol::conninfo`] reads them, so that whatever password the
/// connection would use is the one hidden. Text that parses as neither comes back unchanged.
pub fn mask_conninfo(conninfo: &str) -> String {
    const MASK: &str = "********";
    let uri = conninfo
        .strip_prefix("postgresql://")
        .or_else(|| conninfo.strip_prefix("postgres://"));
    let Some(rest) = uri else {
        return mask_key_values(conninfo, MASK);
    };
    let scheme = &conninfo[..conninfo.len() - rest.len()];
    let (authority_end, _) = rest
        .char_indices()
        .find(|&(_, c)| c == '/' || c == '?')
        .unwrap_or((rest.len(), ' '));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if percent_decode(key).is_ok_and(|k| secret_name(&k)) => {
                        format!("{key}={MASK}")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Whether `byte` separates keys and values: libpq's white space, vertical tab included.
fn space(byte: u8) -> bool {
    is_space(char::from(byte))
}

/// Masks `password` values in `key = value` text, keeping everything else byte for byte.
fn mask_key_values(text: &str, mask: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        // A key, then spaces, `=`, spaces.
        let key_start = i;
        while i < bytes.len() && !space(bytes[i]) && bytes[i] != b'=' {
            i += 1;
        }
        let key = &text[key_start..i];
        while i < bytes.len() && space(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            out.push_str(&text[key_start..i]);
            continue;
        }
        i += 1;
        while i < bytes.len() && space(bytes[i]) {
            i += 1;
        }
        out.push_str(&text[key_start..i]);
        // The value: quoted or bare, with backslash escapes.
        let value_start = i;
        let quoted = i < bytes.len() && bytes[i] == b'\'';
        if quoted {
            i += 1;
        }
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 1 + text[i + 1..].chars().next().map_or(0, char::len_utf8),
                b'\'' if quoted => {
                    i += 1;
                    break;
                }
                c if !quoted && space(c) => break,
                _ => i += 1,
            }
        }
        let i_end = i.min(bytes.len());
        if secret_name(key) && quoted {
            // Quoted as given: a key may follow the closing quote without a space.
            out.push('\'');
            out.push_str(mask);
            out.push('\'');
        } else if secret_name(key) {
            out.push_str(mask);
        } else {
            out.push_str(&text[value_start..i_end]);
        }
        i = i_end;
        // Spaces between pairs.
        while i < bytes.len() && space(bytes[i]) {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mask_conninfo;
    use crate::protocol::conninfo::ConnParams;

    #[test]
    fn hides_passwords_in_both_forms() {
        let cases = [
            (
                "host=db1 user=w password=s3cret",
                "host=db1 user=w password=********",
            ),
            (
                "password = 'a b\\' c' host=x",
                "password = '********' host=x",
            ),
            ("host=db1 user=w", "host=db1 user=w"),
            (
                "host=db1 sslpassword=p4ss sslkey=k",
                "host=db1 sslpassword=******** sslkey=k",
            ),
            (
                "postgres://w@db1/d?sslpassword=p4ss",
                "postgres://w@db1/d?sslpassword=********",
            ),
            (
                "postgres://w:s3cret@db1:5432/db",
                "postgres://w:********@db1:5432/db",
            ),
            (
                "postgresql://w@db1/db?password=x&sslmode=require",
                "postgresql://w@db1/db?password=********&sslmode=require",
            ),
            ("postgres://db1", "postgres://db1"),
            ("", ""),
        ];
        for (given, masked) in cases {
            assert_eq!(mask_conninfo(given), masked, "{given}");
        }
    }

    #[test]
    fn hides_passwords_behind_a_vertical_tab_or_an_encoded_key() {
        // Found by the conninfo fuzzer: the parser separates pairs with a vertical tab and
        // percent-decodes URI parameter keys, the mask did neither and showed the password.
        let cases = [
            (
                "host=db1\x0bpassword=s3cret",
                "host=db1\x0bpassword=********",
            ),
            (
                "password\x0b=\x0bs3cret\x0buser=w",
                "password\x0b=\x0b********\x0buser=w",
            ),
            (
                "postgres://w@db1/db?pass%77ord=s3cret",
                "postgres://w@db1/db?pass%77ord=********",
            ),
        ];
        for (given, masked) in cases {
            assert_eq!(mask_conninfo(given), masked, "{given:?}");
            let parsed = ConnParams::parse(masked, &|_| None).expect("the masked text parses");
            assert_eq!(parsed.password.as_deref(), Some("********"), "{given:?}");
        }
    }

    #[test]
    fn a_quoted_password_stays_quoted() {
        // Found by the conninfo fuzzer: a key may follow a closing quote without a space,
        // and the bare mask ran into it, so the masked text lost the host.
        let masked = mask_conninfo("password='s3cret'host=db1");
        assert_eq!(masked, "password='********'host=db1");
        let parsed = ConnParams::parse(&masked, &|_| None).expect("the masked text parses");
        assert_eq!(parsed.hosts[0].host_name(), "db1");
    }

    #[test]
    fn never_panics_on_odd_text() {
        for text in ["=", "a=", "'", "a='unterminated", "a=\\", "a=\\é", "   "] {
            assert_eq!(mask_conninfo(text), text);
        }
        assert_eq!(mask_conninfo("ü=ö password=é"), "ü=ö password=********");
    }
}
