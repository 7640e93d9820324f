//! The envelope decoder on arbitrary bytes: never panics, and whatever it accepts re-encodes
//! to content that decodes the same; any content encodes and decodes back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::envelope::{Encoder, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = decode(data) {
        let again = Encoder::new(1, 1)
            .expect("encoder")
            .encode(&content)
            .expect("encode");
        assert_eq!(decode(&again).expect("re-decode"), content);
    }
    let threads = usize::from(data.first().copied().unwrap_or(0) % 3) + 1;
    let envelope = Encoder::new(1, threads)
        .expect("encoder")
        .encode(data)
        .expect("encode");
    assert_eq!(decode(&envelope).expect("decode what we encoded"), data);
});
