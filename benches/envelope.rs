//! Envelope encode and decode throughput on real 16 MiB WAL segments, per zstd level and
//! thread count, with the compression ratio printed beside each case.
//!
//! Segments come from `WALHALLA_BENCH_WAL` (colon-separated segment files or directories of
//! them), by default the corpora that ../shared/bench/corpus.sh builds:
//! `/tmp/walcorpus/wal` (pgbench) and `/tmp/walcorpus-mixed/wal` (`LOAD=mixed`). From a
//! directory the bench takes the segment in the middle, past the bulk load at the start.

use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use walhalla::envelope::{Encoder, decode};

const DEFAULT_SOURCES: &str = "/tmp/walcorpus/wal:/tmp/walcorpus-mixed/wal";
const LEVELS: [i32; 3] = [1, 3, 6];
const THREADS: [usize; 2] = [1, 2];

fn segments() -> Vec<(String, Vec<u8>)> {
    let sources = std::env::var("WALHALLA_BENCH_WAL").unwrap_or_else(|_| DEFAULT_SOURCES.into());
    let found: Vec<(String, Vec<u8>)> = sources
        .split(':')
        .filter_map(|source| pick_segment(Path::new(source)))
        .map(|path| {
            let label = path
                .parent()
                .and_then(|p| p.parent())
                .and_then(|p| p.file_name())
                .map_or_else(
                    || path.display().to_string(),
                    |corpus| corpus.to_string_lossy().into_owned(),
                );
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (label, bytes)
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

fn bench(c: &mut Criterion) {
    for (corpus, segment) in segments() {
        let size = format!("{}MiB", segment.len() >> 20);
        let mut group = c.benchmark_group("encode");
        group.throughput(Throughput::Bytes(segment.len() as u64));
        for level in LEVELS {
            for threads in THREADS {
                let mut encoder = Encoder::new(level, threads).expect("encoder");
                let ratio =
                    segment.len() as f64 / encoder.encode(&segment).expect("encode").len() as f64;
                eprintln!("corpus={corpus} level={level} threads={threads}: ratio {ratio:.2}");
                let id = format!("level={level}/threads={threads}/corpus={corpus}/size={size}");
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| encoder.encode(&segment).expect("encode"))
                });
            }
        }
        group.finish();

        let mut group = c.benchmark_group("decode");
        group.throughput(Throughput::Bytes(segment.len() as u64));
        for level in [1, 3] {
            let envelope = Encoder::new(level, 1)
                .expect("encoder")
                .encode(&segment)
                .expect("encode");
            let id = format!("level={level}/corpus={corpus}/size={size}");
            group.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| decode(&envelope).expect("decode"))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
