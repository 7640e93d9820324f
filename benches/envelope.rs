//! Envelope encode and decode throughput on real 16 MiB WAL segments, per zstd level and
//! thread count, with the compression ratio printed beside each case; and the receiver's
//! sequential encoding (one frame, offered a window at a time, read in place).
//!
//! Segments: see [`common`].

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use walhalla::envelope::{Encoder, decode, encode_sequentially};

const LEVELS: [i32; 3] = [1, 3, 6];
const THREADS: [usize; 2] = [1, 2];

fn bench(c: &mut Criterion) {
    for common::Segment {
        corpus,
        path,
        bytes: segment,
    } in common::segments()
    {
        eprintln!("corpus={corpus}: {}", path.display());
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
        for level in [1, 3] {
            let id = format!("sequential/level={level}/corpus={corpus}/size={size}");
            group.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| {
                    encode_sequentially(level, &segment, 1 << 20, &mut |_| {}).expect("encode")
                })
            });
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
