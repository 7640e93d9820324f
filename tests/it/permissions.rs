//! What walhalla creates grants nothing to other users, whatever the umask it inherits: files
//! 0600 and directories 0700, or 0640 and 0750 where the tree they go in grants its group
//! access (as PostgreSQL does with `initdb -g`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::harness::{
    PgCluster, Receiver, TestArchive, TestDir, Walhalla, as_pg_user, describe, wait_for,
};
use crate::push::key_of;

/// Every path under `root` (itself included) with its permission bits.
fn modes(root: &Path) -> Vec<(String, u32, bool)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                pending.push(entry.expect("entry").path());
            }
        }
        found.push((
            path.display().to_string(),
            meta.permissions().mode() & 0o7777,
            meta.is_dir(),
        ));
    }
    found
}

/// Nothing under `root` grants other users any access; files have `file_mode` and
/// directories `dir_mode` exactly. Returns how many files it checked.
fn assert_private(root: &Path, file_mode: u32, dir_mode: u32) -> usize {
    let found = modes(root);
    for (path, mode, is_dir) in &found {
        assert_eq!(mode & 0o007, 0, "{path} grants others access: {mode:04o}");
        let expected = if *is_dir { dir_mode } else { file_mode };
        assert_eq!(
            *mode, expected,
            "{path}: {mode:04o}, expected {expected:04o}"
        );
    }
    found.iter().filter(|(_, _, is_dir)| !is_dir).count()
}

#[test]
fn receive_and_push_under_umask_022_create_nothing_others_can_read() {
    let wh = Walhalla::install();
    let mut pg = PgCluster::init("primary");
    pg.append_conf("wal_keep_size = '1GB'");
    pg.start();

    // The receiver: archive and spool both created by walhalla, in a directory that keeps
    // its group out (0700), under umask 022.
    let (archive, parent) = TestArchive::uncreated_local("new/archive");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let archive_root = parent.join("new");
    let spool = parent.join("spool");
    let mut receiver = Receiver::start_with_umask(
        &wh,
        &archive,
        &spool,
        0o022,
        &[
            "-d",
            &pg.conninfo(),
            "-S",
            "walhalla",
            "--create-slot",
            "--partial-interval",
            "1",
        ],
    );
    crate::receive::wait_streaming(&pg);
    pg.write_rows(500);
    let received = pg.switch_wal();
    let id = pg.system_id();
    wait_for(
        &format!("the receiver to archive {received}"),
        Duration::from_secs(60),
        || archive.object(&key_of(id, &received)).map(|_| ()),
    );
    // A snapshot of the segment being filled, too.
    pg.write_rows(100);
    wait_for("a snapshot", Duration::from_secs(60), || {
        modes(&archive_root)
            .iter()
            .any(|(path, _, _)| path.contains(".partial."))
            .then_some(())
    });
    assert!(receiver.stop().success(), "{}", receiver.log());
    let objects = assert_private(&archive_root, 0o600, 0o700);
    assert!(objects >= 2, "only {objects} files in the archive");
    assert!(assert_private(&spool, 0o600, 0o700) >= 1, "an empty spool");
    assert!(!receiver.log().contains("accessible to other users"));

    // A spool an older version left open to others is not changed, but said so.
    let old = TestDir::new("old");
    let open_spool = old.subdir("spool");
    std::fs::set_permissions(&open_spool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let receiver = Receiver::start_with_umask(
        &wh,
        &archive,
        &open_spool,
        0o022,
        &["-d", &pg.conninfo(), "-S", "walhalla"],
    );
    wait_for(
        "the warning about the spool",
        Duration::from_secs(60),
        || {
            receiver
                .log()
                .contains(&format!(
                    "spool {} is accessible to other users",
                    open_spool.display()
                ))
                .then_some(())
        },
    );
    drop(receiver);

    // push, as PostgreSQL runs it but under umask 022, into an archive it creates in a
    // directory whose group may read (0755): 0640 and 0750.
    let fresh = TestDir::new("push-archive");
    let push_root = fresh.path().join("made/by/push");
    let segment = pg.data.join("pg_wal").join(&received);
    let output = as_pg_user("sh")
        .current_dir(&pg.data)
        .args(["-c", "umask 022; exec \"$0\" \"$@\""])
        .arg(wh.path())
        .arg("--archive")
        .arg(&push_root)
        .arg("push")
        .arg(&segment)
        .output()
        .expect("run walhalla push");
    assert!(output.status.success(), "push: {}", describe(&output));
    // The segment and its time index.
    assert_eq!(assert_private(&fresh.path().join("made"), 0o640, 0o750), 2);
}
