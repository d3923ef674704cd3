//! The Redis room log against a real `redis-server` of the test's own:
//! seq assignment, range reads, and a subscriber that delivers each line
//! once, in order, through cut connections, dropped messages, duplicates
//! and a Redis that came back empty.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::store::redis::{Entry, Kind, RedisLog, Sink, Stored, Subscriber};
use tokio::sync::watch;

use crate::redis_server::RedisServer;
use crate::support::WAIT;

const ROOM: &str = "#lobby";

fn entry(text: &str) -> Entry {
    Entry {
        ts: 1,
        from: "127.0.0.1:7".parse().unwrap(),
        nick: None,
        kind: Kind::Message,
        text: text.to_string(),
    }
}

/// What a subscriber handed on, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Line { epoch: u64, seq: u64, text: String },
    Lost { after: u64, count: u64 },
    Epoch(u64),
}

/// A sink that records everything and says how much it has.
struct Recorder {
    got: Mutex<Vec<Got>>,
    count: watch::Sender<usize>,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Recorder {
            got: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        })
    }

    fn push(&self, got: Got) {
        let mut all = self.got.lock().unwrap();
        all.push(got);
        self.count.send_replace(all.len());
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` things were handed on.
    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let mut count = self.count.subscribe();
        let reached = tokio::time::timeout(WAIT * 3, count.wait_for(|c| *c >= n)).await;
        let got = self.got();
        assert!(
            reached.is_ok(),
            "only {} of {n} handed on; last: {:?}",
            got.len(),
            got.last()
        );
        got
    }

    fn lines(&self) -> Vec<(u64, String)> {
        self.got()
            .into_iter()
            .filter_map(|g| match g {
                Got::Line { seq, text, .. } => Some((seq, text)),
                _ => None,
            })
            .collect()
    }
}

impl Sink for Recorder {
    fn line(&self, room: &str, epoch: u64, line: Stored) {
        assert_eq!(room, ROOM);
        self.push(Got::Line {
            epoch,
            seq: line.seq,
            text: line.entry.text,
        });
    }

    fn lost(&self, _room: &str, _epoch: u64, after: u64, count: u64) {
        self.push(Got::Lost { after, count });
    }

    fn new_epoch(&self, _room: &str, epoch: u64) {
        self.push(Got::Epoch(epoch));
    }
}

async fn connect(redis: &RedisServer) -> RedisLog {
    tokio::time::timeout(WAIT, RedisLog::connect(&redis.url(), 100_000))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

async fn subscribed(log: &RedisLog) -> (Subscriber, Arc<Recorder>) {
    let recorder = Recorder::new();
    let subscriber = log.subscriber(recorder.clone());
    tokio::time::timeout(WAIT, subscriber.subscribe(ROOM))
        .await
        .expect("subscribe timed out")
        .expect("subscribe failed");
    (subscriber, recorder)
}

/// A raw connection for poking at Redis behind the log's back.
async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Asserts seqs 1..=n each exactly once, in order, and returns the texts.
fn assert_exactly_once(lines: &[(u64, String)], n: u64) {
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=n).collect();
    assert_eq!(seqs.len(), expected.len(), "wrong count of lines");
    assert_eq!(seqs, expected, "gap, duplicate or reordering");
}

#[tokio::test]
async fn redis_log_assigns_seqs_and_reads_ranges() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let log = connect(&redis).await;
    let head = log.head(ROOM).await.unwrap();
    assert_eq!((head.epoch, head.seq), (None, 0), "a new room has no epoch");
    let mut epochs = vec![];
    for i in 1..=5 {
        let (epoch, seq) = log.append(ROOM, &entry(&format!("m{i}"))).await.unwrap();
        assert_eq!(seq, i);
        epochs.push(epoch);
    }
    assert!(epochs.iter().all(|e| *e == epochs[0]), "one epoch per room");
    let texts = |r: chat::store::redis::Range| -> Vec<(u64, String)> {
        r.lines.into_iter().map(|s| (s.seq, s.entry.text)).collect()
    };
    let since = log.since(ROOM, 2, 10).await.unwrap();
    assert_eq!(since.head.seq, 5);
    assert_eq!(since.head.epoch, Some(epochs[0]));
    assert_eq!(
        texts(since),
        [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]
    );
    assert_eq!(
        texts(log.last(ROOM, 2).await.unwrap()),
        [(4, "m4".into()), (5, "m5".into())]
    );
    assert_eq!(
        texts(log.before(ROOM, 3, 10).await.unwrap()),
        [(1, "m1".into()), (2, "m2".into())]
    );
    assert!(log.before(ROOM, 1, 10).await.unwrap().lines.is_empty());
    assert_eq!(log.since(ROOM, 0, 2).await.unwrap().lines.len(), 2);
    // Another room has its own seq and epoch.
    let (_, seq) = log.append("#other", &entry("x")).await.unwrap();
    assert_eq!(seq, 1);
}

#[tokio::test]
async fn redis_subscribers_on_two_nodes_see_three_senders_once_in_the_same_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (connect(&redis).await, connect(&redis).await);
    let (_sa, got_a) = subscribed(&a).await;
    let (_sb, got_b) = subscribed(&b).await;
    const EACH: u64 = 200;
    let senders: Vec<_> = (0..3)
        .map(|s| {
            let log = if s % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..EACH {
                    log.append(ROOM, &entry(&format!("s{s}-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    }
    got_a.wait_for(3 * EACH as usize).await;
    got_b.wait_for(3 * EACH as usize).await;
    let (la, lb) = (got_a.lines(), got_b.lines());
    assert_exactly_once(&la, 3 * EACH);
    assert_eq!(la, lb, "both nodes map each seq to the same line");
    // Each sender's lines in the order it sent them.
    for s in 0..3 {
        let mine: Vec<_> = la
            .iter()
            .filter(|(_, t)| t.starts_with(&format!("s{s}-")))
            .map(|(_, t)| t.clone())
            .collect();
        let sent: Vec<_> = (0..EACH).map(|i| format!("s{s}-{i}")).collect();
        assert_eq!(mine, sent);
    }
}

#[tokio::test]
async fn redis_pubsub_cut_mid_burst_leaves_no_gap_and_no_duplicate() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let log = connect(&redis).await;
    let (subscriber, got) = subscribed(&log).await;
    const N: u64 = 5000;
    let publisher = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                log.append(ROOM, &entry(&format!("m{i}"))).await.unwrap();
            }
        })
    };
    // Cut the subscriber's connection again and again while the burst runs.
    let mut admin = raw(&redis).await;
    let mut mid_burst = 0;
    for round in 0..6 {
        // Wait until the subscriber is connected again (or still, at first).
        let mut connected = false;
        for _ in 0..200 {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut admin)
                .await
                .unwrap();
            if !clients.trim().is_empty() {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            connected,
            "the subscriber did not reconnect (round {round})"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        if !publisher.is_finished() {
            mid_burst += killed;
        }
    }
    tokio::time::timeout(WAIT * 3, publisher)
        .await
        .unwrap()
        .unwrap();
    got.wait_for(N as usize).await;
    assert!(
        got.got().iter().all(|g| matches!(g, Got::Line { .. })),
        "nothing lost, no epoch change"
    );
    assert_exactly_once(&got.lines(), N);
    let stats = subscriber.stats();
    assert!(
        mid_burst >= 3,
        "cut only {mid_burst} times during the burst"
    );
    // Each round waited for the reconnect after the cut before it.
    assert!(stats.connections >= 6, "{stats:?}");
    assert!(
        stats.from_stream > 0,
        "some lines came from the stream: {stats:?}"
    );
}

#[tokio::test]
async fn redis_a_dropped_message_is_filled_from_the_stream_and_a_duplicate_dropped() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let log = connect(&redis).await;
    let (subscriber, got) = subscribed(&log).await;
    log.append(ROOM, &entry("one")).await.unwrap();
    got.wait_for(1).await;
    // Line 2 goes into the stream but is never published (a lost message).
    let mut admin = raw(&redis).await;
    let json = serde_json::to_string(&entry("two")).unwrap();
    let meta = chat::store::redis::meta_key(ROOM);
    let stream = chat::store::redis::log_key(ROOM);
    let seq: u64 = redis::cmd("HINCRBY")
        .arg(&meta)
        .arg("seq")
        .arg(1)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(seq, 2);
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("2-0")
        .arg("l")
        .arg(&json)
        .query_async(&mut admin)
        .await
        .unwrap();
    // Line 3 arrives live: 2 must come first, from the stream.
    let (epoch, _) = log.append(ROOM, &entry("three")).await.unwrap();
    got.wait_for(3).await;
    assert_eq!(
        got.lines(),
        [(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    assert_eq!(subscriber.stats().gaps, 1);
    // Line 3 published again (a duplicate): dropped.
    let three = serde_json::to_string(&entry("three")).unwrap();
    let _: u64 = redis::cmd("PUBLISH")
        .arg(chat::store::redis::channel(ROOM))
        .arg(format!("{epoch} 3 {three}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    log.append(ROOM, &entry("four")).await.unwrap();
    got.wait_for(4).await;
    assert_eq!(got.lines().len(), 4);
    assert_eq!(got.lines()[3], (4, "four".into()));
    assert_eq!(subscriber.stats().duplicates, 1);
}

#[tokio::test]
async fn redis_down_refuses_appends_and_an_empty_redis_starts_a_new_epoch() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let log = connect(&redis).await;
    let (subscriber, got) = subscribed(&log).await;
    let (first, _) = log.append(ROOM, &entry("before")).await.unwrap();
    got.wait_for(1).await;

    redis.stop();
    let refused = tokio::time::timeout(WAIT, log.append(ROOM, &entry("lost")))
        .await
        .expect("an append while Redis is down must fail, not hang")
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the chat is unavailable right now (its store is down); try again shortly"
    );

    // Back, but empty: appends work again within a few seconds, under a
    // new epoch, and the subscriber says so before the new line.
    redis.restart();
    let back = tokio::time::Instant::now();
    let (second, seq) = loop {
        match log.append(ROOM, &entry("after")).await {
            Ok(done) => break done,
            Err(_) if back.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("still refused 5 s after Redis came back: {}", e.cause()),
        }
    };
    assert_eq!(seq, 1, "an empty Redis starts the room again");
    assert_ne!(first, second, "with a new epoch");
    let all = got.wait_for(3).await;
    assert_eq!(
        all[1..],
        [
            Got::Epoch(second),
            Got::Line {
                epoch: second,
                seq: 1,
                text: "after".into()
            }
        ]
    );
    assert!(subscriber.stats().connections >= 2);
}
