//! How many lines a second the SQLite history store keeps, and where its
//! writer falls behind: lines are handed to `Store::keep` (as the hub does
//! after delivery) at a fixed offered rate for a few seconds, on a fresh
//! file with the default settings (`--db-sync normal`, 10 ms gathering),
//! and then counted in the file.
//!
//! `cargo bench --bench store` prints, per offered rate, the lines kept,
//! the lines dropped because the writer's queue was full, and how long the
//! writer took to catch up after the last line. Pin it to a core of its own
//! (`taskset -c 1`) to see the writer share one core with its producer, as
//! a server pinned to one core does; unpinned, the writer has a core of
//! its own. `STORE_BENCH_SECONDS` sets how long each
//! rate runs (default 3); `STORE_BENCH_RATES` a comma-separated list of
//! rates (default 50000,100000,200000,400000,800000).

use std::time::{Duration, Instant};

use chat::http::Readiness;
use chat::protocol::ChatLine;
use chat::store::sqlite::{Config, Durability, Sqlite};
use chat::store::Store as _;

/// Rooms the lines are spread over, in turn.
const ROOMS: [&str; 4] = ["#lobby", "#rust", "#ops", "#random"];
/// Lines are handed over in slices this long, at the offered rate.
const TICK: Duration = Duration::from_millis(1);

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter here.
    let seconds: f64 = std::env::var("STORE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rates: Vec<u64> = std::env::var("STORE_BENCH_RATES")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50_000, 100_000, 150_000, 200_000, 300_000]);
    println!(
        "SQLite history store, {seconds} s per rate, 64-byte lines over {} rooms, --db-sync normal",
        ROOMS.len()
    );
    println!(
        "{:>12} {:>12} {:>12} {:>10} {:>14}",
        "offered/s", "kept/s", "kept", "dropped", "catch-up ms"
    );
    for rate in rates {
        run(rate, seconds);
    }
}

fn run(rate: u64, seconds: f64) {
    let dir = std::env::temp_dir().join(format!("chat-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let path = dir.join("bench.db");
    let config = Config {
        path: path.clone(),
        history: 100_000_000,
        max_age: None,
        durability: Durability::Normal,
        max_pages: None,
    };
    let store = match Sqlite::open(config, Readiness::new()) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("cannot open {}: {e:#}", path.display());
            std::process::exit(1);
        }
    };
    let epochs: Vec<u64> = ROOMS.iter().map(|r| store.open(r, 0).epoch).collect();
    let from = "127.0.0.1:4000".parse().expect("a valid address");
    let text = "x".repeat(64);
    let per_tick = (rate as f64 * TICK.as_secs_f64()).max(1.0);
    let ticks = (seconds / TICK.as_secs_f64()) as u64;
    let started = Instant::now();
    let mut handed = 0u64;
    let mut owed = 0.0;
    let mut seqs = [0u64; ROOMS.len()];
    for tick in 0..ticks {
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let i = (handed % ROOMS.len() as u64) as usize;
            seqs[i] += 1;
            let line = ChatLine {
                room: ROOMS[i].to_string(),
                seq: seqs[i],
                ts: chat::protocol::now_millis(),
                from,
                nick: Some("bench".to_string()),
                text: text.clone(),
                history: false,
            };
            store.keep(epochs[i], &line, false);
            handed += 1;
        }
        let due = started + TICK * (tick as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let offered_for = started.elapsed();
    let last = Instant::now();
    store.flush();
    let catch_up = last.elapsed();
    let dropped = store.dropped();
    store.close();
    drop(store);
    let kept = rusqlite::Connection::open(&path)
        .and_then(|c| {
            c.query_row("SELECT coalesce(sum(count), 0) FROM chunks", [], |r| {
                r.get::<_, u64>(0)
            })
        })
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:>12.0} {:>12.0} {:>12} {:>10} {:>14.1}",
        handed as f64 / offered_for.as_secs_f64(),
        kept as f64 / (offered_for + catch_up).as_secs_f64(),
        kept,
        dropped,
        catch_up.as_secs_f64() * 1000.0
    );
}
