//! `global/pg_control`'s system identifier and version: never panics; an accepted file's
//! identifier is its first eight bytes, and is never 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::wal::parse_control_file;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = parse_control_file(data) {
        assert_ne!(id.0, 0);
        assert_eq!(id.0, u64::from_le_bytes(data[..8].try_into().unwrap()));
    }
});
