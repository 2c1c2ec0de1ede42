#!/usr/bin/env bash
# Benchmark (not a test): greedy tokens/s of sft's KV-cached decoding vs transformers' generate
# on a random SmolLM2-135M-shaped Llama (f32), 64-token prompt, 128 new tokens, same machine,
# same run. Needs .venv (scripts/setup-reference-venv.sh). Keep the machine quiet while it runs.
source "$(dirname "${BASH_SOURCE[0]}")/bench-common.sh"
cargo build --release --locked -q -p sft-infer --example bench_generate
"$PY" scripts/bench_generate.py bench "$MODEL" --sft "$ROOT/target/release/examples/bench_generate" "$@"
