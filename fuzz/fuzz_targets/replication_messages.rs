//! The server's byte stream cut into backend messages, CopyData payloads read as replication
//! messages, error and notice fields read: never panics; frames take exactly the bytes their
//! lengths say, and what parses re-encodes to the same payload.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::Message;
use walhalla::protocol::connection::ServerError;
use walhalla::protocol::frame::{Frame, take_frame};
use walhalla::protocol::replication::{ServerMessage, parse_server_message};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let frame = match take_frame(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete message is left in place");
                return;
            }
            Err(_) => return,
        };
        let taken = before - buf.len();
        let at = data.len() - before;
        match frame {
            Frame::CopyData(payload) => {
                assert_eq!(&data[at + 5..at + taken], &payload[..]);
                copy_data(payload);
            }
            Frame::CopyBothResponse => assert_eq!(data[at], b'W'),
            Frame::Other(Message::ErrorResponse(body)) => fields(body.fields()),
            Frame::Other(Message::NoticeResponse(body)) => fields(body.fields()),
            Frame::Other(_) => {}
        }
    }
});

/// A CopyData payload as the receiver reads it.
fn copy_data(payload: Bytes) {
    let Ok(message) = parse_server_message(payload.clone()) else {
        return;
    };
    match message {
        ServerMessage::XLogData {
            start,
            server_end,
            data,
        } => {
            assert_eq!(payload[0], b'w');
            assert_eq!(&payload[1..9], &start.0.to_be_bytes());
            assert_eq!(&payload[9..17], &server_end.0.to_be_bytes());
            assert_eq!(&payload[25..], &data[..]);
        }
        ServerMessage::Keepalive {
            server_end,
            reply_requested,
        } => {
            assert_eq!(payload.len(), 18);
            assert_eq!(&payload[1..9], &server_end.0.to_be_bytes());
            assert_eq!(reply_requested, payload[17] != 0);
        }
    }
}

/// Error or notice fields, read and printed as the receiver logs them.
fn fields(fields: postgres_protocol::message::backend::ErrorFields<'_>) {
    if let Ok(error) = ServerError::from_fields(fields) {
        let _ = error.to_string();
    }
}
