//! Real WAL for the fake walsender: complete segments copied out of a real cluster's `pg_wal`
//! (1 MiB segments, timeline 1), with what that cluster answers about itself. Captured once
//! per test process and per cluster: the tests only read it.

use std::sync::OnceLock;

use walhalla::wal::Lsn;

use super::PgCluster;
use super::faults::keep_all_wal;

/// Size of the captured segments (the harness initdbs with `--wal-segsize=1`).
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// Contiguous complete segments of one real cluster, and its identity.
pub struct RealWal {
    /// `system_identifier` of the cluster.
    pub system_id: u64,
    /// `server_version` as the server reports it at startup.
    pub server_version: String,
    /// The segment number of the first captured segment.
    pub first_segno: u64,
    /// The captured segments, back to back.
    pub bytes: Vec<u8>,
}

impl RealWal {
    /// Where the captured WAL begins.
    pub fn start(&self) -> Lsn {
        Lsn(self.first_segno * SEGMENT_BYTES)
    }

    /// The captured bytes from `from` to `to`.
    pub fn between(&self, from: Lsn, to: Lsn) -> &[u8] {
        let offset = |l: Lsn| usize::try_from(l.0 - self.start().0).expect("small");
        &self.bytes[offset(from)..offset(to)]
    }

    /// The start of the `n`th captured segment (0: the first).
    pub fn segment_start(&self, n: u64) -> Lsn {
        Lsn((self.first_segno + n) * SEGMENT_BYTES)
    }
}

/// The WAL of the cluster the fake walsender plays.
pub fn primary() -> &'static RealWal {
    static WAL: OnceLock<RealWal> = OnceLock::new();
    WAL.get_or_init(|| capture("realwal"))
}

/// The WAL of another cluster, initialized separately (another system identifier).
pub fn other_cluster() -> &'static RealWal {
    static WAL: OnceLock<RealWal> = OnceLock::new();
    WAL.get_or_init(|| capture("otherwal"))
}

/// Starts a cluster, writes into three segments, and copies the complete ones from the first
/// segment that the first write touched.
fn capture(label: &str) -> RealWal {
    let mut pg = PgCluster::init(label);
    keep_all_wal(&pg);
    pg.start();
    let first: u64 = {
        let name = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        u64::from_str_radix(&name[16..], 16).expect("a segment name")
    };
    let mut last = String::new();
    for _ in 0..3 {
        pg.write_rows(300);
        last = pg.switch_wal();
    }
    let system_id = pg.system_id();
    let server_version = pg.sql("SHOW server_version");
    let last: u64 = u64::from_str_radix(&last[16..], 16).expect("a segment name");
    let mut bytes = Vec::new();
    for segno in first..=last {
        let path = pg.data.join("pg_wal").join(format!(
            "00000001{:08X}{:08X}",
            segno >> 12,
            segno & 0xFFF
        ));
        let segment = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(segment.len() as u64, SEGMENT_BYTES, "{}", path.display());
        bytes.extend_from_slice(&segment);
    }
    pg.stop("fast");
    RealWal {
        system_id,
        server_version,
        first_segno: first,
        bytes,
    }
}
