//! A TCP proxy on loopback that can cut every connection and refuse new ones for a while:
//! an archive that becomes unreachable without losing what it holds. It can also rewrite
//! what clients send: a store that drops a request header.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy to one target.
pub struct TcpProxy {
    addr: SocketAddr,
    paused: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    /// Forwards a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> TcpProxy {
        Self::rewriting(target, None)
    }

    /// Forwards a free loopback port to `target`, replacing `from` with `to` (of the same
    /// length) in what clients send, within each read.
    pub fn rewriting(
        target: SocketAddr,
        rewrite: Option<(&'static [u8], &'static [u8])>,
    ) -> TcpProxy {
        if let Some((from, to)) = rewrite {
            assert_eq!(from.len(), to.len(), "a rewrite keeps lengths");
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = TcpProxy {
            addr,
            paused: Arc::new(AtomicBool::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (paused, stopped, open) = (
            proxy.paused.clone(),
            proxy.stopped.clone(),
            proxy.open.clone(),
        );
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if paused.load(Ordering::Relaxed) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let mut streams = open.lock().unwrap();
                for (from, to, rewrite) in [(&client, &server, rewrite), (&server, &client, None)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if let Some((old, new)) = rewrite {
                                let mut at = 0;
                                while let Some(i) =
                                    buf[at..n].windows(old.len()).position(|w| w == old)
                                {
                                    buf[at + i..at + i + old.len()].copy_from_slice(new);
                                    at += i + old.len();
                                }
                            }
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
                streams.extend([client, server]);
            }
        });
        proxy
    }

    /// The proxy's address as an http endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones until [`TcpProxy::resume`].
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.pause();
    }
}
