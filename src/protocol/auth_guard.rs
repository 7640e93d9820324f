//! `require_auth` for a connection whose authentication another crate answers (the SQL
//! connection: tokio-postgres, which has no such setting). The server's messages are read as
//! they arrive until authentication ends; one that `require_auth` rules out ends the stream
//! with an error before the client sees it, so no password goes to a server that was not
//! supposed to ask for it. The guard also tells whether the server let the client in, which
//! decides whether a failed attempt may be tried the other way (with or without TLS).
//! [`AuthWatch`] is the pure part; [`AuthGuard`] the stream around it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::require_auth::{Method, RequireAuth};

/// Longest message the watch buffers before authentication ends (SASL messages are a few
/// hundred bytes).
const MAX_MESSAGE: usize = 64 * 1024;

/// The refusal, as the error the guarded stream fails with (find it with
/// [`AuthRefused::in_chain`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthRefused(pub String);

impl AuthRefused {
    /// The refusal in `error`'s chain of causes, if any.
    pub fn in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AuthRefused> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(refused) = e.downcast_ref::<AuthRefused>() {
                return Some(refused);
            }
            if let Some(refused) = (e.downcast_ref::<io::Error>())
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<AuthRefused>())
            {
                return Some(refused);
            }
            cause = e.source();
        }
        None
    }
}

/// Reads the server's messages up to the end of authentication and applies `require_auth`.
#[derive(Debug)]
pub struct AuthWatch {
    /// `None`: nothing is refused, authentication is only followed.
    policy: Option<RequireAuth>,
    /// Bytes of a message not yet whole.
    pending: Vec<u8>,
    /// The client has answered a request completely (as far as the server's messages tell: a
    /// password requested, or a SCRAM exchange the server ended with its final message).
    finished: bool,
}

/// What the watch makes of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Authentication goes on: keep watching.
    Watching,
    /// The server let the client in (AuthenticationOk): nothing more to watch.
    LoggedIn,
    /// The server ended authentication with an error: nothing more to watch.
    Done,
    /// A request, or an end, that `require_auth` rules out.
    Refused(String),
}

impl AuthWatch {
    /// A watch applying `policy` (`None`: following authentication only).
    pub fn new(policy: Option<RequireAuth>) -> AuthWatch {
        AuthWatch {
            policy,
            pending: Vec::new(),
            finished: false,
        }
    }

    /// Takes the next bytes the server sent.
    pub fn feed(&mut self, bytes: &[u8]) -> Seen {
        self.pending.extend_from_slice(bytes);
        loop {
            let Some(header) = self.pending.get(..5) else {
                return Seen::Watching;
            };
            let tag = header[0];
            let length = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
            if !(4..=MAX_MESSAGE).contains(&length) {
                return Seen::Refused(format!(
                    "invalid message from the server during authentication ({length} bytes)"
                ));
            }
            let Some(body) = self.pending.get(5..1 + length) else {
                return Seen::Watching;
            };
            match tag {
                b'R' => {
                    let Some(code) = body.get(..4) else {
                        return Seen::Refused("invalid authentication request".into());
                    };
                    let code = u32::from_be_bytes(code.try_into().expect("4 bytes"));
                    let request = match code {
                        0 => None,
                        3 => Some(Method::Password),
                        5 => Some(Method::Md5),
                        7 | 8 => Some(Method::Gss),
                        9 => Some(Method::Sspi),
                        10 => Some(Method::ScramSha256),
                        // SASL continue: part of an exchange already allowed.
                        11 => {
                            self.pending.drain(..1 + length);
                            continue;
                        }
                        12 => {
                            self.finished = true;
                            self.pending.drain(..1 + length);
                            continue;
                        }
                        // Others (Kerberos, SCM credentials) the client refuses itself.
                        _ => return Seen::Done,
                    };
                    let refusal = (self.policy.as_ref())
                        .and_then(|policy| policy.refusal(request, self.finished));
                    if let Some(refusal) = refusal {
                        return Seen::Refused(refusal);
                    }
                    if request.is_none() {
                        return Seen::LoggedIn;
                    }
                    if matches!(request, Some(Method::Password | Method::Md5)) {
                        self.finished = true;
                    }
                }
                b'E' => return Seen::Done,
                _ => {}
            }
            self.pending.drain(..1 + length);
        }
    }
}

/// A stream that applies an [`AuthWatch`] to what the server sends until authentication ends,
/// then passes everything through.
pub struct AuthGuard<S> {
    inner: S,
    watch: Option<AuthWatch>,
    /// Set when the server lets the client in.
    logged_in: Arc<AtomicBool>,
}

impl<S> AuthGuard<S> {
    /// Guards `inner` with `policy` (`None`: refusing nothing); `logged_in` turns true at
    /// AuthenticationOk.
    pub fn new(inner: S, policy: Option<RequireAuth>, logged_in: Arc<AtomicBool>) -> AuthGuard<S> {
        AuthGuard {
            inner,
            watch: Some(AuthWatch::new(policy)),
            logged_in,
        }
    }

    /// The stream guarded.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let Some(watch) = self.watch.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match watch.feed(&buf.filled()[before..]) {
            Seen::Watching => {}
            Seen::LoggedIn => {
                self.logged_in.store(true, Ordering::Relaxed);
                self.watch = None;
            }
            Seen::Done => self.watch = None,
            Seen::Refused(why) => {
                // What the server asked for never reaches the client.
                buf.set_filled(before);
                let refused = io::Error::new(io::ErrorKind::PermissionDenied, AuthRefused(why));
                return Poll::Ready(Err(refused));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authentication message with request `code` and `rest` after it.
    fn auth(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + rest.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(rest);
        m
    }

    fn watch(policy: &str) -> AuthWatch {
        AuthWatch::new(Some(RequireAuth::parse(policy).unwrap()))
    }

    #[test]
    fn a_request_require_auth_rules_out_is_refused_even_split_across_reads() {
        let cleartext = auth(3, b"");
        let mut w = watch("scram-sha-256");
        assert_eq!(w.feed(&cleartext[..3]), Seen::Watching);
        match w.feed(&cleartext[3..]) {
            Seen::Refused(why) => assert_eq!(
                why,
                "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            watch("!md5").feed(&auth(5, b"salt")),
            Seen::Refused(_)
        ));
        assert!(matches!(
            watch("md5").feed(&auth(10, b"SCRAM-SHA-256\0\0")),
            Seen::Refused(_)
        ));
    }

    #[test]
    fn an_allowed_exchange_ends_at_authentication_ok() {
        let mut scram = auth(10, b"SCRAM-SHA-256\0\0");
        scram.extend(auth(11, b"r=nonce"));
        scram.extend(auth(12, b"v=signature"));
        scram.extend(auth(0, b""));
        assert_eq!(watch("scram-sha-256").feed(&scram), Seen::LoggedIn);
        let mut w = watch("password");
        assert_eq!(w.feed(&auth(3, b"")), Seen::Watching);
        assert_eq!(w.feed(&auth(0, b"")), Seen::LoggedIn);
        // Without a policy, authentication is only followed.
        let mut follow = AuthWatch::new(None);
        assert_eq!(follow.feed(&auth(3, b"")), Seen::Watching);
        assert_eq!(follow.feed(&auth(0, b"")), Seen::LoggedIn);
        // The server's error ends the watch: the client reports it.
        assert_eq!(watch("scram-sha-256").feed(b"E\0\0\0\x05x"), Seen::Done);
    }

    #[test]
    fn a_server_that_skips_or_cuts_authentication_short_is_refused() {
        // trust: AuthenticationOk at once.
        assert!(matches!(
            watch("scram-sha-256").feed(&auth(0, b"")),
            Seen::Refused(_)
        ));
        assert_eq!(
            watch("scram-sha-256,none").feed(&auth(0, b"")),
            Seen::LoggedIn
        );
        // SCRAM begun, then Ok without the server's final message.
        let mut cut = auth(10, b"SCRAM-SHA-256\0\0");
        cut.extend(auth(0, b""));
        match watch("scram-sha-256").feed(&cut) {
            Seen::Refused(why) => assert!(why.ends_with("server did not complete authentication")),
            other => panic!("{other:?}"),
        }
    }
}
