//! The native transport: tokio TCP and Unix-domain sockets.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Transport;

/// A tokio stream: anything that is `AsyncRead + AsyncWrite` (TCP, Unix sockets, duplex pipes in tests).
#[derive(Debug)]
pub struct TokioStream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for TokioStream<S> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects over TCP to `host:port` (a name is resolved by tokio; each address is tried in order), with
/// TCP_NODELAY set so small requests are not held back by Nagle's algorithm.
pub async fn connect_tcp(
    host: &str,
    hostaddr: Option<IpAddr>,
    port: u16,
) -> io::Result<TokioStream<tokio::net::TcpStream>> {
    let stream = match hostaddr {
        Some(ip) => tokio::net::TcpStream::connect((ip, port)).await?,
        None => tokio::net::TcpStream::connect((host, port)).await?,
    };
    stream.set_nodelay(true)?;
    Ok(TokioStream(stream))
}

/// Connects to the Unix-domain socket `.s.PGSQL.<port>` in `dir`.
#[cfg(unix)]
pub async fn connect_unix(
    dir: &Path,
    port: u16,
) -> io::Result<TokioStream<tokio::net::UnixStream>> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    Ok(TokioStream(tokio::net::UnixStream::connect(path).await?))
}
