//! The stream's pace against the server's patience: how often it reports its positions, and
//! how long it may wait to confirm the end of the stream.

use std::time::Duration;

/// How long a primary that is shutting down waits for the receiver to confirm the end of
/// the stream before the receiver disconnects instead (it never confirms WAL not stored), at
/// most.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the stream reports its positions, and how long it waits to confirm the end of
/// the stream. Both stay within a third of the server's `wal_sender_timeout`: replies then
/// come before the server asks for one (so a request for a reply means a primary shutting
/// down, not an idle server), and a wait to confirm never outlasts the server's patience.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Between status updates.
    pub status_interval: Duration,
    /// For the archive to store the end of the stream when the server asks to confirm it.
    pub confirm_timeout: Duration,
}

impl Pace {
    /// The pace for `status_interval` (`--status-interval`) on a server whose
    /// `wal_sender_timeout` is `sender_timeout` (`None`: none).
    pub fn new(status_interval: Duration, sender_timeout: Option<Duration>) -> Pace {
        let third =
            sender_timeout.map_or(Duration::MAX, |t| (t / 3).max(Duration::from_millis(100)));
        Pace {
            status_interval: status_interval.min(third),
            confirm_timeout: CONFIRM_TIMEOUT.min(third),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_come_before_the_server_asks_for_one() {
        let secs = Duration::from_secs;
        // PostgreSQL's default, 60 s: the receiver's own settings stand.
        assert_eq!(
            Pace::new(secs(10), Some(secs(60))),
            Pace {
                status_interval: secs(10),
                confirm_timeout: secs(10)
            }
        );
        // 10 s: a reply every 3.3 s, before the server's request at 5 s; a wait to confirm
        // ends before the server gives up at 10 s.
        let short = Pace::new(secs(10), Some(secs(10)));
        assert!(short.status_interval < secs(5), "{short:?}");
        assert!(
            short.confirm_timeout + short.status_interval < secs(10),
            "{short:?}"
        );
        // No timeout on the server.
        assert_eq!(Pace::new(secs(10), None).status_interval, secs(10));
    }
}
