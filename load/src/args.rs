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
    /// Server URL, e.g. ws://127.0.0.1:2000. Several (comma-separated, or
    /// the flag repeated) spread the clients over them: client i connects to
    /// URL i % N, and so do the senders, which are clients 0..SENDERS.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:2000")]
    pub url: Vec<String>,

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

    /// PID of the server process: adds its CPU time per delivery and its
    /// memory to the report. With several URLs, one PID per URL in the same
    /// order (comma-separated) gives each node's figures and their sum.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

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
    /// The URL as given, for messages and the report.
    pub url: String,
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
        let urls = self.url.len();
        if let Some(i) = self.url.iter().position(|u| u.trim().is_empty()) {
            bail!("--url: URL {} of {urls} is empty", i + 1);
        }
        if urls > 1 && self.clients < urls {
            bail!(
                "--clients ({}) must be at least the number of URLs ({urls}): every server needs a client",
                self.clients
            );
        }
        let pids = self.server_pid.len();
        if pids > 1 && pids != urls {
            bail!(
                "--server-pid: {pids} PIDs for {urls} URL(s); give one PID per URL, in the same order (or a single PID)"
            );
        }
        Ok(())
    }

    /// The URLs as one string: the URL itself when there is one.
    pub fn url_list(&self) -> String {
        let urls: Vec<&str> = self.url.iter().map(|u| u.trim()).collect();
        urls.join(",")
    }

    /// Which of the URLs client `i` connects to.
    pub fn node_of(&self, client: usize) -> usize {
        client % self.url.len().max(1)
    }

    pub fn is_idle(&self) -> bool {
        self.idle || self.senders == 0
    }

    /// Parses every URL and resolves its host to one socket address, in
    /// the order given; the first bad one fails, named. Spaces around a
    /// URL are dropped (`--url "ws://a:1, ws://b:2"`), as the chat client
    /// does.
    pub fn targets(&self) -> Result<Vec<Target>> {
        self.url.iter().map(|url| target(url.trim())).collect()
    }

    /// Source addresses to bind clients to. Each source address offers about
    /// 28,000 ephemeral ports, so large runs against a loopback server spread
    /// over several 127.0.0.x addresses (all of 127/8 reaches `lo` on Linux).
    pub fn source_addrs(&self, targets: &[Target]) -> Vec<IpAddr> {
        /// Clients per source address when not told otherwise.
        const CLIENTS_PER_SOURCE: usize = 8_000;
        if !self.sources.is_empty() {
            return self.sources.clone();
        }
        let loopback_v4 = targets
            .iter()
            .all(|t| matches!(t.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
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

/// Parses one URL and resolves its host to one socket address.
fn target(url: &str) -> Result<Target> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url:?}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!("--url {url}: wss:// is not supported (plain ws only)"),
        _ => bail!("--url {url}: expected a ws:// URL"),
    }
    let host = uri
        .host()
        .with_context(|| format!("--url {url} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("cannot resolve host of {url}"))?
        .next()
        .with_context(|| format!("host of {url} resolves to no address"))?;
    Ok(Target {
        url: url.to_string(),
        uri,
        addr,
    })
}

pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Args {
        let argv = std::iter::once("chat-load").chain(flags.iter().copied());
        Args::try_parse_from(argv).expect("flags parse")
    }

    fn error(flags: &[&str]) -> String {
        let args = parse(flags);
        let checked = args.validate().and_then(|()| args.targets().map(|_| ()));
        format!("{:#}", checked.expect_err("flags are refused"))
    }

    #[test]
    fn one_url_by_default() {
        let args = parse(&[]);
        assert_eq!(args.url, ["ws://127.0.0.1:2000"]);
        assert_eq!(args.url_list(), "ws://127.0.0.1:2000");
        assert!(args.server_pid.is_empty());
    }

    #[test]
    fn urls_come_as_a_comma_list_and_as_repeated_flags() {
        let args = parse(&[
            "--url",
            "ws://127.0.0.1:2001,ws://127.0.0.1:2002",
            "--url",
            "ws://127.0.0.1:2003",
            "--server-pid",
            "11,12,13",
        ]);
        assert_eq!(
            args.url,
            [
                "ws://127.0.0.1:2001",
                "ws://127.0.0.1:2002",
                "ws://127.0.0.1:2003"
            ]
        );
        assert_eq!(args.server_pid, [11, 12, 13]);
        args.validate().expect("valid");
        let targets = args.targets().expect("all resolve");
        let ports: Vec<u16> = targets.iter().map(|t| t.addr.port()).collect();
        assert_eq!(ports, [2001, 2002, 2003]);
        assert_eq!(targets[1].url, "ws://127.0.0.1:2002");
    }

    #[test]
    fn spaces_around_urls_are_dropped() {
        let args = parse(&["--url", "ws://127.0.0.1:2001, ws://127.0.0.1:2002 "]);
        let targets = args.targets().expect("both resolve");
        assert_eq!(targets[1].url, "ws://127.0.0.1:2002");
        assert_eq!(args.url_list(), "ws://127.0.0.1:2001,ws://127.0.0.1:2002");
        let e = error(&["--url", "ws://127.0.0.1:2001, "]);
        assert!(e.contains("URL 2 of 2 is empty"), "{e}");
    }

    #[test]
    fn clients_and_senders_go_round_robin() {
        let args = parse(&[
            "--url",
            "ws://127.0.0.1:1,ws://127.0.0.1:2,ws://127.0.0.1:3",
        ]);
        let nodes: Vec<usize> = (0..7).map(|i| args.node_of(i)).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(parse(&[]).node_of(5), 0);
    }

    #[test]
    fn a_bad_url_is_named() {
        let e = error(&["--url", "ws://127.0.0.1:2001,http://127.0.0.1:2002"]);
        assert!(
            e.contains("http://127.0.0.1:2002: expected a ws:// URL"),
            "{e}"
        );
        let e = error(&["--url", "ws://127.0.0.1:2001,wss://127.0.0.1:2002"]);
        assert!(e.contains("wss://127.0.0.1:2002"), "{e}");
        let e = error(&["--url", "ws://127.0.0.1:2001,,ws://127.0.0.1:2003"]);
        assert!(e.contains("URL 2 of 3 is empty"), "{e}");
    }

    #[test]
    fn pids_must_match_the_urls_or_be_one() {
        let urls = "ws://127.0.0.1:1,ws://127.0.0.1:2,ws://127.0.0.1:3";
        let e = error(&["--url", urls, "--server-pid", "1,2"]);
        assert!(e.contains("2 PIDs for 3 URL(s)"), "{e}");
        parse(&["--url", urls, "--server-pid", "7"])
            .validate()
            .expect("one PID for all is allowed");
        let e = error(&["--server-pid", "1,2"]);
        assert!(e.contains("2 PIDs for 1 URL(s)"), "{e}");
    }

    #[test]
    fn every_url_needs_a_client() {
        let e = error(&[
            "--url",
            "ws://127.0.0.1:1,ws://127.0.0.1:2,ws://127.0.0.1:3",
            "--clients",
            "2",
            "--senders",
            "1",
        ]);
        assert!(
            e.contains("--clients (2) must be at least the number of URLs (3)"),
            "{e}"
        );
    }

    #[test]
    fn loopback_sources_only_when_every_url_is_loopback() {
        let args = parse(&["--url", "ws://127.0.0.1:1,ws://127.0.0.1:2"]);
        let targets = args.targets().expect("resolve");
        assert_eq!(args.source_addrs(&targets).len(), 1);
        let mut mixed = targets.clone();
        mixed[1].addr = "10.0.0.1:2".parse().expect("address");
        assert!(args.source_addrs(&mixed).is_empty());
    }
}
