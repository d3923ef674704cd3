//! A small, fast WebSocket broadcast chat: the library behind the `server`
//! and `client` binaries.
//!
//! # Layout
//! - [`protocol`]: what clients send and the events the server sends, with
//!   their text and JSON encodings. Pure; no I/O.
//! - [`handshake`]: reads and answers the HTTP request that opens a
//!   connection, with a size cap; the WebSocket upgrade decision lives here.
//! - [`hub`]: members, rooms and their broadcast channels. Synchronous; never
//!   touches a socket.
//! - [`session`]: one upgraded connection; the only server module that
//!   speaks WebSocket.
//! - [`server`]: the accept loop and orderly shutdown.
//! - [`client`]: the terminal client: connection, reconnect and resume,
//!   rendering, and the interactive front end.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod handshake;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod session;
