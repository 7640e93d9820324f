//! A backup's tar archive unpacked into a data directory: never panics, and whatever the
//! archive names (`..`, absolute paths, links, symlinked directories), nothing is written
//! outside the target directory.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use walhalla::backup::manifest::{Manifest, parse};
use walhalla::restore::extract::{Extract, extract};

/// A manifest `pg_basebackup` wrote (PostgreSQL 18, CRC-32C), so archives can hit its files.
const MANIFEST: &[u8] = include_bytes!("../../src/backup/testdata/pg18-crc32c.backup_manifest");

fuzz_target!(|data: &[u8]| {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let manifest: Manifest = parse(MANIFEST).expect("the test manifest parses");
    let root = std::env::temp_dir().join(format!(
        "walhalla-fuzz-extract-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let dest = root.join("pgdata");
    for prefix in ["", "pg_tblspc/16384/"] {
        let job = Extract {
            dest: &dest,
            manifest_prefix: prefix,
            manifest: &manifest,
        };
        let _ = extract(data, &job);
        let outside = entries_outside(&root, &dest);
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            outside.is_empty(),
            "written outside the target: {outside:?}"
        );
    }
});

/// Everything under `root` that is not `dest` or beneath it.
fn entries_outside(root: &Path, dest: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != dest)
        .collect()
}
