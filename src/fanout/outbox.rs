//! Outgoing WebSocket frames, built once and written in batches.
//!
//! A frame from server to client is never masked, so the bytes of a text
//! frame — header and payload — are the same for every recipient. An event
//! published to a room is therefore framed once ([`Encoded`], lazily per
//! encoding) and every session writes that same `Bytes`; the per-recipient
//! cost is a reference count and an `IoSlice`.
//!
//! [`Outbox`] queues such frames for one connection and writes as many as
//! possible with each vectored write, so a busy connection gets hundreds of
//! frames per `writev`. It writes to the raw stream underneath
//! tokio-websockets, which is only sound while that library has nothing of
//! its own half-written: the session flushes the library before it writes
//! the outbox, and finishes the outbox before it hands the library anything
//! (see `session.rs`). The room's writer writes an outbox of its own to an
//! idle member's socket the same way, without waiting ([`Outbox::try_flush`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::protocol::{Encoding, Event};

/// Most frames handed to one vectored write. Linux allows 1024 iovecs; past
/// about a hundred the syscall's fixed cost is already spread thin, and the
/// slice array is rebuilt on the stack at every write.
const MAX_IOVECS: usize = 128;
/// Queues this short are written with a slice array this long.
const FEW_IOVECS: usize = 8;
/// A queue that grew past this many slots in a burst is shrunk back to
/// [`IDLE_QUEUE_CAPACITY`] once empty, so a burst does not pin memory to an
/// idle connection; below it, the capacity is kept to avoid reallocating at
/// every batch.
const MAX_KEPT_CAPACITY: usize = 256;
/// What an emptied queue keeps after a burst.
const IDLE_QUEUE_CAPACITY: usize = 32;

/// An unmasked, final text frame carrying `payload` (RFC 6455, 5.2).
pub fn text_frame(payload: &[u8]) -> Bytes {
    let (header, n) = header_for(payload.len());
    let mut frame = BytesMut::with_capacity(n + payload.len());
    frame.put_slice(&header[..n]);
    frame.put_slice(payload);
    frame.freeze()
}

/// The longest frame header: 2 bytes, 8 more for a 64-bit length.
const MAX_HEADER: usize = 10;

/// The frame of an event in one encoding, built in one buffer without a
/// copy: the payload is encoded after room for the longest header, and the
/// header then goes just before it.
pub fn frame_event(event: &Event, encoding: Encoding) -> Bytes {
    let mut buf = match encoding {
        Encoding::Text => {
            let mut text = String::with_capacity(MAX_HEADER + event.size_hint());
            text.extend(std::iter::repeat_n('\0', MAX_HEADER));
            event.write_text(&mut text);
            text.into_bytes()
        }
        Encoding::Json => {
            let mut json = Vec::with_capacity(MAX_HEADER + event.size_hint());
            json.resize(MAX_HEADER, 0);
            event.write_json(&mut json);
            json
        }
    };
    let (header, n) = header_for(buf.len() - MAX_HEADER);
    let start = MAX_HEADER - n;
    buf[start..MAX_HEADER].copy_from_slice(&header[..n]);
    let mut frame = Bytes::from(buf);
    frame.advance(start);
    frame
}

/// The header of an unmasked, final text frame with `len` bytes of payload
/// (RFC 6455, 5.2), and how many of its bytes are used.
fn header_for(len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut header = [0; MAX_HEADER];
    header[0] = 0x81; // FIN + opcode 1 (text)
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

/// An event, framed once per encoding on first use and then shared by
/// every recipient.
///
/// Framing lazily means an encoding nobody in the room uses costs nothing,
/// and the work happens in the first session that needs it rather than
/// under the hub's lock.
#[derive(Debug)]
pub struct Encoded {
    event: Event,
    text: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Encoded {
    /// Wraps an event; nothing is encoded yet.
    pub fn new(event: Event) -> Self {
        Encoded {
            event,
            text: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// The event itself.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The complete WebSocket frame for one encoding.
    pub fn frame(&self, encoding: Encoding) -> &Bytes {
        let cell = match encoding {
            Encoding::Text => &self.text,
            Encoding::Json => &self.json,
        };
        cell.get_or_init(|| frame_event(&self.event, encoding))
    }

    /// Just the payload (the encoded event) for one encoding.
    pub fn payload(&self, encoding: Encoding) -> Bytes {
        let frame = self.frame(encoding);
        // The second byte says which length form the header uses.
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        frame.slice(start..)
    }
}

/// One frame in an outbox.
#[derive(Debug)]
enum Frame {
    /// A room event's shared frame: holding the event's `Arc` keeps its
    /// bytes alive without touching a second reference count.
    Shared(Arc<Encoded>, Encoding),
    /// A frame for this connection alone.
    Own(Bytes),
}

impl Frame {
    fn bytes(&self) -> &[u8] {
        match self {
            Frame::Shared(encoded, encoding) => encoded.frame(*encoding),
            Frame::Own(bytes) => bytes,
        }
    }
}

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes queued and not yet written.
    pending: usize,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one complete frame of this connection's own.
    pub fn push(&mut self, frame: Bytes) {
        self.pending += frame.len();
        self.queue.push_back(Frame::Own(frame));
    }

    /// Queues a shared event's frame in `encoding`.
    pub fn push_shared(&mut self, encoded: Arc<Encoded>, encoding: Encoding) {
        self.pending += encoded.frame(encoding).len();
        self.queue.push_back(Frame::Shared(encoded, encoding));
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many bytes wait to be written.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Whether a frame has been partly written: the stream must not get
    /// anything else until it is finished.
    pub fn mid_frame(&self) -> bool {
        self.written > 0
    }

    /// Writes everything queued, as few vectored writes as the socket
    /// allows.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx, Pin::new(&mut *io))).await
    }

    /// [`Outbox::flush`] as a poll, for a caller that is itself a poll.
    pub fn poll_flush<W: AsyncWrite>(
        &mut self,
        cx: &mut Context<'_>,
        mut io: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        ready!(self.write_with(|slices| match slices {
            [one] => io.as_mut().poll_write(cx, one),
            _ => io.as_mut().poll_write_vectored(cx, slices),
        }))?;
        io.poll_flush(cx)
    }

    /// Writes as much as the socket takes now, without waiting: `Ok(true)`
    /// if everything was written, `Ok(false)` if the socket is full and
    /// frames are left (the rest, partly written front frame included, stays
    /// queued). For a writer that is not the connection's task (the room
    /// writer, `writer.rs`), which cannot wait for this one socket.
    pub fn try_flush(&mut self, socket: &TcpStream) -> io::Result<bool> {
        // Straight to the socket, not through tokio's readiness: tokio
        // learns of a full socket when the session next writes to it.
        let socket = socket2::SockRef::from(socket);
        let written = self.write_with(|slices| {
            let written = match slices {
                [one] => socket.send_with_flags(one, libc::MSG_NOSIGNAL),
                _ => socket.send_vectored_with_flags(slices, libc::MSG_NOSIGNAL),
            };
            match written {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                other => Poll::Ready(other),
            }
        });
        match written {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// Puts `other`'s frames before this outbox's own, leaving `other`
    /// empty: a partly written frame in `other` must be finished first.
    pub fn take_front(&mut self, other: &mut Outbox) {
        if other.is_empty() {
            return;
        }
        debug_assert!(
            !self.mid_frame(),
            "frames cannot go before a partly written one"
        );
        std::mem::swap(self, other);
        // `self` now holds the earlier frames; append the later ones.
        self.pending += other.pending;
        self.queue.append(&mut other.queue);
        other.pending = 0;
        other.written = 0;
    }

    /// Writes every queued frame with `write`, which is handed one slice per
    /// frame (the first without its written part) and says how many bytes
    /// it wrote, as few calls as the socket allows.
    fn write_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<()>> {
        while let Some(front) = self.queue.front() {
            // One frame, the usual case on a quiet connection, needs no
            // slice array; a short queue gets a short one: filling 128
            // empty slices costs more than writing a few frames.
            let written = if self.queue.len() == 1 {
                write(&[IoSlice::new(&front.bytes()[self.written..])])
            } else if self.queue.len() <= FEW_IOVECS {
                self.write_slices::<FEW_IOVECS>(&mut write)
            } else {
                self.write_slices::<MAX_IOVECS>(&mut write)
            };
            match ready!(written) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.advance(n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.queue.capacity() > MAX_KEPT_CAPACITY {
            self.queue.shrink_to(IDLE_QUEUE_CAPACITY);
        }
        Poll::Ready(Ok(()))
    }

    /// One write of the first `N` frames at most. The slices live only
    /// inside this call, not in the future's state, so they cost no memory
    /// per connection.
    fn write_slices<const N: usize>(
        &self,
        write: &mut impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut count = 0;
        for (i, frame) in self.queue.iter().take(N).enumerate() {
            let skip = if i == 0 { self.written } else { 0 };
            slices[i] = IoSlice::new(&frame.bytes()[skip..]);
            count += 1;
        }
        write(&slices[..count])
    }

    /// Drops `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        if self.pending == 0 {
            // Everything written, the usual case. (Popping is cheaper than
            // `clear` for the one or few frames usually queued.)
            while self.queue.pop_front().is_some() {}
            self.written = 0;
            return;
        }
        while n > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let left = front.bytes().len() - self.written;
            if n >= left {
                n -= left;
                self.written = 0;
                self.queue.pop_front();
            } else {
                self.written += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn frames_have_the_right_header_for_each_length_class() {
        for (len, header) in [
            (0, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xFF, 0xFF]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let payload = vec![b'x'; len];
            let frame = text_frame(&payload);
            assert_eq!(&frame[..header.len()], &header[..], "len {len}");
            assert_eq!(frame.len(), header.len() + len);
        }
    }

    #[test]
    fn encoded_payload_strips_exactly_the_header() {
        for len in [0, 1, 125, 126, 200, 70_000] {
            let text = "y".repeat(len);
            let enc = Encoded::new(Event::Info { text: text.clone() });
            let payload = enc.payload(Encoding::Text);
            assert_eq!(payload, format!("* {text}").into_bytes());
        }
    }

    #[test]
    fn an_event_framed_in_place_equals_its_payload_framed_by_copy() {
        for len in [0, 1, 60, 125, 126, 200, 65_535, 70_000] {
            let event = Event::Info {
                text: "z".repeat(len),
            };
            let enc = Encoded::new(event.clone());
            for encoding in [Encoding::Text, Encoding::Json] {
                let by_copy = text_frame(event.to_encoding(encoding).as_bytes());
                assert_eq!(enc.frame(encoding), &by_copy, "len {len}, {encoding:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_flush_writes_every_frame_in_order_through_a_small_pipe() {
        // A pipe far smaller than the queue forces partial writes.
        let (mut tx, mut rx) = tokio::io::duplex(7);
        let mut outbox = Outbox::new();
        let mut expected = Vec::new();
        for i in 0..1500 {
            if i % 3 == 0 {
                let shared = Arc::new(Encoded::new(Event::Info {
                    text: format!("shared {i}"),
                }));
                expected.extend_from_slice(shared.frame(Encoding::Json));
                outbox.push_shared(shared, Encoding::Json);
            } else {
                let frame = text_frame(format!("message {i}").as_bytes());
                expected.extend_from_slice(&frame);
                outbox.push(frame);
            }
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.unwrap();
            got
        });
        outbox.flush(&mut tx).await.unwrap();
        assert!(outbox.is_empty());
        assert_eq!(outbox.pending_bytes(), 0);
        assert!(!outbox.mid_frame());
        drop(tx);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
