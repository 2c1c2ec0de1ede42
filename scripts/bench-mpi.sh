#!/usr/bin/env bash
# Benchmark (not a test), issue 25: data-parallel training over MPI against threads in one
# process on the same cores: `mpirun -np 2 sft train` with 1 thread per rank and
# per_device_train_batch_size 1, vs one `sft train` with 2 threads and batch 2 (the same global
# batch, the same data order). LoRA and full fine-tuning of a random Llama made by
# `sft init-model` (hidden 256, 4 layers; no download). Prints the median tokens/s of the timed
# steps (metrics.jsonl's tokens_per_second, the first step left out as warm-up) of each.
# Needs Open MPI (openmpi-bin libopenmpi-dev) and libclang. Keep the machine quiet while it runs.
# Usage: scripts/bench-mpi.sh [STEPS] (default 12)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-12}"
cargo build --release --locked -q -p sft-cli --features mpi
SFT="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/sft"
OUT="$ROOT/target/bench-mpi" && rm -rf "$OUT" && mkdir -p "$OUT"
cat > "$OUT/config.json" <<'JSON'
{"model_type": "llama", "vocab_size": 829, "hidden_size": 256, "intermediate_size": 688,
 "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
 "tie_word_embeddings": true, "eos_token_id": 2, "initializer_range": 0.05}
JSON
"$SFT" init-model --config "$OUT/config.json" --tokenizer examples/quickstart/tokenizer --seed 1 --out "$OUT/model" >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
median() { python3 -c 'import json,statistics,sys; r=[json.loads(l) for l in open(sys.argv[1])]; t=[x["tokens_per_second"] for x in r if "tokens_per_second" in x][1:]; print(f"{statistics.median(t):.0f}")' "$1"; }
printf '%-6s %-28s %12s\n' method run "tokens/s"
for method in lora full; do
  yaml="$OUT/$method.yaml"
  cat > "$yaml" <<YAML
model: $OUT/model
datasets:
  - path: examples/quickstart/train_sharegpt.jsonl
finetuning: $method
lora_r: 16
learning_rate: 0.0005
max_steps: $STEPS
gradient_accumulation_steps: 2
logging_steps: 1
save_steps: 100000
seed: 1
YAML
  RAYON_NUM_THREADS=2 "$SFT" train "$yaml" --set output_dir="$OUT/$method-threads" --set per_device_train_batch_size=2 2>/dev/null
  mpirun -np 2 -x RAYON_NUM_THREADS=1 -x CANDLE_NUM_THREADS=1 "$SFT" train "$yaml" \
    --set output_dir="$OUT/$method-ranks" --set per_device_train_batch_size=1 2>/dev/null
  printf '%-6s %-28s %12s\n' "$method" "1 process x 2 threads" "$(median "$OUT/$method-threads/metrics.jsonl")"
  printf '%-6s %-28s %12s\n' "$method" "2 ranks x 1 thread (MPI)" "$(median "$OUT/$method-ranks/metrics.jsonl")"
done
