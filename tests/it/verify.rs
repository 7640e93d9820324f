//! `walhalla list` and `walhalla verify` on a real archive: WAL runs, gaps, the restorable
//! window, and every kind of damage named.

use std::path::Path;
use std::time::Duration;

use crate::backup::take_backup;
use crate::harness::server::scrape;
use crate::harness::{Backend, Server, TestArchive, Walhalla, describe, wait_for};
use crate::push::archiving_primary;

pub(crate) fn json_of(
    wh: &Walhalla,
    archive: &TestArchive,
    args: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let run = wh.run(archive, Path::new("/"), args);
    let value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("{args:?} prints JSON ({e}): {}", describe(&run)));
    (run.status.code(), value)
}

/// The key of `segment`'s object.
fn segment_key(archive: &TestArchive, segment: &str) -> String {
    archive
        .keys()
        .into_iter()
        .find(|k| k.ends_with(&format!("/{segment}.zst")))
        .unwrap_or_else(|| panic!("{segment} is not archived"))
}

fn verify_archive(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    // Nothing archived yet (or a wrong location): nothing to call clean.
    let run = wh.run(&archive, Path::new("/"), &["verify"]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("holds no cluster: nothing to verify"),
        "{}",
        describe(&run)
    );
    let run = wh.run(&archive, Path::new("/"), &["list"]);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    // No autovacuum: the last commit is the test's own.
    let pg = archiving_primary(&wh, &archive, "autovacuum = off");
    pg.write_rows(100);
    let backup = take_backup(&wh, &archive, &pg);
    let mut segments = Vec::new();
    let mut endings = Vec::new();
    for _ in 0..4 {
        pg.write_rows(100);
        let (segment, ending) = pg.switch_wal_ending();
        segments.push(segment);
        endings.push(ending);
    }
    let committed: jiff::Timestamp = pg
        .sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        .parse()
        .unwrap();
    pg.wait_archived(segments.last().unwrap());
    let restore_point = pg.sql("SELECT pg_create_restore_point('checked')");
    let (last, last_ending) = pg.switch_wal_ending();
    pg.wait_archived(&last);

    // A segment archived without a time index (as by an older walhalla) gets one from verify.
    let index_key = archive
        .keys()
        .into_iter()
        .find(|k| {
            k.ends_with(&format!(
                "/index/{}/{}.json.zst",
                &segments[0][..16],
                segments[0]
            ))
        })
        .expect("push indexed the segment");
    archive.remove(&index_key);
    let (code, report) = json_of(&wh, &archive, &["verify", "--json"]);
    assert_eq!(code, Some(0), "a clean archive: {report}");
    assert_eq!(report["clusters"][0]["wal"]["indexed"], 1, "{report}");
    assert!(
        archive.object(&index_key).is_some(),
        "verify stored the index"
    );
    assert!(
        report["clusters"][0]["wal"]["objects"].as_u64().unwrap() > 5,
        "{report}"
    );
    assert_eq!(report["clusters"][0]["backups"]["objects"], 1, "{report}");
    let (code, listing) = json_of(&wh, &archive, &["list", "--json"]);
    assert_eq!(code, Some(0));
    // A cluster the archive does not hold is an error, naming the one it holds, in every
    // command that reads one cluster.
    for command in [
        &["list"][..],
        &["verify"],
        &["prune", "--keep-backups", "1", "--dry-run"],
        &["restore", "--to", "/nonexistent/restored"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--system-id", "1"]);
        let run = wh.run(&archive, Path::new("/"), &args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the archive holds no cluster 1; it holds {}",
                pg.system_id()
            )),
            "{command:?}: {stderr}"
        );
    }
    let cluster = &listing["clusters"][0];
    assert_eq!(
        cluster["timelines"][0]["gaps"],
        serde_json::json!([]),
        "{cluster}"
    );
    let span = &cluster["windows"][0]["spans"][0];
    assert_eq!(span["from_backup"], backup["id"], "{cluster}");
    assert_eq!(span["from_lsn"], backup["stop_lsn"], "{cluster}");
    assert!(span["broken_by"].is_null(), "{cluster}");
    // The window ends at the last commit, as the time index of its segment recorded it.
    let until: jiff::Timestamp = span["to_time"].as_str().unwrap().parse().unwrap();
    let before = committed.duration_since(until).as_secs_f64();
    assert!(
        (0.0..1.0).contains(&before),
        "last commit at {until}, {committed}: {span}"
    );
    // The restore point, by the name and position the server gave it.
    let points = cluster["timelines"][0]["restore_points"]
        .as_array()
        .unwrap();
    assert!(
        points
            .iter()
            .any(|p| p["name"] == "checked" && p["lsn"] == restore_point.as_str()),
        "{cluster}"
    );
    // The window ends where the WAL does, just past the last switch, not at its segment's end.
    assert_eq!(span["to_lsn"], last_ending.as_str(), "{cluster}");
    let end: walhalla::wal::Lsn = span["to_lsn"].as_str().unwrap().parse().unwrap();
    let point: walhalla::wal::Lsn = restore_point.parse().unwrap();
    assert!(
        end > point,
        "the window reaches the restore point: {cluster}"
    );

    // A segment lost after the backup: a gap at exactly it, and the window stops before it.
    let lost = &segments[1];
    archive.remove(&segment_key(&archive, lost));
    let (code, report) = json_of(&wh, &archive, &["verify", "--json"]);
    assert_eq!(code, Some(1), "{report}");
    let findings = report["clusters"][0]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["object"], lost.as_str(), "{report}");
    let (_, listing) = json_of(&wh, &archive, &["list", "--json"]);
    let cluster = &listing["clusters"][0];
    assert_eq!(
        cluster["timelines"][0]["gaps"][0]["first"],
        lost.as_str(),
        "{cluster}"
    );
    assert_eq!(
        cluster["timelines"][0]["gaps"][0]["segments"], 1,
        "{cluster}"
    );
    let span = &cluster["windows"][0]["spans"][0];
    assert_eq!(span["broken_by"], lost.as_str(), "{cluster}");
    // It ends where the WAL of the segment before the lost one ends.
    assert_eq!(span["to_lsn"], endings[0].as_str(), "{cluster}");
    let human = wh.run(&archive, Path::new("/"), &["list"]);
    let text = String::from_utf8_lossy(&human.stdout);
    let gap_at = text.find(&format!("GAP {lost} .. {lost}"));
    assert!(gap_at.is_some(), "{text}");
    // In WAL order: after the run before it, before the run after it.
    let run_at = |i: usize| {
        let first = cluster["timelines"][0]["ranges"][i]["first"].as_str();
        let first = first.unwrap_or_else(|| panic!("two runs around the gap: {cluster}"));
        text.find(&format!("      {first} .. "))
    };
    let (run_before, run_after) = (run_at(0), run_at(1));
    assert!(run_before.is_some() && run_before < gap_at, "{text}");
    assert!(gap_at < run_after, "{text}");

    // A flipped byte, a truncated object and a garbled time index: each named by its key.
    let flipped_key = segment_key(&archive, &segments[2]);
    archive.corrupt(&flipped_key);
    let truncated_key = segment_key(&archive, &segments[3]);
    let bytes = archive.object(&truncated_key).unwrap();
    archive.overwrite(&truncated_key, bytes[..bytes.len() - 10].to_vec());
    let index_key = archive
        .keys()
        .into_iter()
        .find(|k| k.ends_with(&format!("{}.json.zst", segments[0])))
        .expect("the segment's time index");
    archive.overwrite(&index_key, b"not an index".to_vec());
    let (code, report) = json_of(&wh, &archive, &["verify", "--json"]);
    assert_eq!(code, Some(1), "{report}");
    let named: Vec<&str> = report["clusters"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["object"].as_str().unwrap())
        .collect();
    for key in [&flipped_key, &truncated_key, &index_key] {
        // walhalla names the key with the archive's prefix, which the test's store is under.
        assert!(
            named.iter().any(|n| n.ends_with(key.as_str())),
            "{key} not named: {report}"
        );
    }
    assert!(named.contains(&lost.as_str()), "{report}");
}

#[test]
fn verify_and_list_find_every_kind_of_damage_local() {
    verify_archive(Backend::Local);
}

#[test]
fn verify_and_list_find_every_kind_of_damage_s3() {
    verify_archive(Backend::S3);
}

#[test]
fn a_server_publishes_the_restorable_window_and_the_gaps_that_break_it() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = archiving_primary(&wh, &archive, "");
    pg.write_rows(100);
    let backup = take_backup(&wh, &archive, &pg);
    let mut segments = Vec::new();
    for _ in 0..3 {
        pg.write_rows(100);
        segments.push(pg.switch_wal());
    }
    pg.wait_archived(segments.last().unwrap());
    let id = pg.sql("SELECT system_identifier FROM pg_control_system()");
    let server = Server::start(
        &wh,
        &archive,
        &["--system-id", &id, "--survey-interval", "1"],
    );
    let start = wait_for("the first survey", Duration::from_secs(30), || {
        scrape(server.port, "walhalla_restorable_window_start_seconds")
    });
    let stopped: jiff::Timestamp = backup["stop_time"].as_str().unwrap().parse().unwrap();
    let stopped = stopped.as_millisecond() as f64 / 1000.0;
    assert!((start - stopped).abs() < 0.01, "{start} != {stopped}");
    assert_eq!(scrape(server.port, "walhalla_archive_gaps"), Some(0.0));
    let end = scrape(server.port, "walhalla_restorable_window_end_seconds");
    assert!(
        end.is_some_and(|end| end > start),
        "the window ends at a commit after it starts"
    );

    archive.remove(&segment_key(&archive, &segments[1]));
    wait_for("the lost segment counted", Duration::from_secs(30), || {
        (scrape(server.port, "walhalla_archive_gaps")? == 1.0).then_some(())
    });
    let status = wh.run(
        &archive,
        Path::new("/"),
        &["status", "--server", &server.url()],
    );
    let text = String::from_utf8_lossy(&status.stdout);
    // `  LABEL   VALUE` in the archive's section.
    let value = |label: &str| {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        Some(line.trim_start()[label.len()..].trim_start().to_string())
    };
    let missing = value("missing segments");
    assert!(
        missing.is_some_and(|v| v.split_whitespace().next() == Some("1")),
        "{text}"
    );
    let window = value("restorable window");
    assert!(window.is_some_and(|v| v.starts_with("from ")), "{text}");
}
