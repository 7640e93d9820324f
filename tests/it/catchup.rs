//! A standby whose WAL the primary recycled catches up from the archive through
//! `restore_command = 'walhalla fetch %f %p'`.

use crate::harness::{Backend, PgCluster, TestArchive, Walhalla};
use crate::push::archiving_primary;

fn standby_catches_up_from_the_archive(backend: Backend) {
    let wh = Walhalla::install();
    let archive = TestArchive::new(backend);
    let primary = archiving_primary(
        &wh,
        &archive,
        "wal_keep_size = 0\nmax_wal_size = '4MB'\nmin_wal_size = '2MB'\ncheckpoint_timeout = '1h'",
    );
    primary.write_rows(1000);
    let mut standby = PgCluster::standby_of(&primary, "standby");
    standby.start();
    primary.wait_streaming_standbys(1);
    standby.stop("fast");

    // Several times max_wal_size of WAL, with checkpoints, until the segment the standby
    // needs next is gone from the primary's pg_wal.
    let needed = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    primary.churn_until_recycled(&needed);
    primary.write_rows(100);
    let last = primary.switch_wal();
    primary.wait_archived(&last);

    standby.append_conf(&format!(
        "restore_command = '{} --archive {} fetch %f %p'",
        wh.path().display(),
        archive.url()
    ));
    standby.set_env(archive.env());
    standby.start();
    standby.wait_replayed(&primary);
    assert_eq!(standby.table_fingerprint(), primary.table_fingerprint());
    let log = standby.log();
    assert!(
        log.contains(&format!("restored log file \"{needed}\" from archive")),
        "{needed} did not come from the archive"
    );
}

#[test]
fn standby_catches_up_from_the_archive_local() {
    standby_catches_up_from_the_archive(Backend::Local);
}

#[test]
fn standby_catches_up_from_the_archive_s3() {
    standby_catches_up_from_the_archive(Backend::S3);
}
