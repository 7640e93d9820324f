//! What the fault-injection tests share: a pgbench load on a real primary, the archive compared
//! byte for byte with the primary's own WAL after a fault, and one results row per fault for
//! the table `tests/faults/table.sh` renders (docs/faults.md).
//!
//! A fault test records its row *before* it asserts that nothing was lost, so the table shows
//! what was measured, and the test fails whenever the loss or corruption column is not 0.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{PgCluster, TestArchive, TestDir, Walhalla, as_pg_user, pg_client_bin};

/// A WAL segment of the test clusters (`initdb --wal-segsize=1`).
const SEGMENT: u64 = 1 << 20;

/// The variable naming the JSON-lines file fault rows are appended to (unset: not recorded).
pub const RESULTS_VAR: &str = "WALHALLA_FAULT_RESULTS";

/// What a fault did to the archive, against the primary's WAL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Segments compared.
    pub segments: u64,
    /// Bytes of WAL the primary wrote that the archive does not give back: missing segments
    /// and the differing bytes of wrong ones.
    pub bytes_lost: u64,
    /// Archived objects that do not restore to the primary's bytes (refused by `fetch`'s checks
    /// or different after them).
    pub corrupt_objects: u64,
}

/// One row of the results table.
pub struct FaultRow<'a> {
    /// The fault, as the table names it.
    pub fault: &'a str,
    /// The test that proves the row (`module::name`).
    pub test: &'a str,
    /// How many times the fault was injected.
    pub tries: u32,
    /// What the comparison found.
    pub damage: Damage,
    /// From the end of the fault until the archive held what the primary had written by then
    /// (the longest, over the tries).
    pub recovery: Duration,
}

impl FaultRow<'_> {
    /// Appends the row to `$WALHALLA_FAULT_RESULTS` when it is set.
    pub fn record(&self) {
        let Some(path) = std::env::var_os(RESULTS_VAR) else {
            return;
        };
        let line = format!(
            "{{\"fault\":{:?},\"test\":{:?},\"tries\":{},\"segments\":{},\"bytes_lost\":{},\
             \"corrupt_objects\":{},\"recovery_s\":{:.1}}}\n",
            self.fault,
            self.test,
            self.tries,
            self.damage.segments,
            self.damage.bytes_lost,
            self.damage.corrupt_objects,
            self.recovery.as_secs_f64()
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", Path::new(&path).display()));
        file.write_all(line.as_bytes()).expect("append a fault row");
    }

    /// Records the row, then fails the test unless nothing was lost or corrupted.
    pub fn record_and_assert_whole(&self) {
        self.record();
        assert_eq!(
            (self.damage.bytes_lost, self.damage.corrupt_objects),
            (0, 0),
            "{}: {:?}",
            self.fault,
            self.damage
        );
        assert!(self.damage.segments > 0, "{}: nothing compared", self.fault);
    }
}

/// Makes `pg` keep every WAL segment it writes (until the test ends), so the archive can be
/// compared with it afterwards. Takes effect at the next start or reload.
pub fn keep_all_wal(pg: &PgCluster) {
    pg.append_conf("wal_keep_size = '100GB'\nmax_slot_wal_keep_size = -1");
}

/// Compares the complete segments `first..=last` (names on the same timeline) that `pg`'s
/// `pg_wal` still holds with what `walhalla fetch` gives back from `archive`.
pub fn compare_with_server(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    first: &str,
    last: &str,
) -> Damage {
    let (timeline, first_no) = split(first);
    let (last_timeline, last_no) = split(last);
    assert_eq!(timeline, last_timeline, "{first}..{last} spans timelines");
    let scratch = TestDir::new("compare");
    let mut damage = Damage::default();
    for segno in first_no..=last_no {
        let name = format!(
            "{timeline}{:08X}{:08X}",
            segno / (0x1_0000_0000 / SEGMENT),
            segno % (0x1_0000_0000 / SEGMENT)
        );
        let Ok(expected) = std::fs::read(pg.data.join("pg_wal").join(&name)) else {
            panic!("{name} is no longer in the primary's pg_wal: call keep_all_wal first");
        };
        damage.segments += 1;
        let dest = scratch.path().join(&name);
        let output = wh.run(
            archive,
            scratch.path(),
            &["fetch", &name, &dest.to_string_lossy()],
        );
        match output.status.code() {
            Some(0) => {
                let got = std::fs::read(&dest).expect("read the fetched segment");
                let differing = expected.iter().zip(&got).filter(|(a, b)| a != b).count() as u64
                    + expected.len().abs_diff(got.len()) as u64;
                if differing > 0 {
                    damage.corrupt_objects += 1;
                    damage.bytes_lost += differing;
                }
                std::fs::remove_file(&dest).expect("remove the fetched segment");
            }
            // 1: not in the archive.
            Some(1) => damage.bytes_lost += expected.len() as u64,
            _ => {
                damage.corrupt_objects += 1;
                damage.bytes_lost += expected.len() as u64;
            }
        }
    }
    damage
}

/// A segment name's timeline (8 hex digits) and segment number (1 MiB segments).
fn split(name: &str) -> (&str, u64) {
    assert_eq!(name.len(), 24, "{name} is not a segment name");
    let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
    let (log, seg) = (hex(&name[8..16]), hex(&name[16..24]));
    (&name[..8], log * (0x1_0000_0000 / SEGMENT) + seg)
}

/// pgbench writing to a primary until stopped (by pid) or dropped.
pub struct PgBench {
    child: Child,
}

impl PgBench {
    /// Creates pgbench's tables in `pg` (scale 5).
    pub fn init(pg: &PgCluster) {
        let init = as_pg_user(pg_client_bin().join("pgbench"))
            .args(["-i", "-q", "-s", "5"])
            .args(connection(pg))
            .output()
            .expect("run pgbench -i");
        assert!(
            init.status.success(),
            "pgbench -i: {}",
            super::describe(&init)
        );
    }

    /// Starts `clients` clients running the TPC-B-like script on tables [`PgBench::init`]
    /// made, without a time limit. It runs as the PostgreSQL user directly (not through
    /// `runuser`, which killing by pid would leave orphaned).
    pub fn start(pg: &PgCluster, clients: u32) -> PgBench {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(pg_client_bin().join("pgbench"));
        if let Some((uid, gid)) = super::pg_user_ids() {
            command.uid(uid).gid(gid);
        }
        let child = command
            .args(["-n", "-c", &clients.to_string(), "-T", "100000"])
            .args(connection(pg))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench");
        PgBench { child }
    }

    /// Stops the load (pgbench may have ended already: it gives up when the primary goes
    /// away, which fault tests do on purpose).
    pub fn stop(self) {}
}

impl Drop for PgBench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pgbench's connection arguments for `pg`, database last.
fn connection(pg: &PgCluster) -> [String; 7] {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
        "postgres",
    ]
    .map(str::to_string)
}

/// A fingerprint of what pgbench (and `write_rows`) wrote: row counts and balance sums, for
/// comparing a recovered copy with its primary.
pub fn fingerprint(pg: &PgCluster) -> String {
    pg.sql(
        "SELECT (SELECT count(*) || ':' || sum(abalance) FROM pgbench_accounts) || '/' || \
                (SELECT count(*) || ':' || coalesce(sum(delta), 0) FROM pgbench_history) || '/' || \
                (SELECT sum(bbalance) FROM pgbench_branches)",
    )
}
