//! `walhalla backup` and `walhalla restore`: base backups into the archive and
//! point-in-time restores from it, against real PostgreSQL (local and S3 archives).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Backend, PgCluster, TestArchive, TestDir, Walhalla, describe, wait_for};
use crate::push::archiving_primary;

/// Runs `walhalla backup -d PG --fast --json --wal-timeout SECONDS ARGS`.
fn run_backup(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    wal_timeout: &str,
    args: &[&str],
) -> std::process::Output {
    let conninfo = pg.conninfo();
    let mut all = vec![
        "backup",
        "-d",
        &conninfo,
        "--fast",
        "--json",
        "--wal-timeout",
        wal_timeout,
    ];
    all.extend_from_slice(args);
    wh.run(archive, Path::new("/"), &all)
}

/// Runs `walhalla backup` of `pg`, expecting success; returns the backup's metadata.
pub fn take_backup(wh: &Walhalla, archive: &TestArchive, pg: &PgCluster) -> serde_json::Value {
    let run = run_backup(wh, archive, pg, "60", &[]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "backup failed: {}",
        describe(&run)
    );
    serde_json::from_slice(&run.stdout).expect("backup --json prints JSON")
}

/// Runs `walhalla restore --to DIR ARGS --json`; the exit code, the report (on success) and
/// stderr.
pub fn restore(
    wh: &Walhalla,
    archive: &TestArchive,
    to: &Path,
    args: &[&str],
) -> (Option<i32>, Option<serde_json::Value>, String) {
    let mut all = vec!["restore", "--to", to.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let run = wh.run(archive, Path::new("/"), &all);
    let report = serde_json::from_slice(&run.stdout).ok();
    (
        run.status.code(),
        report,
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

/// A restored data directory brought up: its own port, archiving off (it must not write into
/// the archive the other restores read), the archive's settings in its environment (for the
/// restore_command), started, and waited for until recovery ended.
pub fn start_restored(archive: &TestArchive, dir: TestDir, data: PathBuf) -> PgCluster {
    let mut pg = PgCluster::adopt(dir, data);
    pg.append_conf("archive_mode = off");
    pg.set_env(archive.env());
    pg.start();
    wait_for("recovery to end", Duration::from_secs(120), || {
        (pg.try_sql("SELECT pg_is_in_recovery()")? == "f").then_some(())
    });
    pg
}

/// Restores with `args` (and promotion at the target) and returns the batches table's
/// content, `-` when the table does not exist.
pub fn restored_batches(
    wh: &Walhalla,
    archive: &TestArchive,
    args: &[&str],
) -> (String, serde_json::Value) {
    let dir = TestDir::new("restored");
    let data = dir.path().join("data");
    let mut all = args.to_vec();
    if args.iter().any(|a| a.starts_with("--target")) {
        all.extend(["--target-action", "promote"]);
    }
    let (code, report, stderr) = restore(wh, archive, &data, &all);
    assert_eq!(code, Some(0), "restore {args:?} failed: {stderr}");
    let pg = start_restored(archive, dir, data);
    let batches = pg.sql(
        "SELECT CASE WHEN to_regclass('batches') IS NULL THEN '-' \
         ELSE (SELECT coalesce(string_agg(DISTINCT batch, ',' ORDER BY batch), '') FROM batches) END",
    );
    (batches, report.expect("a JSON report"))
}

/// A primary archiving into `archive`, with an empty `batches` table.
pub fn primary_with_batches(wh: &Walhalla, archive: &TestArchive) -> PgCluster {
    let pg = archiving_primary(wh, archive, "");
    pg.sql("CREATE TABLE batches (batch text, n int)");
    pg
}

pub fn insert_batch(pg: &PgCluster, batch: &str) {
    pg.sql(&format!(
        "INSERT INTO batches SELECT '{batch}', g FROM generate_series(1, 1000) g"
    ));
}

fn point_in_time_restores(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let pg = primary_with_batches(&wh, &archive);
    insert_batch(&pg, "0");
    let backup = take_backup(&wh, &archive, &pg);
    assert_eq!(backup["wal_complete"], true, "{backup}");

    insert_batch(&pg, "A");
    let time = pg.sql("SELECT now()");
    let point = pg.sql("SELECT pg_create_restore_point('before_b')");
    std::thread::sleep(Duration::from_millis(50));
    insert_batch(&pg, "B");
    let last = pg.switch_wal();
    pg.wait_archived(&last);

    for (args, expected) in [
        (vec!["--target-time", time.as_str()], "0,A"),
        (vec!["--target-name", "before_b"], "0,A"),
        (vec!["--target-lsn", point.as_str()], "0,A"),
        (vec![], "0,A,B"),
        (vec!["--target", "immediate"], "0"),
    ] {
        let (batches, report) = restored_batches(&wh, &archive, &args);
        assert_eq!(batches, expected, "restore {args:?}: {report}");
        assert_eq!(report["backup"], backup["id"]);
    }
}

#[test]
fn point_in_time_restores_local() {
    point_in_time_restores(Backend::Local);
}

#[test]
fn point_in_time_restores_s3() {
    point_in_time_restores(Backend::S3);
}

#[test]
fn a_time_target_chooses_the_newest_backup_before_it() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    let mut backups = Vec::new();
    let mut times = Vec::new();
    for batch in ["A", "B", "C"] {
        backups.push(take_backup(&wh, &archive, &pg));
        insert_batch(&pg, batch);
        times.push(pg.sql("SELECT now()"));
        // Backup ids are per second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last);

    let listing = wh.run(&archive, Path::new("/"), &["list", "--json"]);
    assert_eq!(listing.status.code(), Some(0), "{}", describe(&listing));
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let listed: Vec<&serde_json::Value> = listing["clusters"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["id"])
        .collect();
    assert_eq!(listed, backups.iter().map(|b| &b["id"]).collect::<Vec<_>>());

    // After batch B, before C's backup: B's backup (the second) is the newest before it.
    let (batches, report) = restored_batches(&wh, &archive, &["--target-time", &times[1]]);
    assert_eq!(batches, "A,B");
    assert_eq!(report["backup"], backups[1]["id"], "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("before"),
        "{report}"
    );

    // Before the oldest backup was consistent: refused, and nothing is written.
    let early = TestDir::new("early");
    let to = early.path().join("data");
    let (code, _, stderr) = restore(
        &wh,
        &archive,
        &to,
        &["--target-time", "2000-01-01 00:00:00+00"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no backup is consistent before time 2000-01-01 00:00:00+00"),
        "{stderr}"
    );
    assert!(!to.exists(), "the restore wrote something");

    // The newest backup's metadata becomes unreadable to PostgreSQL's user (root wrote it):
    // list shows it unusable, and a restore takes the backup before it.
    if crate::harness::running_as_root() {
        use std::os::unix::fs::{PermissionsExt, chown};
        let newest = backups[2]["id"].as_str().unwrap();
        let suffix = format!("backups/{newest}/backup.json.zst");
        let key = archive.keys().into_iter().find(|k| k.ends_with(&suffix));
        let file = Path::new(archive.url()).join(key.expect("the backup's metadata"));
        chown(&file, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let listing = wh.run(&archive, Path::new("/"), &["list", "--json"]);
        assert_eq!(listing.status.code(), Some(0), "{}", describe(&listing));
        let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
        let unusable = &listing["clusters"][0]["unusable"];
        assert!(unusable.to_string().contains(newest), "{listing:#}");
        let (batches, report) = restored_batches(&wh, &archive, &[]);
        assert_eq!(report["backup"], backups[1]["id"], "{report}");
        assert_eq!(batches, "A,B,C");
    }
}

/// Replaces backup `id`'s `stop_time` in the archive, as a host with another clock would
/// have written it.
fn rewrite_stop_time(archive: &TestArchive, id: &str, stop_time: &serde_json::Value) {
    let suffix = format!("backups/{id}/backup.json.zst");
    let key = archive
        .keys()
        .into_iter()
        .find(|k| k.ends_with(&suffix))
        .expect("the backup's metadata");
    let json = walhalla::envelope::decode(&archive.object(&key).unwrap()).unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&json).unwrap();
    meta["stop_time"] = stop_time.clone();
    let json = serde_json::to_vec_pretty(&meta).unwrap();
    let envelope = walhalla::envelope::Encoder::new(3, 1)
        .unwrap()
        .encode(&json)
        .unwrap();
    archive.overwrite(&key, envelope);
}

#[test]
fn a_time_target_passes_over_a_backup_whose_host_clock_was_behind() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    insert_batch(&pg, "A");
    let older = take_backup(&wh, &archive, &pg);
    insert_batch(&pg, "B");
    let time = pg.sql("SELECT now()");
    // Backup ids are per second; C commits after the target.
    std::thread::sleep(Duration::from_millis(1100));
    insert_batch(&pg, "C");
    let newer = take_backup(&wh, &archive, &pg);
    insert_batch(&pg, "D");
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    // The newer backup's host clock was behind the server's: by it, the backup stopped
    // before the target, though C, after the target, committed before it started.
    rewrite_stop_time(&archive, newer["id"].as_str().unwrap(), &older["stop_time"]);

    let dir = TestDir::new("restored");
    let data = dir.path().join("data");
    let args = ["--target-time", &time, "--target-action", "promote"];
    let (code, report, stderr) = restore(&wh, &archive, &data, &args);
    assert_eq!(code, Some(0), "{stderr}");
    let report = report.expect("a JSON report");
    assert_eq!(report["backup"], older["id"], "{report}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "before backup {} is consistent",
            newer["id"].as_str().unwrap()
        )) && stderr.contains("clocks apart"),
        "{stderr}"
    );
    // Named with --backup, the newer backup is refused for the same reason, and for an LSN
    // before its consistency point: recovery from it would hold C, or fail.
    let newer_id = newer["id"].as_str().unwrap();
    let older_stop = older["stop_lsn"].as_str().unwrap();
    for target in [["--target-time", &time], ["--target-lsn", older_stop]] {
        let named = dir.path().join("named");
        let args = [&["--backup", newer_id][..], &target].concat();
        let (code, _, stderr) = restore(&wh, &archive, &named, &args);
        assert_eq!(code, Some(1), "{target:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "backup {newer_id} cannot be restored to this target"
            )),
            "{target:?}: {stderr}"
        );
        assert!(!named.exists(), "{target:?}: a refused restore wrote");
    }
    let pg = start_restored(&archive, dir, data);
    let batches = pg.sql("SELECT string_agg(DISTINCT batch, ',' ORDER BY batch) FROM batches");
    assert_eq!(batches, "A,B");
}

#[test]
fn a_hole_after_where_recovery_stops_does_not_stop_a_restore_to_a_time_or_restore_point() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    take_backup(&wh, &archive, &pg);
    insert_batch(&pg, "A");
    let time = pg.sql("SELECT now()");
    std::thread::sleep(Duration::from_millis(50));
    insert_batch(&pg, "B");
    pg.sql("SELECT pg_create_restore_point('after_b')");
    insert_batch(&pg, "C");
    pg.switch_wal();
    insert_batch(&pg, "D");
    let hole = pg.switch_wal();
    insert_batch(&pg, "E");
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    archive.remove(&crate::push::key_of(pg.system_id(), &hole));

    // To the end, recovery needs the lost segment.
    let dir = TestDir::new("hole");
    let (code, _, stderr) = restore(&wh, &archive, &dir.path().join("end"), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("WAL segment {hole} is not in the archive")),
        "{stderr}"
    );
    // To a time or a restore point before it, the indexes show it stops first.
    // Promoted copies: --archive-mode off keeps their timelines out of the archive.
    for (target, expected) in [
        (["--target-time", time.as_str()], "A"),
        (["--target-name", "after_b"], "A,B"),
    ] {
        let dir = TestDir::new("before-hole");
        let data = dir.path().join("data");
        let args = [
            &target[..],
            &["--target-action", "promote", "--archive-mode", "off"],
        ]
        .concat();
        let (code, report, stderr) = restore(&wh, &archive, &data, &args);
        assert_eq!(code, Some(0), "{target:?}: {stderr}");
        assert_eq!(report.unwrap()["settings"]["archive_mode"], "off");
        let pg = start_restored(&archive, dir, data);
        let batches = pg.sql("SELECT string_agg(DISTINCT batch, ',' ORDER BY batch) FROM batches");
        assert_eq!(batches, expected, "{target:?}");
        assert_eq!(pg.sql("SHOW archive_mode"), "off");
    }
}

#[test]
fn corrupt_backup_objects_and_missing_wal_are_refused() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    let backup = take_backup(&wh, &archive, &pg);
    let id = backup["id"].as_str().unwrap().to_string();
    let system_id = pg.system_id();
    insert_batch(&pg, "A");
    let gap = pg.switch_wal();
    insert_batch(&pg, "B");
    let last = pg.switch_wal();
    pg.wait_archived(&last);

    // A flipped byte in a piece of the data directory's stream.
    let piece = format!("{system_id}/backups/{id}/base/00000001.zst");
    let original = archive.object(&piece).expect("the backup's second piece");
    archive.corrupt(&piece);
    let dir = TestDir::new("corrupt");
    let to = dir.path().join("data");
    let (code, _, stderr) = restore(&wh, &archive, &to, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&piece),
        "the error names the object: {stderr}"
    );
    assert!(stderr.contains("corrupt"), "{stderr}");
    let error = stderr.lines().find(|l| l.contains("error:")).unwrap_or("");
    assert_eq!(error.matches(&piece).count(), 1, "said once: {error}");
    assert!(
        !to.exists(),
        "a failed restore left the directory it created"
    );
    archive.overwrite(&piece, original.clone());

    // A piece deleted after the backup was stored: `list` says that the backup cannot be
    // restored and starts no window from it, `prune` does not count it among the backups it
    // retains, and `restore` refuses it by name before writing anything.
    archive.remove(&piece);
    let run = wh.run(&archive, Path::new("/"), &["list", "--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&run.stdout).expect("list --json");
    let cluster = &listing["clusters"][0];
    assert_eq!(
        cluster["backups"][0]["missing_objects"],
        serde_json::json!([piece]),
        "{cluster}"
    );
    assert_eq!(
        cluster["windows"][0]["spans"],
        serde_json::json!([]),
        "{cluster}"
    );
    let run = wh.run(&archive, Path::new("/"), &["list"]);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains(&format!("cannot be restored ({piece} is missing)")),
        "{text}"
    );
    // verify names it once, as the backup's problem, not as a gap in the WAL too.
    let (code, report) = crate::verify::json_of(&wh, &archive, &["verify", "--json"]);
    assert_eq!(code, Some(1), "{report}");
    let findings = report["clusters"][0]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert!(findings[0].to_string().contains(&piece), "{report}");
    let run = wh.run(
        &archive,
        Path::new("/"),
        &["prune", "--keep-backups", "1", "--dry-run"],
    );
    let out = String::from_utf8_lossy(&run.stdout) + String::from_utf8_lossy(&run.stderr);
    assert!(
        out.contains(&format!(
            "backup {id} cannot be restored: {piece}, one of its own objects, is not in the archive"
        )),
        "{out}"
    );
    let dir = TestDir::new("missing-piece");
    let to = dir.path().join("data");
    let (code, _, stderr) = restore(&wh, &archive, &to, &["--backup", &id]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "backup {id} cannot be restored: 1 of its objects are not in the archive (the first: {piece})"
        )),
        "{stderr}"
    );
    assert!(!to.exists(), "the restore wrote something: {stderr}");
    archive.overwrite(&piece, original);

    // A WAL segment between the backup and the end of the archive.
    let segment = crate::push::key_of(system_id, &gap);
    archive.remove(&segment);
    let dir = TestDir::new("gap");
    let to = dir.path().join("data");
    let (code, _, stderr) = restore(&wh, &archive, &to, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("WAL segment {gap} is not in the archive")),
        "{stderr}"
    );
    assert!(
        !to.exists(),
        "the restore wrote something before checking the WAL"
    );
}

#[test]
fn restored_files_pass_pg_verifybackup() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = archiving_primary(&wh, &archive, "");
    pg.write_rows(2000);
    take_backup(&wh, &archive, &pg);
    let dir = TestDir::new("verified");
    // Under a parent that lets its group in, the data directory is still private, and so is
    // every file in it, walhalla's own included.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.path().join("data");
    let (code, _, stderr) = restore(&wh, &archive, &to, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for file in ["backup_manifest", "recovery.signal", "global/pg_control"] {
        let mode = std::fs::metadata(to.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    pg_verifybackup(&to, &[]);
}

/// Runs pg_verifybackup on restored directory `dir`, ignoring what restore adds (and
/// `ignored`), and asserts that it passes.
fn pg_verifybackup(dir: &Path, ignored: &[&str]) {
    let mut verify =
        crate::harness::as_pg_user(crate::harness::pg_client_bin().join("pg_verifybackup"));
    verify.arg("--no-parse-wal");
    for file in ["postgresql.auto.conf", "recovery.signal"]
        .iter()
        .chain(ignored)
    {
        verify.args(["--ignore", file]);
    }
    let verify = verify.arg(dir).output().expect("run pg_verifybackup");
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}",
        describe(&verify)
    );
}

#[test]
fn a_backup_taken_on_a_standby_restores_the_primarys_data() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let primary = primary_with_batches(&wh, &archive);
    insert_batch(&primary, "A");
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.start();
    standby.wait_replayed(&primary);
    // A standby does not switch segments: the backup waits for the primary to complete and
    // archive the one its stop position is in.
    let backup = std::thread::scope(|scope| {
        let taking = scope.spawn(|| take_backup(&wh, &archive, &standby));
        while !taking.is_finished() {
            primary.switch_wal();
            std::thread::sleep(Duration::from_millis(300));
        }
        taking.join().expect("the backup thread")
    });
    assert_eq!(backup["from_standby"], true, "{backup}");
    insert_batch(&primary, "B");
    let last = primary.switch_wal();
    primary.wait_archived(&last);
    let (batches, report) = restored_batches(&wh, &archive, &[]);
    assert_eq!(batches, "A,B");
    assert_eq!(report["backup"], backup["id"]);
}

#[test]
fn tablespaces_are_restored_where_the_map_says() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = archiving_primary(&wh, &archive, "");
    let spaces = TestDir::new("spaces");
    let location = spaces.subdir("space");
    pg.sql(&format!(
        "CREATE TABLESPACE space LOCATION '{}'",
        location.display()
    ));
    pg.sql("CREATE TABLE batches (batch text, n int) TABLESPACE space");
    insert_batch(&pg, "A");
    let oid = pg.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'space'");
    let backup = take_backup(&wh, &archive, &pg);
    let archives = backup["archives"].as_array().unwrap();
    assert!(
        archives.iter().any(|a| a["name"] == oid.as_str()),
        "{backup}"
    );
    insert_batch(&pg, "B");
    let last = pg.switch_wal();
    pg.wait_archived(&last);

    let moved = TestDir::new("moved");
    let new_location = moved.path().join("space");
    let mapping = format!("{oid}={}", new_location.display());
    let dir = TestDir::new("restored");
    let data = dir.path().join("data");
    let (code, report, stderr) = restore(&wh, &archive, &data, &["--tablespace-map", &mapping]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        report.unwrap()["tablespaces"][&oid],
        new_location.to_str().unwrap()
    );
    // Before the first start, the tablespace's files are found through pg_tblspc; only the
    // map, rewritten for the new location, differs from the manifest.
    pg_verifybackup(&data, &["tablespace_map"]);
    let restored = start_restored(&archive, dir, data);
    assert_eq!(
        restored.sql("SELECT string_agg(DISTINCT batch, ',' ORDER BY batch) FROM batches"),
        "A,B"
    );
    assert_eq!(
        restored.sql(&format!("SELECT pg_tablespace_location({oid})")),
        new_location.to_str().unwrap()
    );
}

#[test]
fn a_restore_point_on_timeline_2_is_reached_along_the_latest_timeline() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let primary = primary_with_batches(&wh, &archive);
    insert_batch(&primary, "A");
    take_backup(&wh, &archive, &primary);
    let (promoted, _) = crate::push::promoted_archiving_standby(&wh, &archive, &primary, "");
    assert_eq!(
        promoted.sql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    insert_batch(&promoted, "B");
    promoted.sql("SELECT pg_create_restore_point('on_2')");
    insert_batch(&promoted, "C");
    let last = promoted.switch_wal();
    promoted.wait_archived(&last);

    let (batches, _) = restored_batches(
        &wh,
        &archive,
        &["--target-name", "on_2", "--target-timeline", "latest"],
    );
    assert_eq!(batches, "A,B");
}

#[test]
fn a_backup_is_incomplete_and_never_restored_until_its_wal_reaches_the_archive() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    // Nothing archives this primary's WAL.
    let mut pg = PgCluster::init("primary");
    pg.start();
    pg.write_rows(100);
    let run = run_backup(&wh, &archive, &pg, "2", &[]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let meta: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    assert_eq!(meta["wal_complete"], false, "{meta}");
    assert!(meta["wal_missing"].is_string(), "{meta}");

    let listing = wh.run(&archive, Path::new("/"), &["list"]);
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("incomplete (missing"),
        "{}",
        describe(&listing)
    );
    let dir = TestDir::new("never");
    let to = dir.path().join("data");
    let (code, _, stderr) = restore(&wh, &archive, &to, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no restorable backup"), "{stderr}");
    assert!(stderr.contains("0 complete"), "{stderr}");
    assert!(!to.exists());

    // Archiving repaired: the WAL arrives late, and the backup is usable from then on.
    push_by_hand(&wh, &archive, &pg);
    let listing = wh.run(&archive, Path::new("/"), &["list"]);
    assert!(
        !String::from_utf8_lossy(&listing.stdout).contains("incomplete"),
        "{}",
        describe(&listing)
    );
    let (code, report, stderr) = restore(&wh, &archive, &to, &["--target", "immediate"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report.expect("a report")["backup"], meta["id"]);
}

/// Switches `pg`'s WAL and pushes every complete segment in its `pg_wal` into `archive`, as
/// an archive_command repaired late would.
fn push_by_hand(wh: &Walhalla, archive: &TestArchive, pg: &PgCluster) {
    let last = pg.switch_wal();
    let wal = pg.data.join("pg_wal");
    // Up to the one just completed (the later ones are recycled files, not WAL yet).
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|n| *n <= last)
        .collect();
    segments.sort();
    for segment in segments {
        let path = wal.join(&segment);
        let pushed = wh.run(archive, &pg.data, &["push", path.to_str().unwrap()]);
        assert!(pushed.status.success(), "{}", describe(&pushed));
    }
}

#[test]
fn a_backup_pruned_while_it_waits_for_its_wal_writes_no_metadata() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    // Nothing archives this primary's WAL: the first backup streams its own.
    let mut pg = PgCluster::init("primary");
    pg.start();
    pg.write_rows(100);
    let first = run_backup(&wh, &archive, &pg, "60", &["--wal", "stream"]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    std::thread::scope(|scope| {
        // The second waits for WAL that nothing archives yet.
        let second = scope.spawn(|| run_backup(&wh, &archive, &pg, "60", &[]));
        let manifests = |archive: &TestArchive| {
            let keys = archive.keys();
            let found: Vec<String> = keys
                .into_iter()
                .filter(|k| k.ends_with("/backup_manifest.zst"))
                .collect();
            (found.len() == 2).then_some(found)
        };
        wait_for(
            "the second backup's manifest",
            Duration::from_secs(60),
            || manifests(&archive),
        );
        std::thread::sleep(Duration::from_millis(500));
        // An operator sure that no backup runs.
        let pruned = wh.run(
            &archive,
            Path::new("/"),
            &[
                "prune",
                "--keep-backups",
                "1",
                "--assume-interrupted",
                "--json",
            ],
        );
        assert_eq!(pruned.status.code(), Some(0), "{}", describe(&pruned));
        let report: serde_json::Value = serde_json::from_slice(&pruned.stdout).unwrap();
        assert_eq!(
            report["deleted_backups"][0]["why"], "interrupted, as --assume-interrupted says",
            "{report}"
        );
        push_by_hand(&wh, &archive, &pg);
        let second = second.join().expect("the backup's thread");
        assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("no longer in the archive") && stderr.contains("--assume-interrupted"),
            "{stderr}"
        );
    });
    // Nothing of the second looks restorable.
    let metas: Vec<String> = archive
        .keys()
        .into_iter()
        .filter(|k| k.ends_with("/backup.json.zst"))
        .collect();
    assert_eq!(metas.len(), 1, "{metas:?}");
    assert!(metas[0].contains(first["id"].as_str().unwrap()));
}

#[test]
fn a_backup_streams_its_own_wal_when_nothing_archives_it() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    // Nothing archives this primary's WAL, and it keeps none for anyone: only the backup's
    // temporary slot can hold the WAL the backup needs.
    let mut pg = PgCluster::init("primary");
    pg.append_conf("wal_keep_size = 0");
    pg.start();
    pg.sql("CREATE TABLE batches (batch text, n int)");
    insert_batch(&pg, "A");
    // A backup killed two hours ago left its stream's spool in the state directory.
    let state = TestDir::new("state");
    state.subdir("walhalla");
    let killed = state.subdir(&format!(
        "walhalla/backup-{}-20200101T000000Z",
        pg.system_id()
    ));
    let wal = killed.join("000000010000000000000002");
    std::fs::write(&wal, b"WAL").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for path in [&wal, &killed] {
        let file = std::fs::File::open(path).unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    let conninfo = pg.conninfo();
    let run = crate::harness::as_pg_user(wh.path())
        .env("XDG_STATE_HOME", state.path())
        .envs(archive.env())
        .args([
            "--archive",
            archive.url(),
            "backup",
            "-d",
            &conninfo,
            "--fast",
            "--json",
        ])
        .args(["--wal-timeout", "60", "--wal", "stream"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let backup: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    assert_eq!(backup["wal_complete"], true, "{backup}");
    // Its own spool went with it, and the killed one's too.
    let left: Vec<_> = std::fs::read_dir(state.path().join("walhalla"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The temporary slot went with the backup's stream.
    assert_eq!(pg.sql("SELECT count(*) FROM pg_replication_slots"), "0");
    insert_batch(&pg, "B");

    let (batches, report) = restored_batches(&wh, &archive, &["--target", "immediate"]);
    assert_eq!(batches, "A");
    assert_eq!(report["backup"], backup["id"]);
}

#[test]
fn a_backup_that_fails_leaves_no_folder_behind() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    // The server refuses a label longer than MAXPGPATH, after the id is reserved.
    let label = "x".repeat(2000);
    let run = run_backup(&wh, &archive, &pg, "60", &["--label", &label]);
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    let left: Vec<String> = (archive.keys().into_iter())
        .filter(|key| key.contains("/backups/"))
        .collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
}

#[test]
fn a_backup_the_server_compressed_restores() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    insert_batch(&pg, "A");
    let major: u32 = pg.sql("SHOW server_version_num").parse::<u32>().unwrap() / 10000;
    let run = run_backup(&wh, &archive, &pg, "60", &["--server-compression"]);
    if major < 15 {
        assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("needs PostgreSQL 15 or later"), "{stderr}");
        return;
    }
    let stderr = String::from_utf8_lossy(&run.stderr);
    if stderr.contains("does not support compression with ZSTD") {
        // A server built without zstd (the embedded binaries of some majors): the error
        // says what to do instead.
        assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
        assert!(
            stderr.contains("leave out --server-compression"),
            "{stderr}"
        );
        return;
    }
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let backup: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    assert_eq!(backup["format"], 2, "{backup}");
    let base = &backup["archives"][0];
    assert_eq!(base["compression"], "zstd", "{backup}");
    // What arrived is the server's zstd stream, far smaller than the tar it holds.
    let files: u64 = backup["bytes"].as_u64().unwrap();
    assert!(files < 8 << 20, "{backup}");
    // Its size is the files', by the server's manifest, not the compressed stream's: what
    // `list` shows.
    let suffix = format!(
        "backups/{}/backup_manifest.zst",
        backup["id"].as_str().unwrap()
    );
    let key = archive.keys().into_iter().find(|k| k.ends_with(&suffix));
    let manifest = archive.object(&key.expect("the manifest")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&walhalla::envelope::decode(&manifest).unwrap()).unwrap();
    let sizes: u64 = (manifest["Files"].as_array().unwrap().iter())
        .map(|f| f["Size"].as_u64().unwrap())
        .sum();
    assert!(sizes > files, "{sizes} {backup}");
    assert_eq!(backup["data_bytes"], sizes, "{backup}");
    let listing = wh.run(&archive, Path::new("/"), &["list"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    let row = listing
        .lines()
        .find(|l| l.contains(backup["id"].as_str().unwrap()));
    let columns: Vec<&str> = row.expect("the backup's row").split_whitespace().collect();
    // BACKUP, STOPPED, START LSN, STOP LSN, TLI, SIZE MiB, STORED MiB.
    assert_eq!(columns[5], (sizes >> 20).to_string(), "{listing}");
    insert_batch(&pg, "B");
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    let (batches, report) = restored_batches(&wh, &archive, &[]);
    assert_eq!(batches, "A,B");
    assert_eq!(report["backup"], backup["id"]);
}

#[test]
fn the_time_index_names_a_restore_point_where_postgresql_made_it() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    insert_batch(&pg, "A");
    let point = pg.sql("SELECT pg_create_restore_point('indexed')");
    let segment = pg.sql(&format!("SELECT pg_walfile_name('{point}')"));
    insert_batch(&pg, "B");
    let last = pg.switch_wal();
    // PostgreSQL counts a segment archived once push returned, index stored.
    pg.wait_archived(&last);

    let name = match segment.parse() {
        Ok(walhalla::wal::WalFileName::Segment(s)) => s,
        other => panic!("{segment}: {other:?}"),
    };
    let system_id = walhalla::wal::SystemId(pg.system_id());
    let key = walhalla::archive::index_key(&Default::default(), system_id, name).to_string();
    let object = archive
        .object(&key)
        .unwrap_or_else(|| panic!("no {key}: {:?}", archive.keys()));
    let index: serde_json::Value =
        serde_json::from_slice(&walhalla::envelope::decode(&object).unwrap()).unwrap();
    assert_eq!(index["segment"], segment.as_str(), "{index}");
    let points = index["restore_points"].as_array().unwrap();
    assert!(
        points
            .iter()
            .any(|p| p["name"] == "indexed" && p["lsn"] == point.as_str()),
        "{point}: {index:#}"
    );
    assert!(index["commits"].as_u64().unwrap() >= 2, "{index:#}");
}

#[test]
fn a_restore_point_chooses_the_newest_backup_before_it() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    let mut backups = Vec::new();
    for batch in ["A", "B", "C"] {
        backups.push(take_backup(&wh, &archive, &pg));
        insert_batch(&pg, batch);
        if batch == "A" {
            pg.sql("SELECT pg_create_restore_point('after_a')");
        }
        // Backup ids are per second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last);

    // Without the index, the newest backup: PostgreSQL would never meet the restore point.
    let (batches, report) = restored_batches(&wh, &archive, &["--target-name", "after_a"]);
    assert_eq!(batches, "A");
    assert_eq!(report["backup"], backups[0]["id"], "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("time index"),
        "{report}"
    );

    // A name no segment holds, a time past the last commit, and a position in the unused
    // rest of the last segment after its switch: refused, nothing written.
    let size: u64 = pg
        .sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .parse()
        .unwrap();
    let part = |range: std::ops::Range<usize>| u64::from_str_radix(&last[range], 16).unwrap();
    let segno = part(8..16) * (1 << 32) / size + part(16..24);
    let unused = (segno + 1) * size - 1;
    let unused = format!("{:X}/{:X}", unused >> 32, unused & 0xFFFF_FFFF);
    for (args, refusal) in [
        (
            ["--target-name", "never_made"],
            "holds no restore point \"never_made\" along timeline path 1 after",
        ),
        (
            ["--target-lsn", unused.as_str()],
            "so no record starts at or past",
        ),
        (
            ["--target-lsn", "FF/0"],
            "position FF/0 lies past the archive's end: recovery from backup",
        ),
        (
            ["--target-time", "2999-01-01 00:00:00+00"],
            "does not reach time 2999-01-01 00:00:00+00",
        ),
    ] {
        let dir = TestDir::new("refused");
        let to = dir.path().join("data");
        let (code, _, stderr) = restore(&wh, &archive, &to, &args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(refusal), "{args:?}: {stderr}");
        assert!(!to.exists(), "{args:?}: the restore wrote something");
    }

    // As a standby, which waits for WAL not archived yet instead of ending recovery, the same
    // targets are taken, with a warning.
    for args in [
        ["--target-name", "never_made"],
        ["--target-time", "2999-01-01 00:00:00+00"],
        ["--target-lsn", unused.as_str()],
        ["--target-lsn", "FF/0"],
    ] {
        let dir = TestDir::new("standby");
        let to = dir.path().join("data");
        let standby: Vec<&str> = args.iter().copied().chain(["--standby"]).collect();
        let (code, _, stderr) = restore(&wh, &archive, &to, &standby);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.contains("a standby waits"), "{args:?}: {stderr}");
        assert!(to.join("standby.signal").exists(), "{args:?}");
    }

    // Just after a failover, timeline 2's history is archived but none of its segments: a
    // target on it lies past the archive's end too, refused, or taken as a standby (which
    // streams the rest from the new primary).
    let switch = (segno + 1) * size + 0x1000;
    let history = format!(
        "1\t{:X}/{:X}\tno recovery target specified\n",
        switch >> 32,
        switch & 0xFFFF_FFFF
    );
    let history_key = crate::push::key_of(pg.system_id(), "00000002.history");
    let encoded = walhalla::envelope::Encoder::new(1, 1)
        .unwrap()
        .encode(history.as_bytes())
        .unwrap();
    archive.overwrite(&history_key, encoded);
    let dir = TestDir::new("failover");
    let (code, _, stderr) = restore(
        &wh,
        &archive,
        &dir.path().join("a"),
        &["--target-lsn", "FF/0"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("would need WAL of timeline 2, which has no segment archived yet"),
        "{stderr}"
    );
    let args = ["--target-lsn", "FF/0", "--standby"];
    let (code, _, stderr) = restore(&wh, &archive, &dir.path().join("b"), &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("a standby waits"), "{stderr}");
    archive.remove(&history_key);

    // A --to mistyped as the data directory of the running primary: refused, --force or not.
    let (code, _, stderr) = restore(&wh, &archive, &pg.data, &["--force"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("running PostgreSQL server"), "{stderr}");
    assert!(pg.data.join("postmaster.pid").exists());

    // A --to mistyped as the archive itself, or a directory above it: refused, --force or
    // not, and the archive keeps every object.
    let local = std::path::PathBuf::from(archive.url());
    let keys = archive.keys();
    for to in [local.clone(), local.parent().unwrap().to_path_buf()] {
        let (code, _, stderr) = restore(&wh, &archive, &to, &["--force"]);
        assert_eq!(code, Some(1), "{}: {stderr}", to.display());
        assert!(
            stderr.contains("is, holds or lies in the archive"),
            "{stderr}"
        );
        assert_eq!(archive.keys(), keys, "{}", to.display());
    }

    // With a fetch server, restore_command asks it first, with the token file and CA given
    // (made absolute: restore_command runs in the data directory; this restore runs in /).
    let dir = TestDir::new("served");
    let to = dir.path().join("data");
    let server = [
        "--server",
        "https://127.0.0.1:9",
        "--token-file",
        "etc/token",
        "--server-ca",
        "/etc/ca.pem",
    ];
    let (code, report, stderr) = restore(&wh, &archive, &to, &server);
    assert_eq!(code, Some(0), "{stderr}");
    let report = report.unwrap();
    // The major whose binaries must start it.
    let major = pg.sql("SELECT current_setting('server_version_num')::int / 10000");
    assert_eq!(report["postgres_major"].to_string(), major, "{report:#}");
    let command = report["settings"]["restore_command"].as_str().unwrap();
    assert!(
        command.contains(
            "--server https://127.0.0.1:9 --token-file /etc/token --server-ca /etc/ca.pem %f %p"
        ),
        "{report:#}"
    );

    // Options PostgreSQL would ignore are usage errors, before anything is written; so are
    // a token file or CA with no fetch server to send them to.
    for args in [
        &["--target-action", "shutdown"][..],
        &["--target-name", "after_a", "--target-exclusive"],
        &["--token-file", "/etc/token"],
        &["--server-ca", "/etc/ca.pem"],
    ] {
        let dir = TestDir::new("ignored");
        let to = dir.path().join("data");
        let (code, _, stderr) = restore(&wh, &archive, &to, args);
        assert_eq!(code, Some(255), "{args:?}: {stderr}");
        assert!(!to.exists(), "{args:?}: the restore wrote something");
    }
    insert_batch(&pg, "E");
}
