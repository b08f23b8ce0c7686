//! Encrypted client keys, decrypted with `sslpassword` as OpenSSL decrypts them for libpq.
//!
//! Two forms reach us:
//! - PKCS#8 `ENCRYPTED PRIVATE KEY` (RFC 5958), what `openssl pkcs8 -topk8` and OpenSSL 3's `genpkey` write:
//!   PBES2 (PBKDF2 with HMAC-SHA1 or SHA-2, or scrypt; AES, DES-EDE3 or DES in CBC mode) is decrypted by the
//!   pkcs8 crate. PBES1 and PKCS#12's password-based schemes are refused as unsupported, naming the scheme.
//! - OpenSSL's legacy PEM encryption, `Proc-Type: 4,ENCRYPTED` and `DEK-Info: <cipher>,<iv>` headers on a
//!   PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) key, what `openssl genrsa -aes256`,
//!   `openssl rsa -aes256 -traditional` and `openssl ec -aes128` write. OpenSSL derives the cipher key with
//!   `EVP_BytesToKey`: MD5, one round, the IV's first 8 bytes as salt. AES-128/192/256-CBC, DES-EDE3-CBC and
//!   DES-CBC are read; any other cipher is refused as unsupported, naming it.
//!
//! A wrong password shows as bad padding or as bytes that are not a DER key after decrypting; both are a
//! config error naming `sslpassword`, and neither can be told from a damaged file.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockCipherDecrypt, BlockModeDecrypt, KeyInit, KeyIvInit};
use base64::Engine;
use md5::{Digest, Md5};
use rustls::pki_types::PrivateKeyDer;

use crate::Error;

/// The client key, decrypted with `password` (`sslpassword`), if `pem` holds an encrypted one; `None` if its
/// first private key is not encrypted (`sslpassword` is then unused, as in libpq).
pub(super) fn decrypt_key(
    pem: &[u8],
    password: Option<&str>,
    what: &str,
) -> Result<Option<PrivateKeyDer<'static>>, Error> {
    // Key files are ASCII; one that is not UTF-8 is left to the plain PEM parser and its error.
    let Ok(text) = std::str::from_utf8(pem) else {
        return Ok(None);
    };
    let Some(block) = first_private_key(text) else {
        return Ok(None);
    };
    let key = KeyDecryption { what, password };
    if block.label == "ENCRYPTED PRIVATE KEY" {
        return key.pkcs8(&block).map(Some);
    }
    match block.headers.first() {
        Some(&("Proc-Type", "4,ENCRYPTED")) => key.legacy(&block).map(Some),
        _ => Ok(None),
    }
}

/// One PEM block: `-----BEGIN <label>-----`, RFC 1421 headers (`Name: value`) up to a blank line, base64.
struct PemBlock<'a> {
    label: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    base64: String,
}

/// The first PEM block whose label names a private key (`PRIVATE KEY`, `RSA PRIVATE KEY`, `ENCRYPTED PRIVATE
/// KEY` ...): the one rustls would load. `None` if there is none or it has no end line.
fn first_private_key(text: &str) -> Option<PemBlock<'_>> {
    let mut lines = text.lines().map(str::trim_end);
    let label = lines.find_map(|line| {
        line.strip_prefix("-----BEGIN ")?
            .strip_suffix("-----")
            .filter(|label| label.ends_with("PRIVATE KEY"))
    })?;
    let mut block = PemBlock {
        label,
        headers: Vec::new(),
        base64: String::new(),
    };
    let mut in_headers = true;
    for line in lines {
        if let Some(end) = line.strip_prefix("-----END ") {
            return (end.strip_suffix("-----") == Some(label)).then_some(block);
        }
        if in_headers {
            if let Some((name, value)) = line.split_once(':') {
                block.headers.push((name.trim(), value.trim()));
                continue;
            }
            in_headers = false;
            if line.is_empty() {
                continue;
            }
        }
        block.base64.push_str(line.trim());
    }
    None
}

/// The ciphers OpenSSL's legacy PEM encryption names in `DEK-Info`, as far as this client reads them: all in
/// CBC mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbcCipher {
    Aes128,
    Aes192,
    Aes256,
    DesEde3,
    Des,
}

impl CbcCipher {
    /// By OpenSSL's name, which its parser matches without regard to case.
    fn from_name(name: &str) -> Option<CbcCipher> {
        Some(match name.to_ascii_uppercase().as_str() {
            "AES-128-CBC" => CbcCipher::Aes128,
            "AES-192-CBC" => CbcCipher::Aes192,
            "AES-256-CBC" => CbcCipher::Aes256,
            "DES-EDE3-CBC" => CbcCipher::DesEde3,
            "DES-CBC" => CbcCipher::Des,
            _ => return None,
        })
    }

    fn key_len(self) -> usize {
        match self {
            CbcCipher::Aes128 => 16,
            CbcCipher::Aes192 | CbcCipher::DesEde3 => 24,
            CbcCipher::Aes256 => 32,
            CbcCipher::Des => 8,
        }
    }

    /// The IV is one block.
    fn iv_len(self) -> usize {
        match self {
            CbcCipher::Aes128 | CbcCipher::Aes192 | CbcCipher::Aes256 => 16,
            CbcCipher::DesEde3 | CbcCipher::Des => 8,
        }
    }

    /// CBC decryption with PKCS#7 padding checked; `None` if the padding is wrong (or the length is not a
    /// whole number of blocks). `key` and `iv` have this cipher's lengths.
    fn decrypt(self, key: &[u8], iv: &[u8], data: &mut [u8]) -> Option<usize> {
        fn cbc<C: BlockCipherDecrypt + KeyInit>(
            key: &[u8],
            iv: &[u8],
            data: &mut [u8],
        ) -> Option<usize> {
            let decryptor = cbc::Decryptor::<C>::new_from_slices(key, iv).ok()?;
            decryptor
                .decrypt_padded::<Pkcs7>(data)
                .ok()
                .map(<[u8]>::len)
        }
        match self {
            CbcCipher::Aes128 => cbc::<aes::Aes128>(key, iv, data),
            CbcCipher::Aes192 => cbc::<aes::Aes192>(key, iv, data),
            CbcCipher::Aes256 => cbc::<aes::Aes256>(key, iv, data),
            CbcCipher::DesEde3 => cbc::<des::TdesEde3>(key, iv, data),
            CbcCipher::Des => cbc::<des::Des>(key, iv, data),
        }
    }
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one round, as `PEM_do_header` calls it: `D_1 = MD5(password ||
/// salt)`, `D_i = MD5(D_{i-1} || password || salt)`, the key their concatenation cut to `len`.
fn evp_bytes_to_key_md5(password: &[u8], salt: &[u8], len: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(len + 16);
    let mut previous: Option<[u8; 16]> = None;
    while key.len() < len {
        let mut md5 = Md5::new();
        if let Some(previous) = &previous {
            md5.update(previous);
        }
        md5.update(password);
        md5.update(salt);
        let block: [u8; 16] = md5.finalize().into();
        key.extend_from_slice(&block);
        previous = Some(block);
    }
    key.truncate(len);
    key
}

/// Decrypting one client key: where it comes from (for messages) and the password given.
struct KeyDecryption<'a> {
    what: &'a str,
    password: Option<&'a str>,
}

impl KeyDecryption<'_> {
    /// libpq without `sslpassword` asks on the terminal; a library cannot, so it is an error that names the
    /// keyword. An empty password counts as none, as libpq's prompt would be shown for it.
    fn password(&self) -> Result<&[u8], Error> {
        self.password
            .filter(|p| !p.is_empty())
            .map(str::as_bytes)
            .ok_or_else(|| {
                Error::config(format!(
                    "the private key for the client certificate {} is encrypted: give its password with \
                     connection option \"sslpassword\"",
                    self.what
                ))
            })
    }

    fn malformed(&self, form: &str, detail: &dyn std::fmt::Display) -> Error {
        Error::config(format!(
            "cannot parse the encrypted private key ({form}) for the client certificate {}: {detail}",
            self.what
        ))
    }

    /// The error says no more than that decryption failed: a wrong password and a damaged key look alike.
    fn wrong_password(&self, detail: &str) -> Error {
        Error::config(format!(
            "cannot decrypt the private key for the client certificate {} with connection option \
             \"sslpassword\": wrong password, or a damaged key ({detail})",
            self.what
        ))
    }

    fn unsupported(&self, detail: &str) -> Error {
        Error::unsupported(format!(
            "the private key for the client certificate {} is encrypted with {detail}, which this client \
             cannot decrypt with connection option \"sslpassword\": convert it to encrypted PKCS#8 \
             (`openssl pkcs8 -topk8 -v2 aes-256-cbc`) or decrypt it (`openssl pkey`) and keep its file at 0600",
            self.what
        ))
    }

    /// OpenSSL's legacy form: `Proc-Type: 4,ENCRYPTED`, then `DEK-Info: <cipher>,<hex IV>`.
    fn legacy(&self, block: &PemBlock<'_>) -> Result<PrivateKeyDer<'static>, Error> {
        const FORM: &str = "OpenSSL's legacy PEM encryption";
        let dek_info = match block.headers.get(1) {
            Some(&("DEK-Info", value)) => value,
            _ => return Err(self.malformed(FORM, &"no DEK-Info header after Proc-Type")),
        };
        let (name, iv_hex) = dek_info
            .split_once(',')
            .ok_or_else(|| self.malformed(FORM, &"DEK-Info has no IV"))?;
        let cipher = CbcCipher::from_name(name.trim())
            .ok_or_else(|| self.unsupported(&format!("the cipher {:?} ({FORM})", name.trim())))?;
        let iv = decode_hex(iv_hex.trim())
            .filter(|iv| iv.len() == cipher.iv_len())
            .ok_or_else(|| {
                self.malformed(
                    FORM,
                    &format!("DEK-Info's IV is not {} hex bytes", cipher.iv_len()),
                )
            })?;
        let wrap: fn(Vec<u8>) -> PrivateKeyDer<'static> = match block.label {
            "RSA PRIVATE KEY" => |der: Vec<u8>| PrivateKeyDer::Pkcs1(der.into()),
            "EC PRIVATE KEY" => |der: Vec<u8>| PrivateKeyDer::Sec1(der.into()),
            "PRIVATE KEY" => |der: Vec<u8>| PrivateKeyDer::Pkcs8(der.into()),
            label => return Err(self.unsupported(&format!("{FORM} on a {label:?} PEM block"))),
        };
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(&block.base64)
            .map_err(|e| self.malformed(FORM, &e))?;
        let password = self.password()?;
        // The salt is the IV's first 8 bytes, whatever the cipher's block size (PEM_do_header).
        let key = evp_bytes_to_key_md5(password, &iv[..8], cipher.key_len());
        let len = cipher
            .decrypt(&key, &iv, &mut data)
            .ok_or_else(|| self.wrong_password("bad padding after decrypting"))?;
        data.truncate(len);
        if !is_one_der_sequence(&data) {
            return Err(self.wrong_password("not a DER key after decrypting"));
        }
        Ok(wrap(data))
    }

    /// PKCS#8 `ENCRYPTED PRIVATE KEY` through the pkcs8 crate.
    fn pkcs8(&self, block: &PemBlock<'_>) -> Result<PrivateKeyDer<'static>, Error> {
        use pkcs8::der::Decode;
        use pkcs8::pkcs5;
        const FORM: &str = "PKCS#8";
        let der = base64::engine::general_purpose::STANDARD
            .decode(&block.base64)
            .map_err(|e| self.malformed(FORM, &e))?;
        let info = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&der).map_err(|e| {
            // pkcs5 refuses to parse schemes it does not know; name the one it refused if it is a known one.
            match scheme_oid(&der).and_then(unsupported_scheme_name) {
                Some(name) => self.unsupported(name),
                None => self.malformed(FORM, &e),
            }
        })?;
        if let pkcs5::EncryptionScheme::Pbes1(pbes1) = &info.encryption_algorithm {
            use pkcs5::pbes1::EncryptionScheme as Pbes1;
            // OpenSSL's names for them (`openssl pkcs8 -topk8 -v1 <name>`).
            let name = match pbes1.encryption {
                Pbes1::PbeWithMd2AndDesCbc => "PBE-MD2-DES",
                Pbes1::PbeWithMd2AndRc2Cbc => "PBE-MD2-RC2-64",
                Pbes1::PbeWithMd5AndDesCbc => "PBE-MD5-DES",
                Pbes1::PbeWithMd5AndRc2Cbc => "PBE-MD5-RC2-64",
                Pbes1::PbeWithSha1AndDesCbc => "PBE-SHA1-DES",
                Pbes1::PbeWithSha1AndRc2Cbc => "PBE-SHA1-RC2-64",
            };
            return Err(self.unsupported(&format!("PBES1 ({name})")));
        }
        let password = self.password()?;
        let key = info.decrypt(password).map_err(|e| match e {
            pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::UnsupportedAlgorithm { oid }) => {
                self.unsupported(&format!("PBES2 using the algorithm {oid}"))
            }
            pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::DecryptFailed) => {
                self.wrong_password("bad padding after decrypting")
            }
            pkcs8::Error::Asn1(_) | pkcs8::Error::KeyMalformed(_) => {
                self.wrong_password("not a DER key after decrypting")
            }
            other => self.wrong_password(&other.to_string()),
        })?;
        Ok(PrivateKeyDer::Pkcs8(key.as_bytes().to_vec().into()))
    }
}

/// The encryption scheme's OID in `EncryptedPrivateKeyInfo ::= SEQUENCE { AlgorithmIdentifier, OCTET STRING }`,
/// read without knowing the scheme.
fn scheme_oid(der: &[u8]) -> Option<pkcs8::ObjectIdentifier> {
    use pkcs8::der::{Decode, SliceReader, Tag, Tagged, asn1::AnyRef};
    let info = AnyRef::from_der(der)
        .ok()
        .filter(|info| info.tag() == Tag::Sequence)?;
    let mut fields = SliceReader::new(info.value()).ok()?;
    Some(pkcs8::AlgorithmIdentifierRef::decode(&mut fields).ok()?.oid)
}

/// PKCS#12's password-based schemes (RFC 7292 appendix C), which `openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES`
/// writes (and OpenSSL 1.0 did by default): pkcs5 does not parse them, so they are named here.
fn unsupported_scheme_name(oid: pkcs8::ObjectIdentifier) -> Option<&'static str> {
    Some(match oid.to_string().as_str() {
        "1.2.840.113549.1.12.1.1" => "PKCS#12's pbeWithSHAAnd128BitRC4",
        "1.2.840.113549.1.12.1.2" => "PKCS#12's pbeWithSHAAnd40BitRC4",
        "1.2.840.113549.1.12.1.3" => "PKCS#12's pbeWithSHAAnd3-KeyTripleDES-CBC (PBE-SHA1-3DES)",
        "1.2.840.113549.1.12.1.4" => "PKCS#12's pbeWithSHAAnd2-KeyTripleDES-CBC (PBE-SHA1-2DES)",
        "1.2.840.113549.1.12.1.5" => "PKCS#12's pbeWithSHAAnd128BitRC2-CBC (PBE-SHA1-RC2-128)",
        "1.2.840.113549.1.12.1.6" => "PKCS#12's pbewithSHAAnd40BitRC2-CBC (PBE-SHA1-RC2-40)",
        _ => return None,
    })
}

/// Whether `der` is exactly one DER SEQUENCE, as every private key structure is: what is left of a wrong
/// password's output after the padding check rarely is.
fn is_one_der_sequence(der: &[u8]) -> bool {
    use pkcs8::der::{Decode, Tag, Tagged, asn1::AnyRef};
    AnyRef::from_der(der).is_ok_and(|key| key.tag() == Tag::Sequence)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| char::from(b).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const PASSWORD: &str = "pgc-key-secret";

    /// `openssl enc -aes-256-cbc -md md5 -S 0102030405060708 -pass pass:pgc-key-secret -P` prints the key and
    /// IV that `EVP_BytesToKey` derives, one after the other: 48 bytes, three MD5 blocks.
    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        let expected = decode_hex(
            "675C539DE86C2999B3C0B454CFFC81576940D84E39D81647E277FBE7398FA416\
             26617AC455A0AEAE1B14B91DCD69F142",
        )
        .unwrap();
        let salt = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            evp_bytes_to_key_md5(PASSWORD.as_bytes(), &salt, 48),
            expected
        );
        // DES-EDE3-CBC's 24-byte key is the same stream cut shorter.
        assert_eq!(
            evp_bytes_to_key_md5(PASSWORD.as_bytes(), &salt, 24),
            expected[..24]
        );
    }

    /// A legacy block: its cipher, IV and label are checked before the password is asked for; any cut of it
    /// is an error or not a key at all, never a panic.
    #[test]
    fn legacy_headers_and_broken_input() {
        let block = |dek_info: &str, label: &str| {
            format!(
                "-----BEGIN {label}-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: {dek_info}\n\n\
                 AAAAAAAAAAAAAAAAAAAAAA==\n-----END {label}-----\n"
            )
        };
        let decrypt = |pem: &str, password| decrypt_key(pem.as_bytes(), password, "in memory");
        let iv = "000102030405060708090A0B0C0D0E0F";
        // (DEK-Info, label, password, kind, what the message says)
        let cases = [
            (
                format!("BF-CBC,{}", &iv[..16]),
                "RSA PRIVATE KEY",
                Some(PASSWORD),
                ErrorKind::Unsupported,
                "\"BF-CBC\"",
            ),
            (
                format!("AES-128-CBC,{iv}"),
                "DSA PRIVATE KEY",
                Some(PASSWORD),
                ErrorKind::Unsupported,
                "\"DSA PRIVATE KEY\"",
            ),
            (
                format!("AES-128-CBC,{}", &iv[..16]),
                "RSA PRIVATE KEY",
                Some(PASSWORD),
                ErrorKind::Config,
                "not 16 hex bytes",
            ),
            (
                format!("DES-EDE3-CBC,{iv}"),
                "RSA PRIVATE KEY",
                Some(PASSWORD),
                ErrorKind::Config,
                "not 8 hex bytes",
            ),
            (
                "AES-128-CBC".to_string(),
                "EC PRIVATE KEY",
                Some(PASSWORD),
                ErrorKind::Config,
                "no IV",
            ),
            (
                format!("AES-128-CBC,{iv}"),
                "EC PRIVATE KEY",
                None,
                ErrorKind::Config,
                "\"sslpassword\"",
            ),
            (
                format!("aes-128-cbc,{iv}"),
                "EC PRIVATE KEY",
                Some(""),
                ErrorKind::Config,
                "\"sslpassword\"",
            ),
            (
                format!("AES-128-CBC,{iv}"),
                "EC PRIVATE KEY",
                Some(PASSWORD),
                ErrorKind::Config,
                "cannot decrypt",
            ),
        ];
        for (dek_info, label, password, kind, fragment) in cases {
            let err = decrypt(&block(&dek_info, label), password).unwrap_err();
            assert_eq!(err.kind(), kind, "{dek_info} {label}: {err}");
            assert!(err.to_string().contains(fragment), "{err}");
            assert!(!err.to_string().contains(PASSWORD), "{err}");
        }
        let no_dek_info = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n\
                           -----END RSA PRIVATE KEY-----\n";
        let err = decrypt(no_dek_info, Some(PASSWORD)).unwrap_err();
        assert!(err.to_string().contains("no DEK-Info"), "{err}");

        // Not encrypted, or no private key at all: left to the plain parser.
        let plain = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(decrypt(plain, Some(PASSWORD)).unwrap().is_none());
        let certificate =
            "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n-----END CERTIFICATE-----\n";
        assert!(decrypt(certificate, Some(PASSWORD)).unwrap().is_none());

        let whole = block(&format!("AES-256-CBC,{iv}"), "RSA PRIVATE KEY");
        for cut in 0..whole.len() {
            let _ = decrypt(&whole[..cut], Some(PASSWORD));
        }
    }

    /// Runs the openssl CLI on `input` (stdin) and returns its stdout; panics with its stderr if it fails.
    #[cfg(not(target_os = "wasi"))]
    fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run openssl (needed for encrypted keys): {e}"));
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Keys encrypted by the openssl CLI in every form this client reads (OpenSSL's legacy PEM encryption of
    /// RSA and EC keys with each cipher, PKCS#8 PBES2 with HMAC-SHA1 and 3DES/DES) load with the right
    /// password and belong to their certificate; with a wrong or no password they fail naming sslpassword;
    /// PBES1 and PKCS#12 schemes are refused as unsupported, naming them.
    #[cfg(not(target_os = "wasi"))]
    #[test]
    fn keys_encrypted_by_openssl() {
        use crate::Config;
        use crate::tls::TlsConnector;
        // (an RSA key rather than EC, openssl's arguments, what its output must say it is)
        const READABLE: &[(bool, &[&str], &str)] = &[
            (false, &["ec", "-aes128"], "DEK-Info: AES-128-CBC,"),
            (false, &["ec", "-aes192"], "DEK-Info: AES-192-CBC,"),
            (false, &["ec", "-aes256"], "DEK-Info: AES-256-CBC,"),
            (false, &["ec", "-des3"], "DEK-Info: DES-EDE3-CBC,"),
            (false, &["ec", "-des"], "DEK-Info: DES-CBC,"),
            (
                true,
                &["rsa", "-traditional", "-aes256"],
                "DEK-Info: AES-256-CBC,",
            ),
            (
                true,
                &["rsa", "-traditional", "-des3"],
                "DEK-Info: DES-EDE3-CBC,",
            ),
            (
                true,
                &["pkcs8", "-topk8", "-v2", "des3", "-v2prf", "hmacWithSHA1"],
                "ENCRYPTED",
            ),
            (
                false,
                &["pkcs8", "-topk8", "-v2", "aes128", "-v2prf", "hmacWithSHA1"],
                "ENCRYPTED",
            ),
            (false, &["pkcs8", "-topk8", "-v2", "des"], "ENCRYPTED"),
        ];
        // (openssl's arguments, what the refusal names)
        const REFUSED: &[(&[&str], &str)] = &[
            (
                &["pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES"],
                "PBE-SHA1-3DES",
            ),
            (
                &["pkcs8", "-topk8", "-v1", "PBE-MD5-DES"],
                "PBES1 (PBE-MD5-DES)",
            ),
        ];
        // Single DES and PBES1 are in OpenSSL 3's legacy provider; without it `-des` writes the key in clear.
        let encrypt = |args: &[&str], pem: &str| {
            let pass = format!("pass:{PASSWORD}");
            let providers = ["-provider", "legacy", "-provider", "default"];
            openssl(
                &[args, &providers, &["-passout", &pass]].concat(),
                pem.as_bytes(),
            )
        };
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec_pem = ec.serialize_pem();
        // ring cannot make RSA keys; openssl can, and rcgen signs a certificate for it.
        let rsa_pem = String::from_utf8(openssl(&["genrsa", "2048"], b"")).unwrap();
        let rsa = rcgen::KeyPair::from_pem(&rsa_pem).unwrap();

        for &(is_rsa, args, form) in READABLE {
            let (key, pem) = if is_rsa {
                (&rsa, &rsa_pem)
            } else {
                (&ec, &ec_pem)
            };
            let encrypted = String::from_utf8(encrypt(args, pem)).unwrap();
            assert!(encrypted.contains(form), "{args:?} wrote:\n{encrypted}");
            let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
                .unwrap()
                .self_signed(key)
                .unwrap();
            let connector = |conninfo: &str| {
                let mut config = Config::parse(conninfo).unwrap();
                config.ssl_client_identity_pem(cert.pem(), encrypted.clone());
                TlsConnector::from_config(&config)
            };
            let good = format!("sslmode=require sslpassword={PASSWORD}");
            let loaded = connector(&good).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(loaded.is_some(), "{args:?}");
            for (conninfo, fragment) in [
                ("sslmode=require sslpassword=wrong", "cannot decrypt"),
                ("sslmode=require", "give its password"),
            ] {
                let err = connector(conninfo).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Config, "{args:?}: {err}");
                let err = err.to_string();
                assert!(err.contains(fragment), "{args:?}: {err}");
                assert!(err.contains("\"sslpassword\""), "{args:?}: {err}");
            }
        }

        for &(args, fragment) in REFUSED {
            let encrypted = encrypt(args, &ec_pem);
            let err = decrypt_key(&encrypted, Some(PASSWORD), "in memory").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{args:?}: {err}");
            assert!(err.to_string().contains(fragment), "{args:?}: {err}");
            assert!(
                err.to_string().contains("\"sslpassword\""),
                "{args:?}: {err}"
            );
        }
    }
}
