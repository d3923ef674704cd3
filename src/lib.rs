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
//! - [`feed`]: a room's live events in order, bounded, read through one
//!   cursor per member.
//! - [`mailbox`]: a member's private queue and shutdown flag, the wake-up
//!   bits that tell its session what woke it, and its line: its place in
//!   the room's feed and who may write to its socket.
//! - [`writer`]: a room's writer, which takes each new room message
//!   straight to the sockets of members whose session is idle.
//! - [`socket`]: a plain TCP stream shared by a session and the writer.
//! - [`outbox`]: outgoing frames, framed once per event and written to a
//!   connection in vectored batches.
//! - [`session`]: one upgraded connection; with `outbox`, the only server
//!   code that speaks WebSocket.
//! - [`tls`]: loading the certificate and key for `wss://`, and the TLS
//!   handshake that comes before the HTTP upgrade.
//! - [`server`]: the accept loop and orderly shutdown.
//! - [`client`]: the terminal client: connection, reconnect and resume,
//!   rendering, and the interactive front end.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client;
pub mod feed;
pub mod handshake;
pub mod hub;
pub mod mailbox;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod socket;
pub mod tls;
pub mod writer;
