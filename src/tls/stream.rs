//! TLS over any [`Transport`], driven through rustls's buffered sans-IO calls.
//!
//! Ciphertext read from the inner transport is kept in `incoming` until rustls has taken all of it: `read_tls`
//! may consume only part of what it is offered, and whatever it did not take is offered again next time (the
//! predecessor dropped those bytes, which broke every response over a few kilobytes). Plaintext is always read
//! out of rustls before more ciphertext goes in, so its received-plaintext buffer never fills up.

use std::io::{self, Read, Write};
use std::task::{Context, Poll, ready};

use rustls::ClientConnection;

use crate::transport::Transport;
use crate::transport::read_size::ReadSize;

/// Ciphertext waiting to go out is written to the inner transport before more plaintext is accepted once it
/// grows past this, so a slow server pushes back on the writer.
const MAX_PENDING_CIPHERTEXT: usize = 64 * 1024;

/// A TLS client session over another transport.
pub(crate) struct TlsStream {
    inner: Box<dyn Transport>,
    session: ClientConnection,
    /// Ciphertext read from `inner`; `incoming[incoming_start..]` is what rustls has not taken yet.
    incoming: Box<[u8]>,
    /// How much ciphertext the next read asks the inner transport for.
    read_size: ReadSize,
    incoming_start: usize,
    incoming_end: usize,
    /// Ciphertext produced by rustls that `inner` has not accepted yet; `outgoing[outgoing_start..]` is left.
    outgoing: Vec<u8>,
    outgoing_start: usize,
    /// The inner transport reached end of stream and rustls was told.
    inner_eof: bool,
}

impl TlsStream {
    /// Wraps `inner`; the handshake starts with the first call that moves bytes.
    pub(crate) fn new(inner: Box<dyn Transport>, session: ClientConnection) -> TlsStream {
        TlsStream {
            inner,
            session,
            incoming: vec![0; ReadSize::MAX].into_boxed_slice(),
            read_size: ReadSize::new(),
            incoming_start: 0,
            incoming_end: 0,
            outgoing: Vec::new(),
            outgoing_start: 0,
            inner_eof: false,
        }
    }

    /// The rustls session, for what the handshake established (peer certificates, ALPN, version).
    pub(crate) fn session(&self) -> &ClientConnection {
        &self.session
    }

    /// Drives the handshake to its end.
    pub(crate) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Our flight (ClientHello, Finished, a certificate) must reach the server before it answers.
            ready!(self.poll_send_pending(cx))?;
            if !self.session.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.inner_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_feed(cx))?;
        }
    }

    /// Moves rustls's pending ciphertext into `outgoing` and writes as much of it as `inner` takes.
    /// `Ready(Ok(()))` once everything went out.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.session.wants_write() {
                if self.outgoing_start == self.outgoing.len() {
                    self.outgoing.clear();
                    self.outgoing_start = 0;
                }
                self.session.write_tls(&mut self.outgoing)?;
            }
            let pending = &self.outgoing[self.outgoing_start..];
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.inner.poll_write(cx, pending))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.outgoing_start += n,
            }
        }
    }

    /// Gives rustls one more batch of ciphertext: what it left last time, else a fresh read from `inner`.
    /// Processes the records and starts sending whatever they made rustls want to say (handshake replies,
    /// alerts, key updates).
    fn poll_feed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.incoming_start == self.incoming_end {
            let n = ready!(
                self.inner
                    .poll_read(cx, &mut self.incoming[..self.read_size.get()])
            )?;
            self.read_size.record(n);
            self.incoming_start = 0;
            self.incoming_end = n;
            if n == 0 {
                self.inner_eof = true;
                // An empty read tells rustls the stream ended; it then reports a missing close_notify.
                self.session.read_tls(&mut io::empty())?;
            }
        }
        let mut unread = &self.incoming[self.incoming_start..self.incoming_end];
        let before = unread.len();
        if before > 0 {
            // read_tls takes what fits in its buffer; the rest stays for the next call.
            self.session.read_tls(&mut unread)?;
            self.incoming_start += before - unread.len();
        }
        self.session.process_new_packets().map_err(tls_error)?;
        // Pending output is pushed on a best-effort basis here; a full socket is retried by the next write
        // or read, and its waker is registered either way.
        if let Poll::Ready(Err(e)) = self.poll_send_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }
}

/// A rustls error as an I/O error, keeping it as the source.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Transport for TlsStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.session.reader().read(buf) {
                // Ok(0) for a non-empty buffer means the server sent close_notify: a clean end of stream.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The transport ended without close_notify. PostgreSQL messages carry their own lengths, so
                // the protocol layer still tells a complete session from a cut one; report end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.inner_eof && self.incoming_start == self.incoming_end {
                return Poll::Ready(Ok(0));
            }
            ready!(self.poll_feed(cx))?;
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.outgoing.len() - self.outgoing_start >= MAX_PENDING_CIPHERTEXT {
            ready!(self.poll_send_pending(cx))?;
        }
        let n = self.session.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // rustls's plaintext buffer is full (only while handshaking): wait for the handshake to move on.
            ready!(self.poll_handshake(cx))?;
            let n = self.session.writer().write(buf)?;
            return Poll::Ready(Ok(n));
        }
        // Encrypt now; the bytes go out here if the socket takes them, else at flush.
        if let Poll::Ready(Err(e)) = self.poll_send_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        self.inner.poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.session.send_close_notify();
        ready!(self.poll_send_pending(cx))?;
        self.inner.poll_shutdown(cx)
    }
}

#[cfg(all(test, not(target_os = "wasi")))]
mod tests {
    //! The stream against an in-memory rustls server, with the ciphertext cut into pieces of every size: the
    //! data must arrive whole whatever the chunking (the predecessor lost bytes past ~4 KB).

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    /// One direction of an in-memory socket.
    type Pipe = Arc<Mutex<VecDeque<u8>>>;

    /// The client's end: reads at most `chunk` bytes at a time, accepts at most `chunk` bytes per write.
    struct MemoryTransport {
        to_client: Pipe,
        to_server: Pipe,
        chunk: usize,
    }

    impl Transport for MemoryTransport {
        fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let mut pipe = self.to_client.lock().unwrap();
            if pipe.is_empty() {
                return Poll::Pending;
            }
            let n = buf.len().min(self.chunk).min(pipe.len());
            for (slot, byte) in buf.iter_mut().zip(pipe.drain(..n)) {
                *slot = byte;
            }
            Poll::Ready(Ok(n))
        }
        fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.to_server.lock().unwrap().extend(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Moves ciphertext between the pipes and the server session, and lets the server echo nothing: it only
    /// collects what the client sent and sends what it was given.
    fn pump(server: &mut ServerConnection, to_client: &Pipe, to_server: &Pipe, got: &mut Vec<u8>) {
        let incoming: Vec<u8> = to_server.lock().unwrap().drain(..).collect();
        let mut slice = &incoming[..];
        while !slice.is_empty() {
            server.read_tls(&mut slice).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = [0u8; 8192];
            while let Ok(n) = server.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        to_client.lock().unwrap().extend(out);
    }

    fn configs() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(client), Arc::new(server))
    }

    #[test]
    fn large_transfers_survive_any_chunking() {
        let (client_config, server_config) = configs();
        let upload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let download: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        for chunk in [1, 5, 4096, 16_389, 65_536] {
            let to_client = Pipe::default();
            let to_server = Pipe::default();
            let transport = MemoryTransport {
                to_client: to_client.clone(),
                to_server: to_server.clone(),
                chunk,
            };
            let name = ServerName::try_from("localhost").unwrap();
            let session = ClientConnection::new(client_config.clone(), name).unwrap();
            let mut client = TlsStream::new(Box::new(transport), session);
            let mut server = ServerConnection::new(server_config.clone()).unwrap();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut at_server = Vec::new();

            let mut rounds = 0;
            while client.poll_handshake(&mut cx).is_pending() {
                pump(&mut server, &to_client, &to_server, &mut at_server);
                rounds += 1;
                assert!(
                    rounds < 100_000,
                    "handshake does not finish (chunk {chunk})"
                );
            }
            // A chunk of 1 would make the download take millions of rounds; the small chunks test the
            // framing, the large ones the volume.
            let download = if chunk < 100 {
                &download[..50_000]
            } else {
                &download[..]
            };
            server.set_buffer_limit(None);
            server.writer().write_all(download).unwrap();

            let mut sent = 0;
            let mut received = Vec::new();
            let mut buf = vec![0u8; 10_000];
            let mut rounds = 0;
            while sent < upload.len() || received.len() < download.len() {
                if sent < upload.len()
                    && let Poll::Ready(n) = client.poll_write(&mut cx, &upload[sent..])
                {
                    sent += n.unwrap();
                }
                let _ = client.poll_flush(&mut cx);
                if let Poll::Ready(n) = client.poll_read(&mut cx, &mut buf) {
                    let n = n.unwrap();
                    assert!(n > 0, "unexpected end of stream (chunk {chunk})");
                    received.extend_from_slice(&buf[..n]);
                }
                pump(&mut server, &to_client, &to_server, &mut at_server);
                rounds += 1;
                assert!(rounds < 50_000_000, "transfer stalls (chunk {chunk})");
            }
            while at_server.len() < upload.len() {
                let _ = client.poll_flush(&mut cx);
                pump(&mut server, &to_client, &to_server, &mut at_server);
            }
            assert!(received == download, "download corrupted (chunk {chunk})");
            assert!(at_server == upload, "upload corrupted (chunk {chunk})");

            // close_notify from the server reads as a clean end of stream.
            server.send_close_notify();
            pump(&mut server, &to_client, &to_server, &mut at_server);
            let mut rounds = 0;
            loop {
                match client.poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(0)) => break,
                    Poll::Ready(other) => panic!("expected end of stream, got {other:?}"),
                    Poll::Pending => rounds += 1,
                }
                assert!(rounds < 1000, "close_notify not seen (chunk {chunk})");
            }
        }
    }
}
