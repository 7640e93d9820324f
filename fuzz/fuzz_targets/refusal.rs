//! A store's error text as walhalla reports it: never panics, and the one-line account of
//! an error, and the refusal with its hint, stay on one line whatever the store or a
//! credential provider said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::archive::{Brief, Location, NoCredentials, Refusal};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let errors = [
        object_store::Error::Generic {
            store: "S3",
            source: text.clone().into(),
        },
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(NoCredentials(text.clone())),
        },
        object_store::Error::PermissionDenied {
            path: text.clone(),
            source: text.clone().into(),
        },
    ];
    let location: Location = "s3://bucket/prefix".parse().unwrap();
    for error in &errors {
        let brief = Brief(error).to_string();
        assert!(one_line(&brief), "{brief:?}");
        if let Some(refusal) = Refusal::of(error) {
            let line = refusal.describe(&location, error);
            assert!(one_line(&line), "{line:?}");
        }
    }
});

/// Whether `text` has no line break of any kind (nor other white space than a space).
fn one_line(text: &str) -> bool {
    !text.chars().any(|c| c.is_whitespace() && c != ' ')
}
