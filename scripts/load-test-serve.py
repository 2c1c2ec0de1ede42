"""Load test for `sft serve` (127.0.0.1 only, bounded): N streaming clients for T seconds,
each sending chat and completion requests back to back; reports requests, errors and the
server's RSS over time (it must stay flat: no leak per request).

    sft serve --model tests/fixtures/model/eval/model --adapter tuned=tests/fixtures/model/eval/adapter \
        --port 8013 --max-concurrency 64 --queue 64 &
    python3 scripts/load-test-serve.py --base-url http://127.0.0.1:8013 --pid $! --clients 64 --seconds 60

Standard library only. Exits non-zero on any error or when the RSS of the last quarter grew
more than --rss-slack MiB over the first quarter's.
"""

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post_stream(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        events = [line[6:].strip() for line in r.read().decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        raise RuntimeError(f"stream did not end in [DONE]: {events[-2:]}")
    for e in events[:-1]:
        if "error" in json.loads(e):
            raise RuntimeError(e)
    return len(events)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8013")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (for its RSS)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rss-slack", type=float, default=16.0, help="MiB the RSS may grow")
    args = ap.parse_args()
    if not args.base_url.startswith(("http://127.0.0.1", "http://localhost")):
        sys.exit("the load test only runs against 127.0.0.1")
    model = json.load(urllib.request.urlopen(f"{args.base_url}/v1/models"))["data"]
    names = [m["id"] for m in model]
    stop_at = time.time() + args.seconds
    counts = {"requests": 0, "events": 0, "errors": []}
    lock = threading.Lock()

    def client(i):
        k = 0
        while time.time() < stop_at:
            name = names[(i + k) % len(names)]
            if k % 2 == 0:
                url = f"{args.base_url}/v1/chat/completions"
                body = {"model": name, "messages": [{"role": "user", "content": f"Client {i} says {k}."}]}
            else:
                url = f"{args.base_url}/v1/completions"
                body = {"model": name, "prompt": f"Client {i}, request {k}:"}
            body.update({"max_tokens": args.max_tokens, "stream": True, "temperature": 0.8, "seed": i * 1000 + k})
            try:
                n = post_stream(url, body)
                with lock:
                    counts["requests"] += 1
                    counts["events"] += n
            except (urllib.error.URLError, RuntimeError, OSError, ValueError) as e:
                with lock:
                    counts["errors"].append(f"client {i}: {e}")
            k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    samples = [(0.0, rss_mib(args.pid))]
    start = time.time()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        samples.append((time.time() - start, rss_mib(args.pid)))
    for t in threads:
        t.join()
    q = max(1, len(samples) // 4)
    first, last = max(r for _, r in samples[:q]), max(r for _, r in samples[-q:])
    report = {"clients": args.clients, "seconds": round(time.time() - start, 1), "requests": counts["requests"],
              "streamed_events": counts["events"], "errors": len(counts["errors"]),
              "rss_mib": {"start": round(samples[0][1], 1), "first_quarter_max": round(first, 1),
                          "last_quarter_max": round(last, 1), "max": round(max(r for _, r in samples), 1)}}
    print(json.dumps(report, indent=1))
    for e in counts["errors"][:5]:
        print(e, file=sys.stderr)
    if counts["errors"] or last - first > args.rss_slack:
        sys.exit(1)


if __name__ == "__main__":
    main()
