#!/usr/bin/env bash
# Benchmark (not a test): greedy tokens/s of sft's KV-cached decoding vs transformers' generate
# on a random SmolLM2-135M-shaped Llama (f32), 64-token prompt, 128 new tokens, same machine,
# same run. Needs .venv (scripts/setup-reference-venv.sh). Keep the machine quiet while it runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "no .venv: run scripts/setup-reference-venv.sh" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
cargo build --release --locked -q --example bench_generate
WORK="$ROOT/target/bench-generate"
[ -f "$WORK/model.safetensors" ] || { mkdir -p "$WORK" && "$PY" scripts/bench_generate.py make "$WORK"; }
"$PY" scripts/bench_generate.py bench "$WORK" --sft "$ROOT/target/release/examples/bench_generate" "$@"
