#!/usr/bin/env bash
# Time to export a SmolLM2-135M-shaped model (random weights, 30 layers of 576, Llama 3.2's
# tokenizer) to q4_k_m: `sft export --outtype q4_k_m` against llama.cpp's two steps,
# convert_hf_to_gguf.py --outtype f16 then llama-quantize Q4_K_M (llama_model_quantize through
# llama-cpp-python's bindings, the function the llama-quantize binary calls), same machine,
# same thread count. Keep the machine quiet while it runs.
#
#   bash scripts/bench-export.sh [ROUNDS]        # default 2 rounds, the fastest of each reported
#
# Needs: the reference venv with llama-cpp-python built from its sdist (0.3.x) and the sdist's
# llama.cpp tree for the converter: LLAMA_CPP_DIR=.../llama_cpp_python-0.3.36/vendor/llama.cpp
# (downloaded into target/bench-export when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PY=${PY:-.venv/bin/python}
WORK=${WORK:-target/bench-export}
THREADS=${THREADS:-$(nproc)}
mkdir -p "$WORK"
if [ -z "${LLAMA_CPP_DIR:-}" ]; then
  if [ ! -d "$WORK/llama_cpp_python-0.3.36" ]; then
    "$PY" -m pip download --no-binary llama-cpp-python --no-deps llama-cpp-python==0.3.36 -d "$WORK" >/dev/null
    tar xzf "$WORK/llama_cpp_python-0.3.36.tar.gz" -C "$WORK"
  fi
  LLAMA_CPP_DIR="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
fi
cargo build --release --quiet
SFT=${SFT:-target/release/sft}

MODEL="$WORK/smollm2-135m-shape"
if [ ! -f "$MODEL/model.safetensors" ]; then
  cat > "$WORK/config.json" <<'EOF'
{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 576,
 "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
 "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
 "bos_token_id": 128000, "eos_token_id": 128009, "torch_dtype": "float32"}
EOF
  rm -rf "$MODEL"
  "$SFT" init-model --config "$WORK/config.json" --tokenizer assets/tokenizers/llama3_2 --out "$MODEL"
fi

now() { date +%s.%N; }
best_sft=999999; best_ref=999999
for round in $(seq "$ROUNDS"); do
  rm -f "$WORK/sft.gguf" "$WORK/ref-f16.gguf" "$WORK/ref-q4_k_m.gguf"
  t0=$(now)
  RAYON_NUM_THREADS=$THREADS "$SFT" export --model "$MODEL" --out "$WORK/sft.gguf" --outtype q4_k_m 2>/dev/null
  t1=$(now)
  PYTHONPATH="$LLAMA_CPP_DIR/gguf-py" "$PY" "$LLAMA_CPP_DIR/convert_hf_to_gguf.py" "$MODEL" --outtype f16 \
    --outfile "$WORK/ref-f16.gguf" >/dev/null 2>&1
  t2=$(now)
  "$PY" - "$WORK/ref-f16.gguf" "$WORK/ref-q4_k_m.gguf" "$THREADS" <<'EOF'
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
p.nthread = int(sys.argv[3])
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p) == 0
EOF
  t3=$(now)
  s=$(echo "$t1 - $t0" | bc); c=$(echo "$t2 - $t1" | bc); q=$(echo "$t3 - $t2" | bc); r=$(echo "$c + $q" | bc)
  echo "round $round: sft export ${s}s | llama.cpp convert ${c}s + quantize ${q}s = ${r}s"
  best_sft=$(echo "if ($s < $best_sft) $s else $best_sft" | bc)
  best_ref=$(echo "if ($r < $best_ref) $r else $best_ref" | bc)
done
ls -l "$WORK/sft.gguf" "$WORK/ref-q4_k_m.gguf" | awk '{print $5, $9}'
echo "fastest: sft export ${best_sft}s, llama.cpp ${best_ref}s, ratio $(echo "scale=2; $best_ref / $best_sft" | bc)x"
