//! A TCP proxy on loopback that can cut every connection and refuse new ones for a while:
//! an archive that becomes unreachable without losing what it holds. It can also rewrite
//! what clients send (a store that drops a request header), and hold every piece it forwards
//! for a while (a store or a network that is slow).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy to one target.
pub struct TcpProxy {
    addr: SocketAddr,
    paused: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Milliseconds each piece read waits before it is forwarded.
    delay_ms: Arc<AtomicU64>,
    /// Set while nothing is forwarded, but nothing is cut either.
    stalled: Arc<AtomicBool>,
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
            delay_ms: Arc::new(AtomicU64::new(0)),
            stalled: Arc::new(AtomicBool::new(false)),
        };
        let (paused, stopped, open, delay_ms, stalled) = (
            proxy.paused.clone(),
            proxy.stopped.clone(),
            proxy.open.clone(),
            proxy.delay_ms.clone(),
            proxy.stalled.clone(),
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
                    let (delay_ms, stalled, stopped) =
                        (delay_ms.clone(), stalled.clone(), stopped.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            let delay = delay_ms.load(Ordering::Relaxed);
                            if delay > 0 {
                                std::thread::sleep(Duration::from_millis(delay));
                            }
                            while stalled.load(Ordering::Relaxed)
                                && !stopped.load(Ordering::Relaxed)
                            {
                                std::thread::sleep(Duration::from_millis(20));
                            }
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

    /// Stops carrying anything, on open connections and new ones, without closing any (a
    /// network that silently drops packets), until [`TcpProxy::heal`]; what was held is
    /// delivered then, as TCP retransmits it.
    pub fn blackhole(&self) {
        self.stalled.store(true, Ordering::Relaxed);
    }

    /// Carries again what [`TcpProxy::blackhole`] held.
    pub fn heal(&self) {
        self.stalled.store(false, Ordering::Relaxed);
    }

    /// Holds every piece read from either side for `delay` before forwarding it (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).expect("a delay in range");
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.heal();
        self.pause();
    }
}
