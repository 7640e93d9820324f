//! Timeline history files, for any timeline: never panics; what is accepted has increasing
//! ancestors below the file's own timeline, and reads the same when PostgreSQL's own
//! format of the entries is parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::wal::{TimelineId, parse_history};

fuzz_target!(|data: &[u8]| {
    let Some((head, content)) = data.split_first_chunk::<4>() else {
        return;
    };
    let timeline = TimelineId(u32::from_le_bytes(*head));
    let Ok(entries) = parse_history(timeline, content) else {
        return;
    };
    assert!(!entries.is_empty());
    for pair in entries.windows(2) {
        assert!(pair[0].timeline < pair[1].timeline);
    }
    assert!(
        entries
            .iter()
            .all(|e| e.timeline.0 >= 1 && e.timeline < timeline)
    );
    // What PostgreSQL writes for these entries (writeTimeLineHistory) parses to them.
    let written: String = entries
        .iter()
        .map(|e| format!("{}\t{}\treason\n", e.timeline.0, e.switch_point))
        .collect();
    assert_eq!(parse_history(timeline, written.as_bytes()), Ok(entries));
});
