//! The fan-out hand-off: how one published room event reaches every
//! member's socket. Five files that only make sense together:
//!
//! - [`feed`]: a room's live events in order, bounded, read through one
//!   cursor per member.
//! - [`mailbox`]: a member's private queue and shutdown flag, the wake-up
//!   bits that tell its session what woke it, and its *line*: its place in
//!   the room's feed and who may write to its socket.
//! - [`writer`]: a room's writer, which takes each new room message
//!   straight to the sockets of members whose session is idle.
//! - [`socket`]: a plain TCP stream shared by a session and the writer.
//! - [`outbox`]: outgoing frames, framed once per event and written to a
//!   connection in vectored batches.
//!
//! # Shared invariants
//! Stated once here; ARCHITECTURE.md explains them at length.
//! - **No wake-up is lost.** Every source raises its mailbox bit *after*
//!   making its news visible, and a session registers its waker *before*
//!   taking the bits.
//! - **No room message is left behind.** The writer clears `owed` before a
//!   pass; a session parks its line only if, under the line's lock, its
//!   cursor has nothing waiting; the writer reads cursors only under that
//!   lock.
//! - **One writer per socket at a time, whole frames only.** The writer
//!   writes only to a parked line, under its lock; what it could not finish
//!   stays in the line and goes out first when the session claims it. TLS
//!   lines are never parked with a socket.
//! - **One frame per event and encoding, not per recipient**: recipients
//!   share the `Arc<Encoded>`; nothing is allocated per recipient.
//! - **Lagging is never fatal**: a cursor that fell behind skips to the
//!   oldest kept event and is told how many it missed.

pub mod feed;
pub mod mailbox;
pub mod outbox;
pub mod socket;
pub mod writer;
