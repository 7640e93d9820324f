//! Where the WAL a server still has begins, found by asking it: PostgreSQL removes old
//! segments oldest first (each checkpoint removes a prefix), so the segments it lacks come
//! before the ones it has, and a few START_REPLICATION requests (without a slot, each on a
//! connection of its own to the same host, dropped at the first answer) find the first one it
//! has by halving the range. Without it, a receiver whose slot was invalidated, or that knows
//! no slot position (PostgreSQL 13 and 14), would learn of a run of lost segments one
//! reconnection at a time.

use std::future::Future;
use std::time::Duration;

use super::ReceiveOptions;
use crate::protocol::commands;
use crate::protocol::connection::{Connection, CopyMessage, CopyStart, Error as ConnError};
use crate::protocol::conninfo::{ConnParams, HostAddr};
use crate::wal::{SegNo, SegmentName, SegmentSize, SystemId, TimelineId};

/// SQLSTATE of "requested WAL segment … has already been removed".
pub const UNDEFINED_FILE: &str = "58P01";
/// How long one answer may take.
const ANSWER: Duration = Duration::from_secs(10);
/// Tries to connect for one probe: the walsender of the connection just dropped may not have
/// exited yet (max_wal_senders, a role's connection limit).
const CONNECT_TRIES: u32 = 5;

/// The server a session streamed from, as the probes must find it again.
pub struct Upstream<'a> {
    /// The settings, whose host list the probes narrow to `host`.
    pub options: &'a ReceiveOptions,
    /// The host that answered the session.
    pub host: &'a HostAddr,
    /// Its cluster.
    pub system_id: SystemId,
    /// The timeline probed.
    pub timeline: TimelineId,
    /// The segment size.
    pub size: SegmentSize,
}

/// The first segment after `removed` (which the server lacks) that the server still has, up
/// to the one it is writing; `None` when a request got no clear answer, or the host is no
/// longer the same server on the same timeline.
pub async fn first_kept(upstream: &Upstream<'_>, removed: SegNo) -> Option<SegNo> {
    let params = ConnParams {
        hosts: vec![upstream.host.clone()],
        ..upstream.options.conn.clone()
    };
    let current = upstream.current(&params).await?;
    first_held(removed, current, |segment| upstream.has(&params, segment)).await
}

/// The first segment after `lacks` for which `holds` answers yes, given that the segments a
/// server holds follow those it lacks and that it holds `has`: the range between is halved,
/// so a run of `n` segments costs about log2(n) questions. `None` when a question got no
/// answer, or `has` does not come after `lacks`.
async fn first_held<F, Fut>(mut lacks: SegNo, mut has: SegNo, mut holds: F) -> Option<SegNo>
where
    F: FnMut(SegNo) -> Fut,
    Fut: Future<Output = Option<bool>>,
{
    let removed = lacks;
    while has.0 > lacks.0 + 1 {
        let mid = SegNo(lacks.0 + (has.0 - lacks.0) / 2);
        match holds(mid).await? {
            true => has = mid,
            false => lacks = mid,
        }
    }
    (has > removed).then_some(has)
}

impl Upstream<'_> {
    /// A connection to the same server, on the same timeline.
    async fn connect(&self, params: &ConnParams) -> Option<(Connection, SegNo)> {
        for attempt in 1..=CONNECT_TRIES {
            match Connection::connect(params).await {
                Ok(mut conn) => {
                    let identity = commands::identify_system(&mut conn).await.ok()?;
                    let same =
                        identity.system_id == self.system_id && identity.timeline == self.timeline;
                    return same.then(|| (conn, SegNo::containing(identity.lsn, self.size)));
                }
                Err(e) if attempt < CONNECT_TRIES => {
                    tracing::debug!("probe: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// The segment the server is writing now.
    async fn current(&self, params: &ConnParams) -> Option<SegNo> {
        tokio::time::timeout(ANSWER, self.connect(params))
            .await
            .ok()
            .flatten()
            .map(|(_, current)| current)
    }

    /// Whether the server can stream `segment`: `None` when it did not say.
    async fn has(&self, params: &ConnParams, segment: SegNo) -> Option<bool> {
        let asked = async {
            let (mut conn, _) = self.connect(params).await?;
            let command = format!(
                "START_REPLICATION PHYSICAL {} TIMELINE {}",
                segment.start_lsn(self.size),
                self.timeline.0
            );
            let removed =
                |e: &ConnError| e.server_error().is_some_and(|s| s.code == UNDEFINED_FILE);
            match conn.start_copy_both(&command).await {
                Ok(CopyStart::Streaming) => {}
                Err(e) if removed(&e) => return Some(false),
                _ => return None,
            }
            // The first WAL data says it has the segment; a keepalive may come before it.
            for _ in 0..4 {
                match conn.read_copy().await {
                    Ok(CopyMessage::Data(payload)) if payload.first() == Some(&b'w') => {
                        return Some(true);
                    }
                    Ok(CopyMessage::Data(_)) => continue,
                    Err(e) if removed(&e) => return Some(false),
                    _ => return None,
                }
            }
            None
        };
        let answer = tokio::time::timeout(ANSWER, asked).await.ok().flatten();
        let name = SegmentName::new(self.timeline, segment, self.size);
        tracing::debug!(segment = %name, ?answer, "asked the server whether it still has a segment");
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use futures_util::FutureExt;

    use super::*;

    /// `first_held` against a server that lacks every segment before `first`, counting the
    /// questions asked.
    fn against(removed: u64, first: u64, current: u64) -> (Option<SegNo>, u32) {
        let asked = Cell::new(0);
        let found = first_held(SegNo(removed), SegNo(current), |s| {
            asked.set(asked.get() + 1);
            // A search that stops making progress fails here instead of hanging.
            assert!(asked.get() <= 64, "{} questions", asked.get());
            assert!(s.0 > removed && s.0 < current, "asked about {s:?}");
            std::future::ready(Some(s.0 >= first))
        });
        // Every answer is ready: the search never waits.
        let found = found.now_or_never().expect("ready");
        (found, asked.get())
    }

    #[test]
    fn finds_the_first_segment_the_server_holds_in_log2_questions() {
        for (removed, current) in [(5, 6), (5, 7), (5, 20), (0, 1000), (100, 100 + 4096)] {
            for first in (removed + 1..=current.min(removed + 300)).chain([current]) {
                let (found, asked) = against(removed, first, current);
                assert_eq!(found, Some(SegNo(first)), "{removed} {first} {current}");
                let bound = (current - removed).next_power_of_two().ilog2();
                assert!(asked <= bound, "{asked} questions for {removed}..{current}");
            }
        }
    }

    #[test]
    fn no_answer_or_no_later_segment_finds_nothing() {
        // The server's current segment is the one it lacks, or older: nothing to find.
        assert_eq!(against(7, 7, 7), (None, 0));
        assert_eq!(against(7, 3, 3), (None, 0));
        // A question without an answer ends the search.
        let found = first_held(SegNo(1), SegNo(64), |s| {
            std::future::ready((s.0 != 32).then_some(true))
        });
        assert_eq!(found.now_or_never(), Some(None));
    }
}
