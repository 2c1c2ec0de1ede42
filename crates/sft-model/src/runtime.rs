//! Process-wide settings for training, applied once before the first step.
//!
//! - The allocator. A training step frees and allocates the same multi-megabyte activation
//!   buffers over and over. By default glibc gives large freed blocks back to the kernel
//!   (`munmap`, heap trimming), so every new buffer page-faults its pages in again and the kernel
//!   zeroes them. Measured on a SmolLM2-135M-shaped LoRA step (scripts/bench-train.sh shapes):
//!   1.16 M page faults per run without, 0.51 M with these settings, at the same peak resident
//!   memory.
//! - candle's own thread pool. Our kernels run on rayon's threads; the candle element-wise ops
//!   left (above all the gradient sums of its backward pass, a zero fill and an add for every
//!   graph edge) run on candle's pool, whose worker by default spins for 25,000 rounds after each
//!   op on the cores rayon is using. With those ops on the calling thread alone
//!   (`CANDLE_NUM_THREADS=1`) they became serial: a LoRA bench step kept only 1.69 of 2 cores
//!   busy. With the pool's worker parking after 200 rounds instead
//!   (`CANDLE_BARRIER_POOL_SPIN_LIMIT=200`), 1.8 cores are busy and, alternating six times on
//!   the bench, f32 LoRA ran at a median 218 tokens/s against 191 with one thread (bf16: 291
//!   against 277, four times each).
//! - When passes run side by side, one per core (data parallelism, sft-train's `shards`), every
//!   thread runs its own element-wise ops: candle's pool, shared by the process, would make the
//!   passes take turns.

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
