#!/usr/bin/env bash
# Benchmark (not a test), issue 25: all-reduce time vs message size (4 KiB to 256 MiB of f32,
# as the trainer sends gradients) between 2 ranks, over loopback TCP and over shared memory:
# the latency and bandwidth terms of docs/scaling.md's cost model. One JSON line per size:
# ranks, bytes, seconds per all-reduce, bus GB/s (2(N-1)/N bytes / time, as NCCL's tests).
# Needs Open MPI (openmpi-bin libopenmpi-dev) and libclang. Keep the machine quiet while it runs.
# Usage: scripts/bench-allreduce.sh [RANKS] [MAX_MIB] (default 2 ranks, 256 MiB)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RANKS="${1:-2}"
export ALLREDUCE_MAX_MIB="${2:-256}"
cargo build --release --locked -q -p sft-train --features mpi --example allreduce
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/allreduce"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
echo "# loopback TCP (btl tcp; what a network link adds latency and bandwidth limits to)"
mpirun -np "$RANKS" --mca btl self,tcp --mca btl_tcp_if_include lo -x ALLREDUCE_MAX_MIB "$BIN"
echo "# shared memory (btl vader; ranks on one node)"
mpirun -np "$RANKS" --mca btl self,vader -x ALLREDUCE_MAX_MIB "$BIN"
