//! Hardening inside a session: what a peer that is not polite costs —
//! oversized and malformed frames, silence, clients that stop reading,
//! floods, and connection churn.
//!
//! The raw-socket tests speak WebSocket byte by byte (masked client frames
//! written by hand), so they can send what no polite client library would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::server::Config;
use chat::session::{SessionConfig, FLOOD_REFUSALS, PING_TIMEOUT_CLOSE};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, Message};

use crate::support::{run_alone, Captured, Client, TestServer, WAIT};

/// Opcodes.
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// A client frame: `fin`, `rsv` bits (0 for none), opcode, payload, and
/// masked as RFC 6455 requires of clients unless `masked` is false.
fn frame_with(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A well-formed masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, 0, opcode, payload, true)
}

/// A WebSocket connection upgraded by hand and spoken in bytes.
struct Raw {
    tcp: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
    /// This end's address, as the server sees it.
    addr: std::net::SocketAddr,
}

/// A frame from the server: opcode and payload.
struct ServerFrame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Raw {
        Self::connect_on(server, TcpSocket::new_v4().unwrap()).await
    }

    async fn connect_on(server: &TestServer, socket: TcpSocket) -> Raw {
        let mut tcp = tokio::time::timeout(WAIT, socket.connect(server.addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let addr = tcp.local_addr().unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            server.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                fill(&mut tcp, &mut buf).await > 0,
                "closed during the handshake"
            );
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        buf.drain(..head_end);
        Raw { tcp, buf, addr }
    }

    /// The next frame from the server; `None` if the connection ended.
    async fn read_frame(&mut self) -> Option<ServerFrame> {
        read_frame(&mut self.tcp, &mut self.buf).await
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.tcp.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Sends `bytes` (the server may stop reading them part-way) while
    /// waiting for the server's Close frame, and returns its code, after
    /// checking that the server then ends the TCP connection.
    async fn send_expecting_close(&mut self, bytes: &[u8]) -> u16 {
        let (mut rd, mut wr) = self.tcp.split();
        let write = async {
            // The server may close before taking all of it.
            let _ = wr.write_all(bytes).await;
        };
        let ((), code) = tokio::join!(write, expect_close(&mut rd, &mut self.buf));
        code
    }
}

/// Reads more bytes into `buf`; 0 at the end of the stream (or a reset).
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(WAIT, rd.read(&mut chunk))
        .await
        .expect("timed out waiting for the server")
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> Option<ServerFrame> {
    loop {
        if let Some((frame, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            return Some(frame);
        }
        if fill(rd, buf).await == 0 {
            return None;
        }
    }
}

/// Reads until the server's Close frame (skipping anything else) and
/// returns its code, then checks the server ends the connection.
async fn expect_close<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> u16 {
    for _ in 0..10_000 {
        let frame = read_frame(rd, buf)
            .await
            .expect("the connection ended without a Close frame");
        if frame.opcode == CLOSE {
            assert!(frame.payload.len() >= 2, "Close without a code");
            let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            // After the Close, the server ends the TCP connection.
            while read_frame(rd, buf).await.is_some() {}
            return code;
        }
    }
    panic!("no Close frame within 10,000 frames");
}

/// Parses one unmasked server frame from the front of `buf`: the frame and
/// how many bytes it took, or `None` if more bytes are needed.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    assert_eq!(buf[1] & 0x80, 0, "the server masked a frame");
    let (len, offset) = match buf[1] & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(offset..offset + len)?.to_vec();
    Some((ServerFrame { opcode, payload }, offset + len))
}

/// Reads `client`'s lines until one satisfies `pred`, skipping chat lines
/// and notices that do not (at most 10,000).
async fn wait_for_line(client: &mut Client, pred: impl Fn(&str) -> bool) -> String {
    client.recv_until(10_000, pred).await
}

/// A server with short keepalive intervals for tests.
fn keepalive_config(interval: Duration, timeout: Duration) -> Config {
    Config {
        session: SessionConfig {
            ping_interval: Some(interval),
            ping_timeout: Some(timeout),
            ..SessionConfig::default()
        },
        ..Config::default()
    }
}

#[tokio::test]
async fn broken_frames_get_the_right_close_code_and_others_carry_on() {
    let server = TestServer::start().await;
    let mut observer = Client::connect(&server).await;
    let big = vec![b'a'; 70_000];
    let half = vec![b'a'; 40_000];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "oversized single frame",
            frame(true, TEXT, &big),
            1009,
            "message too big",
        ),
        (
            "oversized fragmented message",
            [frame(false, TEXT, &half), frame(true, CONT, &half)].concat(),
            1009,
            "message too big",
        ),
        (
            "oversized fragmented message, never finished",
            [
                frame(false, TEXT, &half),
                frame(false, CONT, &half),
                frame(false, CONT, &half),
            ]
            .concat(),
            1009,
            "message too big",
        ),
        (
            "invalid UTF-8",
            frame(true, TEXT, b"bad \xff\xfe"),
            1007,
            "protocol error",
        ),
        (
            "invalid UTF-8 across fragments",
            [
                frame(false, TEXT, b"euro \xe2\x82"),
                frame(true, CONT, b"("),
            ]
            .concat(),
            1007,
            "protocol error",
        ),
        (
            "unmasked frame",
            frame_with(true, 0, TEXT, b"hi", false),
            1002,
            "protocol error",
        ),
        (
            "reserved data opcode",
            frame(true, 0x3, b"x"),
            1002,
            "protocol error",
        ),
        (
            "reserved control opcode",
            frame(true, 0xB, b""),
            1002,
            "protocol error",
        ),
        (
            "126-byte ping",
            frame(true, PING, &[0; 126]),
            1002,
            "protocol error",
        ),
        (
            "fragmented ping",
            frame(false, PING, b"x"),
            1002,
            "protocol error",
        ),
        (
            "reserved bit",
            frame_with(true, 0b100, TEXT, b"x", true),
            1002,
            "protocol error",
        ),
        (
            "continuation without a start",
            frame(true, CONT, b"x"),
            1002,
            "protocol error",
        ),
    ];
    for (name, bytes, want, reason) in cases {
        let mut raw = Raw::connect(&server).await;
        let joined = format!("* {} joined #lobby", raw.addr);
        wait_for_line(&mut observer, |l| l == joined).await;
        let started = Instant::now();
        let code = raw.send_expecting_close(&bytes).await;
        assert_eq!(code, want, "{name}");
        eprintln!("{name}: Close {code} after {:?}", started.elapsed());
        let left = format!("* {} left #lobby ({reason})", raw.addr);
        wait_for_line(&mut observer, |l| l == left).await;
    }
    // Nothing of it reached the room, and the room goes on.
    observer.send("still fine").await;
    assert_eq!(
        observer.recv_chat().await,
        format!("{}: still fine", observer.addr)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_fragmented_message_of_exactly_the_limit_is_delivered() {
    let server = TestServer::start().await;
    let mut observer = Client::connect(&server).await;
    let mut raw = Raw::connect(&server).await;
    let limit = SessionConfig::default().max_message_bytes.unwrap();
    let quarter = vec![b'q'; limit / 4];
    let mut bytes = frame(false, TEXT, &quarter);
    for i in 1..4 {
        bytes.extend(frame(i == 3, CONT, &quarter));
    }
    raw.send(&bytes).await;
    let line = observer.recv_chat().await;
    assert_eq!(line.len(), format!("{}: ", raw.addr).len() + limit);
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_with_4000_and_others_are_told() {
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(200);
    let server = TestServer::start_with(keepalive_config(interval, timeout)).await;
    let mut observer = Client::connect(&server).await;
    let started = Instant::now();
    // Reads what it is sent but never answers, pings included.
    let mut silent = Raw::connect(&server).await;
    let left = format!("* {} left #lobby (ping timeout)", silent.addr);
    let watch_silent = async {
        let mut pings = 0;
        let code = loop {
            let frame = silent.read_frame().await.expect("ended without a Close");
            match frame.opcode {
                PING => pings += 1,
                CLOSE => break u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                _ => {}
            }
        };
        (pings, code, started.elapsed())
    };
    // The observer keeps reading meanwhile (and so answers its own pings).
    let ((pings, code, took), _) =
        tokio::join!(watch_silent, wait_for_line(&mut observer, |l| l == left));
    eprintln!("silent peer: {pings} ping(s), Close {code} after {took:?}");
    assert_eq!(code, PING_TIMEOUT_CLOSE);
    assert_eq!(pings, 1);
    assert!(took >= interval + timeout, "closed too early: {took:?}");
    assert!(took < (interval + timeout) * 5, "closed too late: {took:?}");
    drop(silent);
    server.shutdown().await;
}

#[tokio::test]
async fn a_healthy_idle_client_survives_many_ping_intervals() {
    let interval = Duration::from_millis(100);
    let server = TestServer::start_with(keepalive_config(interval, interval)).await;
    let mut idle = Client::connect(&server).await;
    // Fifteen intervals of reading (the client library answers pings as
    // it reads) and nothing else.
    let watch = interval * 15;
    let started = Instant::now();
    let mut pings = 0;
    while let Some(left) = watch.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, idle.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(msg))) if msg.is_ping() => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    eprintln!("idle client: {pings} pings in {watch:?}, still connected");
    assert!(pings >= 5, "only {pings} pings in {watch:?}");
    idle.send("still here").await;
    assert_eq!(idle.recv_chat().await, format!("{}: still here", idle.addr));
    server.shutdown().await;
}

#[test]
fn a_peer_that_stops_reading_is_closed_while_the_server_writes_to_it() {
    run_alone("guard::stalled_reader_alone");
}

#[tokio::test]
#[ignore = "run alone, in its own process, by a_peer_that_stops_reading_is_closed_while_the_server_writes_to_it"]
async fn stalled_reader_alone() {
    // The server's log on this test's thread (a #[tokio::test] runtime runs
    // the server's tasks on it too), to tell how the peer was closed.
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(200);
    let server = TestServer::start_with(Config {
        session: SessionConfig {
            ping_interval: Some(interval),
            ping_timeout: Some(timeout),
            rate: None,
            ..SessionConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut sender = Client::connect(&server).await;
    let mut observer = Client::connect(&server).await;
    // A client with a tiny receive window that never reads after its
    // handshake: the server's writes to it soon block.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let stopped_addr = tcp.local_addr().unwrap();
    let (stopped, _) = tokio::time::timeout(
        WAIT,
        ClientBuilder::new()
            .uri(&server.url())
            .unwrap()
            .connect_on(tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let joined = format!("* {stopped_addr} joined #lobby");
    wait_for_line(&mut observer, |l| l == joined).await;

    // Big messages until the room hears that it left.
    let started = Instant::now();
    let filler = "x".repeat(60_000);
    let left = format!("* {stopped_addr} left #lobby (ping timeout)");
    let mut sent = 0;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            sender.send(&format!("{sent} {filler}")).await;
            sender.recv_chat().await;
            let mine = format!("{}: {sent} ", sender.addr);
            sent += 1;
            loop {
                let line = observer.recv_text().await;
                if line == left {
                    return;
                }
                if line.starts_with(&mine) {
                    break;
                }
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(found.is_ok(), "the stopped client was never closed");
    eprintln!("stopped reader closed after {took:?}, {sent} messages of 60 kB sent meanwhile");
    assert!(took < (interval + timeout) * 5, "closed too late: {took:?}");
    drop(stopped);
    server.shutdown().await;
    let logs = logs.text();
    assert!(
        logs.contains("ping timeout (the client stopped reading)"),
        "not closed by the write deadline:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_refused_then_cut_off_while_others_keep_their_latency() {
    // The default limit: 10 messages a second, bursts of 20.
    let server = TestServer::start().await;
    let mut observer = Client::connect(&server).await;
    let mut flooder = Client::connect(&server).await;
    let flooder_addr = flooder.addr;

    /// One round trip of the observer's own message; other lines seen on
    /// the way are kept in `seen`.
    async fn round_trip(c: &mut Client, n: usize, seen: &mut Vec<String>) -> Duration {
        let started = Instant::now();
        let text = format!("rt {n}");
        c.send(&text).await;
        let mine = format!("{}: {text}", c.addr);
        loop {
            let line = c.recv_text().await;
            if line == mine {
                return started.elapsed();
            }
            seen.push(line);
        }
    }
    let mut seen = Vec::new();
    let mut before = Vec::new();
    for n in 0..5 {
        before.push(round_trip(&mut observer, n, &mut seen).await);
    }

    const FLOOD: usize = 500;
    let flood = tokio::spawn(async move {
        // Everything at once, reading nothing until the end.
        for i in 0..FLOOD {
            let sent = flooder.ws.feed(Message::text(format!("flood {i}"))).await;
            if sent.is_err() {
                break;
            }
        }
        let _ = flooder.ws.flush().await;
        let (mut echoes, mut refusals) = (0, 0);
        let code = loop {
            let msg = tokio::time::timeout(WAIT, flooder.ws.next())
                .await
                .expect("no Close for the flooder")
                .expect("ended without a Close")
                .expect("connection failed");
            if let Some((code, _)) = msg.as_close() {
                break u16::from(code);
            }
            let text = msg.as_text().unwrap_or_default();
            if text.starts_with("! slow down: ") {
                refusals += 1;
            } else if text.starts_with(&format!("{flooder_addr}: flood ")) {
                echoes += 1;
            }
        };
        (echoes, refusals, code)
    });
    let mut during = Vec::new();
    for n in 5..15 {
        during.push(round_trip(&mut observer, n, &mut seen).await);
    }
    let (echoes, refusals, code) = flood.await.unwrap();
    let left = format!("* {flooder_addr} left #lobby (flooding)");
    if !seen.contains(&left) {
        wait_for_line(&mut observer, |l| l == left).await;
    }

    let max = |v: &[Duration]| v.iter().max().copied().unwrap();
    eprintln!(
        "flood of {FLOOD}: {echoes} delivered, {refusals} refused, Close {code}; observer round trip max {:?} before, {:?} during",
        max(&before),
        max(&during)
    );
    assert_eq!(code, 1008);
    // The burst passes (and perhaps a token or two refilled meanwhile).
    assert!((20..=25).contains(&echoes), "{echoes} delivered");
    let expected = FLOOD_REFUSALS as usize;
    assert!(
        (expected..=expected + 2).contains(&refusals),
        "{refusals} refused"
    );
    assert!(max(&during) < Duration::from_millis(100), "{during:?}");
    server.shutdown().await;
}

/// Open file descriptors of this process (server and clients alike).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Drops a TCP connection with a reset instead of a FIN.
fn reset(tcp: &TcpStream) {
    tcp.set_zero_linger().unwrap();
}

/// One connect/disconnect cycle, of a kind chosen by `i`.
async fn cycle(server: &TestServer, i: usize) {
    match i % 5 {
        // A full client that vanishes with a reset.
        0 => {
            let client = Client::connect(server).await;
            let tokio_websockets::MaybeTlsStream::Plain(tcp) = client.ws.get_ref() else {
                panic!("tests use plain TCP");
            };
            reset(tcp);
        }
        // A client that leaves with /quit and waits for the close.
        1 => {
            let mut client = Client::connect(server).await;
            client.send("/quit").await;
            tokio::time::timeout(WAIT, async {
                while let Some(Ok(_)) = client.ws.next().await {}
            })
            .await
            .expect("no close after /quit");
        }
        // A client that closes with a Close frame.
        2 => {
            let mut client = Client::connect_raw(server, None).await;
            let _ = tokio::time::timeout(WAIT, client.ws.close()).await;
        }
        // Half a handshake, then a reset.
        3 => {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            reset(&tcp);
        }
        // Upgraded, a broken frame, gone at once without reading.
        _ => {
            let mut raw = Raw::connect(server).await;
            raw.send(&frame_with(true, 0, TEXT, b"unmasked", false))
                .await;
            reset(&raw.tcp);
        }
    }
}

/// Runs `cycles` connect/disconnect cycles, 32 at a time, and checks that
/// descriptors, tasks and memory come back to where they were.
async fn churn(cycles: usize) {
    const WORKERS: usize = 32;
    let server = Arc::new(
        TestServer::start_with(Config {
            max_connections_per_ip: 0,
            ..Config::default()
        })
        .await,
    );
    let run = |count: usize| {
        let server = server.clone();
        async move {
            let mut workers = tokio::task::JoinSet::new();
            for w in 0..WORKERS {
                let server = server.clone();
                workers.spawn(async move {
                    for i in (w..count).step_by(WORKERS) {
                        cycle(&server, i).await;
                    }
                });
            }
            while let Some(done) = workers.join_next().await {
                done.unwrap();
            }
        }
    };
    // Until the server has no connection left: its tasks end a moment
    // after the clients see the end, and nothing a client can observe marks
    // that moment, so this polls (bounded).
    let settle = |fds: usize, tasks: usize| async move {
        let deadline = Instant::now() + WAIT;
        while (open_fds() > fds || alive_tasks() > tasks) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The one task expected to stay: the lobby's writer, spawned by the
    // warm-up's first publish and kept as long as the lobby.
    let (fds0, tasks0) = (open_fds(), alive_tasks() + 1);
    // Warm up: the allocator, the runtime's threads, the hub's room.
    run(500).await;
    settle(fds0, tasks0).await;
    let rss0 = rss_kib();
    let started = Instant::now();
    run(cycles).await;
    let took = started.elapsed();
    let peak_rss = rss_kib();
    settle(fds0, tasks0).await;
    let (fds1, tasks1, rss1) = (open_fds(), alive_tasks(), rss_kib());
    eprintln!(
        "churn: {cycles} cycles in {took:?}; fds {fds0} -> {fds1}, tasks {tasks0} -> {tasks1}, \
         RSS {rss0} KiB -> {rss1} KiB (at the end of the cycles {peak_rss} KiB)"
    );
    assert_eq!(fds1, fds0, "descriptors leaked");
    assert_eq!(tasks1, tasks0, "tasks leaked");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "memory grew from {rss0} to {rss1} KiB"
    );
    // And the hub forgot every one of them.
    let mut last = Client::connect_raw(&server, None).await;
    let welcome = last.recv_text().await;
    assert!(welcome.contains("; 1 online;"), "{welcome}");
    drop(last);
    Arc::into_inner(server).unwrap().shutdown().await;
}

/// 10,000 cycles take about a second in release and a few in a debug
/// build, so they run with the rest. Descriptors and memory belong to the
/// whole process, where other tests come and go, so the cycles run in a
/// process of their own: this test binary again, running only
/// [`churn_alone`].
#[test]
fn churn_of_10000_connections_with_resets_leaks_nothing() {
    run_alone("guard::churn_alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run alone, in its own process, by churn_of_10000_connections_with_resets_leaks_nothing"]
async fn churn_alone() {
    churn(10_000).await;
}
