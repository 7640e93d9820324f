//! What an archive of 100,000 segments costs to see and to plan a prune of: the pure parts
//! (runs and gaps per timeline, the restorable window, the retention plan) on a synthesized
//! inventory, and `walhalla list` end to end on a local archive of that many (empty) objects.
//! Memory: the inventory holds a name and an [`ObjectInfo`] per object (about 64 bytes).

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use walhalla::archive::{
    Archive, ArchiveOptions, BackupId, Location, ObjectInfo, ObjectName, WalInventory,
};
use walhalla::backup::meta::{BackupMeta, META_FORMAT};
use walhalla::coverage;
use walhalla::retention::{self, Policy, Rule, StoredObject};
use walhalla::wal::{SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName};

const SEGMENTS: u64 = 100_000;
const BACKUPS: u64 = 30;
const SYSTEM_ID: u64 = 7_300_000_000_000_000_001;

fn size() -> SegmentSize {
    SegmentSize::new(16 << 20).expect("16 MiB")
}

/// Segments 1..=SEGMENTS on timeline 1, one missing in the middle, and a backup every
/// SEGMENTS / BACKUPS segments.
fn synthesized() -> (WalInventory, Vec<BackupMeta>) {
    let objects = (1..=SEGMENTS)
        .filter(|n| *n != SEGMENTS / 2)
        .map(|n| {
            let name = SegmentName::new(TimelineId(1), SegNo(n), size());
            let info = ObjectInfo {
                size: 1 << 20,
                modified: None,
            };
            (ObjectName::File(WalFileName::Segment(name)), info)
        })
        .collect();
    let backups = (0..BACKUPS)
        .map(|i| {
            let start = SegNo(1 + i * (SEGMENTS / BACKUPS)).start_lsn(size());
            let stop = walhalla::wal::Lsn(start.0 + 0x1000);
            let id = format!("20261201T{:02}{:02}00Z", i / 60, i % 60);
            BackupMeta {
                format: META_FORMAT,
                id: id.clone(),
                label: id,
                system_id: SYSTEM_ID.to_string(),
                server_version: "17.2".into(),
                server_major: 17,
                walhalla_version: "0".into(),
                segment_size: size().bytes(),
                start_lsn: start.to_string(),
                start_timeline: 1,
                stop_lsn: stop.to_string(),
                stop_timeline: 1,
                start_time: format!("2026-12-01T00:{:02}:00Z", i),
                stop_time: format!("2026-12-01T00:{:02}:30Z", i),
                from_standby: false,
                archives: Vec::new(),
                manifest_bytes: 0,
                bytes: 0,
                data_bytes: None,
                stored_bytes: 0,
                wal_complete: true,
                wal_missing: None,
                missing_objects: Vec::new(),
            }
        })
        .collect();
    (
        WalInventory {
            objects,
            histories: Vec::new(),
        },
        backups,
    )
}

fn pure(c: &mut Criterion) {
    let (inventory, backups) = synthesized();
    let histories = BTreeMap::new();
    let mut group = c.benchmark_group("100k segments");
    group.sample_size(10);
    group.bench_function("runs, gaps and window", |b| {
        b.iter(|| {
            let timelines = coverage::timelines(&inventory, &histories, size());
            let held = coverage::held_segments(&inventory.objects, size());
            let windows =
                coverage::window::windows([TimelineId(1)], &backups, &histories, &held, size());
            assert_eq!(timelines[0].gaps.len(), 1);
            windows
        })
    });
    let retention_inventory = retention::Inventory {
        backups: backups.clone(),
        interrupted: Vec::<BackupId>::new(),
        unreadable: Vec::new(),
        timelines: BTreeMap::new(),
        objects: inventory
            .objects
            .iter()
            .map(|(name, info)| StoredObject {
                name: *name,
                bytes: info.size,
                modified: None,
            })
            .collect(),
        segment_size: size(),
    };
    let policy = Policy {
        rule: Rule::Backups {
            keep: Some(7),
            within: None,
        },
        now: "2026-12-02T00:00:00Z".parse().expect("a time"),
        assume_interrupted: false,
    };
    group.bench_function("retention plan", |b| {
        b.iter(|| retention::plan(&retention_inventory, &policy).expect("a plan"))
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("walhalla-bench-list-{}", std::process::id()));
    let cluster = dir.join(SYSTEM_ID.to_string());
    let (inventory, backups) = synthesized();
    for (name, _) in &inventory.objects {
        let Some(segment) = name.segment() else {
            continue;
        };
        let group = cluster
            .join("wal")
            .join(format!("{:08X}{:08X}", segment.timeline.0, segment.log));
        std::fs::create_dir_all(&group).expect("create a group");
        std::fs::write(group.join(name.to_string()), b"").expect("write an object");
    }
    for backup in &backups {
        let folder = cluster.join("backups").join(&backup.id);
        std::fs::create_dir_all(&folder).expect("create a backup folder");
        let json = serde_json::to_vec(backup).expect("JSON");
        let envelope = walhalla::envelope::Encoder::new(3, 1)
            .and_then(|mut e| e.encode(&json))
            .expect("an envelope");
        std::fs::write(folder.join("backup.json.zst"), envelope).expect("write backup.json");
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let archive = Archive::open(
        &Location::Local(dir.clone()),
        &ArchiveOptions {
            timeout: Duration::from_secs(60),
            deadline: None,
            create: false,
            store: Default::default(),
        },
    )
    .expect("open the archive");
    let mut group = c.benchmark_group("100k segments");
    group.sample_size(10);
    group.bench_function("walhalla list, local archive", |b| {
        b.iter(|| {
            runtime
                .block_on(walhalla::list::listing(&archive, Some(SystemId(SYSTEM_ID))))
                .expect("a listing")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, pure, end_to_end);
criterion_main!(benches);
