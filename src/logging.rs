//! Log setup: where lines go (stderr, which PostgreSQL captures for its hooks), in which
//! format (`--log-format text|json`), and which of them (`--log-level`, `WALHALLA_LOG` or the
//! config file's `log_level`,
//! else the command's default). A filter that does not parse is refused rather than ignored:
//! `tracing`'s own syntax would take a mistyped level such as `bogus` for the name of a module
//! and log nothing at all.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The levels a filter directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The log filter `command` uses when none is given: `info` for the long-running and the
/// operator-run commands, `warn` for the others (`push` and `fetch` log only what needs
/// attention); the demo shows its own output only. The AWS credential chain's warnings about
/// each source it tried, and the certificate verifier's error for each refused handshake, stay
/// out: walhalla reports the outcome, with its cause, in one line.
pub fn default_filter(command: &str) -> &'static str {
    match command {
        "receive" | "serve" | "backup" | "restore" => {
            "info,aws_config=error,rustls_platform_verifier=off"
        }
        "demo" => "walhalla=warn,aws_config=error,rustls_platform_verifier=off",
        _ => "warn,aws_config=error,rustls_platform_verifier=off",
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target` and `fields` (with
    /// `message`).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format: text or json")),
        }
    }
}

/// Parses a log filter: comma-separated directives, each a level (`info`) or `TARGET=LEVEL`
/// (`walhalla::archive=debug`), levels being off, error, warn, info, debug and trace.
/// `source` names where the filter came from, for the error.
pub fn parse_filter(text: &str, source: &str) -> Result<EnvFilter, String> {
    let invalid = |why: String| format!("invalid log filter {text:?} in {source}: {why}");
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for directive in &directives {
        // tracing reads a bare word as a target to log at every level: a mistyped level
        // would silence everything.
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "{directive:?} is not a level ({}); give a module's level as TARGET=LEVEL",
                LEVELS.join(", ")
            )));
        }
    }
    EnvFilter::builder()
        .parse(directives.join(","))
        .map_err(|e| invalid(e.to_string()))
}

/// The filter to log with: `given` (the filter and where it was given: `--log-level`,
/// `WALHALLA_LOG` or the config file) if any and not blank, else `default`.
pub fn choose_filter(given: Option<(&str, &str)>, default: &str) -> Result<EnvFilter, String> {
    match given {
        Some((text, source)) if !text.trim().is_empty() => parse_filter(text, source),
        _ => parse_filter(default, "the default"),
    }
}

/// Installs the global subscriber: `filter`'s lines to stderr in `format` (text with colours
/// only on a terminal).
pub fn init(filter: EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Prints the error that ends the command, in `format`, whatever the filter: the last word
/// of a failed command is never filtered out, and in JSON it is a line like the others.
pub fn print_error(format: LogFormat, message: &str) {
    eprintln!(
        "{}",
        error_line(format, message, Some(jiff::Timestamp::now()))
    );
}

/// The line, without its newline, that [`print_error`] prints for `message` at time `at`. A
/// line made ahead of its time (for a signal handler, which cannot read the clock and format
/// it safely) has no time: `None` leaves the JSON's `timestamp` out.
pub fn error_line(format: LogFormat, message: &str, at: Option<jiff::Timestamp>) -> String {
    match format {
        LogFormat::Text => message.to_owned(),
        LogFormat::Json => {
            let mut line = serde_json::json!({
                "level": "ERROR",
                "fields": { "message": message },
                "target": "walhalla",
            });
            if let Some(at) = at {
                line["timestamp"] = at.to_string().into();
            }
            line.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_is_the_message_or_one_line_of_json() {
        assert_eq!(
            error_line(LogFormat::Text, "walhalla x: error: \"y\"", None),
            "walhalla x: error: \"y\""
        );
        let at: jiff::Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        let line = error_line(LogFormat::Json, "a \"quoted\"\nsecond line", Some(at));
        assert!(!line.contains('\n'), "{line}");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["fields"]["message"], "a \"quoted\"\nsecond line");
        assert_eq!(json["level"], "ERROR");
        assert_eq!(json["timestamp"], "2026-12-05T10:00:00Z");
        let ahead = error_line(LogFormat::Json, "m", None);
        let json: serde_json::Value = serde_json::from_str(&ahead).unwrap();
        assert!(json.get("timestamp").is_none(), "{ahead}");
    }

    #[test]
    fn levels_and_targets_parse() {
        for good in [
            "warn",
            "INFO",
            "info,walhalla::archive=debug",
            "walhalla=debug",
            "off",
            " warn , walhalla=trace ",
        ] {
            assert!(parse_filter(good, "test").is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn mistyped_filters_are_refused_with_the_reason() {
        for bad in [
            "bogus",
            "info,walhala",
            "walhalla=loud",
            "walhalla=debug,verbose",
        ] {
            let error = parse_filter(bad, "WALHALLA_LOG").expect_err(bad);
            assert!(error.contains("WALHALLA_LOG"), "{error}");
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
