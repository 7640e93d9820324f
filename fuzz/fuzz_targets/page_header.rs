//! Long WAL page headers (a segment's first page), their checks against every kind of
//! segment name, and the writer that captures them: never panics; the fields are the bytes
//! at their offsets; the capture keeps exactly the first bytes written, however split.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use walhalla::wal::{HeadCapture, LONG_HEADER_BYTES, LongPageHeader, SegmentName, TimelineId};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = LongPageHeader::parse(data) {
        let le32 = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
        let le64 = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
        assert_eq!(header.magic, u16::from_le_bytes([data[0], data[1]]));
        assert_eq!(header.timeline.0, le32(4));
        assert_eq!(header.page_address.0, le64(8));
        assert_eq!(header.system_id.0, le64(24));
        assert_eq!(header.segment_size_bytes, le32(32));
        assert_eq!(header.block_size_bytes, le32(36));
        // Checked as the segment the header says it is, and as one it is not.
        for name in [
            segment_at(&header),
            Some(SegmentName {
                timeline: TimelineId(1),
                log: 0,
                seg: 1,
            }),
        ]
        .into_iter()
        .flatten()
        {
            for len in [data.len() as u64, u64::from(header.segment_size_bytes)] {
                if let Ok(size) = header.check_segment(name, len) {
                    assert_eq!(u64::from(size.bytes()), len);
                    assert!(header.timeline.0 >= 1 && header.timeline <= name.timeline);
                }
            }
        }
    }
    let mut capture = HeadCapture::new(Vec::new());
    for chunk in data.chunks(usize::from(data.first().copied().unwrap_or(1)).max(1)) {
        capture.write_all(chunk).unwrap();
    }
    assert_eq!(capture.head(), &data[..data.len().min(LONG_HEADER_BYTES)]);
});

/// The segment a header's timeline and page address name, when its segment size is valid.
fn segment_at(header: &LongPageHeader) -> Option<SegmentName> {
    let size = header.segment_size().ok()?;
    let segno = header.page_address.0 / u64::from(size.bytes());
    let segments = size.segments_per_xlog_id();
    Some(SegmentName {
        timeline: header.timeline,
        log: u32::try_from(segno / segments).ok()?,
        seg: u32::try_from(segno % segments).ok()?,
    })
}
