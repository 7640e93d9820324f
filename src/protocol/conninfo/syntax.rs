//! The two syntaxes of a connection string, as libpq reads them: `key = value` pairs and the
//! `postgresql://` URI. Both give the keywords as written, validated against the ones
//! accepted; what they mean is [`super::ConnParams::parse`]'s business.

use std::collections::HashMap;

use super::{ConninfoError, KEYWORDS, SslMode};

/// Keyword → value as given (URI or `key=value`), keywords validated.
pub(super) type Settings = HashMap<&'static str, String>;

fn store(settings: &mut Settings, key: &str, value: String) -> Result<(), ConninfoError> {
    let keyword = KEYWORDS.split_whitespace().find(|k| *k == key);
    let keyword = keyword.ok_or_else(|| ConninfoError::UnknownKeyword(key.to_owned()))?;
    settings.insert(keyword, value);
    Ok(())
}

/// libpq's `isspace`: the ASCII white space characters, vertical tab included.
pub(crate) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Parses `key = value` pairs; values may be single-quoted, `\` escapes the next character.
pub(super) fn parse_key_value(conninfo: &str) -> Result<Settings, ConninfoError> {
    let mut settings = Settings::new();
    let mut chars = conninfo.chars().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.next_if(|c| is_space(*c)).is_some() {}
    };
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            return Ok(settings);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(*c)) {
            key.push(c);
        }
        skip_spaces(&mut chars);
        if chars.next() != Some('=') {
            return Err(ConninfoError::MissingEquals(key));
        }
        skip_spaces(&mut chars);
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConninfoError::UnterminatedQuote),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or(ConninfoError::UnterminatedQuote)?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !is_space(*c)) {
                match c {
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        }
        store(&mut settings, &key, value)?;
    }
}

/// Parses what follows `postgresql://`:
/// `[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`, percent-decoding each part.
pub(super) fn parse_uri(uri: &str) -> Result<Settings, ConninfoError> {
    let bad = ConninfoError::InvalidUri;
    let mut settings = Settings::new();
    let (rest, query) = uri.split_once('?').unwrap_or((uri, ""));
    let (authority, dbname) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, mut host_list) = authority.rsplit_once('@').unwrap_or(("", authority));

    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    for (key, value) in [("user", user), ("password", password), ("dbname", dbname)] {
        if !value.is_empty() {
            settings.insert(key, percent_decode(value)?);
        }
    }

    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    loop {
        let (host, after) = if let Some(bracketed) = host_list.strip_prefix('[') {
            let missing = bad("missing \"]\" after IPv6 host address");
            let (host, after) = bracketed.split_once(']').ok_or(missing)?;
            if host.is_empty() {
                return Err(bad("IPv6 host address may not be empty"));
            }
            if !(after.is_empty() || after.starts_with([':', ','])) {
                return Err(bad("unexpected character after IPv6 address"));
            }
            (host, after)
        } else {
            host_list.split_at(host_list.find([':', ',']).unwrap_or(host_list.len()))
        };
        let (port, after) = match after.strip_prefix(':') {
            Some(port) => port.split_at(port.find(',').unwrap_or(port.len())),
            None => ("", after),
        };
        hosts.push(percent_decode(host)?);
        ports.push(percent_decode(port)?);
        match after.strip_prefix(',') {
            Some(next) => host_list = next,
            None => break,
        }
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        settings.insert("host", hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        settings.insert("port", ports.join(","));
    }

    for param in query.split('&').filter(|p| !p.is_empty()) {
        let missing = bad("missing \"=\" in query parameter");
        let (key, value) = param.split_once('=').ok_or(missing)?;
        if value.contains('=') {
            return Err(bad("extra \"=\" in query parameter"));
        }
        let (key, value) = (percent_decode(key)?, percent_decode(value)?);
        if key == "ssl" && value == "true" {
            settings.insert("sslmode", SslMode::Require.to_string());
        } else {
            store(&mut settings, &key, value)?;
        }
    }
    Ok(settings)
}

/// Decodes `%XX` escapes (`+` stays `+`); `%00` and results that are not UTF-8 are errors.
pub(crate) fn percent_decode(s: &str) -> Result<String, ConninfoError> {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Err(ConninfoError::InvalidUri("invalid percent-encoded token"));
            };
            let byte = (high * 16 + low) as u8;
            if byte == 0 {
                return Err(ConninfoError::InvalidUri(
                    "forbidden value %00 in percent-encoded value",
                ));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConninfoError::InvalidUri("percent-encoded value is not valid UTF-8"))
}
