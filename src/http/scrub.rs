//! Giving the pages of a freed handshake buffer back to the kernel, so the
//! block that takes its place costs nothing until it is written.
//!
//! Why this exists: hyper reads each request into an 8 KiB buffer and
//! writes the `101` from another, and frees both at the upgrade with the
//! handshake's bytes written in their first page. The WebSocket's read
//! buffer is 8 KiB too and, allocated next, gets one of those blocks back
//! from jemalloc's per-thread cache (last freed, first reused): a page made
//! resident for as long as the session lasts, though an idle connection
//! never reads into it. Measured with `load/compare.sh -w W4 -s ours`
//! (10,000 idle connections): 6.8 KB per connection before this, 2.7 KB
//! after, as before hyper. Holding the cached blocks aside instead works
//! too, but there are dozens of them per thread during a connection storm,
//! and holding 32 made 10,000 connections take twice as long.
//!
//! This is the one module with `unsafe` code: one `madvise` call on memory
//! this module owns.

/// Takes the block an 8 KiB allocation would get now (the last one freed)
/// and hands its pages back to the kernel before freeing it again, so the
/// next 8 KiB allocation gets the same block untouched.
pub fn last_freed_block() {
    const BLOCK: usize = 8 * 1024;
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK);
    release(block.spare_capacity_mut());
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn release(memory: &mut [std::mem::MaybeUninit<u8>]) {
    // SAFETY: page size is a plain query.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = memory.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + memory.len()) / page * page;
    if end <= first {
        return;
    }
    // SAFETY: [first, end) lies inside `memory`, which this function
    // borrows mutably and which holds no values (it is spare capacity);
    // MADV_DONTNEED on private anonymous memory only makes its next read
    // see zeroes. jemalloc keeps no bookkeeping inside the blocks it hands
    // out. A failure changes nothing and is not worth reporting.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn release(_memory: &mut [std::mem::MaybeUninit<u8>]) {}
