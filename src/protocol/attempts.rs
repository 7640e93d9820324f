//! libpq's way of trying one host with and without TLS (`sslmode` `prefer` and `allow`): the
//! attempts in their order, the next one only when the failed one may be tried the other way.
//! One loop for the replication connection and the SQL one, whatever their errors.

use std::fmt::Display;
use std::future::Future;

use super::conninfo::{HostAddr, SslMode};

/// A failed attempt: its error, and whether libpq would try the other way.
pub struct Failed<E> {
    /// Why it failed.
    pub error: E,
    /// Whether libpq would try the other way: TLS could not be set up, or the server refused
    /// the session before letting the client in (`CONNECTION_FAILED()` in fe-connect.c); not
    /// an error after AuthenticationOk (the password was accepted: trying without TLS would
    /// only send it in the clear), what the client refused itself (`require_auth`, a missing
    /// password), nor an unreachable server.
    pub other_way: bool,
}

/// Whether each attempt on `host` uses TLS: `mode`'s attempts ([`SslMode::attempts`]) over
/// TCP, one without TLS on a Unix socket (libpq does not use TLS there either).
pub fn ways(mode: SslMode, host: &HostAddr) -> &'static [bool] {
    match host {
        HostAddr::Unix { .. } => &[false],
        HostAddr::Tcp { .. } => mode.attempts(),
    }
}

/// Runs `attempt` (with TLS or not) for each of `ways` in turn, until one succeeds or fails in
/// a way not tried the other way. On failure, every attempt made with its error, in order
/// (at least one when `ways` is not empty).
pub async fn each_way<T, E, Fut>(
    host: &HostAddr,
    ways: &[bool],
    mut attempt: impl FnMut(bool) -> Fut,
) -> Result<T, Vec<(bool, E)>>
where
    E: Display,
    Fut: Future<Output = Result<T, Failed<E>>>,
{
    let mut failed = Vec::new();
    for (n, &tls) in ways.iter().enumerate() {
        let Failed { error, other_way } = match attempt(tls).await {
            Ok(connected) => return Ok(connected),
            Err(failed) => failed,
        };
        let last = !other_way || n + 1 == ways.len();
        if !last {
            tracing::debug!(%host, tls, "connection attempt failed: {error:#}; trying the other way");
        }
        failed.push((tls, error));
        if last {
            break;
        }
    }
    Err(failed)
}

/// How an attempt connects, for messages.
pub fn way(tls: bool) -> &'static str {
    if tls { "with TLS" } else { "without TLS" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> HostAddr {
        HostAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 5432,
        }
    }

    /// Runs [`each_way`] over `mode`'s ways with attempts failing as `outcome` says (for each
    /// attempt in turn: `Some(other_way)` fails, `None` succeeds); returns the attempts made.
    fn run(mode: SslMode, outcome: &[Option<bool>]) -> (Vec<bool>, Result<bool, Vec<bool>>) {
        let mut made = Vec::new();
        let mut next = outcome.iter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let result = runtime.block_on(each_way(&tcp(), ways(mode, &tcp()), |tls| {
            made.push(tls);
            let outcome = *next.next().expect("no more attempts than planned");
            async move {
                match outcome {
                    None => Ok(tls),
                    Some(other_way) => Err(Failed {
                        error: "refused",
                        other_way,
                    }),
                }
            }
        }));
        (
            made,
            result.map_err(|f| f.into_iter().map(|(tls, _)| tls).collect()),
        )
    }

    #[test]
    fn the_other_way_is_tried_only_when_libpq_would() {
        // prefer: TLS first; without when TLS failed before the login.
        assert_eq!(run(SslMode::Prefer, &[None]), (vec![true], Ok(true)));
        assert_eq!(
            run(SslMode::Prefer, &[Some(true), None]),
            (vec![true, false], Ok(false))
        );
        assert_eq!(
            run(SslMode::Prefer, &[Some(true), Some(true)]),
            (vec![true, false], Err(vec![true, false]))
        );
        // After the login (or unreachable): no second attempt.
        assert_eq!(
            run(SslMode::Prefer, &[Some(false)]),
            (vec![true], Err(vec![true]))
        );
        // allow: without TLS first; require: TLS only.
        assert_eq!(
            run(SslMode::Allow, &[Some(true), None]),
            (vec![false, true], Ok(true))
        );
        assert_eq!(
            run(SslMode::Require, &[Some(true)]),
            (vec![true], Err(vec![true]))
        );
    }

    #[test]
    fn a_unix_socket_is_tried_once_without_tls() {
        let unix = HostAddr::Unix {
            socket_dir: "/run/postgresql".into(),
            port: 5432,
        };
        assert_eq!(ways(SslMode::Require, &unix), &[false]);
        assert_eq!(ways(SslMode::Prefer, &tcp()), &[true, false]);
    }
}
