//! `walhalla prune` on real archives: what goes, what stays, and that the retained backup
//! still restores, across a promotion too.

use std::path::Path;

use crate::backup::{insert_batch, primary_with_batches, restored_batches, take_backup};
use crate::harness::{Backend, TestArchive, Walhalla, describe};
use crate::push::promoted_archiving_standby;

fn prune(wh: &Walhalla, archive: &TestArchive, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    let run = wh.run(archive, Path::new("/"), &all);
    assert_eq!(
        run.status.code(),
        Some(0),
        "prune {args:?}: {}",
        describe(&run)
    );
    serde_json::from_slice(&run.stdout).expect("prune --json prints JSON")
}

/// The segments (names) the archive holds on `timeline` ("00000001").
fn segments(archive: &TestArchive, timeline: &str) -> Vec<String> {
    archive
        .keys()
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".zst"))
        .filter(|n| n.len() == 24 && n.starts_with(timeline))
        .map(String::from)
        .collect()
}

fn backup_folders(archive: &TestArchive) -> Vec<String> {
    let mut ids: Vec<String> = archive
        .keys()
        .iter()
        .filter_map(|k| {
            k.split("/backups/")
                .nth(1)?
                .split('/')
                .next()
                .map(String::from)
        })
        .collect();
    ids.dedup();
    ids
}

fn keep_one_of_three(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let pg = primary_with_batches(&wh, &archive);
    let mut backups = Vec::new();
    for batch in ["A", "B", "C"] {
        backups.push(take_backup(&wh, &archive, &pg));
        insert_batch(&pg, batch);
        pg.switch_wal();
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    let third_start = {
        let b = &backups[2];
        let lsn: walhalla::wal::Lsn = b["start_lsn"].as_str().unwrap().parse().unwrap();
        let size =
            walhalla::wal::SegmentSize::new(b["segment_size"].as_u64().unwrap() as u32).unwrap();
        walhalla::wal::SegmentName::new(
            walhalla::wal::TimelineId(1),
            walhalla::wal::SegNo::containing(lsn, size),
            size,
        )
        .to_string()
    };

    // In a local archive, the staging files of uploads killed before they linked their
    // object (object_store's `NAME#N`): verify lists the settled one, prune removes it.
    let staged = matches!(backend, Backend::Local).then(|| leave_staging_files(&archive));
    if let Some((settled, young)) = &staged {
        let (code, report) = crate::verify::json_of(&wh, &archive, &["verify", "--json"]);
        assert_eq!(code, Some(0), "leftovers are not damage: {report}");
        let leftovers = &report["clusters"][0]["leftovers"];
        assert_eq!(leftovers.as_array().unwrap().len(), 1, "{report}");
        assert_eq!(
            leftovers[0]["path"],
            settled.display().to_string(),
            "{report}"
        );
        assert!(young.exists() && settled.exists());
    }

    let keys_before = archive.keys();
    let dry = prune(&wh, &archive, &["--keep-backups", "1", "--dry-run"]);
    assert_eq!(archive.keys(), keys_before, "--dry-run deletes nothing");
    if let Some((settled, _)) = &staged {
        assert!(settled.exists(), "--dry-run deletes nothing");
        assert_eq!(
            dry["deleted_leftovers"][0]["path"],
            settled.display().to_string(),
            "{dry}"
        );
    }
    assert_eq!(dry["deleted_backups"].as_array().unwrap().len(), 2, "{dry}");
    assert!(
        dry["deleted_objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["bytes"].as_u64().unwrap() > 0),
        "sizes: {dry}"
    );

    let before = segments(&archive, "00000001");
    let report = prune(&wh, &archive, &["--keep-backups", "1"]);
    assert_eq!(report["retained"][0]["id"], backups[2]["id"], "{report}");
    assert_eq!(
        backup_folders(&archive),
        [backups[2]["id"].as_str().unwrap()]
    );
    if let Some((settled, young)) = &staged {
        assert!(
            !settled.exists(),
            "prune removes a settled staging file: {report}"
        );
        assert!(young.exists(), "prune leaves one an upload may be writing");
        std::fs::remove_file(young).unwrap();
    }
    let after = segments(&archive, "00000001");
    for segment in &before {
        assert_eq!(
            after.contains(segment),
            segment >= &third_start,
            "{segment}: kept only from the third backup's start {third_start}"
        );
    }
    // Nothing more to do the second time.
    let again = prune(&wh, &archive, &["--keep-backups", "1"]);
    assert_eq!(again["deleted_objects"], serde_json::json!([]), "{again}");

    let (batches, report) = restored_batches(&wh, &archive, &[]);
    assert_eq!(batches, "A,B,C");
    assert_eq!(report["backup"], backups[2]["id"]);
    let verify = wh.run(&archive, Path::new("/"), &["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
}

/// Two staging files beside the first archived segment's object, as an upload killed
/// between writing and linking leaves: one not written for two hours, one just written.
fn leave_staging_files(archive: &TestArchive) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = archive
        .keys()
        .into_iter()
        .find(|k| k.contains("/wal/") && k.ends_with(".zst"))
        .expect("an archived segment");
    let object = Path::new(archive.url()).join(&key);
    let settled = std::path::PathBuf::from(format!("{}#1", object.display()));
    let young = std::path::PathBuf::from(format!("{}#2", object.display()));
    for file in [&settled, &young] {
        std::fs::write(file, b"half an upload").unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&settled)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    (settled, young)
}

#[test]
fn keep_the_newest_of_three_backups_local() {
    keep_one_of_three(Backend::Local);
}

#[test]
fn keep_the_newest_of_three_backups_s3() {
    keep_one_of_three(Backend::S3);
}

#[test]
fn a_retained_backup_on_timeline_1_still_reaches_timeline_2() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let primary = primary_with_batches(&wh, &archive);
    insert_batch(&primary, "A");
    let old = take_backup(&wh, &archive, &primary);
    insert_batch(&primary, "B");
    primary.switch_wal();
    let kept = take_backup(&wh, &archive, &primary);
    insert_batch(&primary, "C");
    let (promoted, _) = promoted_archiving_standby(&wh, &archive, &primary, "");
    insert_batch(&promoted, "D");
    let last = promoted.switch_wal();
    promoted.wait_archived(&last);

    let report = prune(&wh, &archive, &["--keep-backups", "1"]);
    assert_eq!(report["deleted_backups"][0]["id"], old["id"], "{report}");
    assert_eq!(report["retained"][0]["id"], kept["id"], "{report}");
    assert!(!segments(&archive, "00000002").is_empty());
    let (batches, restored) = restored_batches(&wh, &archive, &[]);
    assert_eq!(batches, "A,B,C,D", "{restored}");
    assert_eq!(restored["backup"], kept["id"]);
}

/// Stores `object` in backup folder `id` beside `like`'s, as a backup of another run would.
fn put_in_folder(archive: &TestArchive, like: &serde_json::Value, id: &str, object: &str) {
    let meta = format!("backups/{}/backup.json.zst", like["id"].as_str().unwrap());
    let key = archive
        .keys()
        .into_iter()
        .find(|k| k.ends_with(&meta))
        .expect("the backup's metadata");
    let folder = key.strip_suffix(&meta).unwrap();
    archive.overwrite(
        &format!("{folder}backups/{id}/{object}"),
        b"not an envelope".to_vec(),
    );
}

#[test]
fn folders_without_usable_metadata_in_prune_and_verify() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let pg = primary_with_batches(&wh, &archive);
    let older = take_backup(&wh, &archive, &pg);
    insert_batch(&pg, "A");
    let newer = take_backup(&wh, &archive, &pg);
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    let refused = |args: &[&str], expected: &str| {
        let mut all = vec!["prune", "--keep-backups", "1"];
        all.extend_from_slice(args);
        let run = wh.run(&archive, Path::new("/"), &all);
        assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    };

    // A backup killed after its first piece, newer than every complete one.
    let killed = "29990101T000000Z";
    put_in_folder(&archive, &newer, killed, "base/00000000.zst");
    refused(&[], "newer than every complete backup");
    // Nothing restorable is damaged (and a backup may still be running): verify passes.
    let verify = wh.run(&archive, Path::new("/"), &["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
    let verified: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(
        verified["clusters"][0]["backups"]["skipped"], 1,
        "{verified}"
    );
    let report = prune(
        &wh,
        &archive,
        &["--keep-backups", "1", "--assume-interrupted"],
    );
    let deleted: Vec<&str> = report["deleted_backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, [older["id"].as_str().unwrap(), killed], "{report}");
    assert_eq!(backup_folders(&archive), [newer["id"].as_str().unwrap()]);
    // The next prune, without the flag, has nothing to refuse on.
    prune(&wh, &archive, &["--keep-backups", "1"]);

    // An old backup whose metadata this walhalla cannot read: it finished, and what it needs
    // is unknown. It was deleted as interrupted before; now nothing is.
    let unreadable = "20200101T000000Z";
    put_in_folder(&archive, &newer, unreadable, "backup.json.zst");
    let keys = archive.keys();
    for flag in [&[][..], &["--assume-interrupted"]] {
        refused(
            flag,
            &format!("the metadata of backup {unreadable} cannot be read"),
        );
    }
    assert_eq!(archive.keys(), keys);
    let verify = wh.run(&archive, Path::new("/"), &["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", describe(&verify));
    let said = describe(&verify);
    assert!(
        said.contains(&format!("backups/{unreadable}/backup.json.zst")),
        "{said}"
    );
}
