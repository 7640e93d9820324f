//! Reading a store's error answers: which ones no retry will cure (no such bucket, access
//! denied, refused or missing credentials, a request the store rejects), what the operator
//! should do about each, and a one-line account of any error instead of the raw XML body.

use std::fmt;

use super::Location;

/// A store's answer that waiting will not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The bucket or container does not exist.
    NoSuchBucket,
    /// The credentials are valid but may not do this.
    AccessDenied,
    /// The store does not accept the credentials (unknown key, bad signature, expired token).
    BadCredentials,
    /// No credentials were found anywhere walhalla looks.
    NoCredentials,
    /// The store rejected the request for another reason (a wrong region, an invalid name).
    Rejected,
    /// The endpoint's TLS certificate was refused: issued by a CA this host does not trust,
    /// expired, or for another name.
    Untrusted,
}

/// Marks the error of a credential provider that found no credentials, so that it reads as
/// [`Refusal::NoCredentials`] wherever it surfaces.
#[derive(Debug, thiserror::Error)]
#[error("no credentials found: {0}")]
pub struct NoCredentials(pub String);

/// An error answer's parts: the HTTP status and, when the body is an S3/GCS/Azure XML error
/// document, its `Code` and `Message`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answer {
    status: Option<u16>,
    code: Option<String>,
    message: Option<String>,
}

impl Answer {
    fn of(text: &str) -> Answer {
        let status = text
            .split_once("status code: ")
            .and_then(|(_, rest)| rest.get(..3))
            .and_then(|digits| digits.parse().ok());
        Answer {
            status,
            code: element(text, "Code"),
            message: element(text, "Message"),
        }
    }
}

/// The text of the first `<name>…</name>` in `text`.
fn element(text: &str, name: &str) -> Option<String> {
    let (_, rest) = text.split_once(&format!("<{name}>"))?;
    let (inner, _) = rest.split_once(&format!("</{name}>"))?;
    Some(inner.trim().to_string())
}

impl Refusal {
    /// The refusal `error` carries, or `None` when it is a miss, a conflict, or something
    /// retrying may cure (a network failure, a server error, throttling).
    pub fn of(error: &object_store::Error) -> Option<Refusal> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if e.is::<NoCredentials>() {
                return Some(Refusal::NoCredentials);
            }
            if refused_certificate(e) {
                return Some(Refusal::Untrusted);
            }
            cause = e.source();
        }
        let answer = Answer::of(&error.to_string());
        let by_code = match answer.code.as_deref() {
            Some("NoSuchBucket" | "ContainerNotFound") => Some(Refusal::NoSuchBucket),
            Some(
                "AccessDenied"
                | "AllAccessDisabled"
                | "AccountIsDisabled"
                | "AuthorizationFailure"
                | "AuthorizationPermissionMismatch",
            ) => Some(Refusal::AccessDenied),
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "AuthenticationFailed"
                | "InvalidSecurity",
            ) => Some(Refusal::BadCredentials),
            _ => None,
        };
        if by_code.is_some() {
            return by_code;
        }
        match error {
            object_store::Error::PermissionDenied { .. } => Some(Refusal::AccessDenied),
            object_store::Error::Unauthenticated { .. } => Some(Refusal::BadCredentials),
            // A redirect is the answer of another region's endpoint: it stays.
            object_store::Error::Generic { .. } if is_redirect(&error.to_string()) => {
                Some(Refusal::Rejected)
            }
            object_store::Error::Generic { .. } => match answer.status {
                // Timeouts, conflicts between concurrent requests and throttling pass.
                Some(400..=499) if !matches!(answer.status, Some(408 | 409 | 429)) => {
                    Some(Refusal::Rejected)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// What the operator should do, for an archive at `location`.
    fn hint(&self, location: &Location) -> String {
        let (bucket, _) = location.bucket().unwrap_or(("", ""));
        let credentials = credentials(location);
        match self {
            Refusal::NoSuchBucket => {
                let kind = match location {
                    Location::Azure { .. } => "container",
                    _ => "bucket",
                };
                format!("create {kind} {bucket:?} or correct --archive (and the endpoint or region)")
            }
            Refusal::AccessDenied => match location {
                Location::S3 { .. } => "the credentials need s3:GetObject, s3:PutObject and s3:ListBucket on the bucket".into(),
                _ => "the credentials need permission to read, write and list the bucket".into(),
            },
            Refusal::BadCredentials | Refusal::NoCredentials => format!("set {credentials}"),
            Refusal::Rejected => "check --archive, the endpoint and the region".into(),
            Refusal::Untrusted => match unusable_ssl_cert_file() {
                Some(why) => why,
                None => "for an endpoint whose certificate a private CA issued, set \
                     SSL_CERT_FILE to a PEM file holding that CA; check that the endpoint's name \
                     is one its certificate names, that the certificate has not expired, and \
                     this host's clock"
                    .into(),
            },
        }
    }

    /// One line: what the store said, and what to do.
    pub fn describe(&self, location: &Location, error: &object_store::Error) -> String {
        let what = match self {
            Refusal::NoSuchBucket => "no such bucket",
            Refusal::AccessDenied => "access denied",
            Refusal::BadCredentials => "the store refused the credentials",
            Refusal::NoCredentials => "no credentials found",
            Refusal::Rejected => "the store rejected the request",
            Refusal::Untrusted => "the endpoint's TLS certificate was refused",
        };
        let mut said = Brief(error).to_string();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if let Some(NoCredentials(why)) = e.downcast_ref() {
                said = one_line(why);
            }
            cause = e.source();
        }
        let mut hint = self.hint(location);
        // A denial without an error code (the answer to a HEAD request has no body) may as well be
        // the store refusing wrong credentials.
        if *self == Refusal::AccessDenied && Answer::of(&error.to_string()).code.is_none() {
            hint = format!(
                "the answer gave no error code (a HEAD request's never does), so the credentials may be wrong too: check {}; or {hint}",
                credentials(location)
            );
        }
        format!("{what} ({said}); {hint}")
    }
}

/// What is wrong with the `SSL_CERT_FILE` the environment names, if anything: unreadable by
/// this user, or holding no PEM certificate. (The verifier's own warning about it is kept out
/// of the log with its per-handshake errors.)
fn unusable_ssl_cert_file() -> Option<String> {
    let path = std::env::var_os("SSL_CERT_FILE")?;
    let shown = std::path::Path::new(&path).display();
    match std::fs::read(&path) {
        Err(e) => Some(format!(
            "SSL_CERT_FILE={shown} cannot be read by this user ({e}): make it readable, or \
             point it at a readable PEM file holding the endpoint's CA"
        )),
        Ok(bytes)
            if !bytes
                .windows(27)
                .any(|w| w == b"-----BEGIN CERTIFICATE-----") =>
        {
            Some(format!(
                "SSL_CERT_FILE={shown} holds no PEM certificate: point it at the endpoint's CA"
            ))
        }
        Ok(_) => None,
    }
}

/// Whether object_store's `text` says a request ended at a redirect (its own wording: an
/// endpoint of another region answers with one), not merely that a key holds the word.
fn is_redirect(text: &str) -> bool {
    text.contains("Received redirect without LOCATION") || text.contains("error following redirect")
}

/// Whether `error` is rustls refusing the peer's certificate, directly or as the error an
/// I/O error carries, maybe inside another I/O error (the TLS stream and the HTTP connector
/// report it so; `source()` skips what an I/O error carries).
fn refused_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_rustls::rustls::Error as Tls;
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return io.get_ref().is_some_and(|inner| refused_certificate(inner));
    }
    matches!(
        error.downcast_ref::<Tls>(),
        Some(Tls::InvalidCertificate(_) | Tls::PeerIncompatible(_))
    )
}

/// Where the credentials for an archive at `location` come from.
fn credentials(location: &Location) -> &'static str {
    match location {
        Location::Gcs { .. } => "GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT)",
        Location::Azure { .. } => {
            "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or a SAS token, or AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID)"
        }
        _ => {
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials, or run with a web identity, ECS or instance role"
        }
    }
}

/// An error in one line: an XML error body becomes its status, code and message; line
/// breaks go.
pub struct Brief<'a>(pub &'a object_store::Error);

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        let answer = Answer::of(&text);
        if answer.code.is_some() || answer.message.is_some() {
            let head = text.split(" - Server returned").next().unwrap_or(&text);
            let head = head.split(": Error performing").next().unwrap_or(head);
            let mut parts = vec![head.trim().to_string()];
            parts.extend(answer.status.map(|s| s.to_string()));
            parts.extend(answer.code);
            parts.extend(answer.message);
            return write!(f, "{}", one_line(&parts.join(": ")));
        }
        // object_store's message may stop at "error sending request": the root cause (a
        // refused connection, a certificate not trusted) says what to fix.
        let mut root: &dyn std::error::Error = self.0;
        while let Some(source) = root.source() {
            root = source;
        }
        let cause = root.to_string();
        let text = if std::ptr::addr_eq(root, self.0) || text.contains(&cause) {
            text
        } else {
            format!("{text}: {cause}")
        };
        write!(f, "{}", one_line(&without_staging_suffix(&text)))
    }
}

/// `text` without the `#N` that object_store's local store appends to the file it writes
/// before renaming it: an error about that file is about the object named without it.
fn without_staging_suffix(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('#') {
        let after = &rest[at + 1..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let ends_name = after[digits..].starts_with(':') || after[digits..].is_empty();
        out.push_str(&rest[..at]);
        if digits == 0 || !ends_name {
            out.push('#');
        }
        rest = if digits > 0 && ends_name {
            &after[digits..]
        } else {
            after
        };
    }
    out.push_str(rest);
    out
}

/// `text` with every run of white space, line breaks included, as one space.
fn one_line(text: &str) -> String {
    // A store's message may quote its endpoint with a user and password in it.
    crate::mask::mask_urls(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What object_store makes of an S3 error answer to a listing.
    fn answer(status: &str, code: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!(
                "Error performing list request: Error performing GET http://127.0.0.1:9/b?list-type=2 in 7ms - \
                 Server returned non-2xx status code: {status}: <?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
                 <Error><Code>{code}</Code><Message>It says why.\nRequestId:1</Message><RequestId>X</RequestId></Error>"
            )
            .into(),
        }
    }

    #[test]
    fn permanent_answers_are_refusals() {
        let cases = [
            ("404 Not Found", "NoSuchBucket", Some(Refusal::NoSuchBucket)),
            (
                "404 Not Found",
                "ContainerNotFound",
                Some(Refusal::NoSuchBucket),
            ),
            ("403 Forbidden", "AccessDenied", Some(Refusal::AccessDenied)),
            (
                "403 Forbidden",
                "InvalidAccessKeyId",
                Some(Refusal::BadCredentials),
            ),
            (
                "403 Forbidden",
                "SignatureDoesNotMatch",
                Some(Refusal::BadCredentials),
            ),
            (
                "400 Bad Request",
                "AuthorizationHeaderMalformed",
                Some(Refusal::Rejected),
            ),
            ("500 Internal Server Error", "InternalError", None),
            ("503 Service Unavailable", "SlowDown", None),
            ("429 Too Many Requests", "TooManyRequests", None),
            ("408 Request Timeout", "RequestTimeout", None),
        ];
        for (status, code, expected) in cases {
            assert_eq!(
                Refusal::of(&answer(status, code)),
                expected,
                "{status} {code}"
            );
        }
    }

    #[test]
    fn a_missing_bucket_on_a_read_is_a_refusal_not_a_miss() {
        let on_get = object_store::Error::NotFound {
            path: "x".into(),
            source: "Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>".into(),
        };
        assert_eq!(Refusal::of(&on_get), Some(Refusal::NoSuchBucket));
        let missing_object = object_store::Error::NotFound {
            path: "x".into(),
            source: "Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchKey</Code></Error>".into(),
        };
        assert_eq!(Refusal::of(&missing_object), None);
    }

    #[test]
    fn missing_credentials_are_found_under_any_wrapping() {
        let error = object_store::Error::Generic {
            store: "S3",
            source: Box::new(NoCredentials("nothing in the environment".into())),
        };
        assert_eq!(Refusal::of(&error), Some(Refusal::NoCredentials));
        let network = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        assert_eq!(Refusal::of(&network), None);
    }

    #[test]
    fn a_refusal_is_one_line_with_what_to_do() {
        let location: Location = "s3://gone/prefix".parse().unwrap();
        let error = answer("404 Not Found", "NoSuchBucket");
        let line = Refusal::of(&error).unwrap().describe(&location, &error);
        assert!(!line.contains('\n') && !line.contains("<?xml"), "{line}");
        assert!(
            line.contains("NoSuchBucket")
                && line.contains("create bucket \"gone\"")
                && line.contains("why. RequestId"),
            "{line}"
        );
    }

    #[test]
    fn a_denial_without_a_reason_names_the_credentials_too() {
        let location: Location = "s3://b/prefix".parse().unwrap();
        let head = object_store::Error::PermissionDenied {
            path: "x".into(),
            source: "Server returned non-2xx status code: 403 Forbidden: ".into(),
        };
        let line = Refusal::of(&head).unwrap().describe(&location, &head);
        assert!(
            line.starts_with("access denied (")
                && line.contains("credentials may be wrong too: check AWS_ACCESS_KEY_ID")
                && line.contains("or the credentials need s3:GetObject"),
            "{line}"
        );
        let coded = answer("403 Forbidden", "AccessDenied");
        let line = Refusal::of(&coded).unwrap().describe(&location, &coded);
        assert!(!line.contains("may be wrong"), "{line}");
    }

    /// The HTTP client's error around a transport error, as object_store's carries it.
    #[derive(Debug)]
    struct Sending(std::io::Error);

    impl std::fmt::Display for Sending {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "HTTP error: error sending request")
        }
    }

    impl std::error::Error for Sending {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_transport_error_ends_with_its_root_cause() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "invalid peer certificate: UnknownIssuer",
        );
        let error = object_store::Error::Generic {
            store: "S3",
            source: Box::new(Sending(refused)),
        };
        assert_eq!(
            Brief(&error).to_string(),
            "Generic S3 error: HTTP error: error sending request: invalid peer certificate: UnknownIssuer"
        );
    }

    /// rustls's refusal of a certificate, as the TLS stream carries it inside an I/O error
    /// under the HTTP client's errors: permanent, with what to do. A reset connection is not.
    #[test]
    fn a_refused_certificate_is_permanent_and_says_what_to_do() {
        use crate::backoff::Transient;
        use tokio_rustls::rustls::{CertificateError, Error as Tls};
        let wrapped = |io: std::io::Error| object_store::Error::Generic {
            store: "S3",
            source: Box::new(Sending(io)),
        };
        let tls = Tls::InvalidCertificate(CertificateError::UnknownIssuer);
        let refused = wrapped(std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls,
        )));
        assert_eq!(Refusal::of(&refused), Some(Refusal::Untrusted));
        assert!(!refused.is_transient());
        let location: Location = "s3://bucket/x".parse().unwrap();
        let line = Refusal::Untrusted.describe(&location, &refused);
        assert!(
            line.starts_with("the endpoint's TLS certificate was refused (")
                && line.contains("UnknownIssuer")
                && line.contains("SSL_CERT_FILE"),
            "{line}"
        );
        let reset = wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(Refusal::of(&reset), None);
        assert!(reset.is_transient());
        let redirect = object_store::Error::Generic {
            store: "S3",
            source: "Received redirect without LOCATION, this normally indicates an incorrectly configured region".into(),
        };
        assert_eq!(Refusal::of(&redirect), Some(Refusal::Rejected));
        // The word in a key or a prefix is not a redirect.
        let in_a_key = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET https://s3/wal/redirect-svc/x after 3 retries: connection reset".into(),
        };
        assert_eq!(Refusal::of(&in_a_key), None);
    }

    #[test]
    fn a_local_error_names_the_object_not_the_staging_file() {
        let error = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: "Unable to open file /a/wal/0001.zst#1: Permission denied (os error 13)".into(),
        };
        assert_eq!(
            Brief(&error).to_string(),
            "Generic LocalFileSystem error: Unable to open file /a/wal/0001.zst: Permission denied (os error 13)"
        );
        for kept in ["a #1 b", "x#12y: z", "#", "n#"] {
            assert_eq!(without_staging_suffix(kept), kept);
        }
        assert_eq!(without_staging_suffix("f#3"), "f");
    }

    #[test]
    fn a_credential_provider_reason_on_several_lines_is_one_line() {
        // Found by a fuzzer: a provider's reason (it quotes files and answers) kept its line
        // breaks, so the refusal spanned lines in the log.
        let location: Location = "s3://b/prefix".parse().unwrap();
        let error = object_store::Error::Generic {
            store: "S3",
            source: Box::new(NoCredentials(
                "no profile\nin ~/.aws/credentials\r\n".into(),
            )),
        };
        let line = Refusal::of(&error).unwrap().describe(&location, &error);
        assert!(
            line.starts_with("no credentials found (no profile in ~/.aws/credentials); set "),
            "{line:?}"
        );
    }
}
