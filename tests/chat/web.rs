//! The plain HTTP side of the front door: the page and its headers, the
//! operators' endpoints, 404/405, the WebSocket at `/` and `/ws`, and the
//! metrics counting what really happened.

use std::net::SocketAddr;
use std::time::Duration;

use chat::server::Config;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{Client, TestServer, WAIT};

/// One answer, read whole (the request asks the server to close).
pub struct Answer {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD path` with `Connection: close` and reads the answer.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("no whole answer in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()["HTTP/1.1 ".len()..][..3]
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

/// The value of one un-labelled sample in `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let answer = get(addr, "/metrics").await;
    assert_eq!(answer.status, 200);
    sample(&answer.body, name).unwrap_or_else(|| panic!("{name} missing:\n{}", answer.body))
}

fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.parse().unwrap())
    })
}

#[tokio::test]
async fn the_page_and_its_files_carry_the_security_headers() {
    let server = TestServer::start().await;
    let page = get(server.addr, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        page.header("content-security-policy"),
        Some(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
             require-trusted-types-for 'script'"
        )
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert!(page.body.contains(r#"role="log""#), "{}", page.body);
    assert!(page.body.contains(r#"aria-label="Message""#));
    for (path, kind) in [
        ("/chat.js", "text/javascript; charset=utf-8"),
        ("/chat.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let file = get(server.addr, path).await;
        assert_eq!(file.status, 200, "{path}");
        assert_eq!(file.header("content-type"), Some(kind), "{path}");
        assert!(file.header("content-security-policy").is_some(), "{path}");
        assert_eq!(file.header("x-content-type-options"), Some("nosniff"));
    }
    // HEAD: the same head, no body.
    let head = request(server.addr, "HEAD", "/").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), page.header("content-length"));
    assert_eq!(head.body, "");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_other_methods_405_with_allow() {
    let server = TestServer::start().await;
    for path in ["/nope", "/chat.js.map", "/index.html/.."] {
        assert_eq!(get(server.addr, path).await.status, 404, "{path}");
    }
    for (method, path) in [("POST", "/"), ("DELETE", "/healthz"), ("PUT", "/metrics")] {
        let answer = request(server.addr, method, path).await;
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method} {path}");
    }
    // A plain request where the chat's WebSocket lives says what to use.
    let ws = get(server.addr, "/ws").await;
    assert_eq!(ws.status, 426);
    assert!(ws.body.contains("WebSocket"), "{}", ws.body);
    server.shutdown().await;
}

#[tokio::test]
async fn healthz_stays_200_and_readyz_turns_503_while_draining() {
    let mut server = TestServer::start_with(Config {
        drain: Duration::from_secs(30),
        ..Config::default()
    })
    .await;
    let health = get(server.addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(server.addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(ready.header("cache-control"), Some("no-store"));
    assert_eq!(request(server.addr, "HEAD", "/readyz").await.status, 200);

    // Shutdown begins; the server drains and keeps answering meanwhile.
    server.begin_shutdown();
    let mut readyz = get(server.addr, "/readyz").await;
    for _ in 0..200 {
        if readyz.status == 503 {
            break;
        }
        tokio::task::yield_now().await;
        readyz = get(server.addr, "/readyz").await;
    }
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert_eq!(readyz.body, "not ready: shutting down\n");
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    // A chat client still gets in while draining.
    let client = Client::connect(&server).await;
    drop(client);
}

#[tokio::test]
async fn the_websocket_answers_at_root_and_at_ws() {
    let server = TestServer::start().await;
    for path in ["/", "/ws", "/any/other/path?x=1"] {
        let url = format!("ws://{}{path}", server.addr);
        let (mut ws, _) = tokio::time::timeout(
            WAIT,
            tokio_websockets::ClientBuilder::new()
                .uri(&url)
                .unwrap()
                .connect(),
        )
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        let welcome = crate::support::next_text(&mut ws).await;
        assert!(welcome.starts_with("* welcome"), "{url}: {welcome}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_count_exactly_what_was_sent_and_delivered() {
    let server = TestServer::start_with(crate::support::unlimited_rate()).await;
    let before = metric(server.addr, "chat_messages_received_total").await;
    assert_eq!(before, 0.0);
    let mut alice = Client::connect(&server).await;
    let mut bob = Client::connect_raw(&server, Some("chat.v1.json")).await;
    bob.recv_json_type("welcome").await;
    let bob_joined = format!("* {} joined #lobby", bob.addr);
    alice.recv_until(100, |l| l == bob_joined).await;
    let delivered_before = metric(server.addr, "chat_messages_delivered_total").await;
    let bytes_before = metric(server.addr, "chat_delivered_bytes_total").await;

    const LINES: usize = 7;
    alice.send("/nick alice").await;
    for i in 0..LINES {
        alice.send(&format!("line {i}")).await;
    }
    alice.send("/me waves").await;
    alice.send("/who").await; // a command: not a received chat line
    alice.recv_until(100, |l| l == "* alice waves").await;
    alice
        .recv_until(100, |l| l.starts_with("* 2 in #lobby"))
        .await;
    let last = bob.recv_json_type("action").await;
    assert_eq!(last["text"], "waves");

    assert_eq!(
        metric(server.addr, "chat_messages_received_total").await,
        (LINES + 1) as f64
    );
    // The nick change and the eight lines, each to both members.
    let delivered = metric(server.addr, "chat_messages_delivered_total").await;
    assert_eq!(delivered - delivered_before, 2.0 * (1 + LINES + 1) as f64);
    assert!(metric(server.addr, "chat_delivered_bytes_total").await > bytes_before);
    assert_eq!(metric(server.addr, "chat_connections").await, 2.0);
    assert_eq!(
        metric(server.addr, "chat_connections_accepted_total").await,
        2.0
    );

    alice.send("/quit").await;
    // The disconnect is counted before the room hears of it.
    bob.recv_json_type("left").await;
    let text = get(server.addr, "/metrics").await.body;
    assert_eq!(
        sample(&text, r#"chat_disconnects_total{reason="quit"}"#),
        Some(1.0),
        "{text}"
    );
    // Never labelled by who or where.
    assert!(
        !text.contains("alice") && !text.contains("#lobby"),
        "{text}"
    );
    assert!(!text.contains(&alice.addr.to_string()), "{text}");
    for name in ["chat_rooms", "chat_build_info", "process_open_fds"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_metrics_listener_takes_the_operators_endpoints_off_the_chat_port() {
    let server = TestServer::start_with_ops(Config::default()).await;
    let ops = server.ops_addr.unwrap();
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(ops, path).await.status, 200, "ops {path}");
        assert_eq!(get(server.addr, path).await.status, 404, "chat {path}");
    }
    // The page and the chat stay on the chat port only.
    assert_eq!(get(server.addr, "/").await.status, 200);
    assert_eq!(get(ops, "/").await.status, 404);
    Client::connect(&server).await;
    server.shutdown().await;
}
