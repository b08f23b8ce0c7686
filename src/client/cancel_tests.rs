//! Scripted fake servers over real sockets: the driver's time limits (query timeouts that cancel, read
//! deadlines that give up), the cancel token that follows a rebuilt session, end to end through a [`Client`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proto::scripted::{message, ready_in as ready};
use crate::{Client, Config, ErrorKind, TransactionStatus};

const PID: i32 = 4242;
const KEY: [u8; 4] = [9, 8, 7, 6];

fn query_canceled() -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', "57014"),
        (b'M', "canceling statement due to user request"),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
}

/// Reads a length-prefixed packet without a tag (StartupMessage, CancelRequest).
async fn read_packet(stream: &mut TcpStream) -> Vec<u8> {
    let len = stream.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    body
}

/// Reads one tagged frontend message: its tag and body.
async fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = stream.read_u8().await.unwrap();
    let len = stream.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// Accepts a session and answers its startup: trust, the cancel key, ReadyForQuery.
async fn accept_session(listener: &TcpListener) -> TcpStream {
    accept_session_as(listener, PID, KEY).await
}

/// Accepts a session of backend `pid` with cancel key `secret`.
async fn accept_session_as(listener: &TcpListener, pid: i32, secret: [u8; 4]) -> TcpStream {
    let (mut stream, _) = listener.accept().await.unwrap();
    read_packet(&mut stream).await;
    let mut reply = message(b'R', &0u32.to_be_bytes());
    let mut key = pid.to_be_bytes().to_vec();
    key.extend_from_slice(&secret);
    reply.extend(message(b'K', &key));
    reply.extend(ready(b'I'));
    stream.write_all(&reply).await.unwrap();
    stream
}

async fn listener() -> (TcpListener, Config) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Config::parse(&format!(
        "host=127.0.0.1 port={port} user=u dbname=d sslmode=disable"
    ))
    .unwrap();
    (listener, config)
}

/// The timed-out query is cancelled on a second connection carrying the session's key, its 57014 is
/// read out, and the next request goes out only after the server closed the cancel connection.
#[tokio::test]
async fn timed_out_query_is_cancelled_then_read_out() {
    let (listener, mut config) = listener().await;
    config.query_timeout(Duration::from_millis(200));
    let server = tokio::spawn(async move {
        let mut session = accept_session(&listener).await;
        let (tag, _) = read_message(&mut session).await;
        assert_eq!(tag, b'Q');
        // Silent until the cancel request comes.
        let (mut cancel, _) = listener.accept().await.unwrap();
        let request = read_packet(&mut cancel).await;
        assert_eq!(&request[..4], &80_877_102u32.to_be_bytes());
        assert_eq!(&request[4..8], &PID.to_be_bytes());
        assert_eq!(&request[8..], &KEY);
        let mut answer = query_canceled();
        answer.extend(ready(b'E'));
        session.write_all(&answer).await.unwrap();
        // Nothing more may arrive on the session before the cancel connection is closed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(1), session.peek(&mut probe)).await;
        assert!(
            early.is_err(),
            "the next request was sent before the cancel finished"
        );
        drop(cancel);
        let (tag, body) = read_message(&mut session).await;
        assert_eq!((tag, body), (b'Q', b"\0".to_vec()));
        let mut answer = message(b'I', &[]);
        answer.extend(ready(b'E'));
        session.write_all(&answer).await.unwrap();
    });
    let client = Client::connect(&config).await.unwrap();
    let started = Instant::now();
    let err = client.simple_query("SELECT slow").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(!err.is_connection_broken());
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(!client.is_closed());
    assert_eq!(client.ping().await.unwrap(), TransactionStatus::Failed);
    server.await.unwrap();
}

/// Accepts a cancel connection and returns the backend key its CancelRequest carries.
async fn accept_cancel(listener: &TcpListener) -> (i32, Vec<u8>) {
    let (mut cancel, _) = listener.accept().await.unwrap();
    let request = read_packet(&mut cancel).await;
    assert_eq!(&request[..4], &80_877_102u32.to_be_bytes());
    let pid = i32::from_be_bytes(request[4..8].try_into().unwrap());
    (pid, request[8..].to_vec())
}

/// A token taken before a session rebuild cancels on the rebuilt session; used between the break and
/// the rebuild, it goes to the lost session.
#[tokio::test]
async fn token_follows_a_rebuilt_session() {
    const NEW_PID: i32 = 5353;
    const NEW_KEY: [u8; 4] = [1, 2, 3, 4];
    let (listener, mut config) = listener().await;
    config.session_rebuild(true);
    let running = Arc::new(AtomicBool::new(false));
    let query_runs = running.clone();
    let server = tokio::spawn(async move {
        let mut lost = accept_session(&listener).await;
        read_message(&mut lost).await;
        drop(lost);
        // A cancel before the rebuild carries the lost session's key.
        assert_eq!(accept_cancel(&listener).await, (PID, KEY.to_vec()));
        let mut rebuilt = accept_session_as(&listener, NEW_PID, NEW_KEY).await;
        let (tag, _) = read_message(&mut rebuilt).await;
        assert_eq!(tag, b'Q');
        running.store(true, Ordering::Release);
        // The token taken on the lost session now carries the rebuilt one's key.
        assert_eq!(accept_cancel(&listener).await, (NEW_PID, NEW_KEY.to_vec()));
        let mut answer = query_canceled();
        answer.extend(ready(b'I'));
        rebuilt.write_all(&answer).await.unwrap();
        let mut rest = Vec::new();
        let _ = rebuilt.read_to_end(&mut rest).await;
    });
    let client = Client::connect(&config).await.unwrap();
    let token = client.cancel_token();
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_connection_broken(), "{err}");
    token.cancel_query().await.unwrap();
    let canceller = tokio::spawn(async move {
        while !query_runs.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        token.cancel_query().await
    });
    let err = client.simple_query("SELECT slow").await.unwrap_err();
    assert_eq!(err.code(), Some(crate::sqlstate::QUERY_CANCELED), "{err}");
    canceller.await.unwrap().unwrap();
    assert_eq!(client.session_rebuilds(), 1);
    assert_eq!(client.backend_pid(), Some(NEW_PID));
    drop(client);
    server.await.unwrap();
}

/// No byte within the read deadline: Timeout, and the connection is given up.
#[tokio::test]
async fn read_deadline_breaks_the_connection() {
    let (listener, mut config) = listener().await;
    config.read_timeout(Duration::from_millis(200));
    let server = tokio::spawn(async move {
        let mut session = accept_session(&listener).await;
        read_message(&mut session).await;
        // Never answers; keeps the socket open until the client gives up.
        let mut rest = Vec::new();
        let _ = session.read_to_end(&mut rest).await;
    });
    let client = Client::connect(&config).await.unwrap();
    let started = Instant::now();
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_connection_broken());
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(client.is_closed());
    drop(client);
    server.await.unwrap();
}

/// A client on a caller's transport has no route for a cancel: the token says so, and a query timeout
/// gives the connection up instead of waiting for the query.
#[tokio::test]
async fn no_route_without_an_address() {
    let (listener, config) = listener().await;
    let server = tokio::spawn(async move {
        let mut session = accept_session(&listener).await;
        read_message(&mut session).await;
        let mut rest = Vec::new();
        let _ = session.read_to_end(&mut rest).await;
    });
    let port = config.get_ports()[0];
    let stream = crate::transport::tokio::connect_tcp("127.0.0.1", None, port)
        .await
        .unwrap();
    let mut client = Client::connect_with_transport(Box::new(stream), &config)
        .await
        .unwrap();
    let err = client.cancel_token().cancel_query().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("connect_with_transport"), "{err}");
    let err = client
        .with_query_timeout(Duration::from_millis(100))
        .simple_query("SELECT slow")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_connection_broken());
    assert!(err.to_string().contains("connect_with_transport"), "{err}");
    assert!(client.is_closed());
    assert_eq!(client.query_timeout(), None);
    drop(client);
    server.await.unwrap();
}
