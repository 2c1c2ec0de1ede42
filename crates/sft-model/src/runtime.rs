//! Process-wide settings for training. Library code never applies them: a binary (`sft train`,
//! `sft eval`, the training benchmark) calls [`tune_for_training`] once, before its first tensor
//! op.
//!
//! - The allocator. A training step frees and allocates the same multi-megabyte activation
//!   buffers over and over. By default glibc gives large freed blocks back to the kernel
//!   (`munmap`, heap trimming), so every new buffer page-faults its pages in again and the kernel
//!   zeroes them; kept in the heap, the next buffer reuses pages already mapped.
//! - candle's own thread pool. Our kernels run on rayon's threads; the candle element-wise ops
//!   left (above all the gradient sums of its backward pass) run on candle's pool, whose worker
//!   by default spins for 25,000 rounds after each op on the cores rayon is using. Parking it
//!   after 200 rounds (`CANDLE_BARRIER_POOL_SPIN_LIMIT=200`) keeps those ops parallel without the
//!   spinning; running them on the calling thread alone would make them serial.
//! - When passes run side by side, one per core (data parallelism, sft-train's `threads`), every
//!   thread runs its own element-wise ops: candle's pool, shared by the process, would make the
//!   passes take turns.
//!
//! The measurements behind each are in docs/performance.md.

/// Applies both settings; `side_by_side`: training passes run in parallel, one per core, and
/// candle's element-wise ops stay on their calling thread (`CANDLE_NUM_THREADS=1`). A user's
/// own `CANDLE_BARRIER_POOL_SPIN_LIMIT` and `CANDLE_NUM_THREADS` are kept. Call it before the
/// first tensor op of the process.
pub fn tune_for_training(side_by_side: bool) {
    keep_freed_memory();
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    if side_by_side && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keeps freed blocks of up to 32 MiB (glibc's largest mmap threshold) in the heap and never
/// trims it, so the next buffer reuses pages already mapped. A no-op outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; both values are within glibc's ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
