//! What a session learns about the server before streaming: that it can stream to walhalla
//! at all (integer timestamps, a supported major version), which cluster and timeline it
//! serves, and the segment and page sizes of its WAL, from which the streamed pages are
//! checked ([`crate::wal::PageChecker`]). A server of another cluster, or with sizes no
//! PostgreSQL has, is a fatal error: asking it again cannot help.

use std::time::Duration;

use anyhow::anyhow;

use super::session::{SessionError, from_conn};
use crate::protocol::commands::{self, CommandError, Identity};
use crate::protocol::connection::Connection;
use crate::wal::page_stream::{Expected, PageError};
use crate::wal::{SegmentSize, SystemId, TimelineId, version};

/// The facts about one server a session streams from.
#[derive(Clone, Copy, Debug)]
pub struct ServerFacts {
    /// What IDENTIFY_SYSTEM said.
    pub identity: Identity,
    /// Its WAL segment size.
    pub segment_size: SegmentSize,
    /// Its WAL page size.
    pub block_size: u32,
    /// `XLOG_PAGE_MAGIC` of its major version.
    pub page_magic: u16,
}

impl ServerFacts {
    /// What the pages of a stream of `timeline` must say.
    pub fn pages(&self, timeline: TimelineId) -> Expected {
        Expected {
            magic: self.page_magic,
            system_id: self.identity.system_id,
            segment_size: self.segment_size,
            block_size: self.block_size,
            timeline,
        }
    }
}

/// Asks the server what it is; `expected` is the cluster this receiver archives, when known.
pub async fn identify(
    conn: &mut Connection,
    expected: Option<SystemId>,
) -> Result<ServerFacts, SessionError> {
    let host = conn.host().to_string();
    if conn
        .parameter("integer_datetimes")
        .is_some_and(|v| v != "on")
    {
        return Err(SessionError::fatal(anyhow!(
            "{host} does not use integer timestamps, which the protocol needs"
        )));
    }
    let server = conn.parameter("server_version").unwrap_or_default();
    let major = match conn.server_major_version().map(version::by_number) {
        Some(Ok(major)) => major,
        Some(Err(why)) => {
            return Err(SessionError::fatal(anyhow!(
                "{host} runs PostgreSQL {server}, {why}"
            )));
        }
        None => {
            return Err(SessionError::fatal(anyhow!(
                "{host} reported no usable server_version ({server:?}): is it a PostgreSQL server?"
            )));
        }
    };
    let identity = commands::identify_system(conn)
        .await
        .map_err(|e| from_command(e, &host))?;
    if let Some(expected) = expected {
        if expected != identity.system_id {
            return Err(SessionError::fatal(anyhow!(
                "server {host} belongs to cluster {other}, but this receiver archives cluster {expected} \
                 (from --system-id, or from the --spool an earlier run left); point --dbname at a server \
                 of cluster {expected}, or give cluster {other} a --spool of its own (and --system-id {other} \
                 if set)",
                other = identity.system_id
            )));
        }
    }
    let segment_size = commands::segment_size(conn)
        .await
        .map_err(|e| from_command(e, &host))?;
    let block_size = commands::block_size(conn)
        .await
        .map_err(|e| from_command(e, &host))?;
    Ok(ServerFacts {
        identity,
        segment_size,
        block_size,
        page_magic: major.page_magic,
    })
}

/// A failed command like any other connection error; an answer that makes no sense is an
/// ordinary error too, but one no PostgreSQL server gives is fatal.
fn from_command(error: CommandError, host: &str) -> SessionError {
    match error {
        CommandError::Connection(e) => from_conn(e),
        CommandError::Answer(message) => anyhow!("{host}: {message}").into(),
        CommandError::Impossible(message) => SessionError::fatal(anyhow!(
            "{host}: {message}; no PostgreSQL server has this setting: is --dbname a PostgreSQL server?"
        )),
    }
}

/// A streamed page that does not belong where it arrived. WAL from another cluster or
/// another kind of server is fatal; a misplaced page may be a passing fault.
pub fn refuse_page(error: PageError, host: &str) -> SessionError {
    let foreign = error.is_foreign();
    let error = anyhow!(
        "{host} sent WAL that does not belong at its place in the stream: {error}; none of it was stored"
    );
    if foreign {
        SessionError::fatal(error.context(
            "refusing WAL of another cluster or server version: point --dbname at a server of the cluster this archive holds",
        ))
    } else {
        error.into()
    }
}

/// Warns when the server's `synchronous_standby_names` names this receiver, which runs
/// without `--synchronous`: it reports as flushed only what the archive holds, so every
/// commit would wait for its segment to fill or for the next snapshot. Asking is best effort:
/// a server that does not answer `SHOW` gets no warning.
pub async fn warn_if_named_synchronous(conn: &mut Connection, application_name: &str) {
    let Ok(names) = conn.show("synchronous_standby_names").await else {
        return;
    };
    if names_standby(&names, application_name) {
        tracing::warn!(
            "{} names this receiver ({application_name:?}) in synchronous_standby_names ({names:?}), \
             but it runs without --synchronous: it reports WAL flushed only once archived, so each \
             commit waits for its segment to fill or for the next snapshot (--partial-interval); \
             add --synchronous, or leave it out of synchronous_standby_names",
            conn.host()
        );
    }
}

/// The server's `wal_sender_timeout`, when it has one: it ends a connection that has sent no
/// reply for that long, and asks for one (which walhalla cannot tell from a primary's request
/// at shutdown) after half of it.
pub async fn sender_timeout(conn: &mut Connection) -> Option<Duration> {
    parse_duration_ms(&conn.show("wal_sender_timeout").await.ok()?).filter(|t| !t.is_zero())
}

/// A time setting as SHOW prints it (`60s`, `1min`, `500ms`, `0`); a bare number is in
/// milliseconds, the unit of `wal_sender_timeout`.
fn parse_duration_ms(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let value: u64 = digits.parse().ok()?;
    let ms = match &text[digits.len()..] {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(value.checked_mul(ms)?))
}

/// Whether `synchronous_standby_names` (`FIRST n (…)`, `ANY n (…)`, `n (…)` or a bare list)
/// names `application_name`, as syncrep.c compares them: case-insensitively, `*` naming any.
fn names_standby(setting: &str, application_name: &str) -> bool {
    let list = match (setting.find('('), setting.rfind(')')) {
        (Some(open), Some(close)) if open < close => &setting[open + 1..close],
        _ => setting,
    };
    list.split(',')
        .map(|name| name.trim().trim_matches('"'))
        .any(|name| name == "*" || name.eq_ignore_ascii_case(application_name))
}

#[cfg(test)]
mod tests {
    use super::names_standby;

    #[test]
    fn wal_sender_timeout_as_show_prints_it() {
        use super::parse_duration_ms;
        use std::time::Duration;
        assert_eq!(parse_duration_ms("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration_ms("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration_ms("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration_ms("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration_ms("soon"), None);
    }

    #[test]
    fn synchronous_standby_names_as_syncrep_reads_them() {
        for (setting, named) in [
            ("", false),
            ("walhalla", true),
            ("r1, WALHALLA", true),
            ("FIRST 1 (walhalla, r1)", true),
            ("ANY 2 (r1, \"walhalla\")", true),
            ("2 (r1,walhalla)", true),
            ("*", true),
            ("FIRST 1 (r1, r2)", false),
            ("walhalla_2", false),
        ] {
            assert_eq!(names_standby(setting, "walhalla"), named, "{setting:?}");
        }
    }
}
