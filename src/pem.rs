//! Certificates and private keys read from PEM files, for every TLS endpoint walhalla has:
//! the fetch server, its clients, and the replication connection.

use std::path::{Path, PathBuf};

use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct PemError {
    what: &'static str,
    path: PathBuf,
    reason: String,
}

fn error(what: &'static str, path: &Path, reason: impl ToString) -> PemError {
    PemError {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Every certificate in `path`, in order; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error("certificate file", path, e))?;
    if certs.is_empty() {
        return Err(error("certificate file", path, "no certificate in it"));
    }
    Ok(certs)
}

/// The first private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error("private key file", path, e))
}

/// The certificates in `path` as trust anchors.
pub fn roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| error("CA certificate file", path, e))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_what_is_asked_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM\n").unwrap();
        let text = certificates(&empty).unwrap_err().to_string();
        assert!(
            text.contains("no certificate") && text.contains("empty.pem"),
            "{text}"
        );
        assert!(private_key(&empty).is_err());
        assert!(roots(&dir.path().join("missing.pem")).is_err());
    }
}
