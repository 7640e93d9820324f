//! One reassembled WAL record: its header checks, its CRC, the walk over its block references
//! to the main data (xlogreader.c `DecodeXLogRecord`), and the meaning of the few record types
//! the index needs (xact.h, xactdesc.c, pg_control.h).
//!
//! Record layout (xlogrecord.h), little-endian, no alignment inside a record:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `xl_tot_len`: the whole record, header included |
//! | 4 | 4 | `xl_xid` |
//! | 8 | 8 | `xl_prev`: where the previous record starts |
//! | 16 | 1 | `xl_info`: high 4 bits belong to the resource manager |
//! | 17 | 1 | `xl_rmid`: resource manager |
//! | 18 | 2 | padding |
//! | 20 | 4 | `xl_crc`: CRC-32C of the bytes after the header, then of bytes 0..20 |
//!
//! Then block reference headers, at most one main data header (always last), then each block's
//! image and data in header order, then the main data: the main data is the record's tail.

use super::{Crossing, InvalidWal, PgTimestamp, XactKind};
use crate::wal::Lsn;

/// `SizeOfXLogRecord`.
pub(super) const HEADER_BYTES: usize = 24;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
/// Built-in resource managers 0 (XLOG) to 21 (LogicalMessage), the same in 13 to 18.
const RM_MAX_BUILTIN_ID: u8 = 21;
/// Extensions' custom resource managers (PostgreSQL 15 and later): `RM_MIN_CUSTOM_ID`.
const RM_MIN_CUSTOM_ID: u8 = 128;

const XLR_RMGR_INFO_MASK: u8 = 0xF0;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;

const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
/// PostgreSQL 15 and later.
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// `MAXFNAMELEN`: the size of `xl_restore_point.rp_name`.
const RESTORE_POINT_NAME_BYTES: usize = 64;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// PostgreSQL 14 and later; 13 never writes it.
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// The fixed part of a record.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl Header {
    /// Reads the header from a record's first [`HEADER_BYTES`] bytes.
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Header {
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        Header {
            tot_len: u32_at(0),
            xid: u32_at(4),
            prev: Lsn(u64::from(u32_at(8)) | (u64::from(u32_at(12)) << 32)),
            info: bytes[16],
            rmid: bytes[17],
            crc: u32_at(20),
        }
    }

    /// What the record is, by its resource manager and info bits.
    pub fn crossing(&self) -> Crossing {
        let xact_end = matches!(
            self.info & XLOG_XACT_OPMASK,
            XLOG_XACT_COMMIT
                | XLOG_XACT_ABORT
                | XLOG_XACT_COMMIT_PREPARED
                | XLOG_XACT_ABORT_PREPARED
        );
        match self.rmid {
            RM_XLOG_ID if self.info & XLR_RMGR_INFO_MASK == XLOG_RESTORE_POINT => {
                Crossing::RestorePoint
            }
            RM_XACT_ID if xact_end => Crossing::XactEnd,
            _ => Crossing::Other,
        }
    }

    /// xlogreader.c `ValidXLogRecordHeader`: the length, the resource manager, and the link to
    /// the previous record — equal to it when known, else merely before this one.
    pub fn check(&self, at: Lsn, prev: Option<Lsn>, major: u32) -> Result<(), InvalidWal> {
        if (self.tot_len as usize) < HEADER_BYTES {
            return Err(InvalidWal::RecordLength(self.tot_len));
        }
        let custom = major >= 15 && self.rmid >= RM_MIN_CUSTOM_ID;
        if self.rmid > RM_MAX_BUILTIN_ID && !custom {
            return Err(InvalidWal::ResourceManager(self.rmid));
        }
        match prev {
            Some(expected) if self.prev != expected => Err(InvalidWal::PrevLink {
                found: self.prev,
                expected,
            }),
            None if self.prev >= at => Err(InvalidWal::PrevNotBefore(self.prev)),
            _ => Ok(()),
        }
    }
}

/// xlogreader.c `ValidXLogRecord`: the CRC of the data after the header, then of the header up
/// to `xl_crc`. `record` is the whole reassembled record.
pub(super) fn check_crc(record: &[u8], header: &Header) -> Result<(), InvalidWal> {
    let (head, data) = record.split_at(HEADER_BYTES.min(record.len()));
    let computed = crc32c::crc32c_append(crc32c::crc32c(data), &head[..head.len().min(20)]);
    if computed != header.crc {
        return Err(InvalidWal::Crc {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// What a valid record means to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Meaning {
    /// A transaction's commit or abort.
    Xact {
        kind: XactKind,
        xid: u32,
        time: PgTimestamp,
    },
    /// `pg_create_restore_point`.
    RestorePoint { name: String, time: PgTimestamp },
    /// `XLOG_SWITCH`: the rest of the segment holds no records.
    Switch,
    /// Anything else.
    Other,
}

/// Why a record whose length and CRC are valid could not be interpreted.
#[derive(Debug)]
pub(super) enum Unread {
    /// Its block headers are what `DecodeXLogRecord` refuses: PostgreSQL's recovery ends
    /// there too.
    Structure(InvalidWal),
    /// Its main data is not what this scanner knows of a commit, abort or restore point:
    /// PostgreSQL reads it, this scanner does not.
    Content(InvalidWal),
}

/// Decodes a record whose length and CRC are valid: walks the block headers as
/// `DecodeXLogRecord` does (refusing what it refuses) and interprets the main data.
pub(super) fn interpret(record: &[u8], header: &Header, major: u32) -> Result<Meaning, Unread> {
    let main = main_data(record, major).map_err(Unread::Structure)?;
    let op = header.info & XLR_RMGR_INFO_MASK;
    match header.rmid {
        RM_XLOG_ID if op == XLOG_SWITCH => Ok(Meaning::Switch),
        RM_XLOG_ID if op == XLOG_RESTORE_POINT => restore_point(main).map_err(Unread::Content),
        RM_XACT_ID => xact(main, header, major).map_err(Unread::Content),
        _ => Ok(Meaning::Other),
    }
}

/// A little-endian reader over a byte slice that reports running short.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], InvalidWal> {
        if self.bytes.len() < n {
            return Err(InvalidWal::Truncated(what));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, InvalidWal> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, InvalidWal> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, InvalidWal> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, InvalidWal> {
        let b = self.take(8, what)?;
        let mut le = [0; 8];
        le.copy_from_slice(b);
        Ok(i64::from_le_bytes(le))
    }

    /// Skips an array: a 32-bit signed count, then that many items of `item` bytes.
    fn skip_array(&mut self, item: usize, what: &'static str) -> Result<(), InvalidWal> {
        let count =
            usize::try_from(self.u32(what)? as i32).map_err(|_| InvalidWal::Truncated(what))?;
        let bytes = count.checked_mul(item).ok_or(InvalidWal::Truncated(what))?;
        self.take(bytes, what).map(|_| ())
    }
}

/// The main data: walks the headers after the fixed header the way `DecodeXLogRecord` does,
/// checks that the headers and the lengths they announce fill the record exactly, and returns
/// the record's last `main_data_len` bytes.
fn main_data(record: &[u8], major: u32) -> Result<&[u8], InvalidWal> {
    let mut cursor = Cursor {
        bytes: record.get(HEADER_BYTES..).unwrap_or_default(),
    };
    // Bytes of block data, images and main data announced so far.
    let mut data_total: usize = 0;
    let mut main_len: usize = 0;
    let mut last_block: Option<u8> = None;
    let mut have_rel = false;
    while cursor.bytes.len() > data_total {
        let id = cursor.u8("block id")?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = cursor.u8("main data length")?.into();
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = cursor.u32("main data length")? as usize;
                data_total = data_total.saturating_add(main_len);
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                cursor.take(2, "replication origin")?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                cursor.take(4, "top-level xid")?;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if last_block.is_some_and(|last| id <= last) {
                    return Err(InvalidWal::Malformed("block references out of order"));
                }
                last_block = Some(id);
                let fork_flags = cursor.u8("block fork and flags")?;
                let data_len = cursor.u16("block data length")?;
                if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                    return Err(InvalidWal::Malformed(
                        "block data flag disagrees with its length",
                    ));
                }
                data_total += usize::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let image_len = cursor.u16("block image length")?;
                    cursor.take(2, "block image hole offset")?;
                    let image_info = cursor.u8("block image flags")?;
                    if image_compressed(image_info, major) && image_info & BKPIMAGE_HAS_HOLE != 0 {
                        cursor.take(2, "block image hole length")?;
                    }
                    data_total += usize::from(image_len);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    cursor.take(12, "block relation")?;
                    have_rel = true;
                } else if !have_rel {
                    return Err(InvalidWal::Malformed(
                        "block on the same relation as no earlier one",
                    ));
                }
                cursor.take(4, "block number")?;
            }
            _ => return Err(InvalidWal::Malformed("unknown block id")),
        }
    }
    if cursor.bytes.len() != data_total {
        return Err(InvalidWal::Malformed(
            "headers announce more or less data than the record holds",
        ));
    }
    Ok(&cursor.bytes[data_total - main_len..])
}

/// Whether a full-page image is compressed, which decides whether a hole length follows its
/// header. PostgreSQL 15 renumbered `bimg_info`: before, 0x02 meant compressed (pglz) and 0x04
/// "apply"; since, 0x02 means "apply" and 0x04, 0x08, 0x10 name pglz, LZ4 and zstd.
fn image_compressed(info: u8, major: u32) -> bool {
    let mask = if major >= 15 {
        0x04 | 0x08 | 0x10
    } else {
        0x02
    };
    info & mask != 0
}

/// `xl_restore_point`: `TimestampTz rp_time; char rp_name[MAXFNAMELEN]`.
fn restore_point(main: &[u8]) -> Result<Meaning, InvalidWal> {
    let mut cursor = Cursor { bytes: main };
    let time = PgTimestamp(cursor.i64("restore point time")?);
    let name = cursor.take(RESTORE_POINT_NAME_BYTES, "restore point name")?;
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    Ok(Meaning::RestorePoint {
        name: String::from_utf8_lossy(name).into_owned(),
        time,
    })
}

/// `xl_xact_commit` / `xl_xact_abort`: both begin with `TimestampTz xact_time`. A prepared
/// transaction's commit or abort is written by another transaction (often none: `xl_xid` 0);
/// its own xid is in the `xl_xact_twophase` part, found by skipping the parts before it as
/// xactdesc.c `ParseCommitRecord` / `ParseAbortRecord` do.
fn xact(main: &[u8], header: &Header, major: u32) -> Result<Meaning, InvalidWal> {
    let kind = match header.info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => XactKind::Commit,
        XLOG_XACT_ABORT => XactKind::Abort,
        XLOG_XACT_COMMIT_PREPARED => XactKind::CommitPrepared,
        XLOG_XACT_ABORT_PREPARED => XactKind::AbortPrepared,
        _ => return Ok(Meaning::Other),
    };
    let mut cursor = Cursor { bytes: main };
    let time = PgTimestamp(cursor.i64("transaction time")?);
    let xid = match kind {
        XactKind::Commit | XactKind::Abort => header.xid,
        XactKind::CommitPrepared | XactKind::AbortPrepared => {
            prepared_xid(cursor, header.info, kind, major)?
        }
    };
    Ok(Meaning::Xact { kind, xid, time })
}

/// The prepared transaction's xid in a `COMMIT_PREPARED` or `ABORT_PREPARED` record; `cursor`
/// is just past `xact_time`.
fn prepared_xid(
    mut cursor: Cursor<'_>,
    info: u8,
    kind: XactKind,
    major: u32,
) -> Result<u32, InvalidWal> {
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        cursor.u32("xinfo")?
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        cursor.take(8, "database info")?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        cursor.skip_array(4, "subtransactions")?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        cursor.skip_array(12, "dropped relations")?;
    }
    if major >= 15 && xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        // xl_xact_stats_item: kind, database, object: an Oid until 17, two uint32 halves of a
        // 64-bit id since 18.
        let item = if major >= 18 { 16 } else { 12 };
        cursor.skip_array(item, "dropped statistics")?;
    }
    if kind == XactKind::CommitPrepared && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        // SharedInvalidationMessage: 16 bytes. Abort records carry none.
        cursor.skip_array(16, "invalidation messages")?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
        return Err(InvalidWal::Malformed(
            "prepared transaction without its xid",
        ));
    }
    cursor.u32("prepared transaction's xid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with one full-page image (`image_info`, and a hole length when `hole_len`)
    /// and 8 bytes of main data; the fixed header is left zero, as `main_data` ignores it.
    fn record_with_image(image_info: u8, hole_len: bool) -> Vec<u8> {
        let mut r = vec![0; HEADER_BYTES];
        r.extend_from_slice(&[0, BKPBLOCK_HAS_IMAGE, 0, 0]); // block 0, no data
        r.extend_from_slice(&100u16.to_le_bytes()); // image length
        r.extend_from_slice(&40u16.to_le_bytes()); // hole offset
        r.push(image_info);
        if hole_len {
            r.extend_from_slice(&1000u16.to_le_bytes());
        }
        r.extend_from_slice(&[7; 12]); // relation
        r.extend_from_slice(&3u32.to_le_bytes()); // block number
        r.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 8]);
        r.extend_from_slice(&[0xAA; 100]); // image
        r.extend_from_slice(b"main-dat");
        r
    }

    #[test]
    fn image_compression_bits_follow_the_version() {
        // 0x03: hole and pglz-compressed until 14, hole and "apply" since 15.
        let old = record_with_image(0x03, true);
        assert_eq!(main_data(&old, 13), Ok(&b"main-dat"[..]));
        assert!(main_data(&old, 15).is_err());
        let new = record_with_image(0x03, false);
        assert_eq!(main_data(&new, 18), Ok(&b"main-dat"[..]));
        assert!(main_data(&new, 14).is_err());
        // 0x11: hole and zstd since 15.
        assert_eq!(
            main_data(&record_with_image(0x11, true), 15),
            Ok(&b"main-dat"[..])
        );
    }

    #[test]
    fn block_headers_that_do_not_add_up_are_refused() {
        let mut r = record_with_image(0x01, false);
        r.push(0);
        assert!(matches!(main_data(&r, 15), Err(InvalidWal::Malformed(_))));
        r.truncate(HEADER_BYTES + 3);
        assert!(matches!(main_data(&r, 15), Err(InvalidWal::Truncated(_))));
    }

    /// A `COMMIT_PREPARED` main data with a database, one dropped-statistics entry of
    /// `stats_item` bytes and the prepared xid 4242.
    fn commit_prepared(stats_item: usize) -> Vec<u8> {
        let mut m = 1234i64.to_le_bytes().to_vec();
        let xinfo = XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_DROPPED_STATS | XACT_XINFO_HAS_TWOPHASE;
        m.extend_from_slice(&xinfo.to_le_bytes());
        m.extend_from_slice(&[5; 8]);
        m.extend_from_slice(&1i32.to_le_bytes());
        m.extend(std::iter::repeat_n(9, stats_item));
        m.extend_from_slice(&4242u32.to_le_bytes());
        m
    }

    #[test]
    fn dropped_statistics_entries_grew_in_18() {
        let header = Header {
            tot_len: 0,
            xid: 0,
            prev: Lsn(0),
            info: XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO,
            rmid: RM_XACT_ID,
            crc: 0,
        };
        let expected = Meaning::Xact {
            kind: XactKind::CommitPrepared,
            xid: 4242,
            time: PgTimestamp(1234),
        };
        assert_eq!(
            xact(&commit_prepared(12), &header, 17),
            Ok(expected.clone())
        );
        assert_eq!(xact(&commit_prepared(16), &header, 18), Ok(expected));
        assert_ne!(
            xact(&commit_prepared(12), &header, 18).ok(),
            xact(&commit_prepared(16), &header, 18).ok()
        );
    }
}
