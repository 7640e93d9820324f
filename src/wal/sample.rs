//! Real WAL for unit tests: segments 7 and 8 of a PostgreSQL 15 cluster on timeline 1, 1 MiB
//! segments, made by `testdata/pg15-wal-records.sh` (its workload is described in
//! `records/tests.rs`) and stored compressed.

use super::{Lsn, SegNo, SegmentName, SegmentSize, TimelineId};

/// Where segment 7 starts.
pub(crate) const START_7: Lsn = Lsn(0x70_0000);
/// Where segment 8 starts.
pub(crate) const START_8: Lsn = Lsn(0x80_0000);

/// Segment 7's bytes: the workload's records, the last one crossing into segment 8.
pub(crate) fn segment_7() -> Vec<u8> {
    unpack(include_bytes!(
        "testdata/pg15-1MiB-000000010000000000000007.zst"
    ))
}

/// Segment 8's bytes: the crossing record's rest, the workload's end, then a WAL switch.
pub(crate) fn segment_8() -> Vec<u8> {
    unpack(include_bytes!(
        "testdata/pg15-1MiB-000000010000000000000008.zst"
    ))
}

/// The name of segment `n` of timeline 1 in 1 MiB segments.
pub(crate) fn name(n: u64) -> SegmentName {
    let size = SegmentSize::new(1 << 20).expect("1 MiB is a segment size");
    SegmentName::new(TimelineId(1), SegNo(n), size)
}

fn unpack(compressed: &[u8]) -> Vec<u8> {
    zstd::decode_all(compressed).expect("test segment decompresses")
}
