//! SCRAM-SHA-256 (RFC 5802, RFC 7677) with the ClientKey and ServerKey instead of the password: libpq 18's
//! `scram_client_key` and `scram_server_key`. postgres-protocol's `ScramSha256` only starts from a password,
//! so this is the one place the client side of the exchange is computed from keys:
//!
//! - StoredKey = SHA-256(ClientKey); ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage);
//! - the server's `v=` must equal HMAC(ServerKey, AuthMessage), compared in constant time.
//!
//! No PBKDF2 runs, so the salt and iteration count are only checked for form. Channel binding works as with
//! the password: the gs2 header and binding data come from the mechanism the startup chose.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use postgres_protocol::authentication::sasl;
use rand::RngExt as _;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::config::ScramKeys;

/// Random bytes in the client nonce; base64 makes them 24 printable characters without a comma.
const NONCE_BYTES: usize = 18;

/// How the exchange is bound to the TLS channel: the gs2 header's flag and the binding data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// "n": the client cannot bind (no TLS, or `channel_binding=disable`).
    Unsupported,
    /// "y": the client could bind, but the server did not offer SCRAM-SHA-256-PLUS.
    Unrequested,
    /// "p=tls-server-end-point": SCRAM-SHA-256-PLUS with the hash of the server certificate.
    TlsServerEndPoint(Vec<u8>),
}

impl Binding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Binding::Unsupported => "n,,",
            Binding::Unrequested => "y,,",
            Binding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The same binding for postgres-protocol's password exchange.
    pub(crate) fn to_sasl(&self) -> sasl::ChannelBinding {
        match self {
            Binding::Unsupported => sasl::ChannelBinding::unsupported(),
            Binding::Unrequested => sasl::ChannelBinding::unrequested(),
            Binding::TlsServerEndPoint(data) => {
                sasl::ChannelBinding::tls_server_end_point(data.clone())
            }
        }
    }
}

/// Where the keyed exchange is.
enum Phase {
    /// client-first sent; waiting for server-first.
    ClientFirstSent { nonce: String },
    /// client-final sent; waiting for server-final, which must carry this signature.
    ClientFinalSent { server_signature: [u8; 32] },
    /// Finished (or failed): nothing more may happen.
    Done,
}

/// The client side of one SCRAM-SHA-256 exchange made with keys. Same roles as postgres-protocol's
/// `ScramSha256`: [`message`](Self::message) is what to send next, [`update`](Self::update) takes the
/// server-first message, [`finish`](Self::finish) the server-final one.
pub(crate) struct KeyedScram {
    keys: ScramKeys,
    binding: Binding,
    /// The next message to send.
    message: String,
    phase: Phase,
}

impl KeyedScram {
    /// Starts an exchange with a fresh random nonce.
    pub(crate) fn new(keys: ScramKeys, binding: Binding) -> KeyedScram {
        let mut random = [0u8; NONCE_BYTES];
        rand::rng().fill(&mut random[..]);
        KeyedScram::with_nonce(keys, binding, STANDARD.encode(random))
    }

    /// Starts an exchange with the given nonce (printable ASCII without a comma); tests fix it.
    pub(crate) fn with_nonce(keys: ScramKeys, binding: Binding, nonce: String) -> KeyedScram {
        // The user name goes in the StartupMessage; PostgreSQL ignores the one in SCRAM, so it is empty.
        let message = format!("{}n=,r={nonce}", binding.gs2_header());
        KeyedScram {
            keys,
            binding,
            message,
            phase: Phase::ClientFirstSent { nonce },
        }
    }

    /// The message to send next: client-first, then (after [`update`](Self::update)) client-final.
    pub(crate) fn message(&self) -> &[u8] {
        self.message.as_bytes()
    }

    /// Takes the server-first message (`r=<nonce>,s=<salt>,i=<count>`) and computes the client-final one.
    pub(crate) fn update(&mut self, server_first: &[u8]) -> Result<(), Error> {
        let Phase::ClientFirstSent { nonce } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Err(Error::protocol(
                "BUG: SCRAM server-first message taken twice",
            ));
        };
        let server_nonce = parse_server_first(server_first)?;
        // A server nonce that does not extend ours could be a replay of another exchange.
        if server_nonce.len() <= nonce.len() || !server_nonce.starts_with(nonce.as_bytes()) {
            return Err(Error::auth(
                "invalid SCRAM server-first message: the server nonce does not extend the client nonce",
            ));
        }
        // Checked as printable ASCII by the parser.
        let server_nonce = String::from_utf8_lossy(server_nonce);
        let client_first_bare = format!("n=,r={nonce}");
        let mut cbind_input = self.binding.gs2_header().as_bytes().to_vec();
        if let Binding::TlsServerEndPoint(data) = &self.binding {
            cbind_input.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={server_nonce}", STANDARD.encode(&cbind_input));
        let mut auth_message = Vec::with_capacity(
            client_first_bare.len() + server_first.len() + without_proof.len() + 2,
        );
        auth_message.extend_from_slice(client_first_bare.as_bytes());
        auth_message.push(b',');
        auth_message.extend_from_slice(server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(without_proof.as_bytes());

        let stored_key: [u8; 32] = Sha256::digest(self.keys.client_key).into();
        let client_signature = hmac_sha256(&stored_key, &auth_message)?;
        let mut proof = self.keys.client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        self.message = format!("{without_proof},p={}", STANDARD.encode(proof));
        self.phase = Phase::ClientFinalSent {
            server_signature: hmac_sha256(&self.keys.server_key, &auth_message)?,
        };
        Ok(())
    }

    /// Takes the server-final message (`v=<signature>` or `e=<error>`) and checks the server's signature: only
    /// a server that knows the ServerKey passes.
    pub(crate) fn finish(&mut self, server_final: &[u8]) -> Result<(), Error> {
        let Phase::ClientFinalSent { server_signature } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Err(Error::protocol(
                "BUG: SCRAM server-final message taken out of order",
            ));
        };
        if let Some(error) = server_final.strip_prefix(b"e=") {
            let error = String::from_utf8_lossy(&error[..error.len().min(200)]).into_owned();
            return Err(Error::auth(format!(
                "the server ended the SCRAM exchange: {error}"
            )));
        }
        let Some(signature) = server_final.strip_prefix(b"v=") else {
            return Err(Error::auth(
                "invalid SCRAM server-final message: no v= attribute",
            ));
        };
        // Base64 of 32 bytes is 44 characters; anything else is wrong before decoding.
        let decoded = (signature.len() == 44)
            .then(|| STANDARD.decode(signature).ok())
            .flatten();
        let Some(decoded) = decoded else {
            return Err(Error::auth(
                "invalid SCRAM server-final message: the signature is not base64 of 32 bytes",
            ));
        };
        // Constant time: the comparison must not tell how many leading bytes were right.
        let difference = decoded.iter().zip(server_signature).fold(
            u8::from(decoded.len() != server_signature.len()),
            |acc, (a, b)| acc | (a ^ b),
        );
        if difference != 0 {
            return Err(Error::auth(
                "SCRAM server verification failed: the server signature does not match scram_server_key",
            ));
        }
        Ok(())
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<[u8; 32], Error> {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .map_err(|_| Error::protocol("BUG: HMAC-SHA-256 refused a 32-byte key"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

/// Checks a server-first message, which must be exactly `r=<nonce>,s=<salt>,i=<count>` (what PostgreSQL sends;
/// no extensions), and returns the nonce. The salt must be base64 and the count a positive number of at most
/// ten digits; neither is used, since no PBKDF2 runs with keys.
fn parse_server_first(message: &[u8]) -> Result<&[u8], Error> {
    let invalid = |what: &str| Error::auth(format!("invalid SCRAM server-first message: {what}"));
    let mut attributes = message.split(|&b| b == b',');
    let (Some(nonce), Some(salt), Some(count), None) = (
        attributes.next(),
        attributes.next(),
        attributes.next(),
        attributes.next(),
    ) else {
        return Err(invalid("expected exactly r=, s= and i= attributes"));
    };
    let nonce = match nonce.strip_prefix(b"r=") {
        Some(nonce) if !nonce.is_empty() && nonce.iter().all(|&b| (0x21..=0x7e).contains(&b)) => {
            nonce
        }
        _ => return Err(invalid("a missing or malformed nonce")),
    };
    match salt.strip_prefix(b"s=") {
        Some(salt) if !salt.is_empty() && STANDARD.decode(salt).is_ok_and(|s| !s.is_empty()) => {}
        _ => return Err(invalid("a missing or malformed salt")),
    }
    let well_formed = count.strip_prefix(b"i=").is_some_and(|digits| {
        matches!(digits.first(), Some(b'1'..=b'9'))
            && digits.len() <= 10
            && digits.iter().all(u8::is_ascii_digit)
    });
    if !well_formed {
        return Err(invalid("a missing or malformed iteration count"));
    }
    Ok(nonce)
}
