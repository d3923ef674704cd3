//! Issue 2: the core broadcast chat.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chat::hub::HubConfig;
use chat::server::Config;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_websockets::{CloseCode, Message};

use crate::support::{is_presence, unlimited_rate, Client, TestServer, WAIT};

#[tokio::test]
async fn a_message_reaches_everyone_in_the_same_order() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&server).await);
    }
    // Everyone sends at once; everyone must see the same interleaving.
    const EACH: usize = 10;
    for round in 0..EACH {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&format!("m{i}-{round}")).await;
        }
    }
    let mut seen = Vec::new();
    for c in &mut clients {
        let mut lines = Vec::new();
        for _ in 0..3 * EACH {
            lines.push(c.recv_chat().await);
        }
        seen.push(lines);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    // Tagged with the sender's address, no quotes, each sender in order.
    for (i, c) in clients.iter().enumerate() {
        let mine: Vec<_> = seen[0]
            .iter()
            .filter(|l| l.starts_with(&format!("{}: ", c.addr)))
            .cloned()
            .collect();
        let expected: Vec<_> = (0..EACH).map(|r| format!("{}: m{i}-{r}", c.addr)).collect();
        assert_eq!(mine, expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_abrupt_disconnect_does_not_disturb_others() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let gone = Client::connect(&server).await;
    // Drop the TCP connection without a Close frame, mid-conversation.
    let tcp = gone.ws.into_inner();
    drop(tcp);
    a.send("still here?").await;
    assert_eq!(b.recv_chat().await, format!("{}: still here?", a.addr));
    assert_eq!(a.recv_chat().await, format!("{}: still here?", a.addr));
    b.send("yes").await;
    assert_eq!(a.recv_chat().await, format!("{}: yes", b.addr));
    server.shutdown().await;
}

/// Pings from a client (browsers and tools send them) are answered with a
/// pong carrying the same payload, in between room messages, and the frames
/// around the pong arrive whole.
#[tokio::test]
async fn a_client_ping_is_answered_between_room_messages() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    for round in 0..3 {
        let payload = format!("are you there {round}");
        tokio::time::timeout(WAIT, a.ws.send(Message::ping(payload.clone())))
            .await
            .expect("ping timed out")
            .expect("ping failed");
        b.send(&format!("line {round}")).await;
        let mut pong = None;
        let mut line = None;
        while pong.is_none() || line.is_none() {
            let msg = tokio::time::timeout(WAIT, a.ws.next())
                .await
                .expect("no pong or line in time")
                .expect("connection ended")
                .expect("bad frame");
            if msg.is_pong() {
                assert_eq!(&msg.as_payload()[..], payload.as_bytes());
                pong = Some(());
            } else if let Some(text) = msg.as_text().filter(|t| !is_presence(t)) {
                assert_eq!(text, format!("{}: line {round}", b.addr));
                line = Some(());
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_lagging_receiver_is_told_what_it_missed_and_keeps_receiving() {
    let server = TestServer::start_with(Config {
        hub: HubConfig {
            channel_capacity: 16,
            ..HubConfig::default()
        },
        // A burst of 300 messages.
        ..unlimited_rate()
    })
    .await;
    let mut sender = Client::connect(&server).await;
    // This client reads nothing until the burst is over, so its socket
    // buffers fill and its session falls behind the room's channel.
    let mut lagger = Client::connect(&server).await;
    const BURST: usize = 300;
    let filler = "x".repeat(32 * 1024);
    // The sender reads its own echo after each message, so only the
    // lagger's buffers fill up.
    let send = async {
        for i in 0..BURST {
            sender.send(&format!("{i} {filler}")).await;
            sender.recv_chat().await;
        }
    };
    tokio::time::timeout(WAIT * 3, send)
        .await
        .expect("burst timed out");

    let mut received = 0u64;
    let mut skipped = 0u64;
    let mut notices = 0;
    while received + skipped < BURST as u64 {
        let line = lagger.recv_text().await;
        if crate::support::is_presence(&line) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("* ") {
            let n: u64 = rest
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected notice: {rest}"));
            assert!(rest.ends_with("skipped (you were too slow)"), "{rest}");
            skipped += n;
            notices += 1;
        } else {
            received += 1;
        }
    }
    assert!(notices >= 1, "the burst should have made the receiver lag");
    assert_eq!(received + skipped, BURST as u64);
    // The session goes on.
    sender.send("after the burst").await;
    let line = lagger.recv_chat().await;
    assert_eq!(line, format!("{}: after the burst", sender.addr));
    server.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_reads_in_fits_gets_every_frame_whole() {
    // The room's writer writes to an idle member's socket itself and hands
    // the rest of a frame it could not finish to the member's session; the
    // session hands the socket back once it has caught up. A receiver that
    // stops reading each round makes that happen again and again.
    let server = TestServer::start_with(unlimited_rate()).await;
    let mut sender = Client::connect(&server).await;
    let mut reader = Client::connect(&server).await;
    // Enough per round to fill the kernel's buffers on both sides (a few
    // megabytes on loopback).
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 200;
    let filler = "y".repeat(60 * 1024 + 7);
    for round in 0..ROUNDS {
        // The reader reads nothing while the sender sends (each message
        // paced by its echo), so its socket fills mid-frame.
        for i in 0..PER_ROUND {
            sender.send(&format!("{round}.{i} {filler}")).await;
            sender.recv_chat().await;
        }
        for i in 0..PER_ROUND {
            let line = reader.recv_chat().await;
            let expected = format!("{}: {round}.{i} {filler}", sender.addr);
            assert!(line == expected, "round {round}, message {i} differs");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn heavy_load_loses_nothing() {
    heavy_load().await;
}

/// The same with the server's sessions and its room's writer on two
/// threads, so that they take each other's lines for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_load_on_two_threads_loses_nothing() {
    heavy_load().await;
}

async fn heavy_load() {
    // 100 clients, 10 of them sending, each keeping 4 messages in flight.
    const CLIENTS: usize = 100;
    const SENDERS: usize = 10;
    const IN_FLIGHT: usize = 4;
    const PER_SENDER: usize = 40;
    // All clients come from 127.0.0.1: lift the per-address cap, and the
    // rate limit for the senders.
    let server = TestServer::start_with(Config {
        max_connections_per_ip: 0,
        ..unlimited_rate()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(&server).await);
    }
    let expected = SENDERS * PER_SENDER;
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let sending = i < SENDERS;
            let mut sent = 0;
            let mut my_echoes = 0;
            let mut per_sender: HashMap<String, usize> = HashMap::new();
            let mut total = 0;
            if sending {
                while sent < IN_FLIGHT {
                    c.send(&format!("{i}:{sent}")).await;
                    sent += 1;
                }
            }
            while total < expected {
                let line = c.recv_chat().await;
                assert!(!line.starts_with('*'), "client {i} got a notice: {line}");
                let (from, text) = line.split_once(": ").expect("tagged line");
                let (_, seq) = text.split_once(':').expect("i:n");
                let next = per_sender.entry(from.to_string()).or_default();
                assert_eq!(seq.parse::<usize>().unwrap(), *next, "order from {from}");
                *next += 1;
                total += 1;
                if sending && from == c.addr.to_string() {
                    my_echoes += 1;
                    if sent < PER_SENDER {
                        c.send(&format!("{i}:{sent}")).await;
                        sent += 1;
                    }
                }
            }
            assert!(!sending || my_echoes == PER_SENDER);
            total
        }));
    }
    for t in tasks {
        let total = tokio::time::timeout(WAIT * 3, t)
            .await
            .expect("load timed out")
            .unwrap();
        assert_eq!(total, expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_everyone_with_1001_and_run_returns() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&server).await);
    }
    let closing = tokio::spawn(server.shutdown());
    for c in &mut clients {
        // Skip the join notices of the clients that came later.
        let mut msg = c.recv().await;
        for _ in 0..3 {
            if !msg.is_text() {
                break;
            }
            msg = c.recv().await;
        }
        let (code, reason) = msg.as_close().expect("a Close frame");
        assert_eq!(code, CloseCode::GOING_AWAY);
        assert_eq!(reason, "server shutting down");
    }
    let took = tokio::time::timeout(WAIT, closing).await.unwrap().unwrap();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[tokio::test]
async fn json_subprotocol_is_negotiated_and_events_parse() {
    let server = TestServer::start().await;
    let (mut c, response) = Client::connect_with(&server, Some("chat.v1.json")).await;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"chat.v1.json"[..])
    );
    let welcome = c.recv_json().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["room"], "#lobby");
    assert_eq!(welcome["addr"], c.addr.to_string());
    let mut text_client = Client::connect(&server).await;
    text_client.send("hello json").await;
    let msg = c.recv_json_type("message").await;
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["room"], "#lobby");
    assert_eq!(msg["seq"], 1);
    assert!(msg["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(msg["from"], text_client.addr.to_string());
    assert!(msg["nick"].is_null());
    assert_eq!(msg["text"], "hello json");
    // The text client sees the same message as a line.
    assert_eq!(
        text_client.recv_chat().await,
        format!("{}: hello json", text_client.addr)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn commands_and_bad_input_get_replies_to_the_sender_only() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.send("/nosuch").await;
    let line = a.recv_chat().await;
    assert!(line.starts_with("! unknown command /nosuch") && line.contains("/help"));
    a.send("two\nlines").await;
    assert!(a.recv_chat().await.starts_with("! message not sent"));
    a.ws.send(Message::binary(&b"\x00\x01"[..])).await.unwrap();
    assert!(a
        .recv_text()
        .await
        .contains("binary frames are not supported"));
    a.send("//slash").await;
    a.send("   ").await;
    a.send("/help").await;
    // b saw only the escaped message.
    assert_eq!(b.recv_chat().await, format!("{}: /slash", a.addr));
    b.send("done").await;
    assert_eq!(b.recv_chat().await, format!("{}: done", b.addr));
    assert_eq!(a.recv_chat().await, format!("{}: /slash", a.addr));
    let help = a.recv_chat().await;
    assert!(help.starts_with("* commands"), "{help}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_unterminated_handshake_is_dropped_after_the_timeout() {
    let server = TestServer::start_with(Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
        .await
        .expect("the server kept a silent handshake open")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the connection to be closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    // A real client still gets in.
    Client::connect(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_handshake_is_refused_within_the_cap() {
    let server = TestServer::start().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    request.resize(64 * 1024, b'a');
    // The server stops reading at 8 KiB, so the write may fail part-way.
    let _ = raw.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .expect("the server kept an oversized handshake open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "answer: {answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_plain_http_request_is_told_to_use_websocket() {
    let server = TestServer::start().await;
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    // `/` is the browser page now; `/ws` without an upgrade is the refusal
    // that tells people what this port is.
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 426"), "answer: {answer}");
    assert!(answer.contains("WebSocket"));
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_binary_sends_piped_lines_and_exits_cleanly() {
    let server = TestServer::start().await;
    let mut watcher = Client::connect(&server).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--url", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hi\nthere\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("client did not exit")
        .unwrap();
    assert!(output.status.success(), "status {:?}", output.status);
    let first = watcher.recv_chat().await;
    let (from, text) = first.split_once(": ").unwrap();
    assert_eq!(text, "hi");
    assert_eq!(watcher.recv_chat().await, format!("{from}: there"));
    // The client printed the welcome and its own two lines, unquoted.
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<_> = stdout
        .lines()
        .filter(|l| !crate::support::is_presence(l))
        .collect();
    assert!(lines[0].starts_with("* welcome"), "{stdout}");
    assert_eq!(
        &lines[1..],
        [format!("{from}: hi"), format!("{from}: there")]
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_binary_explains_a_dead_port_in_one_line() {
    // Bind and release a port so nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}");
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--url", &url])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        format!("error: cannot connect to {url}: connection refused (is the server running?)\n")
    );
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn the_client_binary_reports_the_server_going_away() {
    let server = TestServer::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--url", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Wait for the welcome so the client is surely connected.
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, stdout.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("* welcome"));
    server.shutdown().await;
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("client did not exit")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("went away: server shutting down (close code 1001)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn closing_with_a_close_frame_is_answered() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server).await;
    c.ws.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "bye"))
        .await
        .unwrap();
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = c.ws.next().await {} }).await;
    assert!(end.is_ok(), "the server did not answer the Close");
    server.shutdown().await;
}
