//! Times the operations a TLS 1.3 client handshake and its records cost, through rustls's `CryptoProvider`
//! interface, once with ring and once with rustls-rustcrypto: X25519 and P-256 key exchange (start and complete),
//! an ECDSA P-256 SHA-256 signature verification (a server certificate chain needs one or more), and sealing
//! 16 KiB records with AES-256-GCM and ChaCha20-Poly1305. Each figure is an average over 200 operations after one
//! warm-up.
//!
//! ```sh
//! cd tools/tls-provider-bench
//! CC_wasm32_wasip2=clang cargo build --release --target wasm32-wasip2 && cargo build --release
//! wasmtime run target/wasm32-wasip2/release/tls-provider-bench.wasm
//! target/release/tls-provider-bench
//! ```

use rustls::crypto::CryptoProvider;
use rustls::crypto::cipher::{AeadKey, Iv, OutboundChunks, OutboundPlainMessage};
use rustls::{CipherSuite, ContentType, NamedGroup, ProtocolVersion, SupportedCipherSuite};
use std::time::Instant;

fn per_op(label: &str, name: &str, n: u32, f: impl FnMut()) {
    let mut f = f;
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("{label:10} {name:34} {us:10.1} us/op");
}

fn bench(label: &str, p: &CryptoProvider) {
    for g in &p.kx_groups {
        if ![NamedGroup::X25519, NamedGroup::secp256r1].contains(&g.name()) {
            continue;
        }
        let peer = g.start().unwrap();
        let peer_pub = peer.pub_key().to_vec();
        per_op(
            label,
            &format!("key exchange {:?} (start+complete)", g.name()),
            200,
            || {
                let kx = g.start().unwrap();
                kx.complete(&peer_pub).unwrap();
            },
        );
    }
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    use ring::signature::KeyPair;
    let msg = [7u8; 200];
    let sig = kp.sign(&rng, &msg).unwrap();
    let v = p
        .signature_verification_algorithms
        .all
        .iter()
        .find(|a| {
            a.public_key_alg_id() == rustls::pki_types::alg_id::ECDSA_P256
                && a.signature_alg_id() == rustls::pki_types::alg_id::ECDSA_SHA256
        })
        .expect("an ECDSA P-256 SHA-256 verifier");
    per_op(label, "verify ECDSA P-256 SHA-256", 200, || {
        v.verify_signature(kp.public_key().as_ref(), &msg, sig.as_ref())
            .unwrap();
    });
    let record = vec![1u8; 16 * 1024];
    for s in &p.cipher_suites {
        let SupportedCipherSuite::Tls13(s13) = s else {
            continue;
        };
        if ![
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ]
        .contains(&s.suite())
        {
            continue;
        }
        let mut enc = s13
            .aead_alg
            .encrypter(AeadKey::from([9u8; 32]), Iv::new([3u8; 12]));
        let n = 200u32;
        let t = Instant::now();
        for seq in 0..u64::from(n) {
            let m = OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(&record),
            };
            enc.encrypt(m, seq).unwrap();
        }
        let mbps = f64::from(n) * 16.0 / 1024.0 / t.elapsed().as_secs_f64();
        println!(
            "{label:10} {:34} {mbps:10.1} MiB/s",
            format!("seal 16 KiB records {:?}", s.suite())
        );
    }
}

fn main() {
    bench("ring", &rustls::crypto::ring::default_provider());
    bench("rustcrypto", &rustls_rustcrypto::provider());
}
