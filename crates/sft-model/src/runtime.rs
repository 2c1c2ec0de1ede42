//! Process-wide settings for training, applied once before the first step.
//!
//! - The allocator. A training step frees and allocates the same multi-megabyte activation
//!   buffers over and over. By default glibc gives large freed blocks back to the kernel
//!   (`munmap`, heap trimming), so every new buffer page-faults its pages in again and the kernel
//!   zeroes them. Measured on a SmolLM2-135M-shaped LoRA step (scripts/bench-train.sh shapes):
//!   1.16 M page faults per run without, 0.51 M with these settings, at the same peak resident
//!   memory.
//! - candle's own thread pool. Our kernels run on rayon's threads; the few candle element-wise ops
//!   left (gradient sums in its backward pass) start a second pool whose worker spins for a while
//!   after each op, on the cores rayon is using. With candle's ops on the calling thread
//!   (`CANDLE_NUM_THREADS=1`), a bf16 LoRA bench step used 8% less CPU time (25.4 s vs 27.7 s of
//!   task-clock for 4 steps) and f32 LoRA 3% less.

/// Applies both settings; a user's own `CANDLE_NUM_THREADS` is kept. Call it before the first
/// tensor op of the process.
pub fn tune_for_training() {
    keep_freed_memory();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
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
