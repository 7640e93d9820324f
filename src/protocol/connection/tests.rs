//! The connection's framing against scripted server bytes, over an in-memory pipe.

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// A connection whose server side is the returned pipe end.
fn connection() -> (Connection, DuplexStream) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let conn = Connection {
        io: Box::new(client),
        read_buf: BytesMut::new(),
        write_buf: BytesMut::new(),
        host: HostAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 5432,
        },
        server_certificate: None,
        parameters: HashMap::new(),
    };
    (conn, server)
}

/// A backend message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

/// An ErrorResponse (or, with tag `N`, a NoticeResponse) with these fields.
fn error_fields(tag: u8, fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in fields {
        body.push(*kind);
        body.extend(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(tag, &body)
}

fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

/// The server's error for a timeline it does not have, as walsender.c words it.
fn timeline_error(severity: &str) -> Vec<u8> {
    error_fields(
        b'E',
        &[
            (b'S', severity),
            (b'V', severity),
            (b'C', "58P01"),
            (
                b'M',
                "requested starting point 0/3000000 on timeline 2 is not in this server's history",
            ),
            (
                b'D',
                "This server's history forked from timeline 1 at 0/2FFFFF8.",
            ),
        ],
    )
}

/// Runs START_REPLICATION against a server that answers `answer` and then closes (or not).
async fn start_against(answer: Vec<u8>, close: bool) -> (Result<CopyStart>, Connection) {
    let (mut conn, mut server) = connection();
    let serve = async move {
        let mut query = [0u8; 5];
        server.read_exact(&mut query).await.unwrap();
        assert_eq!(query[0], b'Q');
        let len = u32::from_be_bytes(query[1..5].try_into().unwrap()) as usize;
        let mut sql = vec![0u8; len - 4];
        server.read_exact(&mut sql).await.unwrap();
        server.write_all(&answer).await.unwrap();
        if !close {
            // Keeps the pipe open until the client is done.
            std::future::pending::<()>().await;
        }
    };
    let server = tokio::spawn(serve);
    let started = conn
        .start_copy_both("START_REPLICATION 0/3000000 TIMELINE 2")
        .await;
    server.abort();
    (started, conn)
}

#[tokio::test]
async fn a_fatal_error_then_a_closed_connection_is_reported_as_the_servers_error() {
    let (started, _) = start_against(timeline_error("FATAL"), true).await;
    let error = started.unwrap_err();
    let server = error.server_error().expect("the server's own error");
    assert_eq!(server.code, "58P01");
    assert_eq!(server.severity, "FATAL");
    let text = error.to_string();
    assert!(text.contains("is not in this server's history"), "{text}");
    assert!(text.contains("SQLSTATE 58P01"), "{text}");
    assert!(text.contains("forked from timeline 1"), "{text}");
}

#[tokio::test]
async fn an_error_then_ready_is_the_servers_error_and_the_connection_stays_usable() {
    let mut answer = error_fields(b'N', &[(b'S', "WARNING"), (b'C', "01000"), (b'M', "x")]);
    answer.extend(timeline_error("ERROR"));
    answer.extend(ready());
    let (started, conn) = start_against(answer, false).await;
    let error = started.unwrap_err();
    assert_eq!(error.server_error().map(|e| e.code.as_str()), Some("58P01"));
    assert!(conn.read_buf.is_empty(), "drained up to ReadyForQuery");
    assert!(!conn.has_buffered_message());
}

#[tokio::test]
async fn copy_both_and_the_next_timeline_are_recognised() {
    let (started, _) = start_against(message(b'W', &[0, 0, 0]), false).await;
    assert_eq!(started.unwrap(), CopyStart::Streaming);
    let mut answer = message(b'T', &[0, 0]);
    let mut row = vec![0, 2];
    for value in ["3", "0/3000000"] {
        row.extend((value.len() as u32).to_be_bytes());
        row.extend(value.as_bytes());
    }
    answer.extend(message(b'D', &row));
    answer.extend(message(b'C', b"START_STREAMING\0"));
    answer.extend(ready());
    let (started, _) = start_against(answer, false).await;
    let rows = vec![vec![Some("3".to_string()), Some("0/3000000".to_string())]];
    assert_eq!(started.unwrap(), CopyStart::TimelineEnded(rows));
}

#[tokio::test]
async fn any_other_answer_is_a_protocol_violation_naming_it() {
    let (started, _) = start_against(message(b'H', &[0, 0, 0]), false).await;
    let text = started.unwrap_err().to_string();
    assert!(text.contains("got CopyOutResponse"), "{text}");
    let (started, _) = start_against(ready(), false).await;
    let text = started.unwrap_err().to_string();
    assert!(text.contains("ReadyForQuery without a result"), "{text}");
}

#[tokio::test]
async fn a_connection_closed_inside_a_message_says_how_much_of_it_arrived() {
    let (mut conn, mut server) = connection();
    let mut truncated = message(b'd', &[b'w'; 1000]);
    truncated.truncate(100);
    server.write_all(&truncated).await.unwrap();
    drop(server);
    let text = conn.read_copy().await.unwrap_err().to_string();
    assert!(text.contains("in the middle of a message"), "{text}");
    assert!(
        text.contains("100 bytes of a 'd' message of 1005 bytes"),
        "{text}"
    );
}
