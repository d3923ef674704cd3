//! Command-line flags, and the checks that turn them into a consistent plan.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use http::Uri;

/// Load generator and delivery checker for WebSocket broadcast chat servers.
///
/// Connects CLIENTS clients, makes SENDERS of them send MESSAGES marked
/// messages each, and checks that every client receives every message exactly
/// once and in per-sender order. Works against any server that relays each
/// text message to every client (sender included), with or without a prefix.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-load", version)]
pub struct Args {
    /// Server URL, e.g. ws://127.0.0.1:2000
    #[arg(long, default_value = "ws://127.0.0.1:2000")]
    pub url: String,

    /// Number of connected clients (senders included).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// How many of the clients send; 0 means idle mode (connect, hold, report memory).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,

    /// Messages sent by each sender in the measured run.
    #[arg(long, default_value_t = 1000)]
    pub messages: u32,

    /// Closed loop: messages each sender may have outstanding (sent but its own echo not yet back).
    #[arg(long = "in-flight", default_value_t = 4)]
    pub in_flight: u32,

    /// Open loop: messages per second per sender, at a fixed schedule (overrides --in-flight).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Message size in bytes (the marker is padded with filler up to this size).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// PID of the server process: adds its CPU time per delivery and its memory to the report.
    #[arg(long = "server-pid")]
    pub server_pid: Option<u32>,

    /// Print the report as one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Idle mode: connect, hold for --hold seconds, report server memory per connection.
    #[arg(long)]
    pub idle: bool,

    /// Seconds to hold idle connections before measuring memory (idle mode).
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,

    /// Comma-separated local source addresses to spread clients over (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',', conflicts_with = "source_count")]
    pub sources: Vec<IpAddr>,

    /// Use 127.0.0.1 .. 127.0.0.N as source addresses (default: one per 20,000 clients).
    #[arg(long = "source-count")]
    pub source_count: Option<u8>,

    /// Connections opened at once while connecting.
    #[arg(long = "connect-concurrency", default_value_t = 128)]
    pub connect_concurrency: usize,

    /// Seconds one connection (TCP + WebSocket handshake) may take.
    #[arg(long = "connect-timeout", default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Seconds to wait for each barrier round to reach every client.
    #[arg(long = "barrier-timeout", default_value_t = 3.0)]
    pub barrier_timeout: f64,

    /// Barrier rounds to try before giving up.
    #[arg(long = "barrier-rounds", default_value_t = 5)]
    pub barrier_rounds: u32,

    /// After the last send, stop waiting once no delivery arrived for this many seconds.
    #[arg(long = "drain-timeout", default_value_t = 3.0)]
    pub drain_timeout: f64,

    /// A closed-loop sender gives up when none of its echoes arrives for this many seconds.
    #[arg(long = "stall-timeout", default_value_t = 5.0)]
    pub stall_timeout: f64,

    /// Extra clients, besides --clients, that read slowly or not at all (see
    /// --slow-read-interval). They are not checked or measured; the point is
    /// whether the other clients notice them.
    #[arg(long = "slow-clients", default_value_t = 0)]
    pub slow_clients: usize,

    /// Milliseconds a slow client waits between reading two frames; 0: it
    /// never reads at all.
    #[arg(long = "slow-read-interval", default_value_t = 0)]
    pub slow_read_interval_ms: u64,
}

/// Where to connect, resolved from the URL once.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub addr: std::net::SocketAddr,
}

impl Args {
    /// Rejects flag combinations that would make the run meaningless, with a reason.
    pub fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.senders > self.clients {
            bail!(
                "--senders ({}) cannot exceed --clients ({})",
                self.senders,
                self.clients
            );
        }
        if !self.is_idle() && self.messages == 0 {
            bail!("--messages must be at least 1");
        }
        if self.rate.is_none() && self.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be a positive number of messages per second");
            }
        }
        for (name, v) in [
            ("--hold", self.hold),
            ("--connect-timeout", self.connect_timeout),
            ("--barrier-timeout", self.barrier_timeout),
            ("--drain-timeout", self.drain_timeout),
            ("--stall-timeout", self.stall_timeout),
        ] {
            if !(v >= 0.0 && v.is_finite() && v < 86_400.0) {
                bail!("{name} must be a number of seconds between 0 and 86400");
            }
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        Ok(())
    }

    pub fn is_idle(&self) -> bool {
        self.idle || self.senders == 0
    }

    /// Parses the URL and resolves its host to one socket address.
    pub fn target(&self) -> Result<Target> {
        let uri: Uri = self
            .url
            .parse()
            .with_context(|| format!("invalid --url {:?}", self.url))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => bail!(
                "--url {}: wss:// is not supported (plain ws only)",
                self.url
            ),
            _ => bail!("--url {}: expected a ws:// URL", self.url),
        }
        let host = uri
            .host()
            .with_context(|| format!("--url {} has no host", self.url))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .with_context(|| format!("cannot resolve host of {}", self.url))?
            .next()
            .with_context(|| format!("host of {} resolves to no address", self.url))?;
        Ok(Target { uri, addr })
    }

    /// Source addresses to bind clients to. Each source address offers about
    /// 28,000 ephemeral ports, so large runs against a loopback server spread
    /// over several 127.0.0.x addresses (all of 127/8 reaches `lo` on Linux).
    pub fn source_addrs(&self, target: &Target) -> Vec<IpAddr> {
        /// Clients per source address when not told otherwise.
        const CLIENTS_PER_SOURCE: usize = 8_000;
        if !self.sources.is_empty() {
            return self.sources.clone();
        }
        let loopback_v4 = matches!(target.addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
        if !loopback_v4 {
            // Let the kernel pick: we cannot know which local addresses route there.
            return Vec::new();
        }
        let count = match self.source_count {
            Some(n) => n.max(1),
            // Binding to an address with port 0 makes the kernel search
            // for a free port; as an address's ports fill up the search
            // slows until connects stall for seconds (seen at 19,000 on
            // one address). A third of the range per address stays fast.
            None => {
                u8::try_from(self.clients.div_ceil(CLIENTS_PER_SOURCE).clamp(1, 254)).unwrap_or(254)
            }
        };
        (1..=count)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect()
    }
}

pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}
