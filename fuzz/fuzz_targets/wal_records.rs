//! The WAL record reader on arbitrary bytes: never panics, and what it reports lies inside
//! the segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::wal::{LongPageHeader, ScanEnd, scan_segment};

fuzz_target!(|data: &[u8]| {
    // Scan the bytes as the segment their first page header names, so that most inputs get
    // past the start check and into the records.
    let Ok(header) = LongPageHeader::parse(data) else {
        return;
    };
    let start = header.page_address;
    let Ok(found) = scan_segment(data, start) else {
        return;
    };
    let segment_end = start.0.saturating_add(u64::from(header.segment_size_bytes));
    assert!(start <= found.valid_end && found.valid_end.0 <= segment_end);
    for t in &found.transactions {
        assert!(start <= t.lsn && t.lsn < t.end && t.end <= found.valid_end);
    }
    for r in &found.restore_points {
        assert!(start <= r.lsn && r.lsn < r.end && r.end <= found.valid_end);
    }
    if let ScanEnd::Truncated { at } = found.end {
        assert_eq!(at.0, start.0.saturating_add(data.len() as u64));
    }
});
