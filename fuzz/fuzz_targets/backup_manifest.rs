//! PostgreSQL's backup manifest: never panics; a manifest that parses finds each file it
//! lists by its path, and a file checksummed with its algorithm has the digest's length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::backup::manifest::{FileChecksummer, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = parse(data) else {
        return;
    };
    for file in &manifest.files {
        assert_eq!(manifest.file(&file.path).map(|f| &f.path), Some(&file.path));
        if let Some(checksum) = &file.checksum {
            let mut summer = FileChecksummer::new(checksum.algorithm);
            summer.update(data);
            assert_eq!(summer.finish().len(), checksum.algorithm.digest_bytes());
        }
    }
});
