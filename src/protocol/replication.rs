//! The streaming replication messages inside CopyData, sans I/O (walsender.c, walreceiver.c).
//! Integers are big-endian; timestamps are microseconds since 2000-01-01 00:00 UTC.
//!
//! | message | layout |
//! |---|---|
//! | XLogData `w` (server) | `w`, start LSN u64, end of WAL u64, send time i64, WAL bytes |
//! | keepalive `k` (server) | `k`, end of WAL u64, send time i64, reply requested u8 (18 bytes) |
//! | status update `r` (client) | `r`, written u64, flushed u64, applied u64, client time i64, reply requested u8 (34 bytes) |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use thiserror::Error;

use crate::wal::Lsn;

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_SECONDS: u64 = 946_684_800;
const XLOG_DATA_HEADER_BYTES: usize = 25;
const KEEPALIVE_BYTES: usize = 18;
/// Length of a standby status update.
pub const STATUS_UPDATE_BYTES: usize = 34;

/// A CopyData payload the server may send while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// WAL bytes starting at `start`.
    XLogData {
        /// Position of the first byte.
        start: Lsn,
        /// The end of WAL on the server when it sent this.
        server_end: Lsn,
        /// The WAL bytes.
        data: Bytes,
    },
    /// A heartbeat, possibly asking for a status update at once.
    Keepalive {
        /// The end of WAL on the server.
        server_end: Lsn,
        /// Whether the server wants a reply now (it disconnects after `wal_sender_timeout`).
        reply_requested: bool,
    },
}

/// A CopyData payload that is not a valid replication message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// An empty payload.
    #[error("empty CopyData message")]
    Empty,
    /// A known message with the wrong length.
    #[error("{kind} message of {len} bytes is too short or malformed")]
    BadLength {
        /// Which message.
        kind: &'static str,
        /// Its length.
        len: usize,
    },
    /// An unknown message type.
    #[error("unknown replication message type {0:#04x}")]
    UnknownType(u8),
}

/// Parses one CopyData payload of the replication stream.
pub fn parse_server_message(payload: Bytes) -> Result<ServerMessage, FrameError> {
    let u64_at = |o: usize| u64::from_be_bytes(payload[o..o + 8].try_into().expect("8 bytes"));
    match payload.first() {
        None => Err(FrameError::Empty),
        Some(b'w') => {
            if payload.len() < XLOG_DATA_HEADER_BYTES {
                return Err(FrameError::BadLength {
                    kind: "XLogData",
                    len: payload.len(),
                });
            }
            Ok(ServerMessage::XLogData {
                start: Lsn(u64_at(1)),
                server_end: Lsn(u64_at(9)),
                data: payload.slice(XLOG_DATA_HEADER_BYTES..),
            })
        }
        Some(b'k') => {
            if payload.len() != KEEPALIVE_BYTES {
                return Err(FrameError::BadLength {
                    kind: "keepalive",
                    len: payload.len(),
                });
            }
            Ok(ServerMessage::Keepalive {
                server_end: Lsn(u64_at(1)),
                reply_requested: payload[17] != 0,
            })
        }
        Some(&other) => Err(FrameError::UnknownType(other)),
    }
}

/// A standby status update reporting `written` and `flushed` positions (applied is always 0:
/// walhalla replays nothing, which is why it must not be the only standby under
/// `synchronous_commit = remote_apply`).
pub fn status_update(
    written: Lsn,
    flushed: Lsn,
    now: SystemTime,
    reply_requested: bool,
) -> [u8; STATUS_UPDATE_BYTES] {
    let mut m = [0u8; STATUS_UPDATE_BYTES];
    m[0] = b'r';
    m[1..9].copy_from_slice(&written.0.to_be_bytes());
    m[9..17].copy_from_slice(&flushed.0.to_be_bytes());
    m[17..25].copy_from_slice(&0u64.to_be_bytes());
    m[25..33].copy_from_slice(&pg_timestamp(now).to_be_bytes());
    m[33] = u8::from(reply_requested);
    m
}

/// `now` as PostgreSQL's `TimestampTz`: microseconds since 2000-01-01 UTC.
pub fn pg_timestamp(now: SystemTime) -> i64 {
    let since_unix = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let micros = since_unix.as_micros() as i64;
    micros - (PG_EPOCH_OFFSET_SECONDS as i64) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x1_0000_0028u64.to_be_bytes());
        w.extend_from_slice(&0x1_0000_0100u64.to_be_bytes());
        w.extend_from_slice(&7i64.to_be_bytes());
        w.extend_from_slice(b"wal bytes");
        assert_eq!(
            parse_server_message(Bytes::from(w)),
            Ok(ServerMessage::XLogData {
                start: Lsn(0x1_0000_0028),
                server_end: Lsn(0x1_0000_0100),
                data: Bytes::from_static(b"wal bytes"),
            })
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&42u64.to_be_bytes());
        k.extend_from_slice(&7i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_server_message(Bytes::from(k)),
            Ok(ServerMessage::Keepalive {
                server_end: Lsn(42),
                reply_requested: true
            })
        );
    }

    #[test]
    fn refuses_malformed_messages() {
        for bad in [
            &b""[..],
            b"w",
            b"wshort",
            b"k12345678",
            &[b'k'; 19],
            b"x123",
        ] {
            assert!(
                parse_server_message(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn status_update_layout() {
        let now = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECONDS + 1);
        let m = status_update(Lsn(0x10), Lsn(0x8), now, true);
        assert_eq!(m[0], b'r');
        assert_eq!(&m[1..9], &0x10u64.to_be_bytes());
        assert_eq!(&m[9..17], &0x8u64.to_be_bytes());
        assert_eq!(&m[17..25], &[0; 8]);
        assert_eq!(&m[25..33], &1_000_000i64.to_be_bytes());
        assert_eq!(m[33], 1);
    }
}
