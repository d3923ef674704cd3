//! How fast a node appends lines to Redis, against `redis-benchmark`
//! running the very same script on this machine: what the pipelined
//! batches of `redis_node`'s worker buy, and how close they come to what
//! Redis itself can do.
//!
//! `cargo bench --bench redis` starts a `redis-server` of its own on a
//! free loopback port (`--save '' --appendonly no`), then for
//! `REDIS_BENCH_SECONDS` (default 2) each:
//! - `RedisLog::append`, one line at a time, each awaited (what a node
//!   would do without batching);
//! - `RedisLog::append_many` in batches of 256 (what the worker does under
//!   load), one batch in flight;
//! - `redis-benchmark -c 1 -P 1` and `-c 1 -P 256` running `EVAL` of the
//!   same `APPEND_SCRIPT` with the same arguments,
//!
//! and prints lines per second with the ratios. Pin it (`taskset -c 1`)
//! to keep the client and Redis on one core, as they would share one.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat::store::redis::{channel, log_key, meta_key, Entry, Kind, RedisLog, APPEND_SCRIPT};

const ROOM: &str = "#bench";
const BATCH: usize = 256;

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(std::env::var("CHAT_REDIS_SERVER").unwrap_or("redis-server".into()))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (apt-get install redis-server)");
    Redis(child, port)
}

fn entry() -> Entry {
    Entry {
        ts: 1_767_225_600_000,
        from: "127.0.0.1:40000".parse().expect("an address"),
        nick: Some("bench".into()),
        kind: Kind::Message,
        text: "x".repeat(64),
    }
}

/// `redis-benchmark -q` for `n` EVALs of the append script, `pipeline`
/// at a time: requests per second.
fn redis_benchmark(port: u16, n: usize, pipeline: usize) -> Option<f64> {
    let line = serde_json::to_string(&entry()).ok()?;
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", "1", "-q"])
        .args(["-n", &n.to_string(), "-P", &pipeline.to_string()])
        .arg("EVAL")
        .arg(APPEND_SCRIPT)
        .arg("2")
        .arg(meta_key(ROOM))
        .arg(log_key(ROOM))
        .arg("4242")
        .arg("10000")
        .arg(line)
        .arg(channel(ROOM))
        .output()
        .ok()?;
    // "EVAL ...: 123456.79 requests per second, p50=..."
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.rfind(" requests per second")?;
    let start = text[..at].rfind(' ')? + 1;
    text[start..at].parse().ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: f64 = std::env::var("REDIS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let run = Duration::from_secs_f64(seconds);
    let redis = start_redis();
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let mut log = None;
    for _ in 0..100 {
        if let Ok(l) = RedisLog::connect(&url, 10_000).await {
            log = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = log.expect("the bench's redis-server answers");
    let entry = entry();
    println!("Appending 64-byte lines to one room, {seconds} s each, one connection");

    let started = Instant::now();
    let mut single = 0u64;
    while started.elapsed() < run {
        log.append(ROOM, &entry).await.expect("an append");
        single += 1;
    }
    let single = single as f64 / started.elapsed().as_secs_f64();

    let batch: Vec<(&str, &Entry)> = (0..BATCH).map(|_| (ROOM, &entry)).collect();
    let started = Instant::now();
    let mut batched = 0u64;
    while started.elapsed() < run {
        log.append_many(&batch).await.expect("a batch");
        batched += BATCH as u64;
    }
    let batched = batched as f64 / started.elapsed().as_secs_f64();

    let n1 = (single * seconds) as usize + 1;
    let n256 = (batched * seconds) as usize + 1;
    let bench1 = redis_benchmark(redis.1, n1, 1);
    let bench256 = redis_benchmark(redis.1, n256, BATCH);
    let ratio = |ours: f64, theirs: Option<f64>| {
        theirs.map_or_else(
            || "redis-benchmark not found".to_string(),
            |t| format!("{:.2}× redis-benchmark ({t:.0}/s)", ours / t),
        )
    };
    println!(
        "{:<44} {:>10.0} lines/s  {}",
        "append, one at a time (no batching)",
        single,
        ratio(single, bench1)
    );
    println!(
        "{:<44} {:>10.0} lines/s  {}",
        "append_many, batches of 256 (the worker)",
        batched,
        ratio(batched, bench256)
    );
    println!("batching buys {:.1}×", batched / single);
}
