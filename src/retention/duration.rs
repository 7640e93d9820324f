//! Durations as `prune` takes them: `14d`, `12h`, `30m`, `2w`, `90s`, or several together
//! (`1d12h`). A day is 24 hours and a week 7 days: retention counts elapsed time, not calendar
//! days.

use std::time::Duration;

/// Parses a duration: one or more `<number><unit>`, units `s`, `m` (minutes), `h`, `d`, `w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "{text:?} is not a duration such as 14d, 12h, 30m or 2w (units s, m, h, d, w): {why}"
        )
    };
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut seconds: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad("the number is too large"))?;
        let unit = after
            .chars()
            .next()
            .ok_or_else(|| bad("a number lacks its unit"))?;
        let per = match unit {
            's' => 1,
            'm' => 60,
            'h' => 60 * 60,
            'd' => 24 * 60 * 60,
            'w' => 7 * 24 * 60 * 60,
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        seconds = number
            .checked_mul(per)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(|| bad("it is too long"))?;
        rest = &after[unit.len_utf8()..];
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_units() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("14d"), Ok(14 * 86_400));
        assert_eq!(secs("12h"), Ok(12 * 3_600));
        assert_eq!(secs("30m"), Ok(30 * 60));
        assert_eq!(secs("2w"), Ok(14 * 86_400));
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("1d12h"), Ok(86_400 + 12 * 3_600));
        assert_eq!(secs("0d"), Ok(0));
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "14",
            "d",
            "14 d",
            " 14d",
            "14D",
            "1y",
            "1mo",
            "-1d",
            "1.5d",
            "14dd",
            "99999999999999999999d",
            "40000000000000w",
            "1\u{e9}",
        ] {
            let refused = parse_duration(bad).unwrap_err();
            assert!(refused.contains("not a duration"), "{bad:?}: {refused}");
        }
    }
}
