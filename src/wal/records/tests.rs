//! Tests on real WAL from PostgreSQL 15 (Debian's 15.x binaries), `initdb --wal-segsize=1`,
//! `track_commit_timestamp = on`, `max_prepared_transactions = 4`. The workload, in one run
//! (testdata/pg15-wal-records.sh):
//!
//! ```text
//! CHECKPOINT; SELECT pg_switch_wal();      -- segment 7 starts at 0/700000
//! SELECT clock_timestamp();                -- 2026-12-02 13:39:27.518976+00
//! CREATE TABLE t(id int, v text); two INSERTs (each its own commit)
//! CHECKPOINT; SET wal_compression = pglz; UPDATE t ...   -- compressed full-page image with a hole
//! BEGIN; INSERT ...; ROLLBACK
//! CREATE TABLE gone ...; INSERT ...
//! BEGIN; SAVEPOINT; INSERT; RELEASE; DROP TABLE gone; PREPARE TRANSACTION 'p1'; COMMIT PREPARED 'p1'
//! BEGIN; INSERT; PREPARE TRANSACTION 'p2'; ROLLBACK PREPARED 'p2'
//! SELECT pg_create_restore_point('before_b');      -- returned 0/735DE8
//! SELECT pg_logical_emit_message(false, 'walhalla', repeat('x', 20000));  -- spans 3 pages
//! INSERT ...
//! 20 kB messages until one crosses into segment 8 (at 0/7FF588)
//! INSERT ...; BEGIN; DELETE; ROLLBACK
//! SELECT pg_create_restore_point('after_b');       -- returned 0/8094E8
//! INSERT ...
//! SELECT clock_timestamp();                -- 2026-12-02 13:39:29.118624+00
//! SELECT pg_switch_wal();                  -- returned 0/809568
//! ```
//!
//! The expected lists below are pg_waldump's (PostgreSQL 15) output for the two archived
//! segments: every `Transaction` record that is a COMMIT, ABORT, COMMIT_PREPARED or
//! ABORT_PREPARED (its `tx`, or for the prepared ones the xid in the description; `lsn`; the
//! time), every `RESTORE_POINT`, and its record count (223 records, the one at 0/7FF588
//! crossing from segment 7 into 8). The commit times agree with `pg_xact_commit_timestamp`.

use super::scan::max_align;
use super::*;
use crate::wal::LONG_HEADER_BYTES;
use crate::wal::sample::{START_7, START_8, segment_7, segment_8};

fn time(text: &str) -> PgTimestamp {
    let at: jiff::Timestamp = text.parse().expect("test time");
    PgTimestamp(at.as_microsecond() - PgTimestamp::EPOCH_UNIX_MICROS)
}

fn xact(kind: XactKind, xid: u32, lsn: u64, len: u64, at: &str) -> XactEnd {
    XactEnd {
        kind,
        xid,
        lsn: Lsn(lsn),
        end: Lsn(max_align((lsn + len) as usize) as u64),
        time: time(at),
    }
}

/// pg_waldump's commits and aborts in segment 7 (`len` is its record length).
fn segment_7_transactions() -> Vec<XactEnd> {
    use XactKind::*;
    vec![
        xact(Commit, 724, 0x71E128, 1093, "2026-12-02T13:39:27.543700Z"),
        xact(Commit, 725, 0x71E5B0, 34, "2026-12-02T13:39:27.560453Z"),
        xact(Commit, 726, 0x71E618, 34, "2026-12-02T13:39:27.575960Z"),
        xact(Commit, 727, 0x71E7E0, 34, "2026-12-02T13:39:27.774257Z"),
        xact(Abort, 728, 0x71E850, 34, "2026-12-02T13:39:27.818010Z"),
        xact(Commit, 729, 0x735140, 405, "2026-12-02T13:39:27.833706Z"),
        xact(
            CommitPrepared,
            730,
            0x735A30,
            481,
            "2026-12-02T13:39:27.888669Z",
        ),
        xact(
            AbortPrepared,
            732,
            0x735D50,
            42,
            "2026-12-02T13:39:27.928265Z",
        ),
        xact(Commit, 733, 0x73AD30, 34, "2026-12-02T13:39:27.966981Z"),
    ]
}

fn segment_8_transactions() -> Vec<XactEnd> {
    use XactKind::*;
    vec![
        xact(Commit, 734, 0x809318, 34, "2026-12-02T13:39:29.085812Z"),
        xact(Abort, 735, 0x809458, 34, "2026-12-02T13:39:29.093001Z"),
        xact(Commit, 736, 0x809528, 34, "2026-12-02T13:39:29.106257Z"),
    ]
}

#[test]
fn segment_with_a_record_continuing_into_the_next_matches_pg_waldump() {
    let found = scan_segment(&segment_7(), START_7).unwrap();
    assert_eq!(found.transactions, segment_7_transactions());
    assert_eq!(
        found.restore_points,
        [RestorePoint {
            name: "before_b".into(),
            lsn: Lsn(0x735D80),
            end: Lsn(0x735DE8), // what pg_create_restore_point returned
            time: found.restore_points[0].time,
        }]
    );
    // 210 records start in segment 7 (pg_waldump), the last of which ends in segment 8.
    assert_eq!(found.records, 209);
    assert_eq!(
        found.end,
        ScanEnd::Continues {
            start: Lsn(0x7FF588),
            total_len: 20062,
            // A logical message.
            record: Crossing::Other,
        }
    );
    assert_eq!(found.valid_end, Lsn(0x7FF588));
    assert_eq!(
        found.xact_time_range(),
        Some((
            time("2026-12-02T13:39:27.543700Z"),
            time("2026-12-02T13:39:27.966981Z")
        ))
    );
    let (before, after) = (
        time("2026-12-02T13:39:27.518976Z"),
        time("2026-12-02T13:39:29.118624Z"),
    );
    let (first, last) = found.xact_time_range().unwrap();
    assert!(before < first && last < after);
    // pg_waldump does not print a restore point's time: it falls between its neighbours'.
    let rp_time = found.restore_points[0].time;
    assert!(segment_7_transactions()[7].time < rp_time, "{rp_time:?}");
    assert!(rp_time < segment_7_transactions()[8].time, "{rp_time:?}");
}

#[test]
fn segment_starting_with_a_continuation_and_ending_in_a_switch_matches_pg_waldump() {
    let found = scan_segment(&segment_8(), START_8).unwrap();
    assert_eq!(found.transactions, segment_8_transactions());
    let names: Vec<_> = found
        .restore_points
        .iter()
        .map(|r| (r.name.as_str(), r.lsn, r.end))
        .collect();
    assert_eq!(names, [("after_b", Lsn(0x809480), Lsn(0x8094E8))]);
    assert_eq!(found.records, 13);
    assert_eq!(found.end, ScanEnd::Switch);
    assert_eq!(found.valid_end, Lsn(0x809568)); // what pg_switch_wal returned
    // pg_waldump does not print a restore point's time: it falls between its neighbours'.
    let rp_time = found.restore_points[0].time;
    assert!(segment_8_transactions()[1].time < rp_time, "{rp_time:?}");
    assert!(rp_time < segment_8_transactions()[2].time, "{rp_time:?}");
    assert_eq!(
        rp_time.to_timestamp().unwrap().to_string(),
        "2026-12-02T13:39:29.099652Z"
    );
}

#[test]
fn a_flipped_byte_ends_the_valid_wal_at_its_record() {
    let good = segment_7();
    // In commit 729's xact_time (one page), then in the 20 kB message's second page.
    for (record, flip) in [(0x735140usize, 0x735140 + 30), (0x735DE8, 0x737000)] {
        let mut bad = good.clone();
        bad[flip - START_7.0 as usize] ^= 0x10;
        let found = scan_segment(&bad, START_7).unwrap();
        assert!(
            matches!(
                found.end,
                ScanEnd::Invalid { at, problem: InvalidWal::Crc { .. } } if at == Lsn(record as u64)
            ),
            "{:?}",
            found.end
        );
        assert_eq!(found.valid_end, Lsn(record as u64));
        let expected: Vec<_> = segment_7_transactions()
            .into_iter()
            .filter(|t| t.lsn.0 < record as u64)
            .collect();
        assert_eq!(found.transactions, expected);
    }
}

#[test]
fn damaged_page_headers_end_the_valid_wal() {
    let good = segment_7();
    let page = |lsn: usize| lsn - START_7.0 as usize;
    // The 20 kB message at 0/735DE8 continues on the page at 0/736000: its remaining length.
    let mut bad = good.clone();
    bad[page(0x736000) + 16] ^= 0x01;
    let found = scan_segment(&bad, START_7).unwrap();
    assert!(matches!(
        found.end,
        ScanEnd::Invalid {
            at: Lsn(0x736000),
            problem: InvalidWal::ContinuationLength { .. }
        }
    ));
    assert_eq!(found.valid_end, Lsn(0x735DE8));
    // A page from another place in the WAL (as in a recycled segment).
    let mut bad = good.clone();
    bad[page(0x736000) + 9] ^= 0x01;
    let found = scan_segment(&bad, START_7).unwrap();
    assert!(matches!(
        found.end,
        ScanEnd::Invalid {
            at: Lsn(0x736000),
            problem: InvalidWal::PageAddress { .. }
        }
    ));
}

#[test]
fn a_zeroed_tail_is_the_end_of_wal() {
    let mut partial = segment_8();
    partial[0x9480..].fill(0);
    let found = scan_segment(&partial, START_8).unwrap();
    assert_eq!(found.end, ScanEnd::EndOfWal { at: Lsn(0x809480) });
    assert_eq!(found.valid_end, Lsn(0x809480));
    assert!(found.restore_points.is_empty());
    assert_eq!(found.transactions, segment_8_transactions()[..2]);
}

#[test]
fn truncated_input_yields_what_it_holds() {
    let whole = segment_7();
    let all = segment_7_transactions();
    for len in (LONG_HEADER_BYTES..whole.len()).step_by(24_989) {
        let found = scan_segment(&whole[..len], START_7).unwrap();
        assert_eq!(
            found.end,
            ScanEnd::Truncated {
                at: Lsn(START_7.0 + len as u64)
            },
            "{len}"
        );
        assert!(found.valid_end.0 <= START_7.0 + len as u64);
        assert_eq!(found.transactions, all[..found.transactions.len()], "{len}");
    }
}

#[test]
fn what_is_not_a_segment_is_refused_or_ends_at_once() {
    let whole = segment_7();
    assert!(matches!(
        scan_segment(&whole[..10], START_7),
        Err(RecordError::Header(PageHeaderError::TooShort(10)))
    ));
    assert_eq!(
        scan_segment(&whole, START_8),
        Err(RecordError::WrongStart {
            expected: START_8,
            found: START_7
        })
    );
    assert!(matches!(
        scan_segment(&whole, Lsn(0x70_0100)),
        Err(RecordError::Unaligned { .. })
    ));
    let mut longer = whole.clone();
    longer.push(0);
    assert!(matches!(
        scan_segment(&longer, START_7),
        Err(RecordError::TooLong { .. })
    ));
    // The first page header followed by zeros, or by noise.
    let mut zeros = vec![0; whole.len()];
    zeros[..LONG_HEADER_BYTES].copy_from_slice(&whole[..LONG_HEADER_BYTES]);
    let found = scan_segment(&zeros, START_7).unwrap();
    assert_eq!(found.end, ScanEnd::EndOfWal { at: Lsn(0x700028) });
    let mut noise = zeros;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for byte in &mut noise[LONG_HEADER_BYTES..] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let found = scan_segment(&noise, START_7).unwrap();
    assert!(matches!(
        found.end,
        ScanEnd::Invalid {
            at: Lsn(0x700028),
            ..
        }
    ));
    assert_eq!(found.records, 0);
    for garbage in [vec![], vec![0xFF; 4096], noise[1000..9000].to_vec()] {
        assert!(scan_segment(&garbage, START_7).is_err());
    }
}

#[test]
fn timestamps_convert_to_unix_time() {
    assert_eq!(PgTimestamp(0).unix_micros(), Some(946_684_800_000_000));
    assert_eq!(
        PgTimestamp(0).to_timestamp().unwrap().to_string(),
        "2000-01-01T00:00:00Z"
    );
    assert_eq!(PgTimestamp(i64::MAX).unix_micros(), None);
    assert_eq!(PgTimestamp(i64::MIN).to_timestamp(), None);
}

#[test]
fn a_record_whose_continuation_was_overwritten_is_skipped_as_postgresql_does() {
    // After a crash (or a promotion) in the middle of writing a record that spans pages,
    // PostgreSQL writes on from the page where the record should have continued: that page
    // says XLP_FIRST_IS_OVERWRITE_CONTRECORD, and its first record, XLOG_OVERWRITE_CONTRECORD,
    // links back to the record before the unfinished one. Here: the 20 kB message at
    // 0/735DE8 left unfinished, and a record (a copy of the restore point before it) at the
    // start of the next page, 0/736000.
    let mut bytes = segment_7();
    let page = 0x736000 - START_7.0 as usize;
    bytes[page + 2..page + 4].copy_from_slice(&0x0008u16.to_le_bytes()); // xlp_info
    bytes[page + 16..page + 20].copy_from_slice(&0u32.to_le_bytes()); // xlp_rem_len
    let template = 0x735D80 - START_7.0 as usize;
    let (record, len) = (page + 24, 0x68);
    bytes.copy_within(template..template + len, record);
    bytes[record + 8..record + 16].copy_from_slice(&0x735D80u64.to_le_bytes()); // xl_prev
    let tot_len = u32::from_le_bytes(bytes[record..record + 4].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[record + 24..record + tot_len]),
        &bytes[record..record + 20],
    );
    bytes[record + 20..record + 24].copy_from_slice(&crc.to_le_bytes());
    bytes[record + len..page + 8192].fill(0); // nothing written after it yet

    let found = scan_segment(&bytes, START_7).unwrap();
    assert_eq!(found.end, ScanEnd::EndOfWal { at: Lsn(0x736080) });
    assert_eq!(found.valid_end, Lsn(0x736080));
    let points: Vec<Lsn> = found.restore_points.iter().map(|p| p.lsn).collect();
    assert_eq!(points, [Lsn(0x735D80), Lsn(0x736018)]);
    // Without the flag, the same page is a continuation that is missing.
    bytes[page + 2..page + 4].copy_from_slice(&0u16.to_le_bytes());
    let found = scan_segment(&bytes, START_7).unwrap();
    assert!(matches!(
        found.end,
        ScanEnd::Invalid {
            at: Lsn(0x736000),
            problem: InvalidWal::MissingContinuation
        }
    ));
}

/// `bytes` with the record at `record` changed by `change`, and its CRC made right again.
fn with_record_changed(
    mut bytes: Vec<u8>,
    record: usize,
    change: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    change(&mut bytes[record..]);
    let tot_len = u32::from_le_bytes(bytes[record..record + 4].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[record + 24..record + tot_len]),
        &bytes[record..record + 20],
    );
    bytes[record + 20..record + 24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn a_record_whose_crc_checks_but_whose_content_cannot_be_read_is_not_damage() {
    // The restore point at 0/735D80 relabelled a COMMIT PREPARED whose xinfo announces 1000
    // subtransactions its 72 bytes of main data cannot hold, and its CRC made right: block
    // headers PostgreSQL reads, main data this scanner cannot.
    let record = 0x735D80 - START_7.0 as usize;
    let bytes = with_record_changed(segment_7(), record, |r| {
        r[16] = 0x30 | 0x80; // xl_info: XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO
        r[17] = 1; // xl_rmid: RM_XACT_ID
        // Main data after the 24-byte header and the 2-byte short data header: xact_time,
        // then xinfo (XACT_XINFO_HAS_SUBXACTS) and nsubxacts.
        r[34..38].copy_from_slice(&2u32.to_le_bytes());
        r[38..42].copy_from_slice(&1000i32.to_le_bytes());
    });
    let found = scan_segment(&bytes, START_7).unwrap();
    assert!(
        matches!(
            found.end,
            ScanEnd::Uninterpreted {
                at: Lsn(0x735D80),
                ..
            }
        ),
        "{:?}",
        found.end
    );
    // The walk went on: every record after it was checked, as without the change.
    assert_eq!(found.records, 209);
    assert_eq!(
        found.valid_end,
        scan_segment(&segment_7(), START_7).unwrap().valid_end
    );
    let index = crate::timeindex::IndexEnd::from(&found.end);
    assert_eq!(index.damage(), None);
    assert_eq!(index.valid_end(), None);

    // Block headers DecodeXLogRecord refuses (an unknown block id) end the WAL for
    // PostgreSQL too: invalid.
    let refused = with_record_changed(segment_7(), record, |r| r[24] = 0x80);
    let found = scan_segment(&refused, START_7).unwrap();
    assert!(
        matches!(
            found.end,
            ScanEnd::Invalid {
                at: Lsn(0x735D80),
                ..
            }
        ),
        "{:?}",
        found.end
    );

    // A damaged record after an uninterpreted one is still damage.
    let mut damaged = bytes.clone();
    let later = 0x7F0000 - START_7.0 as usize;
    damaged[later..later + 8192].fill(0x55);
    let found = scan_segment(&damaged, START_7).unwrap();
    assert!(
        matches!(found.end, ScanEnd::Invalid { .. }),
        "{:?}",
        found.end
    );
}

#[test]
fn the_last_segment_of_the_lsn_space_does_not_overflow() {
    let start = Lsn(u64::MAX - (1 << 20) + 1);
    let mut bytes = crate::wal::page::tests::header_bytes(1, start.0, 42, 1 << 20);
    bytes.resize(1 << 20, 0);
    let found = scan_segment(&bytes, start).unwrap();
    assert_eq!(
        found.end,
        ScanEnd::EndOfWal {
            at: Lsn(start.0 + 40)
        }
    );
    // Pages that all continue a record from the previous segment, each by what the one before
    // left: the scan ends at the end.
    let mut rem_len = u32::MAX;
    for page in (0..bytes.len()).step_by(8192) {
        bytes.copy_within(0..8, page); // magic, flags, timeline
        bytes[page + 2] = if page == 0 { 0x03 } else { 0x01 }; // XLP_FIRST_IS_CONTRECORD
        bytes[page + 8..page + 16].copy_from_slice(&(start.0 + page as u64).to_le_bytes());
        bytes[page + 16..page + 20].copy_from_slice(&rem_len.to_le_bytes());
        rem_len -= 8192 - if page == 0 { 40 } else { 24 };
    }
    let found = scan_segment(&bytes, start).unwrap();
    assert_eq!(found.end, ScanEnd::SegmentEnd);
    assert_eq!(found.valid_end, Lsn(u64::MAX));
    assert_eq!(found.records, 0);
}

#[test]
fn a_first_page_continuing_nothing_or_not_what_it_says_is_invalid() {
    let start = Lsn(0x5000000);
    let segment = |rem_len: u32| {
        let mut bytes = crate::wal::page::tests::header_bytes(1, start.0, 42, 1 << 20);
        bytes.resize(1 << 20, 0);
        bytes[2] = 0x03; // XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD
        bytes[16..20].copy_from_slice(&rem_len.to_le_bytes());
        // The second page a plain one, not continuing anything.
        bytes.copy_within(0..8, 8192);
        bytes[8192 + 2] = 0;
        bytes[8192 + 8..8192 + 16].copy_from_slice(&(start.0 + 8192).to_le_bytes());
        scan_segment(&bytes, start).unwrap().end
    };
    // helper-73: both were stored, and would have ended a recovery there.
    for rem_len in [0, 20000] {
        assert!(
            matches!(segment(rem_len), ScanEnd::Invalid { .. }),
            "{rem_len}: {:?}",
            segment(rem_len)
        );
    }
}
