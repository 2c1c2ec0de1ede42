#!/usr/bin/env python3
"""The cost model of docs/scaling.md: parameters and all-reduce bytes per step of LoRA and full
fine-tuning of SmolLM2-135M, SmolLM2-1.7B and Llama-3.1-8B (their config.json values), and the
ring all-reduce time 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency for N = 2..64 ranks on 25
and 100 Gb/s links. Standard library only. Pass the measured latency (seconds, from
scripts/bench-allreduce.sh) and per-node compute seconds per step to fill the step-time columns:

    python3 scripts/scaling-model.py [--latency 5e-5] [--compute-135m S --compute-1.7b S --compute-8b S]
"""
import argparse

# (name, hidden, intermediate, layers, heads, kv_heads, vocab, tied embeddings)
MODELS = [
    ("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True),
    ("SmolLM2-1.7B", 2048, 8192, 24, 32, 32, 49152, True),
    ("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False),
]
LORA_R = 16  # all-linear: q, k, v, o, gate, up, down
RANKS = [2, 4, 8, 16, 32, 64]
LINKS_GBIT = [25, 100]


def linears(hidden, inter, heads, kv):
    head = hidden // heads
    q, kvd = (hidden, hidden), (hidden, kv * head)
    return [q, kvd, kvd, (hidden, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]


def counts(m):
    name, hidden, inter, layers, heads, kv, vocab, tied = m
    lin = linears(hidden, inter, heads, kv)
    per_layer = sum(a * b for a, b in lin) + 2 * hidden
    full = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
    lora = layers * sum(LORA_R * (a + b) for a, b in lin)
    return full, lora


def ring(bytes_, n, gbit, latency):
    return 2 * (n - 1) / n * bytes_ / (gbit * 1e9 / 8) + 2 * (n - 1) * latency


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latency", type=float, default=None, help="per-message latency, seconds (measured)")
    for m in MODELS:
        key = m[0].split("-")[-1].lower()
        p.add_argument(f"--compute-{key}", dest=f"compute_{key.replace('.', '_')}", type=float, default=None,
                       help=f"{m[0]}: compute seconds of one step on one node (measured)")
    args = p.parse_args()
    latency = args.latency if args.latency is not None else 0.0
    print("| model | parameters | LoRA r=16 parameters | LoRA bytes/step | full bytes/step |")
    print("|---|---:|---:|---:|---:|")
    for m in MODELS:
        full, lora = counts(m)
        print(f"| {m[0]} | {full:,} | {lora:,} | {4 * lora / 1e6:,.1f} MB | {4 * full / 1e9:,.2f} GB |")
    print()
    header = " | ".join(f"N={n}" for n in RANKS)
    print(f"| model, method, link | {header} |")
    print("|---|" + "---:|" * len(RANKS))
    for m in MODELS:
        full, lora = counts(m)
        compute = getattr(args, f"compute_{m[0].split('-')[-1].lower().replace('.', '_')}", None)
        for method, params in (("LoRA", lora), ("full", full)):
            for gbit in LINKS_GBIT:
                cells = []
                for n in RANKS:
                    t = ring(4 * params, n, gbit, latency)
                    cell = f"{t * 1e3:,.1f} ms" if t < 1 else f"{t:,.2f} s"
                    if compute is not None:
                        cell += f" ({compute / (compute + t):.0%})"
                    cells.append(cell)
                print(f"| {m[0]} {method} {gbit} Gb/s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
