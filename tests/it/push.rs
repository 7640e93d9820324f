//! `walhalla push` as PostgreSQL's archive_command, and its refusals.

use std::path::Path;

use walhalla::wal::{SystemId, WalFileName};

use crate::harness::{Backend, PgCluster, TestArchive, TestDir, Walhalla, describe};

/// The key of `name`'s object for cluster `system_id`, relative to the archive root.
pub fn key_of(system_id: u64, name: &str) -> String {
    let name: WalFileName = name.parse().expect("a WAL file name");
    walhalla::archive::object_key(&Default::default(), SystemId(system_id), &name).to_string()
}

/// A primary archiving through `walhalla push` into `archive`.
pub fn archiving_primary(wh: &Walhalla, archive: &TestArchive, extra_conf: &str) -> PgCluster {
    let mut pg = PgCluster::init("primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} --archive {} push %p'\n{extra_conf}",
        wh.path().display(),
        archive.url()
    ));
    pg.set_env(archive.env());
    pg.start();
    pg
}

/// A primary archiving into `archive` (keeping 1 GB of WAL), and the name of a segment of
/// rows it has archived.
pub fn primary_with_an_archived_segment(
    wh: &Walhalla,
    archive: &TestArchive,
) -> (PgCluster, String) {
    let primary = archiving_primary(wh, archive, "wal_keep_size = '1GB'");
    primary.write_rows(500);
    let segment = primary.switch_wal();
    primary.wait_archived(&segment);
    (primary, segment)
}

/// A standby of `primary` that archives into `archive` too (with `extra_conf`), promoted once
/// it replayed WAL past the primary's last complete segment, which is returned: the standby's
/// last timeline-1 segment is incomplete at the promotion and archived as .partial.
pub fn promoted_archiving_standby(
    wh: &Walhalla,
    archive: &TestArchive,
    primary: &PgCluster,
    extra_conf: &str,
) -> (PgCluster, String) {
    let mut standby = PgCluster::standby_of(primary, "standby");
    standby.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} --archive {} push %p'\n\
         wal_keep_size = '1GB'\n{extra_conf}",
        wh.path().display(),
        archive.url()
    ));
    standby.start();
    let last = primary.switch_wal();
    primary.wait_archived(&last);
    primary.write_rows(200);
    standby.wait_replayed(primary);
    standby.promote();
    (standby, last)
}

fn archived_files_are_identical_to_the_servers(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let pg = archiving_primary(&wh, &archive, "wal_keep_size = '1GB'");
    pg.write_rows(3000);
    pg.switch_wal();
    // A base backup makes the server archive a .backup history file too.
    let backup = TestDir::new("backup");
    pg.base_backup(&backup.path().join("copy"));
    pg.write_rows(3000);
    let last = pg.switch_wal();
    pg.wait_archived(&last);

    let stats = pg.sql("SELECT archived_count || ',' || failed_count FROM pg_stat_archiver");
    let (archived, failed) = stats.split_once(',').unwrap();
    assert!(
        archived.parse::<u32>().unwrap() >= 5,
        "archived_count {archived}"
    );
    assert_eq!(
        failed,
        "0",
        "pg_stat_archiver.failed_count\n{}",
        pg.log_tail()
    );

    let status = pg.data.join("pg_wal/archive_status");
    let mut checked = 0;
    let out = TestDir::new("out");
    for entry in std::fs::read_dir(&status).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let Some(name) = file.strip_suffix(".done") else {
            continue;
        };
        let original = pg.data.join("pg_wal").join(name);
        if !original.exists() {
            continue; // a .backup file removed by a checkpoint
        }
        let dest = out.path().join(name);
        let run = wh.run(&archive, &pg.data, &["fetch", name, dest.to_str().unwrap()]);
        assert_eq!(
            run.status.code(),
            Some(0),
            "fetch {name}: {}",
            describe(&run)
        );
        assert!(
            std::fs::read(&original).unwrap() == std::fs::read(&dest).unwrap(),
            "{name} differs"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} archived files compared");
    // Another cluster named in this data directory: refused, nothing written (helper-72: the
    // other cluster's segment reached PostgreSQL).
    let dest = out.path().join("OTHER");
    let other = ["--system-id", "123", "fetch", &last, dest.to_str().unwrap()];
    let run = wh.run(&archive, &pg.data, &other);
    assert_eq!(run.status.code(), Some(255), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr)
            .contains("names another cluster than this data directory's"),
        "{}",
        describe(&run)
    );
    assert!(!dest.exists());
    let keys = archive.keys();
    assert!(
        keys.iter().any(|k| k.ends_with(".backup.zst")),
        "no .backup archived: {keys:?}"
    );
    let sysid = pg.system_id().to_string();
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("{sysid}/"))),
        "keys outside the namespace: {keys:?}"
    );
}

#[test]
fn archived_files_are_identical_to_the_servers_local() {
    archived_files_are_identical_to_the_servers(Backend::Local);
}

#[test]
fn archived_files_are_identical_to_the_servers_s3() {
    archived_files_are_identical_to_the_servers(Backend::S3);
}

/// A cluster that does not archive, with a few closed segments in pg_wal to push by hand.
fn cluster_with_segments() -> (PgCluster, Vec<String>) {
    let mut pg = PgCluster::init("source");
    pg.append_conf("wal_keep_size = '1GB'");
    pg.start();
    let segments = (0..2)
        .map(|_| {
            pg.write_rows(500);
            pg.switch_wal()
        })
        .collect();
    (pg, segments)
}

fn duplicate_and_conflicting_pushes(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let (pg, segments) = cluster_with_segments();
    let name = &segments[0];
    let path = format!("pg_wal/{name}");
    let key = key_of(pg.system_id(), name);

    let first = wh.run(&archive, &pg.data, &["push", &path]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let stored = archive.object(&key).expect("object stored");

    let again = wh.run(&archive, &pg.data, &["push", &path]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "identical re-push: {}",
        describe(&again)
    );
    assert_eq!(archive.object(&key).unwrap(), stored);

    // Same name, one byte different in the zeros past the switch, so that its records still
    // check: a split brain's version.
    let other = TestDir::new("other");
    let mut bytes = std::fs::read(pg.data.join(&path)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    let forged = other.path().join(name);
    std::fs::write(&forged, bytes).unwrap();
    let conflict = wh.run(&archive, &pg.data, &["push", forged.to_str().unwrap()]);
    let code = conflict.status.code().unwrap();
    assert!(
        (1..=125).contains(&code),
        "conflicting push must fail retryably: {}",
        describe(&conflict)
    );
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        stderr.contains("different content") && stderr.contains(name.as_str()),
        "{stderr}"
    );
    assert_eq!(
        archive.object(&key).unwrap(),
        stored,
        "the archived object changed"
    );
}

#[test]
fn duplicate_and_conflicting_pushes_local() {
    duplicate_and_conflicting_pushes(Backend::Local);
}

#[test]
fn duplicate_and_conflicting_pushes_s3() {
    duplicate_and_conflicting_pushes(Backend::S3);
}

fn push_fails(
    wh: &Walhalla,
    archive: &TestArchive,
    cwd: &Path,
    path: &Path,
    expect_in_error: &str,
) {
    let run = wh.run(archive, cwd, &["push", path.to_str().unwrap()]);
    assert_eq!(
        run.status.code(),
        Some(1),
        "push {} should fail: {}",
        path.display(),
        describe(&run)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(expect_in_error),
        "expected {expect_in_error:?} in: {stderr}"
    );
}

#[test]
fn push_refuses_files_that_do_not_match_their_name_or_cluster() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, segments) = cluster_with_segments();
    let work = TestDir::new("work");
    let content = std::fs::read(pg.data.join("pg_wal").join(&segments[0])).unwrap();

    // A segment under the next segment's name.
    let renamed = work.path().join(&segments[1]);
    std::fs::write(&renamed, &content).unwrap();
    push_fails(&wh, &archive, &pg.data, &renamed, "first page is at");

    // Truncated, and not WAL at all.
    let truncated = work.path().join(&segments[0]);
    std::fs::write(&truncated, &content[..content.len() / 2]).unwrap();
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &truncated,
        "bytes but its page header says",
    );
    std::fs::write(&truncated, vec![7u8; content.len()]).unwrap();
    push_fails(&wh, &archive, &pg.data, &truncated, "page magic");

    // Whole, but zeros from the third page on, as a copy without fsync can be after a crash:
    // its records end early without a switch.
    let mut zeroed = content.clone();
    zeroed[2 * 8192..].fill(0);
    std::fs::write(&truncated, &zeroed).unwrap();
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &truncated,
        "its WAL ends before the segment does",
    );

    // Names PostgreSQL would never archive.
    let odd = work.path().join("not-a-wal-file");
    std::fs::write(&odd, &content).unwrap();
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &odd,
        "is not the name of a WAL segment",
    );
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &work.path().join("000000010000000000000099"),
        "read",
    );

    // A broken history file.
    let history = work.path().join("00000002.history");
    std::fs::write(&history, "not a history\n").unwrap();
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &history,
        "invalid timeline history",
    );

    // Another cluster's segment pushed from this cluster's data directory.
    let (other, other_segments) = cluster_with_segments();
    let foreign = other.data.join("pg_wal").join(&other_segments[0]);
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &foreign,
        "refusing to mix two clusters",
    );

    assert!(
        archive.keys().is_empty(),
        "something was stored: {:?}",
        archive.keys()
    );

    // A valid history file is accepted and comes back identical.
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    let ok = wh.run(&archive, &pg.data, &["push", history.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    let back = work.path().join("RECOVERYHISTORY");
    let fetched = wh.run(
        &archive,
        &pg.data,
        &["fetch", "00000002.history", back.to_str().unwrap()],
    );
    assert_eq!(fetched.status.code(), Some(0), "{}", describe(&fetched));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&history).unwrap()
    );

    // An archive directory every user may write into: stored, with a warning saying so.
    use std::os::unix::fs::PermissionsExt;
    let root = std::path::Path::new(archive.url());
    let mode = std::fs::metadata(root).unwrap().permissions().mode();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let segment = pg.data.join("pg_wal").join(&segments[0]);
    let run = wh.run(&archive, &pg.data, &["push", segment.to_str().unwrap()]);
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("may be written by every user on this host (mode 1777)"),
        "{stderr}"
    );

    // Root pushing into the archive directory of PostgreSQL's user: stored, with a warning
    // that this user cannot read what root stores.
    if crate::harness::running_as_root() {
        let segment = pg.data.join("pg_wal").join(&segments[1]);
        let run = std::process::Command::new(wh.path())
            .args(["--archive", archive.url(), "push"])
            .arg(&segment)
            .current_dir(&pg.data)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("writing as root into") && stderr.contains("run walhalla as postgres"),
            "{stderr}"
        );

        // Root fetching into PostgreSQL's directory, and checking its archive: warned that
        // the file is root's, and that the checks speak for root (helper-73 #7).
        let dest = pg.data.join("pg_wal").join("FETCHED_BY_ROOT");
        let run = std::process::Command::new(wh.path())
            .args(["--archive", archive.url(), "fetch", &segments[1]])
            .arg(&dest)
            .current_dir(&pg.data)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
        std::fs::remove_file(&dest).unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("fetching as root into") && stderr.contains("run walhalla as postgres"),
            "{stderr}"
        );
        let conninfo = format!("host=127.0.0.1 port={} user=postgres", pg.port);
        let run = std::process::Command::new(wh.path())
            .args(["--archive", archive.url(), "check", "-d", &conninfo])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("checking as root an archive that belongs to postgres"),
            "{}",
            describe(&run)
        );
    }
}

/// A cascading standby with `archive_mode = always` whose upstream is promoted archives its
/// old timeline's last segment under the segment's own name (walreceiver.c), with WAL up to
/// the switch point only. push takes it, the new timeline's history telling why it ends early;
/// archiving does not stall on it.
#[test]
fn a_standby_archiving_always_archives_the_segment_its_upstream_switched_timeline_in() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, standby1, mut standby2) = PgCluster::cascade();
    standby2.append_conf(&format!(
        "archive_mode = always\narchive_command = '{} --archive {} push %p'",
        wh.path().display(),
        archive.url()
    ));
    standby2.set_env(archive.env());
    standby2.start();
    primary.write_rows(300);
    let switched_in = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    standby1.wait_replayed(&primary);
    standby2.wait_replayed(&primary);

    primary.stop("fast");
    promote_and_wait_for_the_cascaded_archiver(&standby1, &standby2);
    let id = standby2.system_id();
    assert!(
        archive.object(&key_of(id, &switched_in)).is_some(),
        "{switched_in} is not in the archive: {:?}",
        archive.keys()
    );
}

/// The same, when the old primary had completed and archived that segment whole: its
/// upstream had stopped inside it while the primary wrote on. The standby's copy, cut at the
/// switch point, is the same WAL up to there: taken as archived, not a conflict that stops
/// its archiver for good (helper-72: `failed_count` grew, pg_wal filled). The archive keeps
/// the primary's copy.
#[test]
fn a_standby_archiving_always_is_not_stuck_on_the_old_primarys_whole_copy_of_the_fork() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (mut primary, mut standby1, mut standby2) = PgCluster::cascade();
    let archiving = format!(
        "archive_command = '{} --archive {} push %p'",
        wh.path().display(),
        archive.url()
    );
    primary.append_conf(&format!("archive_mode = on\n{archiving}"));
    primary.set_env(archive.env());
    primary.stop("fast");
    primary.start();
    standby2.append_conf(&format!("archive_mode = always\n{archiving}"));
    standby2.set_env(archive.env());
    standby2.start();
    primary.write_rows(300);
    standby1.wait_replayed(&primary);
    standby2.wait_replayed(&primary);

    // The upstream stops inside a segment; the primary writes on, completes and archives it.
    standby1.stop("immediate");
    let fork_in = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    primary.write_rows(300);
    let whole = primary.switch_wal();
    assert_eq!(whole, fork_in, "the rows fit in the segment");
    primary.wait_archived(&whole);
    let id = primary.system_id();
    let stored = archive
        .object(&key_of(id, &whole))
        .expect("the primary's copy");
    primary.stop("immediate");

    standby1.start();
    promote_and_wait_for_the_cascaded_archiver(&standby1, &standby2);
    assert_eq!(archive.object(&key_of(id, &whole)), Some(stored));
}

/// Promotes `upstream`, completes a segment on its new timeline, and waits until `standby`,
/// which streams from it with `archive_mode = always`, has archived that segment with no
/// failed attempt.
fn promote_and_wait_for_the_cascaded_archiver(upstream: &PgCluster, standby: &PgCluster) {
    upstream.promote();
    upstream.write_rows(300);
    let after = upstream.switch_wal();
    assert!(after.starts_with("00000002"), "{after}");
    standby.wait_archived(&after);
    assert_eq!(standby.archive_failures(), 0, "{}", standby.log());
}

/// `content` with every WAL page's magic replaced by `magic`.
fn with_page_magic(content: &[u8], magic: u16) -> Vec<u8> {
    let mut patched = content.to_vec();
    for page in patched.chunks_mut(8192) {
        page[..2].copy_from_slice(&magic.to_le_bytes());
    }
    patched
}

#[test]
fn push_refuses_wal_and_data_directories_of_unsupported_versions() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, segments) = cluster_with_segments();
    let work = TestDir::new("work");
    let content = std::fs::read(pg.data.join("pg_wal").join(&segments[0])).unwrap();
    let segment = work.path().join(&segments[0]);

    // 0xD11A is no release yet: a future one, not something to store on trust.
    std::fs::write(&segment, with_page_magic(&content, 0xD11A)).unwrap();
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &segment,
        "page magic 0xD11A is from a PostgreSQL release newer than 18; \
         walhalla supports PostgreSQL 13 to 18",
    );
    // PostgreSQL 12's magic.
    std::fs::write(&segment, with_page_magic(&content, 0xD101)).unwrap();
    push_fails(
        &wh,
        &archive,
        &pg.data,
        &segment,
        "page magic 0xD101 is from a PostgreSQL release older than 13",
    );

    // A data directory whose pg_control is a newer release's.
    let data = work.subdir("data");
    std::fs::create_dir_all(data.join("global")).unwrap();
    let mut control = std::fs::read(pg.data.join("global/pg_control")).unwrap();
    control[8..12].copy_from_slice(&1900u32.to_le_bytes());
    std::fs::write(data.join("global/pg_control"), control).unwrap();
    let history = work.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    push_fails(
        &wh,
        &archive,
        &data,
        &history,
        "pg_control version 1900 is from a PostgreSQL release newer than 18",
    );
    assert!(archive.keys().is_empty(), "stored: {:?}", archive.keys());

    // The real segment still goes in.
    std::fs::write(&segment, &content).unwrap();
    let ok = wh.run(&archive, &pg.data, &["push", segment.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
}

#[test]
fn objects_are_readable_with_stock_zstd() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, segments) = cluster_with_segments();
    let path = format!("pg_wal/{}", segments[0]);
    let run = wh.run(&archive, &pg.data, &["push", &path]);
    assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
    let object = std::path::Path::new(archive.url()).join(key_of(pg.system_id(), &segments[0]));
    assert!(
        zstd_decompress(&object) == std::fs::read(pg.data.join(&path)).unwrap(),
        "zstd -d gave other bytes"
    );

    // Content of 2 MiB or more (a 16 MiB segment) is stored as several frames, one per
    // compression thread: stock zstd must read those too.
    let work = TestDir::new("frames");
    let content: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let envelope = walhalla::envelope::Encoder::new(3, 3)
        .unwrap()
        .encode(&content)
        .unwrap();
    let multi = work.path().join("multi.zst");
    std::fs::write(&multi, envelope).unwrap();
    assert!(
        zstd_decompress(&multi) == content,
        "zstd -d misread a multi-frame object"
    );
}

fn zstd_decompress(object: &Path) -> Vec<u8> {
    let zstd = std::process::Command::new("zstd")
        .arg("-dc")
        .arg(object)
        .output()
        .expect("the zstd command is needed for this test: apt-get install zstd");
    assert!(zstd.status.success(), "zstd -d: {}", describe(&zstd));
    zstd.stdout
}

#[test]
fn settings_come_from_flags_before_or_after_the_command_then_the_environment() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let (pg, segments) = cluster_with_segments();
    let push = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = crate::harness::as_pg_user(wh.path());
        cmd.current_dir(&pg.data)
            .args(args)
            .envs(env.iter().copied());
        cmd.output().unwrap()
    };
    let first = format!("pg_wal/{}", segments[0]);
    let run = push(&["push", &first, "--archive", archive.url()], &[]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "flag after the command: {}",
        describe(&run)
    );
    // The flag wins over the environment.
    let run = push(
        &["--archive", archive.url(), "push", &first],
        &[("WALHALLA_ARCHIVE", "/nonexistent/elsewhere")],
    );
    assert_eq!(
        run.status.code(),
        Some(0),
        "flag over environment: {}",
        describe(&run)
    );
    // The environment alone.
    let second = format!("pg_wal/{}", segments[1]);
    let run = push(&["push", &second], &[("WALHALLA_ARCHIVE", archive.url())]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "environment: {}",
        describe(&run)
    );
    let keys = archive.keys();
    let segments = keys.iter().filter(|k| k.contains("/wal/")).count();
    assert_eq!(segments, 2, "{keys:?}");
    assert!(!std::path::Path::new("/nonexistent/elsewhere").exists());
}

#[test]
fn a_promotion_archives_the_history_and_partial_files() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let primary = archiving_primary(&wh, &archive, "wal_keep_size = '1GB'");
    primary.write_rows(1000);
    let restore = format!(
        "restore_command = '{} --archive {} fetch %f %p'",
        wh.path().display(),
        archive.url()
    );
    let (standby, _) = promoted_archiving_standby(&wh, &archive, &primary, &restore);
    standby.write_rows(500);
    let first_on_2 = standby.switch_wal();
    assert!(first_on_2.starts_with("00000002"), "{first_on_2}");
    standby.wait_archived(&first_on_2);
    assert_eq!(standby.archive_failures(), 0, "{}", standby.log_tail());

    let sysid = standby.system_id();
    let out = TestDir::new("out");
    for name in ["00000002.history", first_on_2.as_str()] {
        let dest = out.path().join(name);
        let run = wh.run(
            &archive,
            &standby.data,
            &["fetch", name, dest.to_str().unwrap()],
        );
        assert_eq!(
            run.status.code(),
            Some(0),
            "fetch {name}: {}",
            describe(&run)
        );
        assert!(
            std::fs::read(&dest).unwrap()
                == std::fs::read(standby.data.join("pg_wal").join(name)).unwrap(),
            "{name} differs"
        );
    }
    let keys = archive.keys();
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{sysid}/wal/0000000100000000/"))
                && k.ends_with(".partial.zst")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&key_of(sysid, "00000002.history")),
        "{keys:?}"
    );
}

#[test]
fn a_hung_store_fails_the_push_at_the_deadline() {
    let wh = Walhalla::install();
    let (pg, segments) = cluster_with_segments();
    // A listener that completes TCP handshakes (the kernel's backlog) but never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let mut cmd = crate::harness::as_pg_user(wh.path());
    cmd.current_dir(&pg.data)
        .args(["--archive", "s3://bucket/prefix", "--timeout", "3", "push"])
        .arg(format!("pg_wal/{}", segments[0]))
        .envs(crate::harness::S3Server::env_for(&endpoint));
    let started = std::time::Instant::now();
    let run = cmd.output().unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", describe(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no answer within 3s"),
        "{}",
        describe(&run)
    );
    // Bounded, not merely eventually: the archiver must get its answer near the deadline.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    drop(hung);
}
