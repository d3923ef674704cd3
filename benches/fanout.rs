//! The encode-and-fan-out hot path, without sockets: one chat message
//! published to a room of N members, each member taking it from the room's
//! channel into its outbox and writing the outbox with one vectored write.
//!
//! `cargo bench --bench fanout` prints time per publish; divide by N for the
//! user-space cost per delivery. The kernel's share (the `writev` itself) is
//! measured end to end by `chat-load`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use chat::fanout::feed::Next;
use chat::fanout::outbox::{Encoded, Outbox};
use chat::hub::{Hub, HubConfig};
use chat::protocol::{ChatLine, Encoding, Event};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::io::AsyncWrite;

/// A writer that takes every byte of every slice at once, like a socket
/// with room to spare.
struct Drain;

impl AsyncWrite for Drain {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn message(text: &str) -> Event {
    Event::Message(ChatLine {
        room: "#lobby".into(),
        seq: 42,
        ts: 1_795_404_069_922,
        from: SocketAddr::from(([127, 0, 0, 1], 53211)),
        nick: Some("alice".into()),
        text: text.into(),
        history: false,
    })
}

fn encode(c: &mut Criterion) {
    let text = "x".repeat(64);
    c.bench_function("encode 64-byte message, both encodings", |b| {
        b.iter(|| {
            let enc = Encoded::new(message(&text));
            enc.frame(Encoding::Text).len() + enc.frame(Encoding::Json).len()
        })
    });
}

fn fan_out(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let text = "x".repeat(64);
    let mut group = c.benchmark_group("publish and deliver to N members");
    for members in [10usize, 100, 1000] {
        let hub = Hub::new(HubConfig {
            presence_limit: 1,
            ..HubConfig::default()
        });
        let mut conns: Vec<_> = (0..members)
            .map(|i| hub.connect(SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))))
            .collect();
        for c in &mut conns {
            while c.joined.cursor.next().is_some() {}
        }
        let sender = conns[0].id;
        let mut outboxes: Vec<Outbox> = (0..members).map(|_| Outbox::new()).collect();
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                hub.say(sender, &text).expect("valid text");
                rt.block_on(async {
                    for (conn, outbox) in conns.iter_mut().zip(&mut outboxes) {
                        if let Some(Next::Event(shared)) = conn.joined.cursor.next() {
                            outbox.push_shared(shared, Encoding::Text);
                        }
                        outbox.flush(&mut Drain).await.expect("drain never fails");
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, fan_out);
criterion_main!(benches);
