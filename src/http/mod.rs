//! The front door: how a connection gets in, from TCP accept to a running
//! chat session, and the plain HTTP answers on the way.
//!
//! - [`admission`]: the connection caps, checked at accept before a byte is
//!   read (`server.rs` applies them).
//! - [`tls`]: the certificate, and the TLS handshake before any HTTP.
//! - this file: one hyper HTTP/1.1 connection per socket, with the request
//!   limits ([`MAX_REQUEST_BYTES`], the handshake timeout) as hyper builder
//!   values; the upgrade, and handing the raw socket back to the session.
//! - [`policy`]: the pure decisions over `http::Request`: Host, Origin,
//!   token, subprotocol.
//! - [`routes`]: the page, `/healthz`, `/readyz`, `/metrics`, 404 and 405.
//! - [`page`]: the browser page's embedded files and their headers.
//! - [`readiness`]: the handle `/readyz` answers from.
//! - [`scrub`]: keeps a session's idle read buffer out of the pages the
//!   handshake wrote.
//!
//! Why hyper sits in front of tokio-websockets: the HTTP/1.1 request that
//! opens a connection is parsed and answered by hyper (limits, keep-alive,
//! HEAD, errors), and only once the `101` is written does tokio-websockets
//! get the stream (`ServerBuilder::serve`), for frames alone. The hyper
//! connection is gone by then: the session runs in a task of its own,
//! holding only the socket.

pub mod admission;
mod page;
pub mod policy;
pub mod readiness;
mod routes;
mod scrub;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use futures_util::FutureExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_websockets::{Limits, ServerBuilder};
use tracing::{debug, info, Instrument as _};

use crate::fanout::socket::{SharedTcp, Transport};
use crate::hub::{Greeting, Hub};
use crate::metrics::Metrics;
use crate::protocol::{Encoding, Hello};
use crate::server::Config;
use crate::session;
use admission::Ticket;
pub use readiness::Readiness;

/// Largest request head (request line and headers) the server reads:
/// hyper's `max_buf_size` (whose smallest allowed value this is), answered
/// `431` when exceeded.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head (hyper's
/// `header_read_timeout`, also the idle limit between keep-alive requests).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// The body of every response this server writes: small and whole.
pub type Body = Full<Bytes>;

/// Everything a connection needs from its server, as one value shared by
/// all connections of a listener.
#[derive(Clone)]
pub struct Door {
    /// The chat state sessions join.
    pub hub: Hub,
    /// The server's settings.
    pub config: Arc<Config>,
    /// Cancelled when shutdown begins: connections still in their HTTP
    /// phase are dropped.
    pub stop: CancellationToken,
    /// Where sessions are spawned, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// This server's counters.
    pub(crate) metrics: Arc<Metrics>,
    /// What `/readyz` answers.
    pub readiness: Readiness,
    /// Which endpoints this listener serves.
    pub serves: Serves,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// The chat port with the operators' endpoints (no `--metrics-addr`).
    All,
    /// The chat port alone: the operators' endpoints are elsewhere.
    Chat,
    /// The `--metrics-addr` listener: `/metrics`, `/healthz`, `/readyz`.
    Ops,
}

/// An accepted upgrade waiting for hyper to hand the connection over.
struct Pending {
    on_upgrade: OnUpgrade,
    encoding: Encoding,
    /// The upgrade URL's query parameters, for the hub's connect; dropped
    /// once the session has used them.
    hello: Hello,
}

/// One connection from TCP accept to its session (or its last HTTP
/// answer). `ticket` holds its place inside the connection caps until the
/// session ends.
pub async fn serve(stream: TcpStream, addr: SocketAddr, ticket: Ticket, door: Door) {
    // Chat frames are small and latency matters more than packet count; the
    // session batches its writes itself.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    let Some(tls_config) = door
        .config
        .tls
        .clone()
        .filter(|_| door.serves != Serves::Ops)
    else {
        return serve_http(stream, addr, ticket, door).await;
    };
    let secured = tokio::select! {
        () = door.stop.cancelled() => return,
        // Boxed: a TLS connection's state is large, and inline it would
        // make every plain connection's task as big.
        secured = tokio::time::timeout(
            door.config.tls_handshake_timeout,
            Box::pin(tls::accept(stream, tls_config)),
        ) => secured,
    };
    match secured {
        Ok(Ok(stream)) => Box::pin(serve_http(stream, addr, ticket, door)).await,
        Ok(Err(e)) => info!(error = %e, "TLS handshake failed"),
        Err(_) => {
            info!(timeout = ?door.config.tls_handshake_timeout, "TLS handshake timed out");
        }
    }
}

/// A stream hyper serves, and what the session runs on once hyper hands it
/// back with nothing buffered.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The session's transport for this socket.
    type Direct: Transport + Send + 'static;
    /// Turns the socket back into the session's transport.
    fn direct(self) -> Self::Direct;
}

impl Socket for TcpStream {
    // Shared with the room's writer (see `fanout::socket`).
    type Direct = SharedTcp;
    fn direct(self) -> SharedTcp {
        SharedTcp::new(self)
    }
}

impl Socket for TlsStream<TcpStream> {
    type Direct = Self;
    fn direct(self) -> Self {
        self
    }
}

/// hyper's HTTP/1.1 settings for every connection: the request limits are
/// builder values, `timeout` bounds reading each request head (and the
/// idle time before the next one on a keep-alive connection).
pub fn builder(timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // A "no limit" of Duration::MAX would overflow hyper's deadline.
        .header_read_timeout((timeout < Duration::from_secs(1 << 32)).then_some(timeout))
        .max_buf_size(MAX_REQUEST_BYTES)
        .max_headers(MAX_HEADERS);
    builder
}

/// Serves HTTP on one connection until it closes, or until an upgrade
/// hands it to a session.
async fn serve_http<S: Socket>(stream: S, addr: SocketAddr, ticket: Ticket, door: Door) {
    let pending: Arc<Mutex<Option<Pending>>> = Arc::default();
    let served = {
        let shared = door.clone();
        let pending = pending.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = respond(req, &shared, &pending);
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let conn = builder(door.config.handshake_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        // The hyper connection (buffers, timer, service) lives only in this
        // block; once it ends, nothing of it stays with the session.
        tokio::select! {
            () = door.stop.cancelled() => return,
            served = conn => served,
        }
    };
    if let Err(e) = served {
        // Timeouts, resets and malformed requests (hyper has answered
        // those it could).
        info!(error = %e, "HTTP connection ended");
    }
    let taken = pending.lock().map(|mut p| p.take()).unwrap_or(None);
    let Some(Pending {
        on_upgrade,
        encoding,
        hello,
    }) = taken
    else {
        return;
    };
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            info!(error = %e, "upgrade failed");
            return;
        }
    };
    match upgraded.downcast::<TokioIo<S>>() {
        Ok(parts) if parts.read_buf.is_empty() => {
            // Freed now, so that `start_session` steps around it.
            drop(parts.read_buf);
            start_session(
                parts.io.into_inner().direct(),
                addr,
                encoding,
                hello,
                ticket,
                &door,
            );
        }
        // The client sent frames before it had our 101, and hyper read
        // them: they go first, and only the session writes.
        Ok(parts) => start_session(
            Prefixed {
                buffered: parts.read_buf,
                io: parts.io.into_inner(),
            },
            addr,
            encoding,
            hello,
            ticket,
            &door,
        ),
        Err(_) => info!("the upgraded connection was not the socket it came from"),
    }
}

/// The session in a task of its own, sized for the session alone: a
/// connection lives for hours, and this task carried the HTTP connection.
fn start_session<T>(
    stream: T,
    addr: SocketAddr,
    encoding: Encoding,
    hello: Hello,
    ticket: Ticket,
    door: &Door,
) where
    T: Transport + Send + 'static,
{
    // Per connection at debug: `chat_connections_accepted_total` counts them, and
    // two info lines per connection were a tenth of the connect work.
    debug!(encoding = ?encoding, "connected");
    // `None` is no limit.
    let limits = Limits::default().max_payload_len(door.config.session.max_message_bytes);
    // The WebSocket's 8 KiB read buffer would otherwise reuse a block the
    // handshake wrote to (see `scrub`).
    let aside = scrub::hyper_blocks();
    let ws = ServerBuilder::new().limits(limits).serve(stream);
    drop(aside);
    // Shutdown reaches the session through the hub (`Hub::shutdown`).
    if door.hub.is_shared() && hello.nick.is_some() {
        // Several servers: the nickname asked for is claimed across them
        // first, so only here is the session built inside the future. A
        // task of its own type: in an `Either` with the plain session it
        // would size every connection's task, Redis or not.
        let (hub, config) = (door.hub.clone(), door.config.clone());
        let mut hello = hello;
        let session = async move {
            let greeting = hub.claim_hello(addr, &mut hello).await;
            session::run(ws, addr, encoding, hello, greeting, hub, &config.session).await;
        };
        spawn_session(session, ticket, door);
    } else {
        let session = session::run(
            ws,
            addr,
            encoding,
            hello,
            Greeting::default(),
            door.hub.clone(),
            &door.config.session,
        );
        spawn_session(session, ticket, door);
    }
}

/// Runs a session in a task of its own, counted, holding its place in the
/// connection caps until it ends.
fn spawn_session(
    session: impl std::future::Future<Output = ()> + Send + 'static,
    ticket: Ticket,
    door: &Door,
) {
    door.metrics.session_opened();
    let metrics = door.metrics.clone();
    // (`map`, not an `async` block, which would hold the session future
    // twice: once captured, once being awaited.)
    let session = session.map(move |()| {
        metrics.session_closed();
        drop(ticket);
    });
    door.tasks
        .spawn(session.instrument(tracing::Span::current()));
}

/// The answer to one request: the Host guard first, then an upgrade (to
/// any path) or a route.
fn respond(
    mut req: Request<Incoming>,
    door: &Door,
    pending: &Mutex<Option<Pending>>,
) -> Response<Body> {
    let policy = &door.config.policy;
    if let Err(refused) = policy.check_host(req.headers()) {
        return door.refused(&refused);
    }
    let upgrade = req
        .headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade || door.serves == Serves::Ops {
        if let Some(response) = routes::route(&req, door) {
            return response;
        }
    }
    if door.serves == Serves::Ops {
        return routes::not_found();
    }
    match policy::negotiate(&req, policy) {
        Ok((encoding, response)) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            // Parsed now, while the request is at hand; the query itself is
            // not kept (the reclaim token in it is a secret).
            let hello = req.uri().query().map(Hello::from_query).unwrap_or_default();
            if let Ok(mut slot) = pending.lock() {
                *slot = Some(Pending {
                    on_upgrade,
                    encoding,
                    hello,
                });
            }
            // The request as later layers may see it: path and query kept,
            // credentials gone.
            let clean = policy::without_credentials(req.map(|_| ()));
            debug!(path = clean.uri().path(), "upgrading");
            response.map(|()| Body::default())
        }
        Err(refused) => door.refused(&refused),
    }
}

impl Door {
    /// Logs and counts a refusal, and builds its answer.
    fn refused(&self, refused: &policy::Rejection) -> Response<Body> {
        info!(
            status = refused.status.as_u16(),
            reason = %refused.message,
            detail = refused.detail.as_deref().unwrap_or(""),
            "handshake refused"
        );
        self.metrics.handshake_rejected(refused.reason());
        refused.to_response()
    }
}

/// A socket with bytes hyper read past the request in front of it.
struct Prefixed<S> {
    buffered: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buffered.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.buffered.len().min(buf.remaining());
        buf.put_slice(&self.buffered[..n]);
        self.buffered.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// Only the session writes: the room writer's direct path needs the bytes
// on the socket to be the frames alone, in order.
impl<S: AsyncRead + AsyncWrite + Unpin> Transport for Prefixed<S> {}
