//! The receiver killed with SIGKILL under pgbench load on a real primary, at its named fail
//! points (`walhalla::failpoint`, armed through `FAILPOINTS`) and at random times, restarted
//! on the same spool after each kill. Afterwards the archive is compared byte for byte with
//! the primary's WAL, every archived segment must have its time index, a copy recovered from
//! a base backup through `walhalla fetch` alone must equal the primary, and each restart's
//! log must say what it found in the spool.
//!
//! Needs the `failpoints` feature (`tests/run.sh` builds the `it` binary with it). The long
//! run is ignored by default; run it with
//!
//! ```text
//! WALHALLA_PG=15 WALHALLA_KILLS=100 WALHALLA_KILL_SEED=1 \
//!   $(tests/it-executable.sh) kills::the_receiver_killed_a_hundred_times --ignored --nocapture
//! ```
//!
//! (`WALHALLA_KILLS`, default 100, is the total over a local and an S3 archive;
//! `WALHALLA_KILL_SEED` chooses the kills, and the seed used is printed.)

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use walhalla::failpoint;

use crate::faults::{current_segment, primary_with_receiver, settle_and_compare};
use crate::harness::faults::{Damage, FaultRow, PgBench};
use crate::harness::{Backend, PgCluster, Receiver, TestArchive, Walhalla};

/// The points killed at: all but the timeline switch, which a single primary never makes, and
/// the start plan, a point to hold a start at (it stores nothing).
const POINTS: [&str; 13] = [
    failpoint::SPOOL_BEFORE_FSYNC,
    failpoint::SPOOL_BEFORE_RENAME,
    failpoint::SPOOL_AFTER_RENAME,
    failpoint::SEGMENT_COMPLETED,
    failpoint::UPLOAD_START,
    failpoint::UPLOAD_IN_FLIGHT,
    failpoint::UPLOAD_STORED,
    failpoint::UPLOAD_REMOVED,
    failpoint::TIME_INDEX_WRITE,
    failpoint::STATUS_BEFORE_SEND,
    failpoint::STATUS_AFTER_SEND,
    failpoint::SPOOL_RECOVERY,
    failpoint::TAIL_KEPT,
];

/// Points passed once at a start (when the spool holds WAL an earlier run left).
const AT_START: [&str; 2] = [failpoint::SPOOL_RECOVERY, failpoint::TAIL_KEPT];
/// How long after streaming a point of [`AT_START`] counts as not passed at this start.
const PASSED_AT_START: Duration = Duration::from_secs(3);

/// How long an armed fail point may take to be reached.
const REACH_TIMEOUT: Duration = Duration::from_secs(120);

/// One kill.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// At fail point `point`, on its `hit`th hit after the restart.
    At { point: &'static str, hit: u32 },
    /// By pid, `after` the restarted receiver streams again.
    Random { after: Duration },
}

/// What a series of kills found.
#[derive(Debug, Default)]
struct Outcome {
    kills_at_points: u32,
    /// Kills at each point.
    per_point: BTreeMap<&'static str, u32>,
    random_kills: u32,
    /// From each restart until it streamed again (restarts killed before are not in it).
    recoveries: Vec<Duration>,
    damage: Damage,
}

impl Outcome {
    fn kills(&self) -> u32 {
        self.kills_at_points + self.random_kills
    }

    fn recovery_max(&self) -> Duration {
        self.recoveries.iter().copied().max().unwrap_or_default()
    }

    fn recovery_median(&self) -> Duration {
        let mut sorted = self.recoveries.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}

/// A receiver restarted again and again on one spool.
struct Victim<'a> {
    wh: &'a Walhalla,
    archive: &'a TestArchive,
    conninfo: String,
    /// The first receiver: its directory holds the spool, so it is kept (killed) to the end.
    origin: Receiver,
    /// The one restarted last.
    current: Option<Receiver>,
}

impl Victim<'_> {
    /// Restarts the receiver on its spool with `env` added to the archive's variables (the
    /// running one, if any, killed first: two never share the spool).
    fn restart(&mut self, env: &[(&str, String)]) {
        self.receiver().kill9();
        let mut vars = self.archive.env();
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let args = [
            "-d",
            &self.conninfo,
            "-S",
            "walhalla",
            "--status-interval",
            "1",
        ];
        let spool = self.origin.spool.clone();
        self.current = Some(Receiver::restart_via(
            self.wh,
            self.archive,
            vars,
            &spool,
            &args,
        ));
    }

    /// The receiver running now (or killed last).
    fn receiver(&mut self) -> &mut Receiver {
        self.current.as_mut().unwrap_or(&mut self.origin)
    }

    /// Injects `kill` into a freshly restarted receiver; returns how long it took to stream
    /// again, if it did before it died, and whether a fail point killed it. A point passed
    /// only at a start (the spool's recovery) is not passed when the kill before left nothing
    /// to recover: the receiver is then killed by pid once it streams.
    fn kill(&mut self, kill: Kill) -> (Option<Duration>, bool) {
        let started = Instant::now();
        let mut streaming = None;
        match kill {
            Kill::At { point, hit } => {
                let skip = match hit {
                    1 => String::new(),
                    n => format!("{}*off->", n - 1),
                };
                self.restart(&[(failpoint::VARIABLE, format!("{point}={skip}return"))]);
                let status = loop {
                    if let Some(status) = self.receiver().wait(Duration::from_millis(50)) {
                        break status;
                    }
                    if streaming.is_none() && streams(self.receiver()) {
                        streaming = Some(started.elapsed());
                    }
                    if AT_START.contains(&point)
                        && streaming.is_some_and(|s| started.elapsed() > s + PASSED_AT_START)
                    {
                        eprintln!("{point} was not passed at this start: killed by pid instead");
                        self.receiver().kill9();
                        assert_said_what_it_found(&self.receiver().log());
                        return (streaming, false);
                    }
                    assert!(
                        started.elapsed() < REACH_TIMEOUT,
                        "fail point {point} (hit {hit}) not reached within {REACH_TIMEOUT:?}"
                    );
                };
                let log = self.receiver().log();
                assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}: {log}");
                assert!(
                    log.contains("fail point: killing the process") && log.contains(point),
                    "no line names fail point {point}: {log}"
                );
            }
            Kill::Random { after } => {
                self.restart(&[]);
                streaming = Some(self.wait_streaming(started));
                std::thread::sleep(after);
                self.receiver().kill9();
            }
        }
        assert_said_what_it_found(&self.receiver().log());
        (streaming, matches!(kill, Kill::At { .. }))
    }

    /// Waits until the receiver logs that it streams; returns the time since `started`.
    fn wait_streaming(&mut self, started: Instant) -> Duration {
        loop {
            assert!(
                self.receiver().wait(Duration::from_millis(50)).is_none(),
                "the receiver ended: {}",
                self.receiver().log()
            );
            if streams(self.receiver()) {
                return started.elapsed();
            }
            assert!(started.elapsed() < REACH_TIMEOUT, "not streaming again");
        }
    }
}

/// Whether `receiver`'s log says it streams.
fn streams(receiver: &Receiver) -> bool {
    receiver.log().contains(": streaming host=")
}

/// A restart's log says what the spool held, and no upload met an object of other bytes
/// (which the archive never overwrites: the uploader would stop).
fn assert_said_what_it_found(log: &str) {
    assert!(
        log.contains("the spool holds WAL an earlier run left")
            || log.contains("the spool holds no WAL of an earlier run"),
        "the restart did not say what it found in the spool: {log}"
    );
    assert!(!log.contains("cannot archive"), "{log}");
}

/// Stops `receiver` (its shutdown waits for its uploads, each of which stores the segment's
/// time index before it ends), then fails unless every segment archived from `first` on has
/// its time index.
fn stop_and_check_indexes(receiver: &mut Receiver, archive: &TestArchive, first: &str) {
    let log = receiver.log();
    assert!(receiver.stop().success(), "{log}");
    let missing = unindexed(archive, first);
    assert!(
        missing.is_empty(),
        "archived without a time index: {missing:?}"
    );
}

/// Archived segments (from `first` on) that have no time index.
fn unindexed(archive: &TestArchive, first: &str) -> Vec<String> {
    let keys = archive.keys();
    let name = |key: &str, suffix: &str| -> Option<String> {
        let file = key.rsplit('/').next()?.strip_suffix(suffix)?;
        (file.len() == 24 && file.bytes().all(|b| b.is_ascii_hexdigit())).then(|| file.into())
    };
    let indexed: std::collections::BTreeSet<String> = keys
        .iter()
        .filter(|k| k.contains("/index/"))
        .filter_map(|k| name(k, ".json.zst"))
        .collect();
    keys.iter()
        .filter(|k| k.contains("/wal/"))
        .filter_map(|k| name(k, ".zst"))
        .filter(|s| s.as_str() >= first && !indexed.contains(s))
        .collect()
}

/// Runs `kills` against a receiver archiving a primary under pgbench load into a new
/// `backend` archive, then settles and compares.
fn kill_under_load(backend: Backend, kills: &[Kill]) -> Outcome {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let (pg, receiver, copy): (PgCluster, Receiver, PgCluster) =
        primary_with_receiver(&wh, &archive, &[]);
    let first = current_segment(&pg);
    let load = PgBench::start(&pg, 2);
    let mut victim = Victim {
        wh: &wh,
        archive: &archive,
        conninfo: pg.conninfo(),
        origin: receiver,
        current: None,
    };
    let mut outcome = Outcome::default();
    let mut queue: VecDeque<Kill> = kills.iter().copied().collect();
    // A kill at a point not passed at its start is tried again later, a few times.
    let mut retries = 2 * kills.len();
    while let Some(kill) = queue.pop_front() {
        eprintln!("kill {}: {kill:?}", outcome.kills() + 1);
        let (recovery, at_point) = victim.kill(kill);
        outcome.recoveries.extend(recovery);
        match (at_point, kill) {
            (true, Kill::At { point, .. }) => {
                outcome.kills_at_points += 1;
                *outcome.per_point.entry(point).or_default() += 1;
            }
            _ => outcome.random_kills += 1,
        }
        if let (false, Kill::At { .. }, 1..) = (at_point, kill, retries) {
            retries -= 1;
            queue.push_back(kill);
        }
    }
    // A last restart without fail points archives everything.
    let started = Instant::now();
    victim.restart(&[]);
    outcome.recoveries.push(victim.wait_streaming(started));
    assert_said_what_it_found(&victim.receiver().log());
    std::thread::sleep(Duration::from_secs(1));
    outcome.damage = settle_and_compare(&wh, &archive, &pg, load, &first, copy);
    stop_and_check_indexes(victim.receiver(), &archive, &first);
    outcome
}

/// `at_points` kills at the points in turn (each on its first to third hit), and `random`
/// kills at random times, shuffled.
fn kills(rng: &mut fastrand::Rng, at_points: usize, random: u32) -> Vec<Kill> {
    let mut kills: Vec<Kill> = (POINTS.iter().cycle().take(at_points))
        .map(|&point| Kill::At {
            point,
            hit: match AT_START.contains(&point) {
                true => 1,
                false => rng.u32(1..=3),
            },
        })
        .collect();
    kills.extend((0..random).map(|_| Kill::Random {
        after: Duration::from_millis(rng.u64(0..2500)),
    }));
    rng.shuffle(&mut kills);
    kills
}

/// Records the row and prints the figures.
fn record(fault: &str, test: &str, outcome: &Outcome, wall: Duration) {
    eprintln!(
        "{fault}: {} kills ({} at fail points {:?}, {} at random times), {} segments \
         compared, {} bytes lost, {} corrupt objects, recovery max {:.1}s median {:.1}s, {:.0}s \
         in all",
        outcome.kills(),
        outcome.kills_at_points,
        outcome.per_point,
        outcome.random_kills,
        outcome.damage.segments,
        outcome.damage.bytes_lost,
        outcome.damage.corrupt_objects,
        outcome.recovery_max().as_secs_f64(),
        outcome.recovery_median().as_secs_f64(),
        wall.as_secs_f64()
    );
    FaultRow {
        fault,
        test,
        tries: outcome.kills(),
        damage: outcome.damage,
        recovery: outcome.recovery_max(),
    }
    .record_and_assert_whole();
}

#[test]
fn the_receiver_killed_at_every_failpoint_loses_nothing() {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(15);
    let outcome = kill_under_load(Backend::Local, &kills(&mut rng, 2 * POINTS.len(), 4));
    for point in POINTS {
        let times = outcome.per_point.get(point).copied().unwrap_or(0);
        assert!(times >= 2, "killed at {point} {times} times: {outcome:?}");
    }
    record(
        "receiver killed (SIGKILL) at every fail point, twice",
        "kills::the_receiver_killed_at_every_failpoint_loses_nothing",
        &outcome,
        started.elapsed(),
    );
}

/// `WALHALLA_KILLS` kills (default 100), half on a local archive and half on S3, a third of
/// them at random times and the rest at fail points; `WALHALLA_KILL_SEED` (printed) chooses.
#[test]
#[ignore = "long: WALHALLA_KILLS kills (default 100); see the module's documentation"]
fn the_receiver_killed_a_hundred_times_loses_nothing() {
    let started = Instant::now();
    let total: u32 = std::env::var("WALHALLA_KILLS")
        .map_or(100, |v| v.parse().expect("WALHALLA_KILLS is a number"));
    let seed: u64 = std::env::var("WALHALLA_KILL_SEED").map_or_else(
        |_| fastrand::u64(..),
        |v| v.parse().expect("WALHALLA_KILL_SEED is a number"),
    );
    eprintln!("WALHALLA_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut outcome = Outcome::default();
    for (backend, share) in [
        (Backend::Local, total / 2),
        (Backend::S3, total - total / 2),
    ] {
        let random = share / 3;
        let planned = kills(&mut rng, (share - random) as usize, random);
        let part = kill_under_load(backend, &planned);
        eprintln!("{backend:?}: {part:?}");
        outcome.kills_at_points += part.kills_at_points;
        for (point, times) in part.per_point {
            *outcome.per_point.entry(point).or_default() += times;
        }
        outcome.random_kills += part.random_kills;
        outcome.recoveries.extend(part.recoveries);
        outcome.damage.segments += part.damage.segments;
        outcome.damage.bytes_lost += part.damage.bytes_lost;
        outcome.damage.corrupt_objects += part.damage.corrupt_objects;
    }
    assert!(outcome.kills() >= total, "{outcome:?}");
    record(
        "receiver killed (SIGKILL) at fail points and random times, local and S3",
        "kills::the_receiver_killed_a_hundred_times_loses_nothing",
        &outcome,
        started.elapsed(),
    );
}

/// A receiver streaming from a standby is killed where it handles the standby's promotion
/// (timeline 1 ends, timeline 2's history is archived); restarted, it archives timeline 2
/// byte for byte, and a copy recovered through `fetch` alone reaches the promoted data.
#[test]
fn the_receiver_killed_at_a_timeline_switch_loses_nothing() {
    let started = Instant::now();
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut primary = PgCluster::init("primary");
    crate::harness::faults::keep_all_wal(&primary);
    primary.start();
    primary.write_rows(500);
    let mut standby = PgCluster::standby_of(&primary, "standby");
    crate::harness::faults::keep_all_wal(&standby);
    standby.start();
    let conninfo = standby.conninfo();
    let mut env = archive.env();
    let armed = format!("{}=return", failpoint::TIMELINE_SWITCH);
    env.push((failpoint::VARIABLE.to_string(), armed));
    let mut receiver = Receiver::on_slot_via(&wh, &archive, env, &conninfo, &[]);
    crate::receive::wait_streaming(&standby);
    let mut copy = PgCluster::from_backup(&primary, "restored", "none");
    primary.write_rows(1000);
    primary.switch_wal();
    standby.wait_replayed(&primary);
    primary.stop("fast");
    standby.promote();
    let status = receiver
        .wait(REACH_TIMEOUT)
        .unwrap_or_else(|| panic!("not killed at the switch: {}", receiver.log()));
    let log = receiver.log();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}: {log}");
    assert!(log.contains(failpoint::TIMELINE_SWITCH), "{log}");
    let first = current_segment(&standby);
    assert!(first.starts_with("00000002"), "{first}");

    let back = Instant::now();
    let args = ["-d", &conninfo, "-S", "walhalla", "--status-interval", "1"];
    let mut restarted = Receiver::restart(&wh, &archive, &receiver.spool, &args);
    crate::harness::wait_for("the restart to stream", REACH_TIMEOUT, || {
        streams(&restarted).then_some(())
    });
    let recovery = back.elapsed();
    assert_said_what_it_found(&restarted.log());
    standby.write_rows(1000);
    let last = standby.switch_wal();
    crate::receive::wait_archive_holds(&archive, &last);
    let damage =
        crate::harness::faults::compare_with_server(&wh, &archive, &standby, &first, &last);
    copy.set_env(archive.env());
    copy.recover_from_archive(&format!(
        "{} --archive {} fetch %f %p",
        wh.path().display(),
        archive.url()
    ));
    assert_eq!(copy.table_fingerprint(), standby.table_fingerprint());
    stop_and_check_indexes(&mut restarted, &archive, &first);
    let outcome = Outcome {
        kills_at_points: 1,
        per_point: BTreeMap::from([(failpoint::TIMELINE_SWITCH, 1)]),
        recoveries: vec![recovery],
        damage,
        ..Outcome::default()
    };
    record(
        "receiver killed (SIGKILL) at a timeline switch",
        "kills::the_receiver_killed_at_a_timeline_switch_loses_nothing",
        &outcome,
        started.elapsed(),
    );
}
