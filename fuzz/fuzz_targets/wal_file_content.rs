//! Content validation (long page headers, history and backup files) on arbitrary bytes under
//! every kind of name: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::wal::{LongPageHeader, WalFileName, validate_file};

const NAMES: [&str; 4] = [
    "000000010000000000000003",
    "000000020000000000000003.partial",
    "000000010000000000000003.00000028.backup",
    "00000003.history",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let name: WalFileName = NAMES[usize::from(selector) % NAMES.len()]
        .parse()
        .expect("valid name");
    let _ = validate_file(&name, content);
    if let Ok(header) = LongPageHeader::parse(content) {
        let _ = header.segment_size();
    }
});
