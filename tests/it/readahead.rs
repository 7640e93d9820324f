//! `walhalla fetch` readahead: the background worker keeps the next segments beside `%p`, a
//! later fetch only moves one into place, the end of the archive costs no request storm, the
//! last segment is ready again when archive recovery ends there, the worker follows a
//! timeline switch, and it empties the cache and exits when fetches stop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::Backend;
use crate::harness::server::scrape;
use crate::harness::{
    PgCluster, Server, TestArchive, TestDir, Walhalla, as_pg_user, describe, wait_for,
};
use crate::push::{archiving_primary, promoted_archiving_standby};

/// The segment `ahead` after `name`, on `timeline` (16 MiB segments, same xlogid).
fn segment_after(name: &str, ahead: u32, timeline: u32) -> String {
    let low = u32::from_str_radix(&name[16..], 16).unwrap() + ahead;
    format!("{timeline:08X}{}{low:08X}", &name[8..16])
}

/// Runs `walhalla fetch [extra] NAME DEST` as PostgreSQL would, in `data`.
fn fetch(
    wh: &Walhalla,
    data: &Path,
    extra: &[&str],
    name: &str,
    dest: &Path,
) -> std::process::Output {
    fetch_command(wh, data, extra, name, dest)
        .output()
        .expect("run walhalla fetch")
}

/// The `walhalla fetch` [`fetch`] runs, to add to.
fn fetch_command(
    wh: &Walhalla,
    data: &Path,
    extra: &[&str],
    name: &str,
    dest: &Path,
) -> std::process::Command {
    let mut command = as_pg_user(wh.path());
    command
        .current_dir(data)
        .arg("fetch")
        .args(extra)
        .args([name, dest.to_str().unwrap()]);
    command
}

/// How many times the readahead worker logged `segment` as not archived (it logs at debug
/// level when the fetch that started it ran with `WALHALLA_LOG=walhalla=debug`).
fn worker_misses(cache: &Path, segment: &str) -> usize {
    let log = std::fs::read_to_string(cache.join("worker.log")).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains("not archived") && line.contains(segment))
        .count()
}

fn cached(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.len() == 24)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A primary that archived `count` consecutive segments after its first; returns it and the
/// names of those segments.
fn archived_segments(wh: &Walhalla, archive: &TestArchive, count: u32) -> (PgCluster, Vec<String>) {
    let primary = archiving_primary(wh, archive, "wal_keep_size = '1GB'");
    primary.write_rows(100);
    let first = primary.switch_wal();
    let mut names = vec![first.clone()];
    for i in 1..count {
        primary.write_rows(100);
        let name = primary.switch_wal();
        assert_eq!(name, segment_after(&first, i, 1), "one segment per switch");
        names.push(name);
    }
    primary.wait_archived(names.last().unwrap());
    (primary, names)
}

#[test]
fn prefetched_segments_are_moved_into_place_and_the_end_costs_no_storm() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (primary, names) = archived_segments(&wh, &archive, 5);
    let mut server = Some(Server::start(&wh, &archive, &[]));
    let url = server.as_ref().unwrap().url();
    let port = server.as_ref().unwrap().port;
    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let cache: PathBuf = out.path().join("walhalla-prefetch");
    let only_server = ["--prefetch", "3", "--server", url.as_str()];

    // A fetch by hand to another file name starts no readahead.
    let by_hand = out.path().join(&names[0]);
    let run = fetch(&wh, &primary.data, &only_server, &names[0], &by_hand);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    assert!(!cache.exists(), "readahead started for a fetch by hand");

    let run = fetch(&wh, &primary.data, &only_server, &names[0], &dest);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    wait_for(
        "the next three segments in the cache",
        Duration::from_secs(60),
        || (cached(&cache) == names[1..4]).then_some(()),
    );

    // With the server gone and no archive configured, only the cache can answer.
    drop(server.take());
    for name in &names[1..4] {
        let run = fetch(&wh, &primary.data, &only_server, name, &dest);
        assert_eq!(run.status.code(), Some(0), "{name}: {}", describe(&run));
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(primary.data.join("pg_wal").join(name)).unwrap(),
            "{name} differs"
        );
    }
    let run = fetch(&wh, &primary.data, &only_server, &names[4], &dest);
    assert_eq!(
        run.status.code(),
        Some(255),
        "not cached, server down: {}",
        describe(&run)
    );

    // Past the end of the archive: a miss is asked again only after a pause.
    let server = Server::start_on(&wh, &archive, port, &[]);
    let run = fetch(&wh, &primary.data, &only_server, &names[4], &dest);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    // The window's requests in flight when the end was met miss at once (up to eight): let
    // them land first, even on a loaded machine (the worker runs at nice 10).
    std::thread::sleep(Duration::from_secs(3));
    let misses_before = scrape(port, "walhalla_fetch_misses_total").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let misses = scrape(port, "walhalla_fetch_misses_total").unwrap() - misses_before;
    assert!(
        (1.0..=4.0).contains(&misses),
        "{misses} misses in 4 s at the end of the archive"
    );

    // No fetch for a while: the worker empties the cache and exits.
    wait_for("the worker to clean up", Duration::from_secs(90), || {
        (cached(&cache).is_empty() && !cache.join("wanted").exists()).then_some(())
    });
    drop(server);
}

#[test]
fn recovery_ending_at_the_archive_finds_its_last_segment_ready_again() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (primary, names) = archived_segments(&wh, &archive, 3);
    let not_archived = segment_after(&names[2], 1, 1);
    let system_id = primary.system_id().to_string();
    let standby = TestDir::new("standby");
    std::fs::write(standby.path().join("standby.signal"), "").unwrap();
    let from_archive = [
        "--prefetch",
        "2",
        "--archive",
        archive.url(),
        "--system-id",
        &system_id,
    ];
    // Archive recovery, then standby mode (standby.signal in the data directory).
    for (data, standby_mode) in [
        (&primary.data, false),
        (&standby.path().to_path_buf(), true),
    ] {
        let out = TestDir::new("out");
        let dest = out.path().join("RECOVERYXLOG");
        let cache = out.path().join("walhalla-prefetch");
        // The worker this starts inherits the log level: it logs each miss.
        let run = fetch_command(&wh, data, &from_archive, &names[0], &dest)
            .env("WALHALLA_LOG", "walhalla=debug")
            .output()
            .expect("run walhalla fetch");
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
        wait_for(
            "the next two segments in the cache",
            Duration::from_secs(60),
            || (cached(&cache) == names[1..3]).then_some(()),
        );
        for name in &names[1..3] {
            let run = fetch(&wh, data, &from_archive, name, &dest);
            assert_eq!(run.status.code(), Some(0), "{name}: {}", describe(&run));
        }
        assert!(cached(&cache).is_empty(), "taken from the cache");
        // Told that the archive ends, archive recovery reads its last record again, asking
        // for the last segment once more: the worker has it ready.
        let run = fetch(&wh, data, &from_archive, &not_archived, &dest);
        assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
        if standby_mode {
            // A standby waits at the end for more WAL: nothing is fetched twice. At the end
            // the worker has one request in flight at a time, so its second probe of the
            // segment after the last one (once the first miss expires) comes after anything
            // the first miss could have started.
            wait_for(
                "the worker to find the archive's end twice",
                Duration::from_secs(60),
                || (worker_misses(&cache, &not_archived) >= 2).then_some(()),
            );
            assert!(
                cached(&cache).is_empty(),
                "standby mode: {:?}",
                cached(&cache)
            );
            continue;
        }
        wait_for(
            "the last segment in the cache again",
            Duration::from_secs(60),
            || (cached(&cache) == names[2..3]).then_some(()),
        );
        let run = fetch(&wh, data, &from_archive, &names[2], &dest);
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
        assert!(
            cached(&cache).is_empty(),
            "the last segment taken from the cache"
        );
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(primary.data.join("pg_wal").join(&names[2])).unwrap(),
        );
    }
}

#[test]
fn readahead_follows_a_timeline_switch() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let primary = archiving_primary(&wh, &archive, "wal_keep_size = '1GB'");
    primary.write_rows(1000);
    let (standby, last_on_1) = promoted_archiving_standby(&wh, &archive, &primary, "");
    // Timeline 2 begins inside the segment after last_on_1.
    let switch_segment = segment_after(&last_on_1, 1, 2);
    assert_eq!(standby.switch_wal(), switch_segment);
    standby.write_rows(100);
    let after = standby.switch_wal();
    assert_eq!(after, segment_after(&last_on_1, 2, 2));
    standby.wait_archived(&after);

    let out = TestDir::new("out");
    let dest = out.path().join("RECOVERYXLOG");
    let cache = out.path().join("walhalla-prefetch");
    let run = fetch(
        &wh,
        &standby.data,
        &["--prefetch", "2", "--archive", archive.url()],
        &last_on_1,
        &dest,
    );
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    wait_for(
        "the timeline-2 segments in the cache",
        Duration::from_secs(60),
        || (cached(&cache) == [switch_segment.clone(), after.clone()]).then_some(()),
    );
}

#[test]
fn an_unusable_prefetch_cache_degrades_to_a_direct_fetch() {
    use std::os::unix::fs::PermissionsExt;
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (primary, names) = archived_segments(&wh, &archive, 2);
    let archive_only = ["--archive", archive.url()];
    // The cache a regular file, a directory the postgres user cannot write, one it cannot
    // even read.
    for (what, mode) in [
        ("a regular file", None),
        ("a read-only directory", Some(0o555)),
        ("an unreadable directory", Some(0o000)),
    ] {
        let out = TestDir::new("out");
        let dest = out.path().join("RECOVERYXLOG");
        let cache = out.path().join("walhalla-prefetch");
        match mode {
            None => std::fs::write(&cache, "not a directory").unwrap(),
            Some(mode) => {
                std::fs::create_dir(&cache).unwrap();
                std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        for name in &names {
            let run = fetch(&wh, &primary.data, &archive_only, name, &dest);
            assert_eq!(
                run.status.code(),
                Some(0),
                "cache is {what}: {}",
                describe(&run)
            );
            assert_eq!(
                std::fs::read(&dest).unwrap(),
                std::fs::read(primary.data.join("pg_wal").join(name)).unwrap(),
                "cache is {what}: {name} differs"
            );
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(
                stderr.contains("WARN") && stderr.contains("walhalla-prefetch"),
                "cache is {what}: no warning naming the cache: {stderr}"
            );
        }
    }
}

#[test]
fn a_worker_whose_token_was_rotated_away_stops_and_the_next_fetch_starts_one_with_the_new() {
    use std::os::unix::fs::PermissionsExt;
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (primary, names) = archived_segments(&wh, &archive, 6);
    let state = TestDir::new("state");
    let server = Server::start_in_state(&wh, &archive, state.path(), &[]);
    let server_tokens = state.path().join("walhalla/token");
    let old = std::fs::read_to_string(&server_tokens).unwrap();
    let old = old.trim().to_string();
    // The clients' copy of the token, as restore_command names it.
    let out = TestDir::new("out");
    let client_token = out.path().join("token");
    let give = |token: &str| {
        std::fs::write(&client_token, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&client_token, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    give(&old);
    let dest = out.path().join("RECOVERYXLOG");
    let cache = out.path().join("walhalla-prefetch");
    let url = server.url();
    let client = [
        "--prefetch",
        "2",
        "--server",
        url.as_str(),
        "--token-file",
        client_token.to_str().unwrap(),
    ];
    let fetch_ok = |name: &str| {
        let run = fetch_command(&wh, &primary.data, &client, name, &dest)
            .env_remove("WALHALLA_TOKEN_FILE")
            .env_remove("WALHALLA_ARCHIVE")
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(0), "{name}: {}", describe(&run));
    };
    fetch_ok(&names[0]);
    wait_for("two segments ahead", Duration::from_secs(60), || {
        (cached(&cache) == names[1..3]).then_some(())
    });

    // The token rotated as the README says: the new one given to the server and the clients,
    // then the old one removed.
    let rotated = "rotated-0123456789abcdef0123456789abcdef";
    let hangup = |lines: usize| {
        // SAFETY: kill() on the pid of a server this test started and has not reaped.
        unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
        let said = format!("count={lines}");
        wait_for("the token file read again", Duration::from_secs(10), || {
            (server.log().lines())
                .any(|l| l.contains("read the token file again") && l.contains(&said))
                .then_some(())
        });
    };
    std::fs::write(&server_tokens, format!("{rotated}\n{old}\n")).unwrap();
    hangup(2);
    give(rotated);
    std::fs::write(&server_tokens, format!("{rotated}\n")).unwrap();
    hangup(1);

    // The worker, asked for the next segment with the old token, is refused and stops.
    fetch_ok(&names[1]);
    wait_for("the worker to stop", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(cache.join("worker.log")).unwrap_or_default();
        (log.contains("401") && log.contains("this worker stops") && cached(&cache).is_empty())
            .then_some(())
    });
    // The next fetch asks the server itself, and starts a worker with the token as it is now.
    fetch_ok(&names[2]);
    wait_for(
        "two segments ahead with the new token",
        Duration::from_secs(60),
        || (cached(&cache) == names[3..5]).then_some(()),
    );
    fetch_ok(&names[3]);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(primary.data.join("pg_wal").join(&names[3])).unwrap()
    );
}
