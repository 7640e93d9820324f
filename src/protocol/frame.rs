//! Cutting the server's byte stream into backend messages, sans I/O: the length check, then
//! CopyData (`d`, the hot path, kept as its payload) and CopyBothResponse (`W`, which
//! `postgres-protocol` does not know) here, every other message by `postgres-protocol`.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::{Header, Message};
use thiserror::Error;

/// The largest message accepted from the server; WAL arrives in messages of 128 kB at most.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// One message from the server.
pub enum Frame {
    /// A CopyData message's payload.
    CopyData(Bytes),
    /// CopyBothResponse: the replication stream begins.
    CopyBothResponse,
    /// Any other message.
    Other(Message),
}

/// Bytes that are not a backend message.
#[derive(Debug, Error)]
pub enum FrameError {
    /// A length beyond [`MAX_MESSAGE_BYTES`]: the message's tag and announced size.
    #[error(
        "the server announced a {:?} message of {bytes} bytes, more than the {} MiB a message may have",
        char::from(*tag),
        MAX_MESSAGE_BYTES >> 20
    )]
    TooLarge {
        /// The message's type byte.
        tag: u8,
        /// The size its header announced, type byte included.
        bytes: usize,
    },
    /// A malformed header or body.
    #[error(transparent)]
    Malformed(#[from] io::Error),
}

/// Takes one complete message off the front of `buf`; `Ok(None)` (and room reserved for it)
/// while the message is not complete.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(header) = Header::parse(buf)? else {
        return Ok(None);
    };
    let total = header.len() as usize + 1;
    if total > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge {
            tag: header.tag(),
            bytes: total,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    match header.tag() {
        b'd' => {
            let mut frame = buf.split_to(total).freeze();
            frame.advance(5);
            Ok(Some(Frame::CopyData(frame)))
        }
        b'W' => {
            buf.advance(total);
            Ok(Some(Frame::CopyBothResponse))
        }
        _ => {
            let message = Message::parse(buf)?.expect("a complete message is buffered");
            Ok(Some(Frame::Other(message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn cuts_messages_as_they_complete() {
        let mut stream = message(b'd', b"wal");
        stream.extend(message(b'W', &[0, 0, 0]));
        stream.extend(message(b'Z', b"I"));
        let mut buf = BytesMut::from(&stream[..stream.len() - 1]);
        assert!(matches!(take_frame(&mut buf), Ok(Some(Frame::CopyData(d))) if d == "wal"[..]));
        assert!(matches!(
            take_frame(&mut buf),
            Ok(Some(Frame::CopyBothResponse))
        ));
        assert!(matches!(take_frame(&mut buf), Ok(None)));
        buf.extend_from_slice(b"I");
        assert!(matches!(
            take_frame(&mut buf),
            Ok(Some(Frame::Other(Message::ReadyForQuery(_))))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_lengths_and_unknown_tags() {
        let mut too_large = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            take_frame(&mut too_large),
            Err(FrameError::TooLarge { tag: b'd', .. })
        ));
        let mut too_short = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(
            take_frame(&mut too_short),
            Err(FrameError::Malformed(_))
        ));
        let mut unknown = BytesMut::from(&message(b'?', b"")[..]);
        assert!(matches!(
            take_frame(&mut unknown),
            Err(FrameError::Malformed(_))
        ));
    }
}
