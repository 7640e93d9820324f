//! A scripted replication server on loopback, for what a real PostgreSQL never does on
//! purpose: truncated or oversized messages, WAL positions out of order, bad answers. It
//! speaks the protocol as walsender.c does it as far as `walhalla receive` needs (startup with
//! trust authentication, ParameterStatus, IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY,
//! START_REPLICATION, CopyBoth), plays real WAL from [`super::real_wal`], and records every
//! standby status update with how far the archive held the WAL when it arrived.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver as Channel, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use walhalla::wal::Lsn;

use super::free_port;
use super::real_wal::RealWal;

/// WAL bytes per XLogData message, as walsender.c sends them (MAX_SEND_SIZE).
const MAX_SEND_BYTES: usize = 128 * 1024;
/// The protocol code of SSLRequest and GSSENCRequest, answered with 'N'.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// What the fake says about itself.
#[derive(Clone, Debug)]
pub struct Identity {
    /// IDENTIFY_SYSTEM `systemid`.
    pub system_id: String,
    /// IDENTIFY_SYSTEM `timeline`.
    pub timeline: String,
    /// IDENTIFY_SYSTEM `xlogpos`.
    pub xlogpos: String,
    /// `server_version` (ParameterStatus and SHOW).
    pub server_version: String,
    /// SHOW `wal_segment_size`.
    pub segment_size: String,
    /// Timeline history files by timeline; TIMELINE_HISTORY of any other fails as a server
    /// without the file does.
    pub histories: HashMap<u32, String>,
}

impl Identity {
    /// What the real cluster that wrote `wal` says: timeline 1, positioned at its first
    /// segment.
    pub fn of(wal: &RealWal) -> Identity {
        Identity {
            system_id: wal.system_id.to_string(),
            timeline: "1".into(),
            xlogpos: Lsn(wal.start().0 + 40).to_string(),
            server_version: wal.server_version.clone(),
            segment_size: "1MB".into(),
            histories: HashMap::new(),
        }
    }
}

/// A standby status update the receiver sent.
#[derive(Clone, Copy, Debug)]
pub struct StatusUpdate {
    /// The flush position it reported.
    pub flush: Lsn,
    /// How far the archive held WAL when the update arrived.
    pub held: Lsn,
}

/// What one connection plays after startup; called once per connection the receiver makes.
pub type Script = Arc<dyn Fn(&mut Walsender) + Send + Sync>;

/// How far the archive holds WAL now, asked when a status update arrives.
pub type Probe = Arc<dyn Fn() -> Lsn + Send + Sync>;

/// The fake server: a listener thread serving connections one after the other.
pub struct FakeWalsender {
    /// Its port on 127.0.0.1.
    pub port: u16,
    statuses: Arc<Mutex<Vec<StatusUpdate>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeWalsender {
    /// Listens on a free port; each connection gets the startup of `identity`, then `script`.
    pub fn start(identity: Identity, probe: Probe, script: Script) -> FakeWalsender {
        // A port free a moment ago can be taken by the time it is bound (seen once in CI):
        // bind until one is had.
        let (listener, port) = (0..20)
            .find_map(|_| {
                let port = free_port();
                TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|l| (l, port))
            })
            .expect("bind the fake walsender to a free port");
        listener.set_nonblocking(true).expect("nonblocking");
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (statuses, connections, stop) =
                (statuses.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                            stream.set_nonblocking(false).expect("blocking");
                            let Some(mut conn) =
                                Walsender::accept(stream, &identity, &statuses, &probe)
                            else {
                                continue;
                            };
                            script(&mut conn);
                            conn.close();
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        FakeWalsender {
            port,
            statuses,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    /// A connection string for `walhalla receive -d`.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable",
            self.port
        )
    }

    /// Every status update received so far.
    pub fn statuses(&self) -> Vec<StatusUpdate> {
        self.statuses.lock().expect("statuses").clone()
    }

    /// How many connections the receiver made so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Asserts that no status update reported a flush position the archive did not hold;
    /// returns the highest one reported.
    pub fn assert_flush_never_ahead_of_archive(&self) -> Lsn {
        let statuses = self.statuses();
        for update in &statuses {
            assert!(
                update.flush <= update.held,
                "flush {} reported while the archive held WAL up to {} only",
                update.flush,
                update.held
            );
        }
        statuses.iter().map(|u| u.flush).max().unwrap_or_default()
    }
}

impl Drop for FakeWalsender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panicking script already failed the test through the receiver's behaviour.
            let _ = thread.join();
        }
    }
}

/// One connection, after startup: the script's handle.
pub struct Walsender {
    stream: TcpStream,
    identity: Identity,
    incoming: Channel<(u8, Vec<u8>)>,
    reader: Option<JoinHandle<()>>,
    statuses: Arc<Mutex<Vec<StatusUpdate>>>,
}

impl Walsender {
    /// Answers the startup packet (refusing TLS), authenticates with trust and says ready;
    /// `None` when the client went away.
    fn accept(
        mut stream: TcpStream,
        identity: &Identity,
        statuses: &Arc<Mutex<Vec<StatusUpdate>>>,
        probe: &Probe,
    ) -> Option<Walsender> {
        loop {
            let len = read_u32(&mut stream)? as usize;
            let mut body = vec![0; len.checked_sub(4)?];
            stream.read_exact(&mut body).ok()?;
            let code = u32::from_be_bytes(body[..4].try_into().ok()?);
            if code == SSL_REQUEST || code == GSSENC_REQUEST {
                stream.write_all(b"N").ok()?;
                continue;
            }
            break;
        }
        let mut hello = message(b'R', &0u32.to_be_bytes());
        let major: u32 = identity
            .server_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let mut parameters = vec![
            ("server_version", identity.server_version.as_str()),
            ("integer_datetimes", "on"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
        ];
        // Reported from PostgreSQL 14 on; before, clients ask SHOW transaction_read_only.
        if major >= 14 {
            parameters.push(("in_hot_standby", "off"));
        }
        for (name, value) in parameters {
            hello.extend(message(b'S', &[cstr(name), cstr(value)].concat()));
        }
        hello.extend(message(b'K', &[0u8; 8]));
        hello.extend(message(b'Z', b"I"));
        stream.write_all(&hello).ok()?;
        let (sender, incoming) = channel();
        let reader = {
            let mut stream = stream.try_clone().expect("clone the stream");
            let (statuses, probe) = (statuses.clone(), probe.clone());
            std::thread::spawn(move || read_client(&mut stream, &sender, &statuses, &probe))
        };
        Some(Walsender {
            stream,
            identity: identity.clone(),
            incoming,
            reader: Some(reader),
            statuses: statuses.clone(),
        })
    }

    /// Answers queries until START_REPLICATION; returns its start position and timeline, or
    /// `None` when the client went away.
    pub fn answer_until_start(&mut self) -> Option<(Lsn, u32)> {
        loop {
            let query = self.next_query()?;
            let words: Vec<&str> = query.split_whitespace().collect();
            match words.as_slice() {
                ["IDENTIFY_SYSTEM"] => {
                    let id = self.identity.clone();
                    self.rows(
                        &["systemid", "timeline", "xlogpos", "dbname"],
                        &[vec![
                            Some(id.system_id.as_bytes()),
                            Some(id.timeline.as_bytes()),
                            Some(id.xlogpos.as_bytes()),
                            None,
                        ]],
                        "IDENTIFY_SYSTEM",
                    );
                }
                ["SHOW", name] => {
                    let value = match *name {
                        "wal_segment_size" => self.identity.segment_size.clone(),
                        "wal_block_size" => "8192".into(),
                        "server_version" => self.identity.server_version.clone(),
                        "transaction_read_only" => "off".into(),
                        other => {
                            self.error(
                                "ERROR",
                                "42704",
                                &format!("unrecognized configuration parameter \"{other}\""),
                            );
                            self.ready();
                            continue;
                        }
                    };
                    self.rows(&[name], &[vec![Some(value.as_bytes())]], "SHOW");
                }
                ["TIMELINE_HISTORY", tli] => {
                    let tli: u32 = tli.parse().expect("a timeline");
                    let file = format!("{tli:08X}.history");
                    match self.identity.histories.get(&tli).cloned() {
                        Some(content) => self.rows(
                            &["filename", "content"],
                            &[vec![Some(file.as_bytes()), Some(content.as_bytes())]],
                            "TIMELINE_HISTORY",
                        ),
                        None => {
                            self.error(
                                "ERROR",
                                "58P01",
                                &format!(
                                    "could not open file \"pg_wal/{file}\": No such file or directory"
                                ),
                            );
                            self.ready();
                        }
                    }
                }
                ["START_REPLICATION", rest @ ..] => {
                    let lsn = rest
                        .iter()
                        .find_map(|w| w.parse::<Lsn>().ok())
                        .expect("a start position");
                    let timeline = rest
                        .iter()
                        .position(|w| *w == "TIMELINE")
                        .and_then(|i| rest.get(i + 1)?.parse().ok())
                        .unwrap_or(1);
                    return Some((lsn, timeline));
                }
                _ => {
                    self.error("ERROR", "42601", &format!("syntax error in {query:?}"));
                    self.ready();
                }
            }
        }
    }

    /// Enters CopyBoth mode (CopyBothResponse, no columns).
    pub fn copy_both(&mut self) {
        self.send(&message(b'W', &[0, 0, 0]));
    }

    /// Sends `data` as XLogData messages starting at `start`, as walsender.c cuts them.
    pub fn xlog(&mut self, start: Lsn, data: &[u8]) {
        for (i, chunk) in data.chunks(MAX_SEND_BYTES).enumerate() {
            let at = Lsn(start.0 + (i * MAX_SEND_BYTES) as u64);
            self.copy_data(&xlog_data(at, Lsn(start.0 + data.len() as u64), chunk));
        }
    }

    /// Sends the real WAL from `from` to `to`.
    pub fn stream(&mut self, wal: &RealWal, from: Lsn, to: Lsn) {
        self.xlog(from, wal.between(from, to));
    }

    /// A keepalive saying the server's WAL ends at `end`.
    pub fn keepalive(&mut self, end: Lsn, reply_requested: bool) {
        let mut k = vec![b'k'];
        k.extend_from_slice(&end.0.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(u8::from(reply_requested));
        self.copy_data(&k);
    }

    /// One CopyData message around `payload`.
    pub fn copy_data(&mut self, payload: &[u8]) {
        self.send(&message(b'd', payload));
    }

    /// An ErrorResponse.
    pub fn error(&mut self, severity: &str, code: &str, text: &str) {
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            body.push(field);
            body.extend(cstr(value));
        }
        body.push(0);
        self.send(&message(b'E', &body));
    }

    /// Ends the timeline as walsender.c does: CopyDone, the client's CopyDone, then the next
    /// timeline and where it starts, CommandComplete and ReadyForQuery.
    pub fn end_timeline(&mut self, next: u32, start: Lsn) -> Option<()> {
        self.send(&message(b'c', &[]));
        loop {
            let (tag, _) = self.incoming.recv_timeout(Duration::from_secs(60)).ok()?;
            if tag == b'c' {
                break;
            }
        }
        let (next, start) = (next.to_string(), start.to_string());
        self.rows(
            &["next_tli", "next_tli_startpos"],
            &[vec![Some(next.as_bytes()), Some(start.as_bytes())]],
            "START_STREAMING",
        );
        Some(())
    }

    /// Sends bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        // The receiver may have gone already: what it did about it is what the test checks.
        let _ = self.stream.write_all(bytes);
    }

    /// Closes the server's side of the connection (the receiver may still write).
    pub fn hang_up(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Sends a keepalive at `end` asking for a reply, and waits up to 15 s for the status
    /// update that answers it.
    pub fn keepalive_and_wait_reply(&mut self, end: Lsn) {
        let before = self.statuses.lock().expect("statuses").len();
        self.keepalive(end, true);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while self.statuses.lock().expect("statuses").len() == before
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the receiver closes the connection, or `timeout` passes.
    pub fn wait_for_close(&mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match self.incoming.recv_timeout(Duration::from_millis(100)) {
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                _ => continue,
            }
        }
    }

    fn close(mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn next_query(&mut self) -> Option<String> {
        loop {
            match self.incoming.recv_timeout(Duration::from_secs(60)).ok()? {
                (b'Q', body) => {
                    let text = String::from_utf8_lossy(&body);
                    return Some(text.trim_end_matches('\0').to_string());
                }
                (b'X', _) => return None,
                _ => continue,
            }
        }
    }

    fn rows(&mut self, columns: &[&str], rows: &[Vec<Option<&[u8]>>], tag: &str) {
        let mut out = message(b'T', &row_description(columns));
        for row in rows {
            let mut body = (row.len() as u16).to_be_bytes().to_vec();
            for value in row {
                match value {
                    Some(v) => {
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend_from_slice(v);
                    }
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            out.extend(message(b'D', &body));
        }
        out.extend(message(b'C', &cstr(tag)));
        out.extend(message(b'Z', b"I"));
        self.send(&out);
    }

    fn ready(&mut self) {
        self.send(&message(b'Z', b"I"));
    }
}

/// Reads the client's messages: status updates are recorded with what the archive holds at
/// that moment, everything else goes to the script.
fn read_client(
    stream: &mut TcpStream,
    sender: &Sender<(u8, Vec<u8>)>,
    statuses: &Mutex<Vec<StatusUpdate>>,
    probe: &Probe,
) {
    loop {
        let mut tag = [0u8];
        if stream.read_exact(&mut tag).is_err() {
            return;
        }
        let Some(len) = read_u32(stream) else { return };
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        if tag[0] == b'd' && body.first() == Some(&b'r') && body.len() == 34 {
            let flush = Lsn(u64::from_be_bytes(body[9..17].try_into().expect("8 bytes")));
            let held = probe();
            statuses
                .lock()
                .expect("statuses")
                .push(StatusUpdate { flush, held });
        } else if sender.send((tag[0], body)).is_err() {
            return;
        }
    }
}

/// An XLogData payload.
pub fn xlog_data(start: Lsn, server_end: Lsn, data: &[u8]) -> Vec<u8> {
    let mut w = vec![b'w'];
    w.extend_from_slice(&start.0.to_be_bytes());
    w.extend_from_slice(&server_end.0.to_be_bytes());
    w.extend_from_slice(&0i64.to_be_bytes());
    w.extend_from_slice(data);
    w
}

/// A backend message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as u16).to_be_bytes().to_vec();
    for name in columns {
        body.extend(cstr(name));
        body.extend_from_slice(&0u32.to_be_bytes()); // table
        body.extend_from_slice(&0u16.to_be_bytes()); // column
        body.extend_from_slice(&25u32.to_be_bytes()); // text
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    body
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn read_u32(stream: &mut TcpStream) -> Option<u32> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    Some(u32::from_be_bytes(len))
}
