//! Real WAL segments for the benches: from `WALHALLA_BENCH_WAL` (colon-separated segment
//! files or directories of them), by default the corpora that ../shared/bench/corpus.sh
//! builds: `/tmp/walcorpus/wal` (pgbench) and `/tmp/walcorpus-mixed/wal` (`LOAD=mixed`). From
//! a directory the middle segment is taken, past the bulk load at the start.

use std::path::{Path, PathBuf};

const DEFAULT_SOURCES: &str = "/tmp/walcorpus/wal:/tmp/walcorpus-mixed/wal";

/// A segment: its corpus's name (for case names), its file and its bytes.
pub struct Segment {
    pub corpus: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// One segment of each source; panics when there is none, saying how to make some.
pub fn segments() -> Vec<Segment> {
    let sources = std::env::var("WALHALLA_BENCH_WAL").unwrap_or_else(|_| DEFAULT_SOURCES.into());
    let found: Vec<Segment> = sources
        .split(':')
        .filter_map(|source| pick_segment(Path::new(source)))
        .map(|path| {
            let corpus = path
                .parent()
                .and_then(|p| p.parent())
                .and_then(|p| p.file_name())
                .map_or_else(
                    || path.display().to_string(),
                    |corpus| corpus.to_string_lossy().into_owned(),
                );
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            Segment {
                corpus,
                path,
                bytes,
            }
        })
        .collect();
    assert!(
        !found.is_empty(),
        "no WAL segments in {sources}: build a corpus with ../shared/bench/corpus.sh \
         or set WALHALLA_BENCH_WAL to segment files or directories"
    );
    found
}

fn pick_segment(source: &Path) -> Option<PathBuf> {
    if source.is_file() {
        return Some(source.to_path_buf());
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(source)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
        .collect();
    names.sort();
    names.get(names.len() / 2).cloned()
}
