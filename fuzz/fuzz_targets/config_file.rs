//! The TOML settings file: never panics, and a file that parses also passes or fails the
//! check against walhalla's own commands without panicking; every value it accepts for a
//! command is found again by that command's name.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use walhalla::settings::{ConfigFile, command};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = ConfigFile::parse(Path::new("walhalla.toml"), text) else {
        return;
    };
    let root = command();
    if file.check(&root).is_ok() {
        let _ = file.apply(root);
    }
    let _ = file.value("receive", "slot");
});
