//! The JSON walhalla reads back from the archive: a backup's `backup.json` and a segment's
//! time index: never panics; what parses writes back to JSON that parses to the same value,
//! and its accessors answer without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::backup::meta::BackupMeta;
use walhalla::timeindex::SegmentIndex;
use walhalla::wal::{SegmentName, TimelineId, WalFileName};

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = BackupMeta::parse(data) {
        let json = serde_json::to_vec(&meta).unwrap();
        assert_eq!(BackupMeta::parse(&json).as_ref(), Ok(&meta));
        let _ = (meta.backup_id(), meta.start(), meta.stop(), meta.system());
        let _ = (meta.segment_size(), meta.stop_timestamp(), meta.timeline());
        let _ = meta.is_complete();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = walhalla::server::describe_status(&value);
    // An index is read under the name of the segment it is stored beside: the one it names
    // when that is a segment's name, else another.
    let segment = match value["segment"].as_str().map(str::parse) {
        Some(Ok(WalFileName::Segment(segment))) => segment,
        _ => SegmentName {
            timeline: TimelineId(1),
            log: 0,
            seg: 3,
        },
    };
    if let Ok(index) = SegmentIndex::parse(segment, data) {
        let json = index.to_json().unwrap();
        assert_eq!(SegmentIndex::parse(segment, &json).as_ref(), Ok(&index));
        let _ = (
            index.covers_segment(),
            index.crossing_may_be_restore_point(),
            index.crossing_may_end_a_transaction(),
        );
    }
});
