//! How the process's allocator serves socket buffers (DESIGN §5: socket
//! buffers cost memory when used, never at SYN time, and return it after
//! close).
//!
//! Owns [`map_large_allocations`], a process-wide setting for programs that
//! run a stack (the `tiflow` binary calls it first thing), and
//! [`release_free_memory`], which hands the allocator's free pages back to
//! the system (`tiflow up` calls it when its connections have gone). It
//! never changes anything else about the allocator.
//!
//! Why: smoltcp fixes a socket's buffers when the socket is made, and picks
//! its window scale from the receive buffer's size, so every incoming SYN
//! gets both full-size buffers (`vec![0; socket_buffer]`, a `calloc`).
//! glibc serves a large `calloc` with a fresh `mmap` (zero pages, committed
//! only when written) and returns it with `munmap` on free, but only until
//! the first such block is freed: its dynamic threshold then rises above the
//! buffer size, later buffers come from the heap, `calloc` clears them
//! (committing every page), and freed heap memory mostly stays with the
//! process. Measured with 256 spoofed SYNs a round (`tests/memory.rs`): the
//! dynamic threshold took a test process from 4 MB to 520 MB by the third
//! round, kept after the handshakes timed out; with the threshold pinned,
//! each round costs about 2.5 MB (the buffers' first pages) and gives it
//! back.

/// Allocations at or above this size get their own mapping.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Makes the C allocator serve every allocation of [`MMAP_THRESHOLD`] bytes
/// or more with its own anonymous mapping, for the life of the process:
/// socket buffers then commit memory only for the pages traffic touches,
/// and all of it goes back to the system when the socket is dropped.
/// Pinning the threshold also turns off glibc's dynamic raising of it.
///
/// Returns whether the setting was applied (false on a C library without
/// `mallopt`, where nothing changes). Safe to call more than once, from any
/// thread; best called at startup.
pub fn map_large_allocations() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt(3) takes two integers, touches no memory of ours
        // and takes the allocator's own lock; M_MMAP_THRESHOLD with a value
        // below HEAP_MAX (32 MiB on 64-bit) is a documented setting.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the allocator's free memory to the system: free pages inside
/// every arena, not only at the top of the heap (where glibc trims by
/// itself). After many connections closed, small buffers freed by many
/// threads otherwise stay resident as fragments. Costs one pass over the
/// allocator's free lists; returns whether any memory was released
/// (always false on a C library without `malloc_trim`).
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(3) takes an integer (bytes to keep at the top
        // of the heap), touches no memory of ours and takes the allocator's
        // own locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
