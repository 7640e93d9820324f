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
//! The root certificate file is `sslrootcert`, else `~/.postgresql/root.crt`.

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
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::SslMode;

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
}

/// The client configuration for `mode`, or `None` when the connection must not use TLS.
pub fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let default_root =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
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
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
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
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
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
