//! The fetch server's TLS: a certificate and key, and optionally client certificates that
//! must chain to a given CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use crate::pem;

/// A TLS acceptor for `cert` and `key`, demanding client certificates signed by `client_ca`
/// when given.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    let chain = pem::certificates(cert)?;
    warn_if_others_can_read(key);
    let key = pem::private_key(key)?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let roots = pem::roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Warns when other users can read the server's private key: anyone who can may pose as it.
fn warn_if_others_can_read(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(key).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
        tracing::warn!(path = %key.display(), "other users can read the TLS key: chmod 600 it");
    }
}
