//! Streamed WAL checked page by page before it is stored (`wal::page_stream::PageChecker`):
//! never panics; the verdict does not depend on how the stream is cut into messages; a
//! stream that passes moves the checker by its length, one that fails moves it not at all.
//!
//! Input: one byte choosing the message sizes, then the stream. What the pages must say is
//! taken from the stream's own first long header where it has one (so real WAL passes and
//! its mutations are checked deep into the stream), else from a fixed cluster.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::wal::page_stream::{Expected, PageChecker};
use walhalla::wal::{LongPageHeader, Lsn, SegmentSize, SystemId, TimelineId};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (expected, start) = expected_for(stream);

    let mut whole = PageChecker::new(expected, start);
    let verdict = whole.check(stream);
    match &verdict {
        Ok(()) => assert_eq!(whole.position(), Lsn(start.0 + stream.len() as u64)),
        Err(_) => assert_eq!(whole.position(), start),
    }

    // The same stream in messages of 1 to 256 bytes, sizes cycling from the first byte.
    let mut pieces = PageChecker::new(expected, start);
    let mut rest = stream;
    let mut size = usize::from(cut);
    let mut first_error = None;
    while !rest.is_empty() {
        size = size * 31 % 257;
        let take = (size + 1).min(rest.len());
        let before = pieces.position();
        if let Err(e) = pieces.check(&rest[..take]) {
            assert_eq!(
                pieces.position(),
                before,
                "a refused message moved the checker"
            );
            first_error = Some(e);
            break;
        }
        rest = &rest[take..];
    }
    assert_eq!(
        verdict.err(),
        first_error,
        "the verdict depends on the message boundaries"
    );
});

/// What the stream's pages must say, and where it starts.
fn expected_for(stream: &[u8]) -> (Expected, Lsn) {
    let fallback = Expected {
        magic: 0xD110,
        system_id: SystemId(7_000_000_000_000_000_001),
        segment_size: SegmentSize::DEFAULT,
        block_size: 8192,
        timeline: TimelineId(1),
    };
    let Ok(header) = LongPageHeader::parse(stream) else {
        return (fallback, Lsn(0));
    };
    let segment_size = header.segment_size().unwrap_or(SegmentSize::DEFAULT);
    let block_size = match header.block_size_bytes {
        b if b.is_power_of_two() && (1024..=65536).contains(&b) => b,
        _ => fallback.block_size,
    };
    let expected = Expected {
        magic: header.magic,
        system_id: header.system_id,
        segment_size,
        block_size,
        timeline: TimelineId(header.timeline.0.max(1)),
    };
    let segment = u64::from(segment_size.bytes());
    (expected, Lsn(header.page_address.0 / segment * segment))
}
