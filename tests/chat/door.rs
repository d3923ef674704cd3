//! Hardening, "at the door": everything that happens before a connection
//! becomes a session — connection caps, slow and oversized handshakes,
//! Origin and token checks.
//!
//! Client sockets bind distinct loopback sources (127.0.0.2, 127.0.0.3, ...)
//! so the per-address cap can be told apart from the global one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chat::http::policy::{Policy, Token};
use chat::http::MAX_REQUEST_BYTES;
use chat::server::Config;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::support::{next_text, run_alone, upgrade_on, Captured, Client, TestServer, WAIT};

/// How fast the door must answer: a refusal, or a real client's welcome.
const FAST: Duration = Duration::from_millis(100);

/// A complete, valid upgrade request.
const UPGRADE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A loopback source address other than 127.0.0.1.
fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to the server from `ip`.
async fn tcp_from(server: &TestServer, ip: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(server.addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect failed")
}

/// A WebSocket client from `ip`, welcome consumed.
async fn ws_from(server: &TestServer, ip: IpAddr) -> WebSocketStream<TcpStream> {
    let tcp = tcp_from(server, ip).await;
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        ClientBuilder::new()
            .uri(&server.url())
            .unwrap()
            .connect_on(tcp),
    )
    .await
    .expect("upgrade timed out")
    .expect("upgrade failed");
    let welcome = next_text(&mut ws).await;
    assert!(welcome.starts_with("* welcome"), "first line: {welcome}");
    ws
}

/// Leaves with `/quit` and waits until the server has closed the
/// connection.
async fn leave(mut ws: WebSocketStream<TcpStream>) {
    ws.send(Message::text("/quit")).await.unwrap();
    tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} })
        .await
        .expect("the server did not close after /quit");
}

/// Everything the server sends until it closes (a reset after the answer
/// counts as closing).
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server kept the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Connects from `ip`, sends nothing, and returns the answer and how long
/// it took from the moment the connection was established.
async fn refused_from(server: &TestServer, ip: IpAddr) -> (String, Duration) {
    let mut tcp = tcp_from(server, ip).await;
    let started = Instant::now();
    let answer = read_answer(&mut tcp).await;
    (answer, started.elapsed())
}

/// Retries connecting from `ip` until the server lets it in. The server
/// frees a slot when the connection's task ends, a moment after the client
/// sees the socket close, and nothing the client can observe marks that
/// moment; so this polls, bounded by [`WAIT`].
async fn ws_from_when_admitted(server: &TestServer, ip: IpAddr) -> WebSocketStream<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        let tcp = tcp_from(server, ip).await;
        let builder = ClientBuilder::new().uri(&server.url()).unwrap();
        let attempt = builder.connect_on(tcp);
        if let Ok(Ok((mut ws, _))) = tokio::time::timeout(WAIT, attempt).await {
            let welcome = next_text(&mut ws).await;
            assert!(welcome.starts_with("* welcome"), "first line: {welcome}");
            return ws;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens `count` connections from `ip` that send half a request head and
/// then nothing more.
async fn slowloris(server: &TestServer, ip: IpAddr, count: usize) -> Vec<TcpStream> {
    let mut socks = Vec::with_capacity(count);
    for _ in 0..count {
        let mut tcp = tcp_from(server, ip).await;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        socks.push(tcp);
    }
    socks
}

#[tokio::test]
async fn the_global_cap_answers_503_fast_and_frees_slots() {
    let server = TestServer::start_with(Config {
        max_connections: 3,
        max_connections_per_ip: 0,
        ..Config::default()
    })
    .await;
    let mut inside = Vec::new();
    for i in 0..3 {
        inside.push(ws_from(&server, source(2 + i)).await);
    }
    let (answer, took) = refused_from(&server, source(9)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Retry-After: 5\r\n"), "{answer}");
    assert!(took < FAST, "refusal took {took:?}");
    // One leaves; the next one gets in.
    leave(inside.pop().unwrap()).await;
    let mut newcomer = ws_from_when_admitted(&server, source(9)).await;
    newcomer.send(Message::text("in")).await.unwrap();
    assert!(next_text(&mut newcomer).await.ends_with(": in"));
    // Gone before shutdown, so it need not wait for their closing handshakes.
    drop((inside, newcomer));
    server.shutdown().await;
}

#[tokio::test]
async fn the_per_address_cap_answers_429_fast_and_frees_slots() {
    let server = TestServer::start_with(Config {
        max_connections_per_ip: 2,
        ..Config::default()
    })
    .await;
    let first = ws_from(&server, source(2)).await;
    let second = ws_from(&server, source(2)).await;
    let (answer, took) = refused_from(&server, source(2)).await;
    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer}"
    );
    assert!(took < FAST, "refusal took {took:?}");
    // A client that sent its whole request before being refused still gets
    // the answer (the server reads none of it).
    for _ in 0..20 {
        let mut tcp = tcp_from(&server, source(2)).await;
        tcp.write_all(UPGRADE_REQUEST).await.unwrap();
        let answer = read_answer(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    }
    // Other addresses are not affected.
    let other = ws_from(&server, source(3)).await;
    leave(first).await;
    ws_from_when_admitted(&server, source(2)).await;
    drop((second, other));
    server.shutdown().await;
}

#[tokio::test]
async fn a_real_client_gets_in_fast_past_500_slowloris_sockets() {
    // No per-address cap: all 500 stalled handshakes are admitted and held.
    let server = TestServer::start_with(Config {
        max_connections_per_ip: 0,
        ..Config::default()
    })
    .await;
    let stalled = slowloris(&server, source(2), 500).await;
    let started = Instant::now();
    let mut client = Client::connect(&server).await;
    let took = started.elapsed();
    eprintln!(
        "welcome after {took:?} with {} stalled handshakes",
        stalled.len()
    );
    assert!(took < FAST, "welcome took {took:?}");
    // The stalled sockets are still open (the server closes them only at
    // their handshake timeout), and the client works.
    client.send("hi").await;
    assert!(client.recv_text().await.ends_with(": hi"));
    drop((stalled, client));
    server.shutdown().await;
}

#[tokio::test]
async fn the_per_address_cap_turns_away_a_slowloris_flood_fast() {
    // The default per-address cap: the first 64 stalled handshakes from one
    // address are held, the rest are answered 429 at once.
    let server = TestServer::start().await;
    let cap = Config::default().max_connections_per_ip;
    let held = slowloris(&server, source(2), cap).await;
    let mut slowest = Duration::ZERO;
    for _ in cap..500 {
        let (answer, took) = refused_from(&server, source(2)).await;
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
        slowest = slowest.max(took);
    }
    eprintln!("{} refusals, slowest {slowest:?}", 500 - cap);
    assert!(slowest < FAST, "slowest refusal took {slowest:?}");
    let started = Instant::now();
    Client::connect(&server).await;
    let took = started.elapsed();
    eprintln!(
        "welcome after {took:?} with {} stalled handshakes",
        held.len()
    );
    assert!(took < FAST, "welcome took {took:?}");
    drop(held);
    server.shutdown().await;
}

#[tokio::test]
async fn a_megabyte_of_header_without_end_is_answered_431() {
    let server = TestServer::start().await;
    let mut tcp = tcp_from(&server, source(2)).await;
    let (mut rd, mut wr) = tcp.split();
    let mut head = b"GET / HTTP/1.1\r\nX-Endless: ".to_vec();
    head.resize(1024 * 1024, b'a');
    // The server stops reading at the cap and closes, so the write may
    // fail part-way; what matters is the answer.
    let write = async {
        let _ = wr.write_all(&head).await;
    };
    let read = async {
        let mut answer = Vec::new();
        let _ = rd.read_to_end(&mut answer).await;
        answer
    };
    let ((), answer) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("the server kept an endless header open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    // And the server goes on.
    Client::connect(&server).await;
    server.shutdown().await;
}

/// An endless request head that counts what is read from it and keeps
/// what is written to it.
struct Endless {
    read: usize,
    written: Vec<u8>,
}

impl AsyncWrite for Endless {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Endless {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read == 0 {
            buf.put_slice(b"GET / HTTP/1.1\r\n");
            self.read += 16;
        } else {
            let n = buf.remaining();
            buf.put_slice(&vec![b'a'; n]);
            self.read += n;
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn reading_an_endless_head_stops_at_the_cap() {
    let mut endless = Endless {
        read: 0,
        written: Vec::new(),
    };
    let service = hyper::service::service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(chat::http::Body::default()))
    });
    let conn = chat::http::builder(Duration::from_secs(10))
        .serve_connection(hyper_util::rt::TokioIo::new(&mut endless), service);
    let result = tokio::time::timeout(WAIT, conn)
        .await
        .expect("the connection did not stop reading");
    assert!(result.is_err(), "an endless head was accepted");
    // hyper reads in chunks, so it may read one chunk past the cap, never more.
    assert!(
        endless.read <= 2 * MAX_REQUEST_BYTES,
        "read {} bytes of an endless head",
        endless.read
    );
    let answer = String::from_utf8_lossy(&endless.written);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

/// Sends an upgrade request for `path` with `extra` header lines (each
/// ending in CRLF) and returns the status line of the answer.
async fn status_of(server: &TestServer, path: &str, extra: &str) -> String {
    let mut tcp = tcp_from(server, source(1)).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A 101 leaves the connection open: read only the status line.
    while !answer.ends_with(b"\r\n") {
        let mut byte = [0u8];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("no answer")
            .unwrap();
        assert_eq!(n, 1, "closed without an answer");
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap().trim_end().to_string()
}

/// A WebSocket client with extra request headers; the welcome consumed.
async fn ws_with(
    server: &TestServer,
    uri: &str,
    headers: &[(&'static str, &str)],
) -> WebSocketStream<TcpStream> {
    let tcp = tcp_from(server, source(1)).await;
    let mut builder = ClientBuilder::new().uri(uri).unwrap();
    for (name, value) in headers {
        builder = builder
            .add_header(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_str(value).unwrap(),
            )
            .unwrap();
    }
    upgrade_on(builder, tcp).await
}

#[tokio::test]
async fn origins_listed_absent_or_same_host_are_allowed_others_get_403() {
    let listed = TestServer::start_with(Config {
        policy: Policy {
            allowed_origins: vec!["https://chat.example".into()],
            ..Policy::default()
        },
        ..Config::default()
    })
    .await;
    let url = listed.url();
    ws_with(&listed, &url, &[("origin", "https://chat.example")]).await;
    ws_with(&listed, &url, &[]).await;
    assert_eq!(
        status_of(&listed, "/", "Origin: https://evil.example\r\n").await,
        "HTTP/1.1 403 Forbidden"
    );
    // Listing origins replaces the same-host rule.
    let own = format!("http://{}", listed.addr);
    assert_eq!(
        status_of(&listed, "/", &format!("Origin: {own}\r\n")).await,
        "HTTP/1.1 403 Forbidden"
    );
    listed.shutdown().await;

    // The default: same host and port as the Host header.
    let server = TestServer::start().await;
    let own = format!("http://{}", server.addr);
    ws_with(&server, &server.url(), &[("origin", &own)]).await;
    ws_with(&server, &server.url(), &[]).await;
    let other_port = format!("http://127.0.0.1:{}", server.addr.port() + 1);
    for origin in ["https://evil.example", "null", other_port.as_str()] {
        assert_eq!(
            status_of(&server, "/", &format!("Origin: {origin}\r\n")).await,
            "HTTP/1.1 403 Forbidden",
            "{origin}"
        );
    }
    server.shutdown().await;
}

#[test]
fn the_token_is_required_and_never_logged() {
    run_alone("door::token_checks_alone");
}

#[tokio::test]
#[ignore = "run alone, in its own process, by the_token_is_required_and_never_logged"]
async fn token_checks_alone() {
    const TOKEN: &str = "tok-3f9a/c0ffee";
    // Everything the server logs, at every level, on this test's thread
    // (a #[tokio::test] runtime runs the server's tasks on it too).
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start_with(Config {
        policy: Policy {
            token: Some(Token::new(TOKEN)),
            ..Policy::default()
        },
        ..Config::default()
    })
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let mut a = ws_with(&server, &server.url(), &[("authorization", &bearer)]).await;
    let in_query = format!("{}/?token=tok-3f9a%2Fc0ffee", server.url());
    ws_with(&server, &in_query, &[]).await;
    assert_eq!(
        status_of(&server, "/", "").await,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        status_of(&server, "/", "Authorization: Bearer nope\r\n").await,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        status_of(&server, "/?token=tok-3f9a", "").await,
        "HTTP/1.1 401 Unauthorized"
    );
    // Refused before the upgrade is even looked at (the page itself, at
    // `/`, is public: it holds no secret and passes `?token=` on).
    let mut plain = tcp_from(&server, source(1)).await;
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut plain).await.starts_with("HTTP/1.1 401 "));
    a.send(Message::text("hello")).await.unwrap();
    assert!(next_text(&mut a).await.ends_with(": hello"));
    drop(a);
    server.shutdown().await;

    let logs = logs.text();
    assert!(logs.contains("401"), "the refusals were not logged: {logs}");
    assert!(!logs.contains("c0ffee"), "a token reached the log:\n{logs}");
}
