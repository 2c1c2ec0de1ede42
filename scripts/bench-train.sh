#!/usr/bin/env bash
# Benchmark (not a test): training-step speed and peak memory of sft vs transformers (+PEFT) on a
# random SmolLM2-135M-shaped Llama, seq 512 x batch 2, half of each sequence masked; LoRA r=16 on
# all linear layers, and full fine-tuning; LoRA also with bf16 base weights multiplied in bf16
# (sft: `bf16: true`, AMX tiles where the CPU has them; transformers: torch.autocast bf16).
# Each run is its own process (peak RSS per process).
# Prints tokens/s, peak RSS, the ratios, and the achieved GFLOP/s against the measured f32 GEMM
# speed. Needs .venv (scripts/setup-reference-venv.sh). Keep the machine quiet while it runs.
# This machine's speed drifts by up to ±30% within minutes, so the whole set runs ROUNDS times,
# sft and transformers alternating, and each configuration reports its fastest round.
# Usage: scripts/bench-train.sh [STEPS] [ROUNDS] (default 3 timed steps after one warm-up step,
# 2 rounds)
source "$(dirname "${BASH_SOURCE[0]}")/bench-common.sh"
STEPS="${1:-3}" ROUNDS="${2:-2}" SEQ=512 BATCH=2
cargo build --release --locked -q --example bench_train
OUT="$ROOT/target/bench-train" && mkdir -p "$OUT"
rm -f "$OUT"/*.json
for round in $(seq "$ROUNDS"); do
  for mode in lora full; do
    target/release/examples/bench_train "$MODEL" $mode "$STEPS" $SEQ $BATCH > "$OUT/sft-$mode.$round.json"
    "$PY" scripts/bench_train.py "$MODEL" $mode "$STEPS" $SEQ $BATCH 2>/dev/null > "$OUT/hf-$mode.$round.json"
  done
  target/release/examples/bench_train "$MODEL" lora-bf16 "$STEPS" $SEQ $BATCH > "$OUT/sft-lora-bf16.$round.json"
  "$PY" scripts/bench_train.py "$MODEL" lora "$STEPS" $SEQ $BATCH --autocast-bf16 2>/dev/null > "$OUT/hf-lora-bf16.$round.json"
done
"$PY" - "$OUT" $SEQ $BATCH "$ROUNDS" <<'PY'
import json, sys
out, seq, batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def fastest(k):
    runs = [json.load(open(f"{out}/{k}.{i}.json")) for i in range(1, rounds + 1)]
    print(f"  {k}: tokens/s per round {[round(x['tokens_per_s'], 1) for x in runs]}")
    return max(runs, key=lambda x: x["tokens_per_s"])
r = {k: fastest(k) for k in ["sft-lora", "hf-lora", "sft-full", "hf-full", "hf-lora-bf16", "sft-lora-bf16"]}
# Nominal FLOPs of a step (as transformers does it: every row through lm_head): 2 per MAC forward,
# 2 for the input gradient, 2 more for weight gradients under full fine-tuning; attention QK and PV.
d, f, L, v, h = 576, 1536, 30, 49152, 9
T = seq * batch
linear = L * (d * d * 2 + d * 192 * 2 + 3 * d * f)
attn = L * 2 * 2 * seq * seq * d * batch / 2  # causal half, QK and PV
fwd = 2 * linear * T + 2 * v * d * T + attn
flops = {"lora": 2 * fwd, "full": 3 * fwd}
peak = r["sft-lora"]["matmul_gflops"]
print(f"training step, SmolLM2-135M shape (random init), seq {seq} x batch {batch}, half masked; fastest of {rounds} alternating rounds; f32 GEMM peak here {peak:.0f} GFLOP/s")
print(f"{'':26}{'tokens/s':>10}{'peak RSS MiB':>14}{'GFLOP/s':>9}{'speed ratio':>13}{'RSS ratio':>11}")
for mode in ["lora", "full"]:
    for who in ["sft", "hf"]:
        x = r[f"{who}-{mode}"]
        g = flops[mode] / (T / x["tokens_per_s"]) / 1e9
        name = f"{'sft' if who == 'sft' else 'transformers' + ('+PEFT' if mode == 'lora' else '')} {mode}"
        ratio = "" if who == "hf" else f"{x['tokens_per_s'] / r[f'hf-{mode}']['tokens_per_s']:>12.2f}x{x['peak_rss_mib'] / r[f'hf-{mode}']['peak_rss_mib']:>10.2f}x"
        print(f"{name:26}{x['tokens_per_s']:>10.1f}{x['peak_rss_mib']:>14.0f}{g:>9.0f}{ratio}")
hf32, hf16 = r["hf-lora"], r["hf-lora-bf16"]
for name, x in [("sft lora bf16", r["sft-lora-bf16"]), ("transformers+PEFT lora bf16 autocast", hf16)]:
    print(f"{name:26}{x['tokens_per_s']:>10.1f}{x['peak_rss_mib']:>14.0f}{'':9}{x['tokens_per_s'] / hf32['tokens_per_s']:>12.2f}x{x['peak_rss_mib'] / hf32['peak_rss_mib']:>10.2f}x")
s16 = r["sft-lora-bf16"]
print(f"(bf16 rows: ratios against transformers+PEFT f32.) sft bf16 vs transformers bf16 autocast: "
      f"{s16['tokens_per_s'] / hf16['tokens_per_s']:.2f}x tokens/s, {s16['peak_rss_mib'] / hf16['peak_rss_mib']:.2f}x peak RSS")
gap = max(abs(a - b) for a, b in zip(s16["losses"], r["sft-lora"]["losses"]))
print(f"sft LoRA losses per step, f32 {[round(v, 4) for v in r['sft-lora']['losses']]}, bf16 {[round(v, 4) for v in s16['losses']]}: largest gap {gap:.4f}")
PY
# Gradient checkpointing: peak memory of one LoRA step on a 2,048-token sequence, without and with.
for gc in "" gc; do
  target/release/examples/bench_train "$MODEL" lora 1 2048 1 $gc > "$OUT/sft-lora-2048${gc:+-gc}.json"
done
"$PY" - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/sft-lora-2048{s}.json")) for s in ["", "-gc"])
print(f"LoRA, one 2,048-token sequence: peak RSS {a['peak_rss_mib']:.0f} MiB, with gradient_checkpointing "
      f"{b['peak_rss_mib']:.0f} MiB ({b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x); step {a['step_seconds'][0]:.1f} s vs {b['step_seconds'][0]:.1f} s")
PY
