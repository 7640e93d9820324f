//! Where a receiver's spool is when none is given, and how much it may hold.

use std::path::PathBuf;

use crate::wal::{SegmentSize, SystemId};

/// What the spool may hold before the stream stops reading: `--spool-max-bytes`, but at least
/// two segments, one being received and one being archived. Below one segment the stream
/// would stop inside a segment it can never complete, keeping nothing archived; below two,
/// it would stop reading (and, in `--synchronous` mode, confirming commits) while each segment
/// is archived. A raised limit is said once.
pub(super) fn limit(asked: u64, segment_size: SegmentSize) -> u64 {
    let floor = least_spool_bytes(segment_size);
    if asked < floor {
        tracing::warn!(
            "--spool-max-bytes {} is less than two of this cluster's {} WAL segments (one being \
             received, one being archived): the spool may hold {} instead",
            crate::progress::bytes(asked),
            crate::progress::bytes(u64::from(segment_size.bytes())),
            crate::progress::bytes(floor)
        );
    }
    asked.max(floor)
}

/// The spool used when none is given: per cluster, under the user's state directory.
pub fn default_spool(system_id: SystemId) -> PathBuf {
    spool_root().join(format!("spool-{system_id}"))
}

/// The directory default spools go in: `walhalla` in the user's state directory.
pub fn spool_root() -> PathBuf {
    crate::osuser::state_dir()
}

/// The least a spool may hold: two segments, one being received and one being archived (see
/// [`limit`]).
pub fn least_spool_bytes(segment_size: SegmentSize) -> u64 {
    2 * u64::from(segment_size.bytes())
}
