//! The accept loop: takes connections off a bound listener, gives each its
//! own task (handshake, then session), and shuts everything down in order.
//!
//! `run` takes an already-bound listener and a shutdown future, so the binary
//! binds the configured address while tests bind `127.0.0.1:0` and drive the
//! real server in-process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::http::admission::{
    Admission, RefusalLog, Refused, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP,
    REFUSAL_REPORT_INTERVAL,
};
use crate::http::policy::Policy;
use crate::http::readiness::SHUTTING_DOWN;
use crate::http::tls::TLS_HANDSHAKE_TIMEOUT;
use crate::http::{self as door, Door, Readiness, Serves, HANDSHAKE_TIMEOUT};
use crate::hub::{Hub, HubConfig};
use crate::session::{self, SessionConfig};

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
    /// With `redis`: how long a member's entry and nickname outlive the
    /// last refresh by their server, so how soon the users of a server
    /// that died are shown leaving (within about 1⅓ of it).
    pub presence_ttl: Duration,
    /// Keep history in this SQLite file (see [`crate::store::sqlite`]);
    /// `None`: in memory only, lost at every restart (`--db :memory:`).
    /// Not used with `redis`.
    pub db: Option<crate::store::sqlite::Config>,
    /// How long the server keeps serving after shutdown begins, with
    /// `/readyz` answering 503, so a load balancer stops sending new
    /// clients before connections are closed. Zero: close at once.
    pub drain: Duration,
    /// What `/readyz` answers; components the chat needs mark themselves
    /// down on it (see [`Readiness`]). Shutdown marks it down too.
    pub readiness: Readiness,
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
            presence_ttl: crate::store::redis_presence::DEFAULT_TTL,
            db: None,
            drain: Duration::ZERO,
            readiness: Readiness::new(),
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
    run_with(listener, None, config, shutdown).await
}

/// [`run`], with `/metrics`, `/healthz` and `/readyz` served on
/// `ops_listener` instead of the chat port when one is given.
pub async fn run_with(
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    prepare(config)
        .await?
        .run(listener, ops_listener, shutdown)
        .await
}

/// A server whose history store is open (and whose Redis is reached),
/// ready to take connections: see [`prepare`].
pub struct Prepared {
    config: Config,
    hub: Hub,
    // Held for the server's life: dropping it stops the Redis tasks.
    _redis: Option<crate::store::redis_node::RedisNode>,
}

/// Opens what the chat keeps its history in, before any port is bound:
/// a server that cannot open its store (locked, not a database, Redis
/// unreachable) never takes a connection, and the first clients are not
/// kept waiting in the accept queue while the file is read.
pub async fn prepare(config: Config) -> anyhow::Result<Prepared> {
    let hub = match (&config.db, &config.redis) {
        (Some(db), None) => {
            // Opening reads and checks the file: off the runtime's threads.
            let (db, readiness) = (db.clone(), config.readiness.clone());
            let store = tokio::task::spawn_blocking(move || {
                crate::store::sqlite::Sqlite::open(db, readiness)
            })
            .await??;
            Hub::with_store(config.hub.clone(), store)
        }
        _ => Hub::new(config.hub.clone()),
    };
    let _redis = match &config.redis {
        Some(url) => Some(
            crate::store::redis_node::attach(
                &hub,
                url,
                config.hub.history_depth,
                config.presence_ttl,
                config.readiness.clone(),
            )
            .await?,
        ),
        None => None,
    };
    Ok(Prepared {
        config,
        hub,
        _redis,
    })
}

impl Prepared {
    /// Serves chat connections from `listener` (and the operators'
    /// endpoints from `ops_listener`, if given) until `shutdown` completes;
    /// see [`run`].
    pub async fn run(
        self,
        listener: TcpListener,
        ops_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Prepared {
            config,
            hub,
            _redis,
        } = self;
        let served = serve(listener, ops_listener, config, hub, shutdown).await;
        // `_redis` lives until here: the relay outlasts every connection,
        // and what its members still have in Redis is removed last.
        if let Some(redis) = &_redis {
            redis.close().await;
        }
        served
    }
}

async fn serve(
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    mut config: Config,
    hub: Hub,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The DNS-rebinding guard applies where a browser on this machine is
    // the only kind of visitor: a loopback bind.
    config.policy.loopback_bind = listener.local_addr()?.ip().is_loopback();
    let admission = Admission::new(config.max_connections, config.max_connections_per_ip);
    let mut refusals = RefusalLog::default();
    let mut report = tokio::time::interval(REFUSAL_REPORT_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let readiness = config.readiness.clone();
    let drain = config.drain;
    let door = Door {
        hub: hub.clone(),
        config: Arc::new(config),
        stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        metrics: hub.metrics().clone(),
        readiness: readiness.clone(),
        serves: if ops_listener.is_some() {
            Serves::Chat
        } else {
            Serves::All
        },
    };
    if let Some(ops) = ops_listener {
        let ops_door = Door {
            serves: Serves::Ops,
            ..door.clone()
        };
        door.tasks.spawn(serve_ops(ops, ops_door));
    }
    tokio::pin!(shutdown);
    // Ends the accept loop: shutdown, then the drain period if any.
    let mut draining: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;

    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown, if draining.is_none() => {
                readiness.down(SHUTTING_DOWN);
                if drain.is_zero() {
                    break;
                }
                info!(drain = ?drain, "shutdown begun: draining");
                draining = Some(Box::pin(tokio::time::sleep(drain)));
                continue;
            }
            () = async { if let Some(d) = draining.as_mut() { d.await } else { std::future::pending().await } } => break,
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
                        let conn = door::serve(stream, addr, ticket, door.clone());
                        door.tasks.spawn(conn.instrument(span));
                    }
                    Err(why) => {
                        refusals.refused(why, std::time::Instant::now());
                        door.metrics.handshake_rejected(match why {
                            Refused::Global => "connection_cap",
                            Refused::PerIp => "per_ip_cap",
                        });
                        door.tasks.spawn(refuse(stream, why));
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: wait for connections to free resources
                // rather than spinning or giving up.
                error!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }

    let tasks = door.tasks.clone();
    info!(connections = tasks.len(), "shutting down");
    drop(listener);
    hub.release_shared().await;
    hub.shutdown();
    door.stop.cancel();
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
    let closing = hub.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close_store()).await;
    info!("stopped");
    Ok(())
}

/// Most connections open at once on the `--metrics-addr` listener: scrapes
/// and probes are few, and they must not be starved by the chat's caps.
const MAX_OPS_CONNECTIONS: usize = 64;

/// Serves the operators' endpoints on their own listener until shutdown.
async fn serve_ops(listener: TcpListener, door: Door) {
    let admission = Admission::new(MAX_OPS_CONNECTIONS, 0);
    loop {
        let accepted = tokio::select! {
            () = door.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => match admission.admit(addr.ip()) {
                Ok(ticket) => {
                    let span = info_span!("ops", %addr);
                    let conn = door::serve(stream, addr, ticket, door.clone());
                    door.tasks.spawn(conn.instrument(span));
                }
                Err(why) => {
                    door.tasks.spawn(refuse(stream, why));
                }
            },
            Err(e) => {
                error!(error = %e, "accept failed on the metrics listener");
                tokio::time::sleep(MAX_ACCEPT_BACKOFF).await;
            }
        }
    }
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
