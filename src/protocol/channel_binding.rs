//! The `tls-server-end-point` channel binding data (RFC 5929) that SCRAM-SHA-256-PLUS sends:
//! a hash of the server's certificate, with the hash function of its signature algorithm,
//! SHA-256 for MD5 and SHA-1 (as PostgreSQL's `be_tls_get_certificate_hash` and libpq's
//! `pgtls_get_peer_certificate_hash`). Pure: the certificate's DER bytes in, the hash out.

use sha2::Digest;

/// The hash functions a certificate may call for.
#[derive(Debug, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The signature algorithms (their OIDs' DER content) and the hash each binds with.
const ALGORITHMS: &[(&[u8], Hash)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption, ecdsa-with-SHA1: SHA-256 (RFC 5929 4.1).
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        Hash::Sha256,
    ),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], Hash::Sha256),
    // sha{256,384,512,224}WithRSAEncryption.
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        Hash::Sha512,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e],
        Hash::Sha224,
    ),
    // ecdsa-with-SHA{224,256,384,512}.
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01],
        Hash::Sha224,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        Hash::Sha512,
    ),
];

/// One DER element at the start of `input`: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81..=0x84 => {
            let bytes = (first & 0x7f) as usize;
            let (len, rest) = (rest.get(..bytes)?, &rest[bytes..]);
            (len.iter().fold(0usize, |n, b| n << 8 | *b as usize), rest)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The OID of the certificate's signature algorithm (`Certificate.signatureAlgorithm`).
fn signature_algorithm(certificate: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = element(rest)? else {
        return None;
    };
    match element(algorithm)? {
        (OID, oid, _) => Some(oid),
        _ => None,
    }
}

/// The channel binding data for the server certificate `certificate` (DER).
pub fn tls_server_end_point(certificate: &[u8]) -> Result<Vec<u8>, String> {
    let oid =
        signature_algorithm(certificate).ok_or("the server's certificate cannot be parsed")?;
    let hash = ALGORITHMS
        .iter()
        .find(|(known, _)| *known == oid)
        .map(|(_, hash)| hash)
        .ok_or("could not determine server certificate signature algorithm")?;
    Ok(match hash {
        Hash::Sha224 => sha2::Sha224::digest(certificate).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(certificate).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(certificate).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(certificate).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(algorithm: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256).unwrap(),
            sha2::Sha256::digest(&p256).to_vec()
        );
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384).unwrap(),
            sha2::Sha384::digest(&p384).to_vec()
        );
    }

    #[test]
    fn unknown_algorithms_and_garbage_are_errors() {
        let ed25519 = certificate(&rcgen::PKCS_ED25519);
        assert!(tls_server_end_point(&ed25519).is_err());
        for garbage in [&b""[..], b"\x30", b"\x30\x85\x00", b"\x30\x03\x30\x01\x00"] {
            assert!(tls_server_end_point(garbage).is_err(), "{garbage:?}");
        }
    }
}
