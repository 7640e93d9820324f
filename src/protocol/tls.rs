//! TLS for the replication connection with libpq's `sslmode` semantics, on rustls:
//!
//! | sslmode | encryption | server certificate |
//! |---|---|---|
//! | disable | never | — |
//! | allow, prefer | if the server offers it | checked against the CA only when a root certificate file exists |
//! | require | always | as for prefer (libpq: "if a root CA file exists, require behaves like verify-ca") |
//! | verify-ca | always | must chain to the root certificate(s) |
//! | verify-full | always | must chain to the root certificate(s) and match the host name |
//!
//! The root certificate file is `sslrootcert`, else `~/.postgresql/root.crt`. The client
//! certificate is `sslcert`, else `~/.postgresql/postgresql.crt` when it exists, with its key
//! `sslkey`, else `~/.postgresql/postgresql.key`, which must grant nothing to group or others
//! (0640 owned by root); as in libpq (fe-secure-openssl.c, `initialize_SSL`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs, verify_tls12_signature,
    verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme,
};

use super::conninfo::SslMode;
use crate::pem;

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A verifying mode without a root certificate file.
    #[error("sslmode={mode} needs a root certificate: set sslrootcert or create {default}")]
    NoRootCert {
        /// The mode.
        mode: SslMode,
        /// The default location that was looked at.
        default: String,
    },
    /// The root certificate file cannot be used.
    #[error("root certificate {path}: {reason}")]
    BadRootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client certificate or its key cannot be used.
    #[error("{0}")]
    ClientCert(String),
    /// No channel binding data can be made from the server's certificate.
    #[error("channel binding: {0}")]
    ChannelBinding(String),
}

/// A client certificate chain and its private key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// `~/.postgresql/NAME`, where libpq looks for its TLS files by default.
fn default_file(name: &str) -> Option<PathBuf> {
    crate::osuser::home().map(|home| home.join(".postgresql").join(name))
}

/// The client certificate and key to present, as libpq finds them: `sslcert`, else
/// `~/.postgresql/postgresql.crt`; a certificate file that does not exist means none (the
/// server may not ask for one). With a certificate, the key (`sslkey`, else
/// `~/.postgresql/postgresql.key`) must exist, be a plain file and grant nothing to group or
/// others (root-owned: group read at most).
pub fn client_identity(
    sslcert: Option<&Path>,
    sslkey: Option<&Path>,
) -> Result<Option<Identity>, TlsError> {
    let bad = |text: String| TlsError::ClientCert(text);
    let Some(cert) = sslcert
        .map(Path::to_path_buf)
        .or_else(|| default_file("postgresql.crt"))
    else {
        return Ok(None);
    };
    match std::fs::metadata(&cert) {
        Ok(_) => {}
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(bad(format!(
                "could not open certificate file \"{}\": {e}",
                cert.display()
            )));
        }
    }
    let chain = pem::certificates(&cert).map_err(|e| bad(e.to_string()))?;
    let Some(key) = sslkey
        .map(Path::to_path_buf)
        .or_else(|| default_file("postgresql.key"))
    else {
        return Err(bad("certificate present, but no private key file".into()));
    };
    let meta = match std::fs::metadata(&key) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!(
                "certificate present, but not private key file \"{}\"",
                key.display()
            )));
        }
        Err(e) => {
            return Err(bad(format!(
                "could not stat private key file \"{}\": {e}",
                key.display()
            )));
        }
    };
    if !meta.is_file() {
        return Err(bad(format!(
            "private key file \"{}\" is not a regular file",
            key.display()
        )));
    }
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        let loose = match meta.uid() {
            0 => mode & 0o037 != 0,
            _ => mode & 0o077 != 0,
        };
        if loose {
            return Err(bad(format!(
                "private key file \"{}\" has group or world access; file must have permissions \
                 u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) \
                 or less if owned by root",
                key.display()
            )));
        }
    }
    let private = pem::private_key(&key).map_err(|e| bad(e.to_string()))?;
    Ok(Some((chain, private)))
}

/// The client configuration for `mode`, presenting `identity` when the server asks for a
/// certificate; `None` when the connection must not use TLS.
pub fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
    identity: Option<Identity>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let default_root = default_file("root.crt");
    let root_file = match root_cert {
        Some(path) => Some(path.to_path_buf()),
        None => default_root.clone().filter(|p| p.exists()),
    };
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions");
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_file) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::NoRootCert {
                mode,
                default: default_root.map_or_else(
                    || "~/.postgresql/root.crt".into(),
                    |p| p.display().to_string(),
                ),
            });
        }
        (SslMode::VerifyFull, Some(file)) => webpki_verifier(&file, provider)?,
        (_, file) => Arc::new(LibpqVerifier {
            chain: file
                .map(|f| webpki_verifier(&f, provider.clone()))
                .transpose()?,
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            TlsError::ClientCert(format!("certificate does not match private key file: {e}"))
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The name to present and, for verify-full, to check: a DNS name or an IP address.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_string()).ok()
}

fn webpki_verifier(
    file: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let bad = |reason: String| TlsError::BadRootCert {
        path: file.to_path_buf(),
        reason,
    };
    let roots = pem::roots(file).map_err(|e| bad(e.to_string()))?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// The verifier for every mode but verify-full: with a root certificate (verify-ca, or
/// require/prefer when a root file exists) the chain must be valid but the name is not
/// checked; without one (require/prefer) the server is not authenticated, as in libpq. The
/// handshake signatures are always checked.
#[derive(Debug)]
struct LibpqVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
