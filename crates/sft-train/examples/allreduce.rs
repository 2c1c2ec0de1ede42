//! All-reduce microbenchmark for docs/scaling.md's cost model: the time of one
//! `Collective::all_reduce_sum` of f32 buffers from 4 KiB to 256 MiB, as the trainer calls it
//! (with the copy rsmpi needs for the send side). Run by `scripts/bench-allreduce.sh`:
//! `mpirun -np 2 target/release/examples/allreduce`; prints one JSON line per size from rank 0.

use std::time::Instant;

use sft_train::collective::{Collective, Mpi};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let comm = Mpi::init()?;
    let max_mib: usize = std::env::var("ALLREDUCE_MAX_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut bytes = 4096usize;
    while bytes <= max_mib << 20 {
        let mut buf = vec![1.0f32; bytes / 4];
        // Enough repeats for ~0.2 s of the smallest messages, at least 3 of the largest.
        let repeats = ((64 << 20) / bytes).clamp(3, 1000);
        comm.all_reduce_sum(&mut buf)?;
        comm.barrier()?;
        let start = Instant::now();
        for _ in 0..repeats {
            comm.all_reduce_sum(&mut buf)?;
        }
        let seconds = start.elapsed().as_secs_f64() / repeats as f64;
        let mut total = [seconds];
        comm.all_reduce_sum_f64(&mut total)?;
        if comm.is_writer() {
            let ranks = comm.size();
            let mean = total[0] / ranks as f64;
            // Bus bandwidth as NCCL's tests report it: the ring's 2(N-1)/N bytes per byte reduced.
            let bus = 2.0 * (ranks as f64 - 1.0) / ranks as f64 * bytes as f64 / mean / 1e9;
            println!("{{\"ranks\": {ranks}, \"bytes\": {bytes}, \"seconds\": {mean:.3e}, \"bus_gb_per_s\": {bus:.3}}}");
        }
        bytes *= 4;
    }
    Ok(())
}
