//! The cost of a segment's time index: `SegmentIndex::of_segment` (reading a real 16 MiB WAL
//! segment's records with `scan_segment`, then summing them up), as `push` and the receiver
//! do for every complete segment.
//!
//! Segments: see [`common`].

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use walhalla::timeindex::SegmentIndex;
use walhalla::wal::WalFileName;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    for common::Segment {
        corpus,
        path,
        bytes: segment,
    } in common::segments()
    {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Ok(WalFileName::Segment(name)) = file.parse() else {
            panic!("{} is not named as a segment", path.display());
        };
        let index = SegmentIndex::of_segment(name, &segment).expect("a segment");
        eprintln!(
            "{}: {} records, {} commits, {} aborts, {} restore points, end {:?}",
            path.display(),
            index.records,
            index.commits,
            index.aborts,
            index.restore_points.len(),
            index.end
        );
        group.throughput(Throughput::Bytes(segment.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(corpus), |b| {
            b.iter(|| SegmentIndex::of_segment(name, &segment).expect("a segment"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
