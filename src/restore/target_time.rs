//! Reading `--target-time` as PostgreSQL reads `recovery_target_time`, so that the instant
//! walhalla chooses a backup for and writes (in UTC) is the one the operator meant. Anything
//! walhalla cannot read exactly as PostgreSQL would is refused, saying why.
//!
//! Accepted: `YYYY-MM-DD`, `T` or white space, `HH:MM`, optionally `:SS` and a fraction, then
//! a zone: `Z`, an offset (`+01`, `+0530`, `-03:30`, with or without white space before it,
//! at most 15 hours as in PostgreSQL), or after white space `UTC`, `GMT` or a zone's name
//! (`Europe/Berlin`). As in PostgreSQL, second 60 is the next minute's second 0, before the
//! zone applies. Refused: no zone (PostgreSQL would use the server's, which walhalla cannot
//! know); other names without a `/`, since PostgreSQL looks those up in its
//! `timezone_abbreviations` first (`CET` there is +01 all year, the tz database's `CET` is not);
//! a local time a zone name makes ambiguous or skips (clocks changing); the compact forms
//! (`20261205T174500Z`).

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};

/// The accepted forms, for messages.
const FORMS: &str = "such as 2026-12-02T14:05:00Z, 2026-12-02 14:05:00+01 or \
                     2026-12-02 14:05:00 Europe/Berlin";

/// PostgreSQL's largest time zone offset, in seconds (`MAX_TZDISP_HOUR`, 15 hours, plus the
/// minutes and seconds of the last hour).
const MAX_OFFSET_SECONDS: i32 = 15 * 3600 + 59 * 60 + 59;

/// Names without a `/` that mean UTC, in PostgreSQL and in the tz database alike.
const UTC_NAMES: [&str; 5] = ["UTC", "GMT", "UCT", "Zulu", "Z"];

/// Reads a time target (see the module's documentation), rounded to microseconds as
/// PostgreSQL rounds its input.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    let (local, zone) = split(text.trim_matches(|c: char| c.is_ascii_whitespace()))
        .ok_or_else(|| unreadable(text))?;
    let local = civil(local).ok_or_else(|| unreadable(text))?;
    let Some(zone) = zone else {
        return Err(format!(
            "{text:?} has no time zone: PostgreSQL would read it in the server's, which \
             walhalla cannot know; add one, {FORMS}"
        ));
    };
    let tz = time_zone(text, zone)?;
    let instant = match tz.to_ambiguous_zoned(local).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(local),
        AmbiguousOffset::Fold { before, after } | AmbiguousOffset::Gap { before, after } => {
            return Err(format!(
                "{text:?}: {local} happened twice or not at all in {zone} (the clocks changed): \
                 give the offset meant ({before} or {after})"
            ));
        }
    }
    .map_err(|_| unreadable(text))?;
    instant
        .round(
            TimestampRound::new()
                .smallest(Unit::Microsecond)
                .mode(RoundMode::HalfEven),
        )
        .map_err(|_| unreadable(text))
}

fn unreadable(text: &str) -> String {
    format!("{text:?} is not a time walhalla can read: give a date, a time and a zone, {FORMS}")
}

/// The local date and time, and the zone after it (`None` without one).
fn split(text: &str) -> Option<(&str, Option<&str>)> {
    // `YYYY-MM-DD`, then `T` or white space, then `HH:MM`.
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let date_then_time = digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits(8..10);
    if !date_then_time {
        return None;
    }
    let rest = &text[10..];
    let time = rest.strip_prefix(['T', 't']).or_else(|| {
        rest.starts_with(|c: char| c.is_ascii_whitespace())
            .then(|| rest.trim_start_matches(|c: char| c.is_ascii_whitespace()))
    })?;
    let time_bytes = time.as_bytes();
    if !(time_bytes.len() >= 5
        && time_bytes[..2].iter().all(u8::is_ascii_digit)
        && time_bytes[2] == b':'
        && time_bytes[3..5].iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    // The time runs while digits, `:` and a fraction's `.` do.
    let time_len = time
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(time.len());
    let local_len = text.len() - time.len() + time_len;
    let zone = text[local_len..].trim_start_matches(|c: char| c.is_ascii_whitespace());
    Some((&text[..local_len], (!zone.is_empty()).then_some(zone)))
}

/// `local` as a civil date and time, second 60 as the next minute's second 0.
fn civil(local: &str) -> Option<DateTime> {
    let (date, time) = local.split_at(10);
    let time = time
        .trim_start_matches(['T', 't'])
        .trim_start_matches(|c: char| c.is_ascii_whitespace());
    let mut fields = time.splitn(3, ':');
    let (hour, minute) = (fields.next()?, fields.next()?);
    let (second, fraction) = match fields.next() {
        Some(s) => match s.split_once('.') {
            Some((second, fraction)) => (second, fraction),
            None => (s, ""),
        },
        None => ("00", ""),
    };
    fn two(s: &str) -> Option<&str> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
    }
    let leap = second == "60";
    let second = if leap { "59" } else { two(second)? };
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || (time.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let fraction = if fraction.is_empty() {
        String::new()
    } else {
        format!(".{fraction}")
    };
    let text = format!("{date}T{}:{}:{second}{fraction}", two(hour)?, two(minute)?);
    let parsed: DateTime = text.parse().ok()?;
    if parsed.year() < 1 {
        return None;
    }
    if leap {
        parsed.checked_add(SignedDuration::from_secs(1)).ok()
    } else {
        Some(parsed)
    }
}

/// The zone `zone` names: an offset, a UTC name, or a zone's name from the system's database.
fn time_zone(text: &str, zone: &str) -> Result<TimeZone, String> {
    if zone.contains(|c: char| c.is_whitespace()) {
        // Two zones, or words after one.
        return Err(unreadable(text));
    }
    if let Some(offset) = offset(zone) {
        return offset
            .ok_or_else(|| {
                format!("{text:?}: offset {zone} is beyond PostgreSQL's ±15:59:59, or unreadable")
            })
            .map(Offset::to_time_zone);
    }
    if UTC_NAMES.iter().any(|name| zone.eq_ignore_ascii_case(name)) {
        return Ok(TimeZone::UTC);
    }
    if !zone.contains('/') {
        return Err(format!(
            "{text:?}: {zone} is not a zone walhalla reads: PostgreSQL looks names without a \
             '/' up in its timezone_abbreviations first (CET there is +01 all year), which \
             walhalla cannot see; give an offset (+01) or a zone's full name (Europe/Berlin)"
        ));
    }
    jiff::tz::db()
        .get(zone)
        .map_err(|_| format!("{text:?}: no time zone {zone} in this system's zone database"))
}

/// `zone` read as a numeric offset: `None` when it does not start with a sign, `Some(None)`
/// when it does but is no offset PostgreSQL takes. `+H`, `+HH`, `+HHMM`, `+HHMMSS`, `+HH:MM`,
/// `+HH:MM:SS`.
fn offset(zone: &str) -> Option<Option<Offset>> {
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &zone[1..];
    let number = |s: &str| -> Option<i32> {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let parts: Option<(i32, i32, i32)> = if body.contains(':') {
        let mut fields = body.split(':');
        let hours = number(fields.next()?);
        let minutes = fields.next().map_or(Some(0), number);
        let seconds = fields.next().map_or(Some(0), number);
        match (hours, minutes, seconds, fields.next()) {
            (Some(h), Some(m), Some(s), None) => Some((h, m, s)),
            _ => None,
        }
    } else if body.bytes().all(|b| b.is_ascii_digit()) {
        match body.len() {
            1 | 2 => number(body).map(|h| (h, 0, 0)),
            3 | 4 => {
                let (h, m) = body.split_at(body.len() - 2);
                number(h).zip(number(m)).map(|(h, m)| (h, m, 0))
            }
            6 => number(&body[..2])
                .zip(number(&body[2..4]))
                .zip(number(&body[4..]))
                .map(|((h, m), s)| (h, m, s)),
            _ => None,
        }
    } else {
        None
    };
    Some(parts.and_then(|(h, m, s)| {
        let seconds = h * 3600 + m * 60 + s;
        (m < 60 && s < 60 && seconds <= MAX_OFFSET_SECONDS)
            .then(|| Offset::from_seconds(sign * seconds).ok())
            .flatten()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Result<String, String> {
        parse_time(text).map(|t| t.to_string())
    }

    #[test]
    fn zones_as_postgresql_reads_them() {
        for (text, expected) in [
            ("2026-12-02T14:05:00Z", "2026-12-02T14:05:00Z"),
            ("2026-12-02t14:05:00z", "2026-12-02T14:05:00Z"),
            ("2026-12-02 14:05:00+01", "2026-12-02T13:05:00Z"),
            ("2026-12-02 14:05+01", "2026-12-02T13:05:00Z"),
            ("2026-12-02 14:05:00 +01", "2026-12-02T13:05:00Z"),
            ("2026-12-02\t14:05:00\t+5", "2026-12-02T09:05:00Z"),
            ("2026-12-02 14:05:00+0530", "2026-12-02T08:35:00Z"),
            ("2026-12-02 14:05:00 -03:30", "2026-12-02T17:35:00Z"),
            ("2026-12-02 14:05:00 UTC", "2026-12-02T14:05:00Z"),
            ("2026-12-02 14:05:00.25 gmt", "2026-12-02T14:05:00.25Z"),
            ("2026-12-02 14:05:00 Zulu", "2026-12-02T14:05:00Z"),
            ("2026-12-02 14:05:00 Europe/Berlin", "2026-12-02T13:05:00Z"),
            ("2026-07-02 14:05:00 Europe/Berlin", "2026-07-02T12:05:00Z"),
            (" 2026-12-02T14:05:00Z ", "2026-12-02T14:05:00Z"),
            // Microseconds, as PostgreSQL keeps them (half to even).
            (
                "2026-12-02 14:05:00.1234565Z",
                "2026-12-02T14:05:00.123456Z",
            ),
        ] {
            assert_eq!(utc(text), Ok(expected.to_owned()), "{text}");
        }
    }

    #[test]
    fn second_60_is_the_next_minute_before_the_zone_applies() {
        for (text, expected) in [
            ("2026-12-05 17:45:60+00", "2026-12-05T17:46:00Z"),
            ("2026-12-31T23:59:60.5Z", "2027-01-01T00:00:00.5Z"),
            ("2026-12-05 17:45:60 Europe/Berlin", "2026-12-05T16:46:00Z"),
        ] {
            assert_eq!(utc(text), Ok(expected.to_owned()), "{text}");
        }
        // 01:59:60 is 02:00:00, which that night happened twice in Berlin.
        let refused = parse_time("2026-10-25 01:59:60 Europe/Berlin").unwrap_err();
        assert!(refused.contains("happened twice"), "{refused}");
    }

    #[test]
    fn refusals_say_why() {
        let refused = |t: &str| parse_time(t).unwrap_err();
        for text in ["2026-12-02 14:05:00", "2026-12-02T14:05:00"] {
            assert!(refused(text).contains("has no time zone"), "{text}");
        }
        assert!(refused("2026-12-02 14:05:00 CET").contains("timezone_abbreviations"));
        assert!(refused("2026-12-02 14:05:00 Japan").contains("timezone_abbreviations"));
        assert!(refused("2026-12-02 14:05:00 Mars/Olympus").contains("no time zone Mars/Olympus"));
        assert!(refused("2026-12-02 14:05:00+16").contains("beyond PostgreSQL's"));
        // 02:30 on the night clocks go back happened twice; on the night they go forward,
        // not at all; the message names the two offsets.
        let twice = refused("2026-10-25 02:30:00 Europe/Berlin");
        assert!(
            twice.contains("happened twice") && twice.contains("+02 or +01"),
            "{twice}"
        );
        assert!(refused("2026-03-29 02:30:00 Europe/Berlin").contains("not at all"));
        assert!(refused("2026-03-08 02:30:00 America/New_York").contains("-05 or -04"));
        // Two zones; compact forms; an hour alone; year 0; a comma fraction: not read.
        for text in [
            "2026-12-02 14:05:00-05:00 Europe/Berlin",
            "20261205T174560Z",
            "2026-12-05T174560Z",
            "2026-12-02T14Z",
            "0000-12-02 14:05:00Z",
            "2026-12-02 14:05:00,5Z",
            "2026-12-02 14:05:00.Z",
            "2026-12-02\u{3000}14:05:00Z",
            "yesterday",
        ] {
            let message = refused(text);
            assert!(
                message.contains("not a time walhalla can read")
                    || message.contains("is not a zone walhalla reads"),
                "{text}: {message}"
            );
            assert!(!message.contains("unparsed"), "{message}");
        }
    }
}
