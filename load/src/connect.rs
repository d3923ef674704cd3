//! Opening many WebSocket connections, a bounded number at a time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, WebSocketStream};

use crate::args::Target;

pub type Ws = WebSocketStream<TcpStream>;

/// The connections in client order, and how long opening them took.
pub struct Connected {
    pub clients: Vec<Ws>,
    pub seconds: f64,
    /// Per-connection time (TCP connect + handshake) in microseconds.
    pub latency_us: Histogram<u64>,
}

/// Opens `count` clients, `concurrency` at a time, client `i` connected to
/// `targets[i % targets.len()]` and bound to `sources[i % sources.len()]`.
/// Fails if any connection fails, naming the URL(s), how many failed and
/// the first cause: a run on a partial set of clients would report
/// misleading figures.
pub async fn connect_all(
    targets: &[Target],
    count: usize,
    sources: &[IpAddr],
    concurrency: usize,
    timeout: Duration,
) -> Result<Connected> {
    let started = Instant::now();
    let attempts = stream::iter(0..count)
        .map(|i| {
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            let target = &targets[i % targets.len()];
            async move {
                let t0 = Instant::now();
                let r = tokio::time::timeout(timeout, connect_one(target, source))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timed out after {timeout:?}")));
                (i, t0.elapsed(), r.map_err(|e| (target, source, e)))
            }
        })
        .buffer_unordered(concurrency.max(1));
    futures_util::pin_mut!(attempts);

    let mut slots: Vec<Option<Ws>> = Vec::with_capacity(count);
    slots.resize_with(count, || None);
    let mut latency_us = new_histogram();
    // Failures per target, and the first cause.
    let mut failed = vec![0usize; targets.len()];
    let mut first_error = None;
    while let Some((i, took, r)) = attempts.next().await {
        match r {
            Ok(ws) => {
                slots[i] = Some(ws);
                let _ = latency_us.record(took.as_micros().max(1) as u64);
            }
            Err((target, source, e)) => {
                failed[i % targets.len()] += 1;
                first_error.get_or_insert_with(|| {
                    let from = source.map_or(String::new(), |s| format!(" from {s}"));
                    let to = if targets.len() > 1 {
                        format!("{}: ", target.uri)
                    } else {
                        String::new()
                    };
                    format!("{to}{e:#}{from}")
                });
            }
        }
    }
    let total: usize = failed.iter().sum();
    if total > 0 {
        let first = first_error.unwrap_or_default();
        if let [target] = targets {
            bail!(
                "{total} of {count} connections to {} failed; first error: {first}",
                target.uri
            );
        }
        let per_target: Vec<String> = targets
            .iter()
            .enumerate()
            .filter(|&(t, _)| failed[t] > 0)
            .map(|(t, target)| {
                let tried = clients_of(t, targets.len(), count);
                format!("{} of {tried} to {}", failed[t], target.uri)
            })
            .collect();
        bail!(
            "{total} of {count} connections failed ({}); first error: {first}",
            per_target.join(", ")
        );
    }
    Ok(Connected {
        clients: slots.into_iter().flatten().collect(),
        seconds: started.elapsed().as_secs_f64(),
        latency_us,
    })
}

async fn connect_one(target: &Target, source: Option<IpAddr>) -> Result<Ws> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("cannot create socket (out of file descriptors?)")?;
    // Abortive close at the end: a run of 10,000 clients would otherwise leave
    // 10,000 ports in TIME_WAIT for a minute, and back-to-back runs (compare.sh)
    // would run out of ephemeral ports on the source address.
    socket.set_zero_linger().context("cannot set SO_LINGER")?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind source address {ip}"))?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("TCP connect to {}", target.addr))?;
    // Messages are small and latency matters: do not let Nagle hold them back.
    tcp.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let (ws, _response) = ClientBuilder::from_uri(target.uri.clone())
        .connect_on(tcp)
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// How many of `count` clients spread round-robin over `nodes` go to node `node`.
pub fn clients_of(node: usize, nodes: usize, count: usize) -> usize {
    count / nodes + usize::from(node < count % nodes)
}

/// Histogram for microsecond timings from 1 µs to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_shares_add_up() {
        for (nodes, count) in [(1, 7), (3, 300), (3, 10), (4, 3), (2, 1)] {
            let shares: Vec<usize> = (0..nodes).map(|n| clients_of(n, nodes, count)).collect();
            assert_eq!(
                shares.iter().sum::<usize>(),
                count,
                "{nodes} nodes, {count}"
            );
            for (n, &share) in shares.iter().enumerate() {
                assert_eq!(share, (0..count).filter(|i| i % nodes == n).count());
            }
        }
    }
}
