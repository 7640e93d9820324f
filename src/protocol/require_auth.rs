//! `require_auth`: which authentication requests the client answers, with libpq's semantics
//! (fe-connect.c, `connectOptions2`; fe-auth.c, `check_expected_areq`). A comma-separated list
//! of `password`, `md5`, `gss`, `sspi`, `scram-sha-256` and `none`: the server must use one of
//! them (`none`: it may let the client in without authentication). Prefixed with `!` (all or
//! none of them), the server must use none of them (`!none`: it must authenticate somehow).

use std::fmt;

use super::conninfo::ConninfoError;

/// An authentication method the server may request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A cleartext password (`password`).
    Password,
    /// An MD5-hashed password (`md5`).
    Md5,
    /// GSSAPI (`gss`).
    Gss,
    /// SSPI (`sspi`).
    Sspi,
    /// SASL, that is SCRAM-SHA-256 (`scram-sha-256`).
    ScramSha256,
}

impl Method {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "password" => Method::Password,
            "md5" => Method::Md5,
            "gss" => Method::Gss,
            "sspi" => Method::Sspi,
            "scram-sha-256" => Method::ScramSha256,
            _ => return None,
        })
    }

    /// What the server asked for, as libpq words it when the request is refused.
    pub fn requested(self) -> &'static str {
        match self {
            Method::Password => "server requested a cleartext password",
            Method::Md5 => "server requested a hashed password",
            Method::Gss => "server requested GSSAPI authentication",
            Method::Sspi => "server requested SSPI authentication",
            Method::ScramSha256 => "server requested SASL authentication",
        }
    }
}

/// A parsed `require_auth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireAuth {
    /// The setting as given, for error messages.
    text: String,
    /// The methods the server may request, one bit each.
    allowed: u8,
    /// Whether the server must authenticate the client (not `none`, or `!none`).
    required: bool,
}

impl RequireAuth {
    /// Parses the setting; errors are worded as libpq's.
    pub fn parse(text: &str) -> Result<RequireAuth, ConninfoError> {
        let mut policy = RequireAuth {
            text: text.to_owned(),
            allowed: 0,
            required: true,
        };
        let mut negated = false;
        for (index, part) in text.split(',').enumerate() {
            let method = match part.strip_prefix('!') {
                Some(method) => {
                    if index == 0 {
                        // Start from everything and take away.
                        (policy.allowed, policy.required, negated) = (u8::MAX, false, true);
                    } else if !negated {
                        return Err(ConninfoError::RequireAuth(format!(
                            "negative require_auth method \"{part}\" cannot be mixed with \
                             non-negative methods"
                        )));
                    }
                    method
                }
                None if negated => {
                    return Err(ConninfoError::RequireAuth(format!(
                        "require_auth method \"{part}\" cannot be mixed with negative methods"
                    )));
                }
                None => part,
            };
            let duplicate = if method == "none" {
                // `none` lets an unauthenticated connection through; `!none` does not.
                let duplicate = policy.required == negated;
                policy.required = negated;
                duplicate
            } else {
                let Some(bit) = Method::from_name(method).map(Method::bit) else {
                    return Err(ConninfoError::InvalidValue {
                        keyword: "require_auth",
                        value: method.to_owned(),
                    });
                };
                let duplicate = match negated {
                    true => policy.allowed & bit == 0,
                    false => policy.allowed & bit != 0,
                };
                match negated {
                    true => policy.allowed &= !bit,
                    false => policy.allowed |= bit,
                }
                duplicate
            };
            if duplicate {
                return Err(ConninfoError::RequireAuth(format!(
                    "require_auth method \"{part}\" is specified more than once"
                )));
            }
        }
        Ok(policy)
    }

    /// Whether the server may request `method`.
    pub fn allows(&self, method: Method) -> bool {
        self.allowed & method.bit() != 0
    }

    /// Whether the server must authenticate the client before letting it in.
    pub fn requires_authentication(&self) -> bool {
        self.required
    }

    /// Why `request` (`None`: AuthenticationOk) is refused, worded as libpq's
    /// `check_expected_areq`, or `None` when it may go on; `finished`: the client has answered
    /// a request completely (a password sent, a SCRAM exchange verified).
    pub fn refusal(&self, request: Option<Method>, finished: bool) -> Option<String> {
        let reason = match request {
            None if self.required && !finished => "server did not complete authentication",
            Some(method) if !self.allows(method) => method.requested(),
            _ => return None,
        };
        Some(format!(
            "authentication method requirement \"{self}\" failed: {reason}"
        ))
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Method::*;

    const ALL: [Method; 5] = [Password, Md5, Gss, Sspi, ScramSha256];

    fn allowed(text: &str) -> (Vec<Method>, bool) {
        let policy = RequireAuth::parse(text).unwrap();
        let methods = ALL.into_iter().filter(|m| policy.allows(*m)).collect();
        (methods, policy.requires_authentication())
    }

    #[test]
    fn lists_allow_exactly_their_methods() {
        assert_eq!(allowed("scram-sha-256"), (vec![ScramSha256], true));
        assert_eq!(allowed("md5,password"), (vec![Password, Md5], true));
        assert_eq!(allowed("none"), (vec![], false));
        assert_eq!(allowed("scram-sha-256,none"), (vec![ScramSha256], false));
        assert_eq!(allowed("gss,sspi"), (vec![Gss, Sspi], true));
    }

    #[test]
    fn negated_lists_allow_everything_else() {
        assert_eq!(
            allowed("!password"),
            (vec![Md5, Gss, Sspi, ScramSha256], false)
        );
        assert_eq!(
            allowed("!password,!md5"),
            (vec![Gss, Sspi, ScramSha256], false)
        );
        assert_eq!(allowed("!none"), (ALL.to_vec(), true));
        assert!(allowed("!none,!password").1);
    }

    #[test]
    fn mistakes_are_refused_as_libpq_words_them() {
        let error = |text: &str| RequireAuth::parse(text).unwrap_err().to_string();
        assert_eq!(
            error("password,!md5"),
            "negative require_auth method \"!md5\" cannot be mixed with non-negative methods"
        );
        assert_eq!(
            error("!password,md5"),
            "require_auth method \"md5\" cannot be mixed with negative methods"
        );
        assert_eq!(
            error("md5,md5"),
            "require_auth method \"md5\" is specified more than once"
        );
        assert_eq!(
            error("!md5,!md5"),
            "require_auth method \"!md5\" is specified more than once"
        );
        assert_eq!(
            error("none,none"),
            "require_auth method \"none\" is specified more than once"
        );
        assert_eq!(error("scram"), "invalid require_auth value: \"scram\"");
        assert_eq!(error("md5,"), "invalid require_auth value: \"\"");
    }
}
