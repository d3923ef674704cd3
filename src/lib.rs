//! A small, fast WebSocket broadcast chat: the library behind the `server`
//! and `client` binaries.
//!
//! # Layout
//! - [`protocol`]: what clients send and the events the server sends, with
//!   their text and JSON encodings. Pure; no I/O.
//! - [`http`]: the front door, how a connection gets in: connection caps
//!   (`http::admission`), TLS (`http::tls`), the hyper HTTP/1.1 connection
//!   and the upgrade, the request policy (`http::policy`: Host, Origin,
//!   token, subprotocol), and the operators' routes (`/healthz`, `/readyz`,
//!   `/metrics`).
//! - `metrics`: the per-server Prometheus registry (internal; read it at
//!   `/metrics`).
//! - [`hub`]: members, rooms, their feeds and history. Synchronous; never
//!   touches a socket.
//! - [`fanout`]: the hand-off from a published room event to every
//!   member's socket: feed, mailbox, room writer, shared socket, outbox.
//! - [`session`]: one upgraded connection; with `fanout::outbox`, the only server
//!   code that speaks WebSocket.
//! - [`server`]: the accept loop and orderly shutdown.
//! - [`store`]: where rooms' lines are kept; for now the Redis log that
//!   several servers share.
//! - [`client`]: the terminal client: connection, reconnect and resume,
//!   rendering, and the interactive front end.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod fanout;
pub mod http;
pub mod hub;
mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
