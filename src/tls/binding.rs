//! SCRAM channel binding data of type `tls-server-end-point` (RFC 5929, section 4.1): a hash of the server's
//! whole certificate (its DER bytes), with the hash function taken from the certificate's signature algorithm,
//! except that MD5 and SHA-1 are replaced by SHA-256.
//!
//! Only the signature algorithm identifier is needed, so this reads just enough DER to find it rather than
//! pulling in an X.509 parser; every length is checked against the bytes that are really there.

use ring::digest;

/// How a signature algorithm maps to the binding hash.
enum BindingHash {
    Sha256,
    Sha384,
    Sha512,
    /// The binding is not defined (or not computable) for this algorithm; the text says which it is.
    Undefined(&'static str),
}

/// DER contents of the signature algorithm OIDs we recognise.
const SIGNATURE_ALGORITHMS: &[(&[u8], BindingHash)] = &[
    // RSA PKCS#1 v1.5: 1.2.840.113549.1.1.{4,5,11,12,13,14}
    (&[42, 134, 72, 134, 247, 13, 1, 1, 4], BindingHash::Sha256), // md5WithRSAEncryption
    (&[42, 134, 72, 134, 247, 13, 1, 1, 5], BindingHash::Sha256), // sha1WithRSAEncryption
    (&[42, 134, 72, 134, 247, 13, 1, 1, 11], BindingHash::Sha256),
    (&[42, 134, 72, 134, 247, 13, 1, 1, 12], BindingHash::Sha384),
    (&[42, 134, 72, 134, 247, 13, 1, 1, 13], BindingHash::Sha512),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 14],
        BindingHash::Undefined("sha224WithRSAEncryption (SHA-224 is not available)"),
    ),
    (
        &[42, 134, 72, 134, 247, 13, 1, 1, 10],
        BindingHash::Undefined("RSASSA-PSS"),
    ),
    // ECDSA: 1.2.840.10045.4.1 (SHA-1) and 1.2.840.10045.4.3.{1,2,3,4}
    (&[42, 134, 72, 206, 61, 4, 1], BindingHash::Sha256),
    (
        &[42, 134, 72, 206, 61, 4, 3, 1],
        BindingHash::Undefined("ecdsa-with-SHA224 (SHA-224 is not available)"),
    ),
    (&[42, 134, 72, 206, 61, 4, 3, 2], BindingHash::Sha256),
    (&[42, 134, 72, 206, 61, 4, 3, 3], BindingHash::Sha384),
    (&[42, 134, 72, 206, 61, 4, 3, 4], BindingHash::Sha512),
    // EdDSA: 1.3.101.112 and 1.3.101.113 use no separate hash, so RFC 5929 defines nothing for them.
    (&[43, 101, 112], BindingHash::Undefined("Ed25519")),
    (&[43, 101, 113], BindingHash::Undefined("Ed448")),
];

/// The `tls-server-end-point` binding data for the server certificate `der`, or why there is none.
pub(crate) fn tls_server_end_point(der: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_algorithm_oid(der)
        .ok_or_else(|| "the server certificate could not be parsed".to_string())?;
    let hash = SIGNATURE_ALGORITHMS
        .iter()
        .find(|(known, _)| *known == oid)
        .map(|(_, hash)| hash)
        .ok_or_else(|| {
            "the server certificate's signature algorithm is unknown, so tls-server-end-point is undefined"
                .to_string()
        })?;
    let algorithm = match hash {
        BindingHash::Sha256 => &digest::SHA256,
        BindingHash::Sha384 => &digest::SHA384,
        BindingHash::Sha512 => &digest::SHA512,
        BindingHash::Undefined(name) => {
            return Err(format!(
                "channel binding tls-server-end-point is not defined for a server certificate signed with {name}"
            ));
        }
    };
    Ok(digest::digest(algorithm, der).as_ref().to_vec())
}

/// The OID bytes of `Certificate.signatureAlgorithm.algorithm`.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (certificate, _) = read_tlv(der, SEQUENCE)?;
    // tbsCertificate comes first; skip it whole.
    let (_, rest) = read_any_tlv(certificate)?;
    let (algorithm_identifier, _) = read_tlv(rest, SEQUENCE)?;
    let (oid, _) = read_tlv(algorithm_identifier, OID)?;
    Some(oid)
}

/// Reads one TLV with tag `tag`: its contents and what follows it.
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, _) = input.split_first()?;
    if found != tag {
        return None;
    }
    read_any_tlv(input)
}

/// Reads one TLV of any (single-byte) tag: its contents and what follows it.
fn read_any_tlv(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // Multi-byte tags (low five bits all set) do not occur where we look.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wraps `contents` in a DER TLV with `tag`.
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(contents);
        out
    }

    fn certificate(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        let tbs = tlv(0x30, &vec![0xAB; tbs_len]);
        let algorithm = tlv(0x30, &[tlv(0x06, oid), vec![0x05, 0x00]].concat());
        let signature = tlv(0x03, &[0, 1, 2, 3]);
        tlv(0x30, &[tbs, algorithm, signature].concat())
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        for (oid, len) in [
            (&[42u8, 134, 72, 134, 247, 13, 1, 1, 11][..], 32),
            (&[42, 134, 72, 134, 247, 13, 1, 1, 5][..], 32),
            (&[42, 134, 72, 134, 247, 13, 1, 1, 4][..], 32),
            (&[42, 134, 72, 206, 61, 4, 3, 3][..], 48),
            (&[42, 134, 72, 134, 247, 13, 1, 1, 13][..], 64),
        ] {
            // A long tbsCertificate exercises the long length form.
            let der = certificate(oid, 1000);
            let data = tls_server_end_point(&der).expect("binding data");
            assert_eq!(data.len(), len);
            let expected = match len {
                32 => digest::digest(&digest::SHA256, &der),
                48 => digest::digest(&digest::SHA384, &der),
                _ => digest::digest(&digest::SHA512, &der),
            };
            assert_eq!(data, expected.as_ref());
        }
    }

    #[test]
    fn undefined_algorithms_are_errors() {
        let err = tls_server_end_point(&certificate(&[43, 101, 112], 10)).unwrap_err();
        assert!(err.contains("Ed25519"), "{err}");
        let err = tls_server_end_point(&certificate(&[1, 2, 3], 10)).unwrap_err();
        assert!(err.contains("unknown"), "{err}");
    }

    #[test]
    fn truncated_or_malformed_der_is_an_error() {
        let der = certificate(&[42, 134, 72, 206, 61, 4, 3, 2], 300);
        for cut in 0..der.len() {
            assert!(tls_server_end_point(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(tls_server_end_point(&[0x1f, 0x01, 0x00]).is_err());
    }
}
