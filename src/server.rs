//! The accept loop: takes connections off a bound listener, gives each its
//! own task (handshake, then session), and shuts everything down in order.
//!
//! `run` takes an already-bound listener and a shutdown future, so the binary
//! binds the configured address while tests bind `127.0.0.1:0` and drive the
//! real server in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_websockets::{Limits, ServerBuilder};
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::admission::{
    Admission, RefusalLog, Refused, Ticket, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP, REFUSAL_REPORT_INTERVAL,
};
use crate::fanout::socket::{SharedTcp, Transport};
use crate::handshake::{self, Policy, HANDSHAKE_TIMEOUT};
use crate::hub::{Hub, HubConfig};
use crate::protocol::Encoding;
use crate::session::{self, SessionConfig};
use crate::tls::{self, TLS_HANDSHAKE_TIMEOUT};

/// Largest chat message a client may send by default, in bytes (a single
/// frame or all fragments of one message together). Bigger ones end the
/// connection with Close 1009. See [`SessionConfig::max_message_bytes`].
pub const MAX_MESSAGE_BYTES: usize = session::DEFAULT_MAX_MESSAGE_BYTES;
/// How long connections get to close after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// First pause after a failed `accept`; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after repeated `accept` failures.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long writing the short answer to a refused connection may take; a
/// peer that does not read it is simply dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Settings of the shared chat state.
    pub hub: HubConfig,
    /// How long a client has to complete the HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Serve `wss://` with this TLS configuration (see [`tls::load`]);
    /// `None` for plain `ws://`.
    pub tls: Option<Arc<ServerConfig>>,
    /// How long a client has to complete the TLS handshake, before the
    /// HTTP upgrade's own [`Config::handshake_timeout`] starts.
    pub tls_handshake_timeout: Duration,
    /// Most connections open at once, handshakes included; 0 for no cap.
    /// One more is answered `503 Service Unavailable`.
    pub max_connections: usize,
    /// Most connections open at once from one source address, handshakes
    /// included; 0 for no cap. One more is answered `429 Too Many Requests`.
    pub max_connections_per_ip: usize,
    /// Which browser origins may connect and which token clients must show.
    pub policy: Policy,
    /// What each connection may cost once it is a session: message size,
    /// keepalive, rate limit.
    pub session: SessionConfig,
    /// Share rooms, history and sequence numbers with every server started
    /// with the same Redis URL (`redis://HOST:PORT/DB`); `None`: this
    /// server alone.
    pub redis: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hub: HubConfig::default(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            tls: None,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            policy: Policy::default(),
            session: SessionConfig::default(),
            redis: None,
        }
    }
}

/// Serves chat connections from `listener` until `shutdown` completes, then
/// closes every connection with Close 1001 and returns.
///
/// Errors of single connections, including failed accepts (such as running
/// out of file descriptors), are logged and never end the server.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let hub = Hub::new(config.hub.clone());
    // Held for the server's life: dropping it stops the Redis tasks.
    let _redis = match &config.redis {
        Some(url) => {
            Some(crate::store::redis_node::attach(&hub, url, config.hub.history_depth).await?)
        }
        None => None,
    };
    let admission = Admission::new(config.max_connections, config.max_connections_per_ip);
    let mut refusals = RefusalLog::default();
    let mut report = tokio::time::interval(REFUSAL_REPORT_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let config = Arc::new(config);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);

    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            _ = report.tick() => {
                refusals.tick(std::time::Instant::now());
                continue;
            }
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                // Admission is decided here, synchronously, so the caps are
                // exact however fast connections arrive.
                match admission.admit(addr.ip()) {
                    Ok(ticket) => {
                        let span = info_span!("conn", %addr);
                        let conn = serve_connection(
                            stream,
                            addr,
                            ticket,
                            hub.clone(),
                            config.clone(),
                            stop.clone(),
                            tasks.clone(),
                        );
                        tasks.spawn(conn.instrument(span));
                    }
                    Err(why) => {
                        refusals.refused(why, std::time::Instant::now());
                        tasks.spawn(refuse(stream, why));
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: wait for connections to free resources
                // rather than spinning or giving up.
                error!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }

    info!(connections = tasks.len(), "shutting down");
    drop(listener);
    hub.shutdown();
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tasks.len(),
            "some connections did not close in time"
        );
    }
    info!("stopped");
    Ok(())
}

/// Answers a connection over a cap and closes it, reading none of its
/// request: the answer does not depend on it, and reading would cost the
/// very resources the cap protects.
async fn refuse(mut stream: TcpStream, why: Refused) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&why.response()).await?;
        stream.shutdown().await
    })
    .await;
}

/// One connection from TCP accept to its upgrade. `ticket` holds its place
/// inside the connection caps until the session ends.
async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    ticket: Ticket,
    hub: Hub,
    config: Arc<Config>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    // Chat frames are small and latency matters more than packet count; the
    // session batches its writes itself.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    let Some(tls_config) = config.tls.clone() else {
        // Shared with the room's writer (see `socket`).
        let stream = SharedTcp::new(stream);
        return upgrade_and_serve(stream, addr, ticket, hub, config, stop, tasks).await;
    };
    let secured = tokio::select! {
        () = stop.cancelled() => return,
        // Boxed: a TLS connection's state is large, and inline it would
        // make every plain connection's handshake task as big.
        secured = tokio::time::timeout(
            config.tls_handshake_timeout,
            Box::pin(tls::accept(stream, tls_config)),
        ) => secured,
    };
    match secured {
        Ok(Ok(stream)) => {
            Box::pin(upgrade_and_serve(
                stream, addr, ticket, hub, config, stop, tasks,
            ))
            .await
        }
        Ok(Err(e)) => info!(error = %e, "TLS handshake failed"),
        Err(_) => {
            info!(timeout = ?config.tls_handshake_timeout, "TLS handshake timed out");
        }
    }
}

/// The HTTP upgrade, then the session in a task of its own, over TCP or TLS
/// alike.
async fn upgrade_and_serve<S>(
    stream: S,
    addr: SocketAddr,
    ticket: Ticket,
    hub: Hub,
    config: Arc<Config>,
    stop: CancellationToken,
    tasks: TaskTracker,
) where
    S: Transport + Send + 'static,
{
    // Boxed: the handshake's buffers and timers are needed for a moment.
    let Some((stream, encoding)) = Box::pin(upgrade(stream, &config, &stop)).await else {
        return;
    };
    // `None` is no limit.
    let limits = Limits::default().max_payload_len(config.session.max_message_bytes);
    let ws = ServerBuilder::new().limits(limits).serve(stream);
    // Shutdown reaches the session through the hub (`Hub::shutdown`).
    let session = session::run(ws, addr, encoding, hub, &config.session);
    // A task of its own, sized for the session alone: a connection lives
    // for hours, and the handshake's task would carry everything the
    // handshake needed for all that time.
    // (`map`, not an `async` block, which would hold the session future
    // twice: once captured, once being awaited.)
    let session = session.map(move |()| drop(ticket));
    tasks.spawn(session.instrument(tracing::Span::current()));
}

/// Reads and answers the upgrade request; `None` if the connection did not
/// become a WebSocket (already logged).
async fn upgrade<S>(
    mut stream: S,
    config: &Config,
    stop: &CancellationToken,
) -> Option<(S, Encoding)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accepted = tokio::select! {
        () = stop.cancelled() => return None,
        accepted = tokio::time::timeout(config.handshake_timeout, handshake::accept(&mut stream, &config.policy)) => accepted,
    };
    match accepted {
        Ok(Ok(accepted)) => {
            info!(encoding = ?accepted.encoding, "connected");
            Some((stream, accepted.encoding))
        }
        Ok(Err(e)) => {
            info!(error = %e, "handshake failed");
            None
        }
        Err(_) => {
            info!(timeout = ?config.handshake_timeout, "handshake timed out");
            None
        }
    }
}
