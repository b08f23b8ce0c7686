//! The native transport: tokio TCP and Unix-domain sockets.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Keepalive, Transport};

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

/// Turns TCP keepalive on with `keepalive`'s settings (each `None` keeps the system default), or off with
/// `None`. A setting this platform cannot change is left at its default, with a debug trace.
pub fn set_keepalive(
    stream: &tokio::net::TcpStream,
    keepalive: Option<&Keepalive>,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    let Some(keepalive) = keepalive else {
        return socket.set_keepalive(false);
    };
    let mut params = socket2::TcpKeepalive::new();
    if let Some(idle) = keepalive.idle {
        params = params.with_time(idle);
    }
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "illumos",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "windows",
    ))]
    {
        if let Some(interval) = keepalive.interval {
            params = params.with_interval(interval);
        }
        if let Some(count) = keepalive.count {
            params = params.with_retries(count);
        }
    }
    #[cfg(not(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "illumos",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "windows",
    )))]
    if keepalive.interval.is_some() || keepalive.count.is_some() {
        tracing::debug!("keepalives_interval and keepalives_count cannot be set on this platform");
    }
    // Sets SO_KEEPALIVE, then the idle time, interval and count that were given.
    socket.set_tcp_keepalive(&params)
}

/// Sets TCP_USER_TIMEOUT (libpq's `tcp_user_timeout`): how long sent data may stay unacknowledged before the
/// system gives the connection up; `None` restores the system default. Only Linux, Android and Fuchsia have
/// this option: elsewhere a timeout is left unset with a debug trace, as libpq leaves it there.
pub fn set_tcp_user_timeout(
    stream: &tokio::net::TcpStream,
    timeout: Option<Duration>,
) -> io::Result<()> {
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    {
        socket2::SockRef::from(stream).set_tcp_user_timeout(timeout)
    }
    #[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
    {
        let _ = stream;
        if timeout.is_some() {
            tracing::debug!("tcp_user_timeout cannot be set on this platform; ignored");
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket options are really set: read back with getsockopt.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect_tcp("127.0.0.1", None, port).await.unwrap();
        let keepalive = Keepalive {
            idle: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_secs(5)),
            count: Some(3),
        };
        set_keepalive(&stream.0, Some(&keepalive)).unwrap();
        let socket = socket2::SockRef::from(&stream.0);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        set_keepalive(&stream.0, None).unwrap();
        assert!(!socket.keepalive().unwrap());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn tcp_user_timeout_reaches_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect_tcp("127.0.0.1", None, port).await.unwrap();
        let socket = socket2::SockRef::from(&stream.0);
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
        set_tcp_user_timeout(&stream.0, Some(Duration::from_millis(12_345))).unwrap();
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_345))
        );
        set_tcp_user_timeout(&stream.0, None).unwrap();
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
    }
}
