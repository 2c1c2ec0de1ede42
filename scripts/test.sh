#!/usr/bin/env bash
# The test command (README): fetch pinned assets, then run every test in the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-assets.sh
cargo test --workspace --locked --features sft-cli/fault-injection
