//! `scram_client_key` and `scram_server_key` (libpq 18): SCRAM-SHA-256 with the ClientKey and ServerKey the
//! server stores for the role, each the base64 of 32 bytes, instead of the password. Both are secrets: neither
//! a value nor its length is ever shown.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::Config;
use crate::Error;

/// The length of a SCRAM-SHA-256 key: one SHA-256 output.
pub(crate) const KEY_LEN: usize = 32;

/// The two keys, decoded. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ScramKeys {
    /// ClientKey = HMAC(SaltedPassword, "Client Key"); its SHA-256 is the StoredKey the server keeps.
    pub(crate) client_key: [u8; KEY_LEN],
    /// ServerKey = HMAC(SaltedPassword, "Server Key"); it checks the server's signature.
    pub(crate) server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

/// Decodes one key; the error says what is wrong without quoting the value.
pub(super) fn decode_key(value: &str) -> Result<[u8; KEY_LEN], &'static str> {
    // Base64 of 32 bytes is 44 characters; checking the length first bounds the decoding.
    if value.len() != 44 {
        return Err("expected the base64 encoding of a 32-byte SCRAM key (44 characters)");
    }
    let bytes = STANDARD
        .decode(value)
        .map_err(|_| "expected the base64 encoding of a 32-byte SCRAM key (not valid base64)")?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| "expected the base64 encoding of a 32-byte SCRAM key")
}

impl Config {
    /// Both keys or neither: one alone cannot authenticate and would silently fall back to the password.
    pub(super) fn check_scram_keys(&self) -> Result<(), Error> {
        match (
            self.get_raw("scram_client_key"),
            self.get_raw("scram_server_key"),
        ) {
            (Some(_), None) => Err(Error::config(
                "scram_client_key is set but scram_server_key is not: SCRAM with keys needs both",
            )),
            (None, Some(_)) => Err(Error::config(
                "scram_server_key is set but scram_client_key is not: SCRAM with keys needs both",
            )),
            _ => Ok(()),
        }
    }

    /// The SCRAM keys, if both are given; used instead of the password when the server asks for SCRAM.
    pub(crate) fn get_scram_keys(&self) -> Option<ScramKeys> {
        // Each value was checked when it was set, so decoding fails only if it was never set.
        let client_key = decode_key(self.get_raw("scram_client_key")?).ok()?;
        let server_key = decode_key(self.get_raw("scram_server_key")?).ok()?;
        Some(ScramKeys {
            client_key,
            server_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn both_keys_decode() {
        let config =
            Config::parse(&format!("scram_client_key={KEY} scram_server_key={KEY}")).unwrap();
        let keys = config.get_scram_keys().unwrap();
        let expected: Vec<u8> = (0..32).collect();
        assert_eq!(keys.client_key.as_slice(), expected.as_slice());
        assert_eq!(keys.server_key.as_slice(), expected.as_slice());
        assert_eq!(format!("{keys:?}"), "ScramKeys(<redacted>)");
        assert!(!format!("{config:?}").contains(KEY));
    }

    #[test]
    fn one_key_alone_is_a_config_error() {
        for conninfo in [
            format!("scram_client_key={KEY}"),
            format!("scram_server_key={KEY}"),
        ] {
            let err = Config::parse(&conninfo).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(err.to_string().contains("needs both"), "{err}");
            assert!(!err.to_string().contains(KEY), "{err}");
        }
    }

    #[test]
    fn keys_not_base64_or_not_32_bytes_are_refused_without_showing_them() {
        let short = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="; // 31 bytes, 44 characters
        let not_base64 = "!!ECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let long = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"; // 33 bytes
        for bad in [short, not_base64, long, "c2VjcmV0"] {
            for keyword in ["scram_client_key", "scram_server_key"] {
                let err = Config::parse(&format!("{keyword}={bad}")).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Config, "{keyword}={bad}: {err}");
                assert!(err.to_string().contains(keyword), "{err}");
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
        assert!(decode_key(short).is_err());
        assert!(decode_key(KEY).is_ok());
    }
}
