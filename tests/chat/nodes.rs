//! Several servers in this process sharing one conversation through a real
//! `redis-server` of the test's own (`--redis`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::redis_server::RedisServer;
use crate::support::{unlimited_rate, Client, TestServer, WAIT};

async fn node(redis: &RedisServer) -> TestServer {
    let mut config = unlimited_rate();
    config.redis = Some(redis.url());
    TestServer::start_with(config).await
}

/// A JSON client, past its welcome (returned) and its own join.
async fn connect_json(server: &TestServer) -> (Client, Value) {
    let mut c = Client::connect_raw(server, Some("chat.v1.json")).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let me = c.addr.to_string();
    for _ in 0..10_000 {
        let v = c.recv_json().await;
        if v["type"] == "joined" && v["addr"] == me {
            return (c, welcome);
        }
    }
    panic!("no own join");
}

/// The next `n` chat lines a client gets, as seq → text.
async fn lines(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let v = c.recv_json_type("message").await;
        let seq = v["seq"].as_u64().expect("a seq");
        got.push((seq, v["text"].as_str().unwrap_or_default().to_string()));
    }
    got
}

#[tokio::test]
async fn three_nodes_three_senders_every_client_sees_the_same_seq_to_line_mapping() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let nodes = [node(&redis).await, node(&redis).await, node(&redis).await];
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let (c, welcome) = connect_json(node).await;
            epochs.push(welcome["epoch"].as_u64().unwrap());
            clients.push(c);
        }
    }
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "one epoch: {epochs:?}"
    );
    const EACH: usize = 100;
    // The first client on each node sends, all three at once.
    let (s0, rest) = clients.split_at_mut(2);
    let (s1, s2) = rest.split_at_mut(2);
    tokio::join!(
        send_all(&mut s0[0], 0, EACH),
        send_all(&mut s1[0], 1, EACH),
        send_all(&mut s2[0], 2, EACH),
    );
    let mut seen: Vec<Vec<(u64, String)>> = Vec::new();
    for c in &mut clients {
        seen.push(
            tokio::time::timeout(WAIT * 3, lines(c, 3 * EACH))
                .await
                .unwrap(),
        );
    }
    let first = &seen[0];
    let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=(3 * EACH) as u64).collect();
    assert_eq!(seqs, expected, "increasing, no gap, no duplicate");
    for (i, other) in seen.iter().enumerate() {
        assert_eq!(other, first, "client {i} saw another seq → line mapping");
    }
    // Each sender's lines in the order it sent them.
    let by_sender: BTreeMap<String, Vec<usize>> =
        first.iter().fold(BTreeMap::new(), |mut m, (_, text)| {
            let (who, i) = text.split_once('-').unwrap();
            m.entry(who.to_string())
                .or_default()
                .push(i.parse().unwrap());
            m
        });
    for (who, order) in by_sender {
        assert_eq!(order, (0..EACH).collect::<Vec<_>>(), "{who}'s order");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

async fn send_all(c: &mut Client, node: usize, n: usize) {
    for i in 0..n {
        c.send(&format!("n{node}-{i}")).await;
    }
}

#[tokio::test]
async fn resume_on_another_node_gets_exactly_the_missed_lines() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a_node, b_node) = (node(&redis).await, node(&redis).await);
    let (mut a, welcome) = connect_json(&a_node).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    let (mut b, _) = connect_json(&a_node).await;
    // Someone on the other node, so that the test knows when that node has
    // had every line from Redis: a client connecting before then would see
    // the missed lines arrive live, and again in the replay.
    let (mut watcher, _) = connect_json(&b_node).await;
    a.send("seen").await;
    let last = lines(&mut b, 1).await[0].0;
    drop(b);
    for i in 0..3 {
        a.send(&format!("missed {i}")).await;
    }
    lines(&mut a, 4).await;
    lines(&mut watcher, 4).await;
    // Back on the other node, and on a node started after the lines were
    // sent (it reads them from Redis).
    let c_node = node(&redis).await;
    for server in [&b_node, &c_node] {
        let (mut b, welcome) = connect_json(server).await;
        assert_eq!(welcome["epoch"].as_u64(), Some(epoch), "the same epoch");
        b.send(&format!("/resume {epoch} {last}")).await;
        for i in 0..3 {
            let v = b.recv_json_type("message").await;
            assert_eq!(v["text"], format!("missed {i}"));
            assert_eq!(v["seq"], last + 1 + i);
            assert_eq!(v["history"], true);
        }
        let resumed = b.recv_json_type("resumed").await;
        assert_eq!(resumed["replayed"], 3, "{resumed}");
        assert_eq!(resumed["lost"], 0);
        assert_eq!(resumed["restarted"], false);
    }
    for node in [a_node, b_node, c_node] {
        node.shutdown().await;
    }
}

/// An idle node notices by itself that Redis went away: `/readyz` turns
/// 503 without anyone sending, and 200 again once Redis is back.
#[tokio::test]
async fn redis_down_shows_in_readyz_on_an_idle_node() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = node(&redis).await;
    assert_eq!(crate::web::get(server.addr, "/readyz").await.status, 200);
    redis.stop();
    let mut status = 200;
    for _ in 0..100 {
        status = crate::web::get(server.addr, "/readyz").await.status;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503, "an idle node saw Redis go within 10 s");
    redis.restart();
    for _ in 0..100 {
        status = crate::web::get(server.addr, "/readyz").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "ready again within 10 s of Redis coming back");
    server.shutdown().await;
}

#[tokio::test]
async fn redis_down_refuses_sends_clearly_and_chat_comes_back_with_a_new_epoch() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = node(&redis).await;
    let (mut a, welcome) = connect_json(&server).await;
    let old_epoch = welcome["epoch"].as_u64().unwrap();
    a.send("before").await;
    assert_eq!(lines(&mut a, 1).await[0], (1, "before".into()));

    redis.stop();
    a.send("while down").await;
    let refused = a.recv_json_type("error").await;
    assert_eq!(
        refused["message"],
        "the chat is unavailable right now (its store is down); try again shortly"
    );
    // Still connected: commands that need no store work.
    a.send("/who").await;
    a.recv_json_type("who").await;
    let ready = crate::web::get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("Redis"), "{}", ready.body);

    // Redis back, empty: within 5 s lines go through again, numbered anew.
    redis.restart();
    let back = tokio::time::Instant::now();
    let mut tries = 0;
    let line = loop {
        tries += 1;
        a.send(&format!("try {tries}")).await;
        let v = a.recv_json().await;
        match v["type"].as_str() {
            Some("message") => break v,
            Some("error") => {
                assert!(
                    back.elapsed() < Duration::from_secs(5),
                    "still refused 5 s after Redis came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {}
        }
    };
    assert_eq!(
        line["seq"], 1,
        "an empty Redis starts the room again: {line}"
    );
    assert_eq!(crate::web::get(server.addr, "/readyz").await.status, 200);
    // The new epoch is told to newcomers, and a resume across it says so.
    let (mut b, welcome) = connect_json(&server).await;
    let new_epoch = welcome["epoch"].as_u64().unwrap();
    assert_ne!(new_epoch, old_epoch);
    b.send(&format!("/resume {old_epoch} 1")).await;
    let resumed = b.recv_json_type("resumed").await;
    assert_eq!(resumed["restarted"], true, "{resumed}");
    server.shutdown().await;
}
