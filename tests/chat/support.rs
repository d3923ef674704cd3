//! Shared helpers: start a server, connect clients, receive with timeouts.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::server::{self, Config};
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The default configuration without the per-connection rate limit, for
/// tests that send more than a burst at once.
pub fn unlimited_rate() -> Config {
    let mut config = Config::default();
    config.session.rate = None;
    config
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The `--metrics-addr` listener, when started with one.
    pub ops_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, None, config)
    }

    /// A server with the operators' endpoints on a listener of their own.
    pub async fn start_with_ops(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, Some(ops), config)
    }

    /// A server on an already bound listener (a restart on the same port).
    pub fn start_on(listener: TcpListener, ops: Option<TcpListener>, config: Config) -> Self {
        let addr = listener.local_addr().unwrap();
        let ops_addr = ops.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run_with(listener, ops, config, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            ops_addr,
            stop: Some(stop),
            handle,
        }
    }

    /// Begins shutdown without waiting for it (see [`TestServer::shutdown`]).
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Begins shutdown and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) -> Duration {
        let started = std::time::Instant::now();
        self.begin_shutdown();
        tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
            .expect("server returned an error");
        started.elapsed()
    }
}

/// A test client with its own address.
pub struct Client {
    pub ws: Ws,
    pub addr: SocketAddr,
}

impl Client {
    /// Connects with the text encoding and consumes the welcome line, any
    /// history and the client's own join notice.
    pub async fn connect(server: &TestServer) -> Self {
        let mut client = Self::connect_raw(server, None).await;
        let welcome = client.recv_text().await;
        assert!(welcome.starts_with("* welcome"), "first line: {welcome}");
        let own_join = format!("* {} joined #lobby", client.addr);
        client.recv_until(10_000, |l| l == own_join).await;
        client
    }

    /// Connects, offering `subprotocol` if given; reads nothing.
    pub async fn connect_raw(server: &TestServer, subprotocol: Option<&'static str>) -> Self {
        Self::connect_with(server, subprotocol).await.0
    }

    /// Connects to `/?QUERY` (the nickname, room and reclaim token a
    /// client may ask for with its upgrade), offering `subprotocol` if
    /// given; reads nothing.
    pub async fn connect_query(
        server: &TestServer,
        query: &str,
        subprotocol: Option<&'static str>,
    ) -> Self {
        Self::connect_to(&format!("{}/?{query}", server.url()), subprotocol)
            .await
            .0
    }

    /// Connects and returns the server's handshake response too.
    pub async fn connect_with(
        server: &TestServer,
        subprotocol: Option<&'static str>,
    ) -> (Self, http::Response<()>) {
        Self::connect_to(&server.url(), subprotocol).await
    }

    pub async fn connect_to(
        uri: &str,
        subprotocol: Option<&'static str>,
    ) -> (Self, http::Response<()>) {
        let mut builder = ClientBuilder::new().uri(uri).unwrap();
        if let Some(p) = subprotocol {
            builder = builder
                .add_header(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p))
                .unwrap();
        }
        let (ws, response) = tokio::time::timeout(WAIT, builder.connect())
            .await
            .expect("connect timed out")
            .expect("connect failed");
        // The client also speaks TLS (wss://), but these tests do not.
        let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
            panic!("test clients connect without TLS");
        };
        let addr = tcp.local_addr().unwrap();
        (Client { ws, addr }, response)
    }

    pub async fn send(&mut self, text: &str) {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text.to_string())))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next frame, which must be text.
    pub async fn recv_text(&mut self) -> String {
        let msg = self.recv().await;
        msg.as_text()
            .unwrap_or_else(|| panic!("expected a text frame, got {msg:?}"))
            .to_string()
    }

    /// The next frame other than a ping or pong (the client library
    /// answers pings itself as it reads).
    pub async fn recv(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("connection failed");
            if !(msg.is_ping() || msg.is_pong()) {
                return msg;
            }
        }
    }

    /// The next line that is not a presence notice (someone joining,
    /// leaving or changing nickname).
    pub async fn recv_chat(&mut self) -> String {
        loop {
            let line = self.recv_text().await;
            if !is_presence(&line) {
                return line;
            }
        }
    }

    /// The next text frame, parsed as JSON.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// The next JSON event of type `kind`, skipping others (at most 1000).
    pub async fn recv_json_type(&mut self, kind: &str) -> serde_json::Value {
        for _ in 0..1000 {
            let v = self.recv_json().await;
            if v["type"] == kind {
                return v;
            }
        }
        panic!("no {kind} event within 1000 events");
    }

    /// Reads until a line satisfies `pred`, returning it; at most `limit` lines.
    pub async fn recv_until(&mut self, limit: usize, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..limit {
            let line = self.recv_text().await;
            if pred(&line) {
                return line;
            }
        }
        panic!("no matching line within {limit} lines");
    }
}

/// The next text frame on any WebSocket stream (plain or TLS) that is not
/// a presence notice.
pub async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for _ in 0..10_000 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection ended")
            .expect("connection failed");
        let text = msg
            .as_text()
            .unwrap_or_else(|| panic!("expected text, got {msg:?}"));
        if !is_presence(text) {
            return text.to_string();
        }
    }
    panic!("only presence notices within 10,000 frames");
}

/// Upgrades an already open stream (plain or TLS) and checks that the first
/// line is the welcome.
pub async fn upgrade_on<S>(builder: ClientBuilder<'_>, stream: S) -> WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws, _) = tokio::time::timeout(WAIT, builder.connect_on(stream))
        .await
        .expect("upgrade timed out")
        .expect("upgrade failed");
    let welcome = next_text(&mut ws).await;
    assert!(welcome.starts_with("* welcome"), "first line: {welcome}");
    ws
}

/// Runs one `#[ignore]`d test of this binary in a process of its own and
/// fails if it fails. For tests that measure the whole process
/// (descriptors, memory), where other tests come and go, and for tests
/// that read what the server logs: tracing caches per call site whether
/// anyone listens, and a call site first hit on another test's thread (with
/// no subscriber there) can stay silent for a thread-local subscriber set
/// up at the same moment.
pub fn run_alone(test: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = std::process::Command::new(exe)
        .args(["--exact", test, "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .status()
        .expect("could not run the test binary again");
    assert!(status.success(), "{test}, run alone, failed: {status}");
}

/// A log sink shared with a test (pass it to a tracing subscriber's
/// `with_writer`, read it back with `text`).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("logs are UTF-8")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a text-encoding line is a join, leave or nickname notice.
pub fn is_presence(line: &str) -> bool {
    line.starts_with("* ")
        && (line.contains(" joined #")
            || line.contains(" left #")
            || line.contains(" is now known as "))
}

/// Starts the server binary on a free port with `args` (and `--addr
/// 127.0.0.1:0`), killed when the child is dropped; returns it with the
/// URL it listens on. Its log is read (and dropped) so it never blocks.
pub async fn spawn_server(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let stderr = child.stderr.take().expect("its stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(at) = line.find("ws://") {
                return line[at..].trim().to_string();
            }
        }
        panic!("the server ended without listening");
    })
    .await
    .expect("the server did not start in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}
