//! `server`: the chat server. Arguments, logging, bind, then `server::run`.
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chat::http::admission::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP};
use chat::http::policy::{validate_origin, Policy, Token};
use chat::http::tls::{self, TLS_HANDSHAKE_TIMEOUT};
use chat::http::HANDSHAKE_TIMEOUT;
use chat::hub::{
    HubConfig, DEFAULT_CHANNEL_CAPACITY, DEFAULT_HISTORY_DEPTH, DEFAULT_MAX_ROOMS,
    DEFAULT_PRESENCE_LIMIT, DEFAULT_RECONNECT_GRACE,
};
use chat::server::{self, Config};
use chat::store::sqlite::{self, Durability};

/// Most lines per room the hub keeps in memory when history is on disk:
/// older ones are read from the file when a client pages back.
const MAX_HISTORY_IN_MEMORY: usize = 10_000;
use chat::session::{
    Rate, SessionConfig, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT,
    DEFAULT_RATE_BURST, DEFAULT_RATE_LIMIT,
};
use clap::builder::TypedValueParser as _;
use clap::Parser;
use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

/// A WebSocket broadcast chat server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CHAT_ADDR", default_value = "127.0.0.1:2000")]
    addr: SocketAddr,
    /// Server name shown in the welcome line.
    #[arg(long, env = "CHAT_NAME", default_value = "chat")]
    name: String,
    /// How many messages a room buffers for a slow receiver before it
    /// starts skipping messages for that receiver.
    #[arg(long, default_value_t = DEFAULT_CHANNEL_CAPACITY as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    channel_capacity: u32,
    /// Lines of history each room keeps (in the --db file; the last 10,000
    /// of them also in memory), for /history, newcomers and clients
    /// catching up after a reconnect (0 disables history).
    #[arg(long, env = "CHAT_HISTORY", default_value_t = DEFAULT_HISTORY_DEPTH)]
    history: usize,
    /// Where history is kept: an SQLite file, created if missing, or
    /// :memory: to keep it in memory only (lost at every restart).
    #[arg(long, value_name = "PATH", env = "CHAT_DB", default_value = "chat.db")]
    db: String,
    /// Remove lines older than this from history, e.g. 7d, 12h, 30m
    /// (default: kept until --history pushes them out).
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    history_max_age: Option<Duration>,
    /// How hard each write of history is made to last: normal survives the
    /// server being killed, full also a power loss (slower), off leaves it
    /// to the operating system.
    #[arg(long, value_enum, default_value_t = Durability::Normal)]
    db_sync: Durability,
    /// Most rooms that may exist at once.
    #[arg(long, default_value_t = DEFAULT_MAX_ROOMS, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    max_rooms: usize,
    /// Worker threads (0: one per CPU core this process may use). With one,
    /// the server runs on a single-threaded runtime.
    #[arg(long, env = "CHAT_THREADS", default_value_t = 0)]
    threads: usize,
    /// Rooms with more members than this do not announce joins and leaves
    /// (0: always announce).
    #[arg(long, default_value_t = DEFAULT_PRESENCE_LIMIT)]
    presence_limit: usize,
    /// Seconds the place of a client whose connection was lost (no Close)
    /// is held: its nickname reserved and its leave not announced, so that
    /// it can come back unnoticed (0: announce the leave at once).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_RECONNECT_GRACE.as_secs())]
    reconnect_grace: u64,
    /// Most connections open at once, handshakes included (0: no limit).
    /// One more is answered 503 Service Unavailable.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most connections open at once from one IP address, handshakes
    /// included (0: no limit). One more is answered 429 Too Many Requests.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// A browser origin allowed to connect, such as
    /// https://chat.example.com, or * for any; repeat for more. Without
    /// this flag, only pages from the server's own host and port may
    /// connect. Clients that send no Origin (non-browsers) are always
    /// allowed. Others get 403.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// A host name this server answers to besides loopback names, when it
    /// listens on a loopback address (a guard against DNS rebinding: other
    /// Host values get 403); repeat for more. Has no effect on other binds.
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// Serve /metrics, /healthz and /readyz on this address instead of the
    /// chat port (keep them off the internet); the chat port then serves
    /// none of them.
    #[arg(long, env = "CHAT_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// Seconds to keep serving after SIGTERM or Ctrl+C with /readyz
    /// answering 503, so a load balancer stops sending clients first.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    drain: u64,
    /// How logs are written on stderr: text for people, json (one object a
    /// line) for log shippers.
    #[arg(long, value_enum, env = "CHAT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// A secret clients must show, as "Authorization: Bearer TOKEN" or as
    /// ?token=TOKEN in the URL; others get 401. Prefer the environment
    /// variable: command lines are visible to other users.
    #[arg(
        long,
        env = "CHAT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    token: Option<String>,
    /// PEM certificate chain: serve wss:// instead of ws:// (needs
    /// --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has to complete the TLS handshake (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value_t = TLS_HANDSHAKE_TIMEOUT.as_secs())]
    tls_handshake_timeout: u64,
    /// Seconds a client has to send its HTTP upgrade request and get the
    /// answer (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value_t = HANDSHAKE_TIMEOUT.as_secs())]
    handshake_timeout: u64,
    /// Largest message a client may send, in bytes (a fragmented message
    /// counts whole); bigger ones end the connection with Close 1009
    /// (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Seconds a client may stay silent before the server pings it (0: no
    /// pings, and so no ping timeout).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_PING_INTERVAL.as_secs())]
    ping_interval: u64,
    /// Seconds a pinged client has to send anything before it is closed
    /// (Close 4000); also how long a write to a client that does not read
    /// may block, after the ping interval (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_PING_TIMEOUT.as_secs())]
    ping_timeout: u64,
    /// Messages per second a client may send on average (commands count,
    /// /quit does not); more are refused with a notice, and a client that
    /// keeps flooding is closed with 1008 (0: no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE_LIMIT)]
    rate_limit: u32,
    /// Messages a client may send at once, above --rate-limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    rate_burst: u32,
    /// Share rooms, history and sequence numbers with every server started
    /// with the same Redis, e.g. redis://127.0.0.1:6379/0 (see "Running
    /// several servers" in the README). Without it this server is alone.
    #[arg(long, value_name = "URL", env = "CHAT_REDIS")]
    redis: Option<String>,
    /// With --redis: seconds a member's presence and nickname outlive the
    /// last refresh by their server; the users of a server that died are
    /// shown leaving within about 1⅓ of this.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    presence_ttl: u64,
}

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A limit flag's value: 0 means no limit.
fn limit<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

/// A timeout flag's value: 0 means no limit.
/// `7d`, `12h`, `30m`, `45s` (a number alone is seconds).
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 7d, 12h, 30m or 45s"))?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use s, m, h or d"
            ))
        }
    };
    if n == 0 {
        return Err("a maximum age must be more than 0".to_string());
    }
    Ok(Duration::from_secs(n.saturating_mul(per)))
}

fn seconds(secs: u64) -> Duration {
    if secs == 0 {
        Duration::MAX
    } else {
        Duration::from_secs(secs)
    }
}

/// jemalloc keeps its bookkeeping outside the blocks it hands out, so memory
/// that is allocated but never written — the 8 KiB read buffer
/// tokio-websockets gives every connection, which an idle one never fills —
/// costs address space, not resident memory. glibc's allocator writes a
/// header into every block, which dirties a page per idle connection.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (the symbol is the C string
/// pointer it looks for; a slice reference begins with that pointer). Pages
/// freed are handed back to the system at once instead of after ten
/// seconds: a burst of handshakes (each a few kilobytes for a moment) would
/// otherwise stay in the resident memory of an idle server, 0.2 to 0.9 KB
/// per connection after connecting 10,000. `_RJEM_MALLOC_CONF` overrides it.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8] = b"dirty_decay_ms:0\0";

/// Tasks the runtime runs between two looks at the sockets (tokio's
/// default is 61). Finishing more of the woken sessions first lets more
/// messages pile up for each, so each write carries more frames.
const EVENT_INTERVAL: u32 = 1024;

fn main() {
    let args = Args::parse();
    // Before anything starts: a malformed origin is a typo to fix now, not
    // a browser refused later.
    for origin in &args.allowed_origins {
        if let Err(e) = validate_origin(origin) {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One thread: a current-thread runtime, which skips the work-stealing
    // machinery that only pays off with several.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .event_interval(EVENT_INTERVAL)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let result = match runtime {
        Ok(runtime) => runtime.block_on(serve(args)),
        Err(e) => Err(anyhow::anyhow!("cannot start the runtime: {e}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // Before binding: a bad certificate should not leave a port open even
    // for a moment.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
        _ => None,
    };
    let (addr, metrics_addr, prepared_tls) = (args.addr, args.metrics_addr, tls.is_some());
    let db = (args.db != ":memory:").then(|| sqlite::Config {
        path: PathBuf::from(&args.db),
        history: args.history,
        max_age: args.history_max_age,
        durability: args.db_sync,
        max_pages: None,
    });
    // Every field is set today; the update keeps settings added to Config
    // later at their defaults until they get a flag.
    #[allow(clippy::needless_update)]
    let config = Config {
        hub: HubConfig {
            name: args.name,
            channel_capacity: args.channel_capacity as usize,
            history_depth: if db.is_some() {
                args.history.min(MAX_HISTORY_IN_MEMORY)
            } else {
                args.history
            },
            max_rooms: args.max_rooms,
            presence_limit: args.presence_limit,
            reconnect_grace: Duration::from_secs(args.reconnect_grace),
        },
        handshake_timeout: seconds(args.handshake_timeout),
        tls,
        tls_handshake_timeout: seconds(args.tls_handshake_timeout),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        policy: Policy {
            allowed_origins: args.allowed_origins,
            token: args.token.map(Token::new),
            allowed_hosts: args.allowed_hosts,
            ..Policy::default()
        },
        session: SessionConfig {
            max_message_bytes: limit(args.max_message_bytes),
            ping_interval: limit(args.ping_interval).map(Duration::from_secs),
            ping_timeout: limit(args.ping_timeout).map(Duration::from_secs),
            rate: limit(args.rate_limit).map(|per_second| Rate {
                per_second,
                burst: args.rate_burst,
            }),
        },
        redis: args.redis,
        presence_ttl: Duration::from_secs(args.presence_ttl),
        db,
        drain: Duration::from_secs(args.drain),
        ..Config::default()
    };
    // The store opens first: a locked or foreign database file stops the
    // server before it has a port, and the first clients do not wait in
    // the accept queue while the file is read.
    let prepared = server::prepare(config).await?;
    let scheme = if prepared_tls { "wss" } else { "ws" };
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    info!("listening on {scheme}://{}", listener.local_addr()?);
    let ops_listener = match metrics_addr {
        Some(addr) => {
            let ops =
                bind(addr).with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
            info!(
                "metrics, health and readiness on http://{}",
                ops.local_addr()?
            );
            Some(ops)
        }
        None => None,
    };
    prepared
        .run(listener, ops_listener, shutdown_signal())
        .await
}

/// Binds the listening socket with a long accept queue: under a burst of
/// connections (thousands of clients reconnecting at once) the default
/// queue overflows, and the kernel then drops handshakes that clients must
/// retry seconds later.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Length of the accept queue (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Completes on Ctrl+C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("received Ctrl+C"),
        () = term => info!("received SIGTERM"),
    }
}
