//! Entry points for the fuzzers in `fuzz/` (built with `--cfg fuzzing`) and for the property tests below.
//! They drive the real sans-IO core and parsers; nothing here is a reimplementation.

use crate::config::RequireAuth;
use crate::proto::{Flow, Limits, Protocol, StartupParams};

/// Feeds `data` to a fresh connection as the server's byte stream, cut into chunks whose sizes come from the
/// first byte, through startup (any auth method) and then a simple query. Any outcome but a panic, a hang or an
/// allocation over the cap is fine.
pub fn backend_stream(data: &[u8]) {
    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(shape % 64) + 1;
    let params = StartupParams {
        params: vec![
            ("user".into(), "fuzz".into()),
            ("database".into(), "fuzz".into()),
        ],
        password: Some(b"password".to_vec()),
        require_auth: RequireAuth::default(),
        channel_binding: crate::proto::ChannelBindingPolicy {
            mode: crate::config::ChannelBinding::Prefer,
            tls: None,
        },
        scram_max_iterations: 4096,
        // 3.2 so that negotiation and long cancel keys are reached too.
        min_protocol_version: crate::config::ProtocolVersion::V3_0,
        max_protocol_version: crate::config::ProtocolVersion::V3_2,
    };
    let Ok(mut protocol) = Protocol::new(
        params,
        Limits {
            max_message_size: 1 << 16,
        },
    ) else {
        return;
    };
    let mut chunks = data.chunks(chunk);
    // Startup.
    loop {
        match protocol.poll_startup() {
            Ok(true) => break,
            Ok(false) => match chunks.next() {
                Some(bytes) => protocol.handle_input(bytes),
                None => return,
            },
            Err(_) => return,
        }
        let sent = protocol.poll_transmit().len();
        protocol.advance_transmit(sent);
    }
    // A query, answered by whatever remains.
    let queued = protocol.queue_request(
        Flow::Simple,
        if shape & 0x80 != 0 { Some(2) } else { None },
        |buf| {
            postgres_protocol::message::frontend::query("SELECT 1", buf)
                .map_err(|e| crate::Error::config(e.to_string()))
        },
    );
    if queued.is_err() {
        return;
    }
    loop {
        match protocol.poll_response() {
            Ok(Some(_)) => {}
            Ok(None) => match chunks.next() {
                Some(bytes) => protocol.handle_input(bytes),
                None => {
                    protocol.handle_eof();
                    let _ = protocol.poll_response();
                    return;
                }
            },
            Err(_) => return,
        }
        while protocol.poll_event().is_some() {}
    }
}

/// Parses `text` as a connection string; errors are fine, panics are not.
pub fn conninfo(text: &str) {
    if let Ok(config) = crate::Config::parse(text) {
        let _ = format!("{config:?}");
        let _ = config.targets();
    }
}

#[cfg(test)]
mod tests {
    /// A deterministic xorshift stream, so failures reproduce.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn random_backend_streams_never_panic() {
        for seed in 0..2000 {
            super::backend_stream(&bytes(seed, 512));
        }
    }

    #[test]
    fn valid_prefix_then_garbage_never_panics() {
        // AuthenticationOk, ReadyForQuery, then random bytes in the query phase.
        let prefix: &[u8] = &[0, b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'];
        for seed in 0..2000 {
            let mut data = prefix.to_vec();
            data[0] = seed as u8;
            data.extend(bytes(seed, 256));
            super::backend_stream(&data);
        }
    }

    #[test]
    fn random_conninfo_never_panics() {
        let alphabet = b"postgresql://user:pw@[::1]:5432,/db?=&%2F'\\ host=port=a,b;\"x";
        for seed in 0..3000 {
            let text: String = bytes(seed, 40)
                .into_iter()
                .map(|b| char::from(alphabet[usize::from(b) % alphabet.len()]))
                .collect();
            super::conninfo(&text);
        }
    }
}
