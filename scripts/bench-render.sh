#!/usr/bin/env bash
# Benchmark (not a test): `sft render --tokenize` vs transformers' apply_chat_template on the
# same 2,000 synthetic chats, in the same run. Checks that input_ids (and, for the {% generation %}
# template, the assistant mask) agree row by row, then prints conversations/s and the ratio.
# Then `sft prepare --tokenizer assets/tokenizers/qwen3 --out target/bench/prepared` (masking assistant)
# vs a Python reference pipeline (prefix renders + one tokenization with offsets), checking the
# examples ({"input_ids","labels"} via --emit-jsonl) row by row, in a second table.
# Needs: assets/ (scripts/fetch-assets.sh) and .venv (scripts/setup-reference-venv.sh).
# Keep the machine quiet while it runs (no cargo test / builds in parallel).
# Before each case it waits (up to --wait-quiet seconds, default 600) for >= 90% idle CPUs, and
# reports how many cores other processes used while timing ("other-load").
# Usage: scripts/bench-render.sh [--rows N] [--runs N] [--seed S] [--wait-quiet SECONDS]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROWS=2000 RUNS=3 SEED=1234 WAIT=600
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --wait-quiet) WAIT="$2"; shift 2 ;;
    *) echo "usage: $0 [--rows N] [--runs N] [--seed S] [--wait-quiet SECONDS]" >&2; exit 2 ;;
  esac
done

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "no .venv: run scripts/setup-reference-venv.sh" >&2; exit 1; }
for d in assets/tokenizers/qwen2_5 assets/tokenizers/qwen3 assets/trl_chat_templates/qwen3_training.jinja; do
  [ -e "$d" ] || { echo "missing $d: run scripts/fetch-assets.sh" >&2; exit 1; }
done

export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
cargo build --release -p sft-cli --quiet   # before any timing

BENCH="$ROOT/target/bench"
mkdir -p "$BENCH"
"$PY" scripts/bench_render.py gen "$BENCH/chats.jsonl" --rows "$ROWS" --seed "$SEED"
"$PY" scripts/bench_render.py bench --sft target/release/sft --data "$BENCH/chats.jsonl" \
  --out-dir "$BENCH" --runs "$RUNS" --wait-quiet "$WAIT" \
  --case qwen2_5:assets/tokenizers/qwen2_5 \
  --case qwen3:assets/tokenizers/qwen3:assets/trl_chat_templates/qwen3_training.jinja \
  --prepare qwen3:assets/tokenizers/qwen3
