#!/usr/bin/env python3
"""Helper for scripts/bench-generate.sh: greedy decoding speed, sft vs transformers' generate.

  make DIR [--seed S] [--prompt-len 64]   a random SmolLM2-135M-shaped Llama (f32 safetensors)
                                          and DIR/prompt.json (random prompt ids)
  bench DIR --sft BIN [--new 128] [--runs 3]
        runs BIN (the bench_generate example: times generate() inside the process, best of
        --runs), then transformers' model.generate (greedy, no early stop, best of --runs), and
        prints tokens/s, the ratio, and how many of the new tokens agree.
A benchmark, not a test.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu",
    bos_token_id=1, eos_token_id=2, initializer_range=0.041666666666666664,
)


def make(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float().eval()
    model.save_pretrained(args.dir, safe_serialization=True)
    g = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(3, SMOLLM2_135M["vocab_size"], (args.prompt_len,), generator=g).tolist()
    with open(os.path.join(args.dir, "prompt.json"), "w") as f:
        json.dump(prompt, f)


def bench(args):
    import torch
    from transformers import LlamaForCausalLM
    prompt = json.load(open(os.path.join(args.dir, "prompt.json")))
    def sft(dtype):
        out = subprocess.run([args.sft, args.dir, os.path.join(args.dir, "prompt.json"), str(args.new), str(args.runs), dtype],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    ours, ours_bf16 = sft("f32"), sft("bf16")

    model = LlamaForCausalLM.from_pretrained(args.dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    best, theirs = float("inf"), None
    with torch.inference_mode():
        for _ in range(args.runs):
            start = time.perf_counter()
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                 min_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=0)
            best = min(best, time.perf_counter() - start)
            theirs = gen[0, len(prompt):].tolist()
    tps = len(theirs) / best
    same = next((i for i, (a, b) in enumerate(zip(ours["token_ids"], theirs)) if a != b), len(theirs))
    print(f"greedy decoding, SmolLM2-135M shape (f32, random init), prompt {len(prompt)} tokens, "
          f"{args.new} new, best of {args.runs}, torch threads {torch.get_num_threads()}")
    print(f"{'':22}{'seconds':>10}{'tokens/s':>10}{'vs transformers':>17}")
    for name, r in [("sft f32", ours), ("sft bf16 weights", ours_bf16)]:
        print(f"{name:22}{r['seconds']:>10.3f}{r['tokens_per_s']:>10.1f}{r['tokens_per_s'] / tps:>16.2f}x")
    print(f"{'transformers f32':22}{best:>10.3f}{tps:>10.1f}{1:>16.2f}x")
    print(f"sft f32: first {same} of {len(theirs)} new tokens identical to transformers")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--prompt-len", type=int, default=64)
    b = sub.add_parser("bench")
    b.add_argument("dir")
    b.add_argument("--sft", required=True)
    b.add_argument("--new", type=int, default=128)
    b.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    make(args) if args.cmd == "make" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
