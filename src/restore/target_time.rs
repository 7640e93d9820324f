//! Reading `--target-time` as PostgreSQL reads `recovery_target_time`, so that the instant
//! walhalla chooses a backup for and writes (in UTC) is the one the operator meant.
//!
//! Accepted: a date and time (`T` or a space between them; seconds and fraction optional)
//! followed by a zone: `Z`, an offset (`+01`, `+01:00`, `-0330`, with or without a space
//! before it), ` UTC`/` GMT`, or a zone name (` Europe/Berlin`). As in PostgreSQL, second 60
//! is the next minute's second 0. Refused, each with why: no zone (PostgreSQL would use the
//! server's, which walhalla cannot know), an abbreviation (`CET`, `EST`: PostgreSQL reads them
//! from its `timezone_abbreviations`, a zone's name may mean something else), and a local time
//! a zone name makes ambiguous or skips (clocks changing).

use jiff::Timestamp;
use jiff::civil::DateTime;

/// The accepted forms, for messages.
const FORMS: &str = "such as 2026-12-02T14:05:00Z, 2026-12-02 14:05:00+01 or \
                     2026-12-02 14:05:00 Europe/Berlin";

/// Reads a time target (see the module's documentation).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    let trimmed = text.trim();
    let (leap, trimmed) = without_leap_second(trimmed);
    let parsed = match zone_name(&trimmed) {
        Some((local, zone)) => in_zone(text, local, zone),
        None => joined_offset(&trimmed)
            .parse::<Timestamp>()
            .map_err(|_| unreadable(text)),
    }?;
    if leap {
        parsed
            .checked_add(jiff::SignedDuration::from_secs(1))
            .map_err(|_| unreadable(text))
    } else {
        Ok(parsed)
    }
}

fn unreadable(text: &str) -> String {
    if text.trim().parse::<DateTime>().is_ok() {
        return format!(
            "{text:?} has no time zone: PostgreSQL would read it in the server's, which \
             walhalla cannot know; add one, {FORMS}"
        );
    }
    format!("{text:?} is not a time walhalla can read: give a date, a time and a zone, {FORMS}")
}

/// `text` with a seconds field of 60 made 59, and whether it was 60: PostgreSQL reads
/// `12:34:60` as `12:35:00`, a second later than the 59 it becomes here.
fn without_leap_second(text: &str) -> (bool, std::borrow::Cow<'_, str>) {
    let bytes = text.as_bytes();
    // `HH:MM:60` followed by nothing, a fraction, a zone or white space.
    for i in 0..bytes.len().saturating_sub(7) {
        let window = &bytes[i..i + 8];
        let digits = |r: std::ops::Range<usize>| window[r].iter().all(u8::is_ascii_digit);
        if digits(0..2)
            && window[2] == b':'
            && digits(3..5)
            && window[5] == b':'
            && &window[6..8] == b"60"
            && bytes.get(i + 8).is_none_or(|b| !b.is_ascii_digit())
            && (i == 0 || !bytes[i - 1].is_ascii_digit())
        {
            let mut fixed = text.to_owned();
            fixed.replace_range(i + 6..i + 8, "59");
            return (true, fixed.into());
        }
    }
    (false, text.into())
}

/// A trailing zone name (` UTC`, ` Europe/Berlin`), split from the local time before it.
fn zone_name(text: &str) -> Option<(&str, &str)> {
    let (local, zone) = text.rsplit_once(' ')?;
    zone.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some((local.trim_end(), zone))
}

/// `local` read as a wall-clock time in `zone`.
fn in_zone(text: &str, local: &str, zone: &str) -> Result<Timestamp, String> {
    if zone.eq_ignore_ascii_case("UTC") || zone.eq_ignore_ascii_case("GMT") {
        return format!("{local}Z")
            .parse::<Timestamp>()
            .map_err(|_| unreadable(text));
    }
    if !zone.contains('/') {
        return Err(format!(
            "{text:?}: {zone} is not a zone walhalla reads: PostgreSQL takes abbreviations such \
             as CET or EST from its timezone_abbreviations, and a zone of the same name may \
             differ; give an offset (+01) or a zone's full name (Europe/Berlin)"
        ));
    }
    let tz = jiff::tz::db()
        .get(zone)
        .map_err(|_| format!("{text:?}: no time zone {zone} in this system's zone database"))?;
    let local: DateTime = local.parse().map_err(|_| unreadable(text))?;
    tz.to_ambiguous_zoned(local)
        .unambiguous()
        .map(|zoned| zoned.timestamp())
        .map_err(|_| {
            format!(
                "{text:?}: {local} happened twice or not at all in {zone} (the clocks changed): \
                 give the offset meant (+01, +02)"
            )
        })
}

/// `text` with white space before a trailing numeric offset removed (`… 14:05:00 +01`).
fn joined_offset(text: &str) -> std::borrow::Cow<'_, str> {
    match text.rsplit_once(' ') {
        Some((local, offset))
            if offset.starts_with(['+', '-'])
                && offset.len() > 1
                && offset[1..].bytes().all(|b| b.is_ascii_digit() || b == b':') =>
        {
            format!("{}{offset}", local.trim_end()).into()
        }
        _ => text.into(),
    }
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
            ("2026-12-02 14:05:00+01", "2026-12-02T13:05:00Z"),
            ("2026-12-02 14:05:00 +01", "2026-12-02T13:05:00Z"),
            ("2026-12-02 14:05:00 -03:30", "2026-12-02T17:35:00Z"),
            ("2026-12-02 14:05:00 UTC", "2026-12-02T14:05:00Z"),
            ("2026-12-02 14:05:00.25 gmt", "2026-12-02T14:05:00.25Z"),
            ("2026-12-02 14:05:00 Europe/Berlin", "2026-12-02T13:05:00Z"),
            ("2026-07-02 14:05:00 Europe/Berlin", "2026-07-02T12:05:00Z"),
            (" 2026-12-02T14:05:00Z ", "2026-12-02T14:05:00Z"),
        ] {
            assert_eq!(utc(text), Ok(expected.to_owned()), "{text}");
        }
    }

    #[test]
    fn second_60_is_the_next_minute() {
        assert_eq!(
            utc("2026-12-05 17:45:60+00"),
            Ok("2026-12-05T17:46:00Z".into())
        );
        assert_eq!(
            utc("2026-12-31T23:59:60.5Z"),
            Ok("2027-01-01T00:00:00.5Z".into())
        );
        assert_eq!(
            utc("2026-12-05 17:45:60 Europe/Berlin"),
            Ok("2026-12-05T16:46:00Z".into())
        );
    }

    #[test]
    fn refusals_say_why() {
        let refused = |t: &str| parse_time(t).unwrap_err();
        assert!(refused("2026-12-02 14:05:00").contains("has no time zone"));
        assert!(refused("2026-12-02T14:05:00").contains("has no time zone"));
        assert!(refused("2026-12-02 14:05:00 CET").contains("abbreviations"));
        assert!(refused("2026-12-02 14:05:00 Mars/Olympus").contains("no time zone Mars/Olympus"));
        // 02:30 on the night clocks go back happened twice; on the night they go forward,
        // not at all.
        assert!(refused("2026-10-25 02:30:00 Europe/Berlin").contains("happened twice"));
        assert!(refused("2026-03-29 02:30:00 Europe/Berlin").contains("not at all"));
        let message = refused("yesterday");
        assert!(
            message.contains("not a time walhalla can read"),
            "{message}"
        );
        assert!(!message.contains("unparsed"), "{message}");
    }
}
