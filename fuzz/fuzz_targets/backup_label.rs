//! The `backup_label` at the start of a base backup's main tar stream, plain or zstd, fed in
//! pieces as the stream arrives: never panics, and a plain stream gives the same label however
//! it is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::backup::label::{LabelFinder, from_tar_head, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(stream) {
        let _ = parse(text);
    }
    let _ = from_tar_head(stream);
    let whole = LabelFinder::new(false).feed(stream);
    let mut pieces = LabelFinder::new(false);
    let mut found = Ok(None);
    for piece in stream.chunks(usize::from(split).max(1) * 64) {
        found = pieces.feed(piece);
        if !matches!(found, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole, found);
    let mut zstd = LabelFinder::new(true);
    for piece in stream.chunks(usize::from(split).max(1) * 64) {
        if !matches!(zstd.feed(piece), Ok(None)) {
            break;
        }
    }
});
