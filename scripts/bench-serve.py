"""Benchmark (not a test): `sft serve` against llama-cpp-python's OpenAI server on the same GGUF,
same machine, one server at a time. Reports decode tokens/s for one stream and the aggregate
over N concurrent streams, time to first streamed token, and the ratios sft / llama.cpp.

Run on a quiet machine (nothing else building), from the repository root:

    cargo build --release
    .venv/bin/pip install 'llama-cpp-python[server]==0.3.36'   # the natively built wheel
    .venv/bin/python scripts/bench-serve.py --gguf assets/models/SmolLM2-135M-Instruct.Q4_1.gguf

sft serves the GGUF dequantized (f32, and bf16 with --dtype bf16); llama.cpp runs on its Q4_1
blocks, so this measures the gap issue 26's quantized decoding is to close.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread. Make it at least 500 words."}]


def wait_ready(base, proc, seconds=300):
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.returncode}")
        try:
            return json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=2))["data"][0]["id"]
        except OSError:
            time.sleep(0.5)
    sys.exit("server did not come up")


def complete(base, model, max_tokens, stream=False):
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        if not stream:
            out = json.load(r)
            return out["usage"]["completion_tokens"], time.time() - start, None
        first, tokens = None, 0
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                if first is None:
                    first = time.time() - start
                tokens += 1
        return tokens, time.time() - start, first


def measure(name, cmd, base, args):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        model = wait_ready(base, proc)
        complete(base, model, 8)  # warm-up
        tokens, seconds, _ = complete(base, model, args.max_tokens)
        _, _, ttft = complete(base, model, 4, stream=True)
        results = [None] * args.streams
        def one(i):
            results[i] = complete(base, model, args.max_tokens)
        start = time.time()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - start
        row = {"server": name, "single_tok_s": tokens / seconds, "tokens": tokens,
               f"aggregate_tok_s_{args.streams}": sum(r[0] for r in results) / wall, "ttft_s": ttft}
        print(json.dumps(row), flush=True)
        return row
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default="assets/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--sft", default="target/release/sft")
    ap.add_argument("--python", default=sys.executable, help="python with llama_cpp.server")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--no-llamacpp", action="store_true", help="only sft (batched vs single stream)")
    args = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU: {cpu}, {args.threads} threads; {args.gguf}; {args.max_tokens} tokens; {args.streams} streams", flush=True)
    env_threads = ["--n_threads", str(args.threads)]
    peer = [] if args.no_llamacpp else [
        measure("llama.cpp (llama_cpp.server, Q4_1)",
                [args.python, "-m", "llama_cpp.server", "--model", args.gguf, "--port", "8021", "--n_ctx", "2048", *env_threads],
                "http://127.0.0.1:8021", args),
    ]
    rows = peer + [
        measure("sft serve (f32)", [args.sft, "serve", "--model", args.gguf, "--port", "8022"], "http://127.0.0.1:8022", args),
        measure("sft serve (bf16)", [args.sft, "serve", "--model", args.gguf, "--dtype", "bf16", "--port", "8023"], "http://127.0.0.1:8023", args),
    ]
    agg = f"aggregate_tok_s_{args.streams}"
    for r in rows:
        print(f"{r['server']}: aggregate at {args.streams} streams / single stream = {r[agg] / r['single_tok_s']:.2f}")
    for r in rows[len(peer):] if peer else []:
        ratios = {k: round(r[k] / peer[0][k], 2) for k in r if "tok_s" in k}
        print(f"{r['server']} / llama.cpp: {ratios}")


if __name__ == "__main__":
    main()
