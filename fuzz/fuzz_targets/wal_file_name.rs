//! File-name parsing: never panics, and every accepted name prints back to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::wal::{Lsn, WalFileName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text.parse::<WalFileName>() {
        assert_eq!(name.to_string(), text);
    }
    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
    }
});
