//! Names walhalla did not write, at every level of an archive (cluster folders, `wal/` groups,
//! objects in a group, `timelines/`), are ignored: `push`, `fetch`, `receive` and `/status`
//! keep working, on a local directory and on S3.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::harness::server::{status, wait_until_listening};
use crate::harness::{
    Backend, PgCluster, Receiver, Server, TestArchive, TestDir, Walhalla, describe, free_port,
    running_as_root, wait_for,
};
use crate::push::{archiving_primary, key_of};

/// 16 bytes, not ASCII, and byte 8 falls inside a character: a group name's length, which
/// a parser slicing bytes would cut in the middle of a character.
const NON_ASCII_16_BYTES: &str = "0\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}1";

/// Folders (ending in `/`) and files walhalla never writes, relative to a cluster's folder
/// (`..` reaches the archive's root).
fn foreign_names() -> Vec<String> {
    assert_eq!(NON_ASCII_16_BYTES.len(), 16);
    [
        format!("wal/{NON_ASCII_16_BYTES}/"),
        format!("wal/{NON_ASCII_16_BYTES}/000000010000000000000063.zst"),
        "wal/00000001/".into(),
        "wal/000000010000000G/".into(),
        "wal/stray.txt".into(),
        "wal/0000000100000000/stray".into(),
        "wal/0000000100000000/000000010000000000000001.zst.old".into(),
        "wal/0000000100000000/00000002000000000000FFFF.zst".into(),
        "timelines/stray".into(),
        "notes".into(),
        "../not-a-cluster/".into(),
        "../00123/".into(),
        "../README".into(),
    ]
    .into_iter()
    .collect()
}

/// Puts the foreign names into a local archive, plus a name that is not valid Unicode in
/// `wal/` and in the group; everything handed to the PostgreSQL user, who runs `push`.
fn add_foreign_names_locally(archive_root: &Path, id: u64) {
    let cluster = archive_root.join(id.to_string());
    for name in foreign_names() {
        let path = cluster.join(&name);
        if name.ends_with('/') {
            std::fs::create_dir_all(&path).expect("create a foreign folder");
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).expect("create its folder");
            std::fs::write(&path, b"not walhalla's").expect("write a foreign file");
        }
    }
    let latin1 = OsStr::from_bytes(b"caf\xe9-0000000100000000");
    std::fs::write(cluster.join("wal").join(latin1), b"x").expect("write a Latin-1 name");
    std::fs::create_dir_all(cluster.join("wal/0000000100000000").join(latin1))
        .expect("create a Latin-1 folder");
    if running_as_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(archive_root)
            .status()
            .expect("run chown");
        assert!(status.success());
    }
}

/// Waits until `/status` on `port` lists `segment` as the archive's newest on timeline 1,
/// without an archive error.
fn wait_status_shows(port: u16, segment: &str) {
    wait_for(
        &format!("/status to show {segment} as the newest segment"),
        Duration::from_secs(60),
        || {
            let json = status(port);
            assert_eq!(
                json["archive"]["listing_error"],
                serde_json::Value::Null,
                "{json}"
            );
            (json["archive"]["newest_segments"][0] == segment).then_some(())
        },
    );
}

/// `walhalla fetch NAME` as the PostgreSQL user, in a directory without `pg_control`, so
/// the cluster is found by listing the archive; returns the output and the fetched bytes.
fn fetch(
    wh: &Walhalla,
    archive: &TestArchive,
    name: &str,
    extra: &[&str],
) -> (std::process::Output, Option<Vec<u8>>) {
    let dir = TestDir::new("fetch");
    let dest = dir.path().join("RESTORED");
    let dest_arg = dest.display().to_string();
    let mut args = vec!["fetch"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[name, &dest_arg]);
    let output = wh.run(archive, dir.path(), &args);
    (output, std::fs::read(&dest).ok())
}

/// Fetching `segment` gives the bytes PostgreSQL has in pg_wal; a segment nobody archived is
/// "not found" (exit 1), not an error.
fn assert_fetch_works(wh: &Walhalla, archive: &TestArchive, pg: &PgCluster, segment: &str) {
    let (output, bytes) = fetch(wh, archive, segment, &[]);
    assert!(output.status.success(), "fetch: {}", describe(&output));
    let original = std::fs::read(pg.data.join("pg_wal").join(segment)).expect("read pg_wal");
    assert!(bytes == Some(original), "fetched bytes differ from pg_wal");
    let (output, _) = fetch(wh, archive, "0000000100000000000000F0", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
}

/// Writes, switches to a new segment and waits until PostgreSQL's archiver has pushed the
/// one it closed, which is returned.
fn archive_one_more(pg: &PgCluster) -> String {
    pg.write_rows(500);
    let last = pg.switch_wal();
    pg.wait_archived(&last);
    last
}

/// A primary archiving through `push` into a new archive on `backend`, keeping its WAL, with
/// a first segment archived; and its system identifier.
fn archiving(backend: Backend) -> (Walhalla, TestArchive, PgCluster, u64) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let pg = archiving_primary(&wh, &archive, "wal_keep_size = '1GB'");
    let id = pg.system_id();
    archive_one_more(&pg);
    (wh, archive, pg, id)
}

#[test]
fn push_fetch_receive_and_status_ignore_foreign_names_in_a_local_archive() {
    let (wh, archive, pg, id) = archiving(Backend::Local);
    add_foreign_names_locally(Path::new(archive.url()), id);

    // push: PostgreSQL's archiver goes on without a failure.
    let pushed = archive_one_more(&pg);
    assert_eq!(pg.archive_failures(), 0, "{}", pg.log_tail());
    assert!(archive.object(&key_of(id, &pushed)).is_some());

    // serve: /status lists wal/ and its groups (the cluster named, so that the listing of
    // the archive's root is left to fetch).
    let server = Server::start(&wh, &archive, &["--system-id", &id.to_string()]);
    wait_status_shows(server.port, &pushed);

    // fetch, with the cluster found by listing the archive's root.
    assert_fetch_works(&wh, &archive, &pg, &pushed);

    // receive: starts after the archive's newest segment (a listing of wal/), streams, and
    // archives; /status of its own server shows it. The archiver stops pushing first: the
    // receiver, run as another user, is the only writer from now on.
    pg.sql("ALTER SYSTEM SET archive_command = 'true'");
    pg.sql("SELECT pg_reload_conf()");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let receiver = Receiver::on_slot(
        &wh,
        &archive,
        &pg.conninfo(),
        &["--listen", &listen, "--partial-interval", "1"],
    );
    wait_until_listening(port);
    crate::receive::wait_streaming(&pg);
    pg.write_rows(500);
    let received = pg.switch_wal();
    wait_for(
        &format!("the receiver to archive {received}"),
        Duration::from_secs(60),
        || archive.object(&key_of(id, &received)).map(|_| ()),
    );
    wait_status_shows(port, &received);
    wait_status_shows(server.port, &received);
    assert_fetch_works(&wh, &archive, &pg, &received);

    // fetch --partial lists the group for the receiver's snapshots of the segment being
    // filled, among the foreign names there.
    pg.write_rows(100);
    let filling = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    wait_for(
        &format!("a snapshot of {filling} to be fetched"),
        Duration::from_secs(60),
        || {
            let (output, bytes) = fetch(&wh, &archive, &filling, &["--partial"]);
            output.status.success().then_some(bytes)
        },
    )
    .expect("the snapshot's bytes");
    drop(receiver);
    drop(server);
}

#[test]
fn push_fetch_and_status_ignore_foreign_keys_on_s3() {
    let (wh, archive, pg, id) = archiving(Backend::S3);
    for name in foreign_names() {
        // S3 has no folders: a folder exists while a key lies under it.
        let key = match name.strip_suffix('/') {
            Some(folder) => format!("{id}/{folder}/object"),
            None => format!("{id}/{name}"),
        };
        let key = key.replace(&format!("{id}/../"), "");
        archive.overwrite(&key, b"not walhalla's".to_vec());
    }
    let pushed = archive_one_more(&pg);
    assert_eq!(pg.archive_failures(), 0);
    let server = Server::start(&wh, &archive, &["--system-id", &id.to_string()]);
    wait_status_shows(server.port, &pushed);
    assert_fetch_works(&wh, &archive, &pg, &pushed);
}
