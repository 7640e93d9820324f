//! An HTTP proxy on loopback in front of an S3 server that answers a share of the requests
//! itself with S3's own server errors, `500 InternalError` and `503 SlowDown`, each with the
//! XML error body S3 sends, and passes the others through: a store that is overloaded or
//! having a bad moment, without a byte of what it holds changing.
//!
//! Requests are read whole (head and `Content-Length` body); one that passes goes to the
//! server on a connection of its own, asked to close after the answer, which is relayed to the
//! client as it comes, and the client's connection closes with it. An injected error keeps the
//! client's connection open, as S3 does.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A running fault-injecting proxy to one S3 server.
pub struct FaultyS3 {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// What the proxy's threads share.
#[derive(Default)]
struct Shared {
    stopped: AtomicBool,
    /// Of every `period` requests, the first `failing` are answered with an error.
    failing: AtomicU64,
    period: AtomicU64,
    /// Requests seen.
    requests: AtomicU64,
    /// Errors injected.
    injected: AtomicU64,
}

impl FaultyS3 {
    /// Proxies a free loopback port to the S3 server at `target`, passing everything through.
    pub fn start(target: SocketAddr) -> FaultyS3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        shared.period.store(1, Ordering::Relaxed);
        let accepting = shared.clone();
        std::thread::spawn(move || {
            while !accepting.stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let shared = accepting.clone();
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    let _ = serve(client, target, &shared);
                });
            }
        });
        FaultyS3 { addr, shared }
    }

    /// The proxy's address as an http endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, answers `failing` of every `period` requests with an error (0: none).
    pub fn fail(&self, failing: u64, period: u64) {
        assert!(period > 0 && failing <= period, "{failing} of {period}");
        self.shared.period.store(period, Ordering::Relaxed);
        self.shared.failing.store(failing, Ordering::Relaxed);
    }

    /// Requests seen and errors injected so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.requests.load(Ordering::Relaxed),
            self.shared.injected.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultyS3 {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
    }
}

/// One request read from a client.
struct Request {
    /// The request line and headers, without the blank line that ends them.
    head: Vec<String>,
    body: Vec<u8>,
}

/// Serves one client connection until it closes or a request passes through.
fn serve(client: TcpStream, target: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    while let Some(request) = read_request(&mut reader)? {
        let number = shared.requests.fetch_add(1, Ordering::Relaxed);
        let period = shared.period.load(Ordering::Relaxed).max(1);
        if number % period < shared.failing.load(Ordering::Relaxed) {
            let injected = shared.injected.fetch_add(1, Ordering::Relaxed);
            let head_only = request.head.first().is_some_and(|l| l.starts_with("HEAD "));
            client.write_all(&error_response(injected, head_only))?;
            continue;
        }
        pass_through(&request, target, &mut client)?;
        break;
    }
    client.shutdown(Shutdown::Both)
}

/// Reads a request's head and `Content-Length` body; `None` at the end of the connection.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let header = |name: &str| {
        head.iter().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some() {
        return Err(std::io::Error::other(
            "a chunked request body: the fault proxy reads Content-Length bodies only",
        ));
    }
    let length: usize = header("content-length").map_or(Ok(0), |v| {
        v.parse()
            .map_err(|_| std::io::Error::other(format!("Content-Length {v:?}")))
    })?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request { head, body }))
}

/// Sends `request` to `target` on a connection of its own, asked to close after answering,
/// and relays the answer to `client` until the server closes.
fn pass_through(
    request: &Request,
    target: SocketAddr,
    client: &mut TcpStream,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(target)?;
    let mut head = String::new();
    for line in request.head.iter().filter(|line| {
        !line
            .split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("connection"))
    }) {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    server.write_all(head.as_bytes())?;
    server.write_all(&request.body)?;
    std::io::copy(&mut server, client)?;
    Ok(())
}

/// The `n`th injected answer: `500 InternalError` and `503 SlowDown` in turn, with S3's XML
/// error body (none to a HEAD request).
fn error_response(n: u64, head_only: bool) -> Vec<u8> {
    let (status, code, message) = if n % 2 == 0 {
        (
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        )
    } else {
        (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>FAULT{n:012}</RequestId>\
         <HostId>walhalla-fault-proxy</HostId></Error>"
    );
    let body = if head_only { String::new() } else { body };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: FAULT{n:012}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
