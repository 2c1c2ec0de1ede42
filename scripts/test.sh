#!/usr/bin/env bash
# The test command (README): fetch pinned assets, then run every test in the workspace; with an
# MPI installation (mpirun and mpicc: Debian's openmpi-bin libopenmpi-dev, plus libclang-dev),
# also the multi-rank training tests of the `mpi` feature.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-assets.sh
features=sft-cli/fault-injection
if command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1; then
  features=$features,sft-cli/mpi
  # Open MPI in CI containers: as root, and more ranks than cores if need be.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
fi
cargo test --workspace --locked --features "$features"
