//! Where the WAL a server still has begins, found by asking it: PostgreSQL removes old
//! segments oldest first, so the segments it lacks are all before the ones it has, and a few
//! START_REPLICATION requests (without a slot, each on a connection of its own, dropped at
//! the first answer) find the first one it has by halving the range. Without it, a receiver
//! whose slot was invalidated, or that knows no slot position (PostgreSQL 13 and 14), would
//! learn of a run of lost segments one reconnection at a time.

use std::time::Duration;

use super::ReceiveOptions;
use crate::protocol::connection::{Connection, CopyMessage, CopyStart};
use crate::wal::{SegNo, SegmentName, SegmentSize, TimelineId};

/// SQLSTATE of "requested WAL segment … has already been removed".
pub const UNDEFINED_FILE: &str = "58P01";
/// How long one answer may take.
const ANSWER: Duration = Duration::from_secs(10);

/// The first segment of `timeline` in `(removed, present]` the server still has, given that
/// it lacks `removed` and has `present`; `None` when a request got no clear answer.
pub async fn first_kept(
    options: &ReceiveOptions,
    timeline: TimelineId,
    removed: SegNo,
    present: SegNo,
    size: SegmentSize,
) -> Option<SegNo> {
    let (mut lacks, mut has) = (removed, present);
    while has.0 > lacks.0 + 1 {
        let mid = SegNo(lacks.0 + (has.0 - lacks.0) / 2);
        match server_has(options, timeline, mid, size).await {
            Some(true) => has = mid,
            Some(false) => lacks = mid,
            None => return None,
        }
    }
    Some(has)
}

/// Whether the server can stream `segment` of `timeline`: `None` when it did not say.
async fn server_has(
    options: &ReceiveOptions,
    timeline: TimelineId,
    segment: SegNo,
    size: SegmentSize,
) -> Option<bool> {
    let asked = async {
        let mut conn = Connection::connect(&options.conn).await.ok()?;
        let command = format!(
            "START_REPLICATION PHYSICAL {} TIMELINE {}",
            segment.start_lsn(size),
            timeline.0
        );
        let removed = |e: &crate::protocol::connection::Error| {
            e.server_error().is_some_and(|s| s.code == UNDEFINED_FILE)
        };
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
    let name = SegmentName::new(timeline, segment, size);
    tracing::debug!(segment = %name, ?answer, "asked the server whether it still has a segment");
    answer
}
