//! Authentication after the startup message: the server's requests answered (cleartext
//! password, md5, SCRAM-SHA-256 and, over TLS, SCRAM-SHA-256-PLUS with `tls-server-end-point`
//! channel binding), each checked first against `require_auth` and `channel_binding` as libpq
//! checks them (fe-auth.c: `check_expected_areq`, `pg_SASL_init`; fe-auth-scram.c).

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    self, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{Connection, Error, Result, ServerError};
use crate::protocol::channel_binding::tls_server_end_point;
use crate::protocol::conninfo::{ChannelBinding, ConnParams};
use crate::protocol::require_auth::Method;

/// How far the exchange has come, for the checks at AuthenticationOk.
#[derive(Default)]
struct Exchange {
    /// The client answered a request completely (a password sent, SCRAM verified).
    finished: bool,
    /// SCRAM was bound to the TLS channel.
    bound: bool,
}

impl Connection {
    /// Answers the server's authentication requests until AuthenticationOk.
    pub(super) async fn authenticate(&mut self, params: &ConnParams) -> Result<()> {
        let mut exchange = Exchange::default();
        loop {
            let message = self.read_message().await?;
            let request = match &message {
                Message::AuthenticationOk => None,
                Message::AuthenticationCleartextPassword => Some(Method::Password),
                Message::AuthenticationMd5Password(_) => Some(Method::Md5),
                Message::AuthenticationSasl(_) => Some(Method::ScramSha256),
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                    Some(Method::Gss)
                }
                Message::AuthenticationSspi => Some(Method::Sspi),
                Message::AuthenticationKerberosV5 => {
                    return Err(Error::UnsupportedAuthentication("Kerberos"));
                }
                Message::AuthenticationScmCredential => {
                    return Err(Error::UnsupportedAuthentication("SCM credentials"));
                }
                Message::ErrorResponse(body) => {
                    return Err(Error::Server(ServerError::from_fields(body.fields())?));
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message during authentication".into(),
                    ));
                }
            };
            check_expected(params, request, &exchange)?;
            match message {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    let password = self.password(params)?;
                    frontend::password_message(password.as_bytes(), &mut self.write_buf)?;
                    self.flush().await?;
                    exchange.finished = true;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = self.password(params)?;
                    let hash = md5_hash(params.user.as_bytes(), password.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                    self.flush().await?;
                    exchange.finished = true;
                }
                Message::AuthenticationSasl(body) => {
                    let mechanisms = body.mechanisms().collect::<Vec<&str>>()?;
                    exchange.bound = self.scram(params, &mechanisms).await?;
                    exchange.finished = true;
                }
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                    return Err(Error::UnsupportedAuthentication("GSSAPI"));
                }
                Message::AuthenticationSspi => {
                    return Err(Error::UnsupportedAuthentication("SSPI"));
                }
                _ => unreachable!("every other message returned above"),
            }
        }
    }

    /// A SCRAM exchange; returns whether it was bound to the TLS channel.
    async fn scram(&mut self, params: &ConnParams, mechanisms: &[&str]) -> Result<bool> {
        let encrypted = self.server_certificate.is_some();
        let plus_offered = mechanisms.contains(&SCRAM_SHA_256_PLUS);
        if plus_offered && !encrypted {
            return Err(Error::Protocol(
                "server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection".into(),
            ));
        }
        let plus = plus_offered && params.channel_binding != ChannelBinding::Disable;
        if !plus && !mechanisms.contains(&SCRAM_SHA_256) {
            return Err(Error::UnsupportedAuthentication(
                "SASL without SCRAM-SHA-256",
            ));
        }
        if !plus && params.channel_binding == ChannelBinding::Require {
            return Err(Error::AuthenticationRefused(
                "channel binding is required, but server did not offer an authentication \
                 method that supports channel binding"
                    .into(),
            ));
        }
        let (mechanism, binding) = match &self.server_certificate {
            Some(certificate) if plus => {
                let data = tls_server_end_point(certificate).map_err(Error::Tls)?;
                (
                    SCRAM_SHA_256_PLUS,
                    sasl::ChannelBinding::tls_server_end_point(data),
                )
            }
            // The client could bind but the server did not offer it: say so ("y"), so a man
            // in the middle that stripped -PLUS from the offer is caught by the server.
            Some(_) if params.channel_binding != ChannelBinding::Disable => {
                (SCRAM_SHA_256, sasl::ChannelBinding::unrequested())
            }
            _ => (SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        };
        let password = self.password(params)?;
        let mut scram = ScramSha256::new(password.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), &mut self.write_buf)?;
        self.flush().await?;
        match self.read_message().await? {
            Message::AuthenticationSaslContinue(body) => scram.update(body.data())?,
            Message::ErrorResponse(body) => {
                return Err(Error::Server(ServerError::from_fields(body.fields())?));
            }
            _ => return Err(Error::Protocol("expected SASL continue".into())),
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf)?;
        self.flush().await?;
        match self.read_message().await? {
            Message::AuthenticationSaslFinal(body) => scram.finish(body.data())?,
            Message::ErrorResponse(body) => {
                return Err(Error::Server(ServerError::from_fields(body.fields())?));
            }
            _ => return Err(Error::Protocol("expected SASL final".into())),
        }
        Ok(plus)
    }

    fn password(&self, params: &ConnParams) -> Result<String> {
        params.password_for(&self.host).ok_or(Error::NoPassword)
    }
}

/// Refuses a request (`None`: AuthenticationOk) that `require_auth` or `channel_binding`
/// rules out, before anything is answered: a password never goes to a server that was not
/// supposed to ask for it.
fn check_expected(params: &ConnParams, request: Option<Method>, exchange: &Exchange) -> Result<()> {
    if let Some(refusal) =
        (params.require_auth.as_ref()).and_then(|policy| policy.refusal(request, exchange.finished))
    {
        return Err(Error::AuthenticationRefused(refusal));
    }
    if params.channel_binding == ChannelBinding::Require {
        match request {
            Some(Method::ScramSha256) => {}
            None if exchange.bound => {}
            None => {
                return Err(Error::AuthenticationRefused(
                    "channel binding required, but server authenticated client without channel \
                     binding"
                        .into(),
                ));
            }
            Some(_) => {
                return Err(Error::AuthenticationRefused(
                    "channel binding required but not supported by server's authentication \
                     request"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(conninfo: &str) -> ConnParams {
        ConnParams::parse(conninfo, &|_| None).unwrap()
    }

    fn check(conninfo: &str, request: Option<Method>, finished: bool, bound: bool) -> String {
        let exchange = Exchange { finished, bound };
        match check_expected(&params(conninfo), request, &exchange) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn require_auth_refuses_what_it_does_not_list_before_answering() {
        let scram = "user=u require_auth=scram-sha-256";
        assert_eq!(
            check(scram, Some(Method::Password), false, false),
            "authentication method requirement \"scram-sha-256\" failed: server requested a \
             cleartext password"
        );
        assert_eq!(check(scram, Some(Method::ScramSha256), false, false), "ok");
        assert_eq!(check(scram, None, true, false), "ok");
        // A server that lets the client in without asking (trust).
        assert_eq!(
            check(scram, None, false, false),
            "authentication method requirement \"scram-sha-256\" failed: server did not \
             complete authentication"
        );
        assert_eq!(check("user=u require_auth=none", None, false, false), "ok");
        let no_md5 = "user=u require_auth=!md5";
        assert_eq!(check(no_md5, None, false, false), "ok");
        assert!(check(no_md5, Some(Method::Md5), false, false).ends_with("a hashed password"));
        assert_eq!(check(no_md5, Some(Method::Password), false, false), "ok");
        assert_eq!(check("user=u", Some(Method::Password), false, false), "ok");
    }

    #[test]
    fn channel_binding_require_accepts_only_a_bound_scram_exchange() {
        let require = "user=u channel_binding=require";
        assert_eq!(
            check(require, Some(Method::ScramSha256), false, false),
            "ok"
        );
        assert_eq!(check(require, None, true, true), "ok");
        assert_eq!(
            check(require, None, true, false),
            "channel binding required, but server authenticated client without channel binding"
        );
        assert_eq!(
            check(require, Some(Method::Md5), false, false),
            "channel binding required but not supported by server's authentication request"
        );
        assert_eq!(check("user=u", None, false, false), "ok");
    }
}
