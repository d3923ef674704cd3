//! Keeping a session's idle read buffer out of the pages the handshake
//! wrote.
//!
//! Why this exists: hyper reads each request into an 8 KiB buffer and
//! writes the `101` from another, and frees both at the upgrade with the
//! handshake's bytes written in their first page. The WebSocket's read
//! buffer is 8 KiB too and, allocated next, would get one of those blocks
//! back from jemalloc's per-thread cache (last freed, first reused): a page
//! made resident for as long as the session lasts, though an idle
//! connection never reads into it. Measured with `load/compare.sh -w W4 -s
//! ours` (10,000 idle connections): 6.8 KB per connection without this,
//! 2.8 KB with it (2.7 before hyper).
//!
//! [`Aside`] takes hyper's two blocks out of the cache while the WebSocket
//! allocates its buffer, which then comes from further down (in a
//! connection storm: fresh, untouched memory), and gives them back for the
//! next handshake, which writes them anyway. This relies on the WebSocket
//! being built in the same poll as the upgrade, with no other 8 KiB block
//! freed in between (`http::start_session`). The first version gave the
//! block's pages back to the kernel with `madvise` instead: as good for
//! memory, but on this machine it cost about 10 µs of server time per
//! connection, over a quarter of the time to connect 10,000.

/// hyper's buffers, held out of the allocator's cache; dropping this gives
/// them back.
pub struct Aside {
    _blocks: [Vec<u8>; 2],
}

/// Takes the two blocks an 8 KiB allocation would get next (the last two
/// freed: the handshake's), until the returned value is dropped.
pub fn hyper_blocks() -> Aside {
    const BLOCK: usize = 8 * 1024;
    // black_box: an allocation nothing reads may otherwise be elided.
    Aside {
        _blocks: [
            std::hint::black_box(Vec::with_capacity(BLOCK)),
            std::hint::black_box(Vec::with_capacity(BLOCK)),
        ],
    }
}
