//! A small, fast WebSocket broadcast chat: the library behind the `server`
//! and `client` binaries.
//!
//! # Layout
//! - [`protocol`]: what clients send and the events the server sends, with
//!   their text and JSON encodings. Pure; no I/O.
//! - [`admission`]: the connection caps (global and per source address)
//!   checked at accept, before any byte is read.
//! - [`handshake`]: reads and answers the HTTP request that opens a
//!   connection, with a size cap; the WebSocket upgrade decision lives here.
//! - [`hub`]: members, rooms, their feeds and history. Synchronous; never
//!   touches a socket.
//! - [`fanout`]: the hand-off from a published room event to every
//!   member's socket: feed, mailbox, room writer, shared socket, outbox.
//! - [`session`]: one upgraded connection; with `fanout::outbox`, the only server
//!   code that speaks WebSocket.
//! - [`tls`]: loading the certificate and key for `wss://`, and the TLS
//!   handshake that comes before the HTTP upgrade.
//! - [`server`]: the accept loop and orderly shutdown.
//! - [`store`]: where rooms' lines are kept; for now the Redis log that
//!   several servers share.
//! - [`client`]: the terminal client: connection, reconnect and resume,
//!   rendering, and the interactive front end.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client;
pub mod fanout;
pub mod handshake;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
