#!/usr/bin/env bash
# Peak memory of `sft eval` on a 150k-vocabulary model and a ~2,048-token conversation: the
# loss is computed in chunks, so the full logits matrix (tokens × vocab × 4 bytes) is never
# allocated. Prints the peak RSS next to the size that matrix would have.
# Needs: assets/ (bash scripts/fetch-assets.sh), python3 (stdlib), /usr/bin/time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/target/bench-eval-memory"
rm -rf "$WORK" && mkdir -p "$WORK"
cargo build --release --locked -q -p sft-cli
SFT="$ROOT/target/release/sft"

cat > "$WORK/config.json" <<'JSON'
{"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 128, "intermediate_size": 256,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 4096, "tie_word_embeddings": true, "rms_norm_eps": 1e-6,
 "rope_theta": 1000000.0, "eos_token_id": 151645}
JSON
"$SFT" init-model --config "$WORK/config.json" --tokenizer assets/tokenizers/qwen2_5 --out "$WORK/model"

python3 - "$WORK/data.jsonl" <<'PY'
import json, sys
words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()
answer = " ".join(words[i % len(words)] for i in range(2045))
row = {"messages": [{"role": "user", "content": "Recite the long sentence."},
                    {"role": "assistant", "content": answer}]}
open(sys.argv[1], "w").write(json.dumps(row) + "\n")
PY

/usr/bin/time -v "$SFT" eval --model "$WORK/model" --data "$WORK/data.jsonl" --json \
  > "$WORK/eval.json" 2> "$WORK/time.txt" || { cat "$WORK/time.txt"; exit 1; }
tokens=$(python3 -c "import json;print(json.load(open('$WORK/eval.json'))['tokens'])")
peak_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
weights_mb=$(du -m "$WORK/model/model.safetensors" | cut -f1)
python3 - "$tokens" "$peak_kb" "$weights_mb" <<'PY'
import sys
tokens, peak_kb, weights_mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
vocab = 151936
full = (tokens + 1) * vocab * 4 / 2**20
print(f"sft eval, vocab {vocab}, {tokens + 1}-token sequence ({tokens} trained targets)")
print(f"  weights (f32)              {weights_mb:8.0f} MiB")
print(f"  full logits matrix would be {full:7.0f} MiB")
print(f"  peak RSS of the whole run  {peak_kb / 1024:8.0f} MiB  ({peak_kb / 1024 / full:.2f}x the logits matrix)")
PY
