//! What the fuzz targets share: an allocator that turns any allocation over [`CAP`] into a crash.
//!
//! The harnesses cap backend messages at 64 KiB and libFuzzer's inputs are a few KiB, so no honest
//! allocation comes near [`CAP`]: one that does reserved memory because a length or count in the input asked
//! for it. libFuzzer's own `-malloc_limit_mb` needs a sanitizer's allocator hooks; this works without one
//! (`--sanitizer none`, the fallback on a stable toolchain) and counts Rust allocations only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The largest single allocation a target may make.
pub const CAP: usize = 16 << 20;

/// The system allocator, aborting (a crash libFuzzer records, with the input) on an allocation over [`CAP`].
pub struct Capped;

// SAFETY: every call goes to `System` with the caller's arguments unchanged; the only addition is a size check
// that aborts before allocating.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > CAP {
        over_cap(size);
    }
}

/// Reports the size and aborts, without allocating (the allocator is where we are).
#[cold]
fn over_cap(size: usize) -> ! {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(b"\n==fuzz== invariant: an allocation of ");
    let _ = stderr.write_all(&digits[at..]);
    let _ = stderr.write_all(b" bytes, over the cap of 16 MiB\n");
    std::process::abort()
}
