#!/usr/bin/env python3
"""Helper for scripts/bench-render.sh: `sft render --tokenize` vs transformers' apply_chat_template.

Subcommands (run with the reference venv's python, HF_HUB_OFFLINE=1):
  gen  OUT.jsonl [--rows N] [--seed S]      write N synthetic OpenAI "messages" rows (deterministic)
  bench --sft BIN --data F --out-dir D --case NAME:TOKDIR[:TEMPLATE] ... [--runs 3]
        times sft (best of --runs, wall clock incl. process start; all cores and RAYON_NUM_THREADS=1),
        then transformers (tokenizer loaded once, untimed; best of --runs), checks that input_ids
        (and the assistant mask, for templates with {% generation %}) agree row by row, prints a table.
        With --prepare NAME:TOKDIR (repeatable) it also times `sft prepare --tokenizer TOKDIR --out D/prepared_NAME
        DATA` (default masking: assistant) against a Python reference pipeline (full render, prefix renders
        per assistant turn for char spans, one tokenization with offsets, labels = ids of tokens overlapping a
        span, -100 elsewhere) and checks the examples (from `sft prepare --emit-jsonl`) row by row.
A benchmark, not a test: it exits 0 even with mismatches (they are counted and printed).
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from prefix_spans import prefix_spans, transformers_render  # noqa: E402

# ---------------------------------------------------------------- data generation

EN_WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an which have not but "
    "they you we can all their has more one will would there about when what so some other into time "
    "model data training loss gradient batch token sequence learning rate optimizer memory layer "
    "attention weight checkpoint dataset prompt answer question example function value system user "
    "assistant server request response file path config error result number list string table query "
    "cache index vector matrix tensor shape kernel thread process network latency throughput build "
    "release version test benchmark compile runtime library package module interface protocol client "
    "river mountain city weather morning evening coffee garden window music history science language "
    "quickly carefully simply often usually probably really almost already always never together"
).split()
ZH_PHRASES = (
    "我们 今天 模型 训练 数据 问题 答案 因为 所以 但是 可以 需要 这个 那个 学习 语言 天气 城市 "
    "北京 上海 时间 工作 计算 结果 文件 系统 用户 助手 请问 谢谢 如何 为什么 非常 已经 一起 方法 "
    "程序 速度 内存 参数 优化 梯度 批次 序列 分词 模板 对话 中文 测试 性能 比较"
).split()
EMOJI = ["🙂", "🚀", "✅", "—", "…", "é", "ü", "ß"]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search_web", "description": "Search the web and return the top results.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "max_results": {"type": "integer", "default": 5}},
            "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "run_sql", "description": "Run a read-only SQL query against the analytics database.",
        "parameters": {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["amount", "from", "to"]}}},
    {"type": "function", "function": {
        "name": "translate", "description": "Translate text (支持中文).",
        "parameters": {"type": "object", "properties": {
            "text": {"type": "string"}, "target_lang": {"type": "string"}}, "required": ["text", "target_lang"]}}},
]
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in at most three sentences.",
    "You are an expert Rust and Python engineer. Explain your reasoning step by step.",
    "你是一个乐于助人的助手。请用中文回答。",
    "You are a customer-support agent for an online store. Be polite and precise.",
]


def _text(rng, n_words, chinese):
    if chinese:
        out = []
        for _ in range(n_words):
            out.append(rng.choice(ZH_PHRASES))
            r = rng.random()
            if r < 0.08:
                out.append("，")
            elif r < 0.12:
                out.append("。")
        return "".join(out) + "。"
    out, sentence = [], 0
    for _ in range(n_words):
        w = rng.choice(EN_WORDS)
        if sentence == 0:
            w = w.capitalize()
        out.append(w)
        sentence += 1
        if sentence > rng.randint(6, 18):
            out[-1] += rng.choice([".", ".", "?", "!", ":"])
            sentence = 0
            if rng.random() < 0.15:
                out[-1] += "\n\n" if rng.random() < 0.5 else "\n"
        elif rng.random() < 0.05:
            out[-1] += ","
        if rng.random() < 0.01:
            out.append(rng.choice(EMOJI))
        if rng.random() < 0.01:
            out.append(f"{rng.randint(0, 99999)}")
    s = " ".join(out).replace("\n ", "\n").rstrip()
    return s if s[-1] in ".?!" else s + "."


def _length(rng):
    # tens to a few hundred words, skewed short
    return rng.choice([rng.randint(8, 40), rng.randint(20, 80), rng.randint(60, 200), rng.randint(150, 400)])


def _tool_args(rng, name):
    return {
        "get_weather": lambda: {"city": rng.choice(["Paris", "北京", "New York", "Zürich"]),
                                "unit": rng.choice(["celsius", "fahrenheit"])},
        "search_web": lambda: {"query": _text(rng, rng.randint(3, 8), False), "max_results": rng.randint(1, 10)},
        "run_sql": lambda: {"sql": f"SELECT count(*) FROM events WHERE day = '2026-01-{rng.randint(10, 28)}'"},
        "convert_currency": lambda: {"amount": round(rng.uniform(1, 1000), 2), "from": "EUR", "to": "USD"},
        "translate": lambda: {"text": _text(rng, rng.randint(4, 12), False), "target_lang": "zh"},
    }[name]()


def gen_row(rng, i):
    chinese = rng.random() < 0.15
    msgs = []
    if rng.random() < 0.6:
        msgs.append({"role": "system", "content": SYSTEMS[3] if chinese and rng.random() < 0.7 else rng.choice(SYSTEMS)})
    row = {}
    use_tools = rng.random() < 0.2
    if use_tools:
        row_tools = rng.sample(TOOLS, rng.randint(1, 3))
        row["tools"] = row_tools
    turns = rng.randint(1, 4)
    for t in range(turns):
        msgs.append({"role": "user", "content": _text(rng, _length(rng) // 2 + 5, chinese)})
        if use_tools and (t == 0 or rng.random() < 0.3):
            calls = []
            for k in range(rng.choice([1, 1, 1, 2])):
                fn = rng.choice(row_tools)["function"]["name"]
                calls.append({"id": f"call_{i}_{t}_{k}", "type": "function",
                              "function": {"name": fn, "arguments": _tool_args(rng, fn)}})
            a = {"role": "assistant", "tool_calls": calls}
            if rng.random() < 0.5:
                a["content"] = _text(rng, rng.randint(5, 20), chinese)
            msgs.append(a)
            for c in calls:
                msgs.append({"role": "tool", "tool_call_id": c["id"],
                             "content": json.dumps({"ok": True, "result": _text(rng, rng.randint(5, 40), chinese)},
                                                   ensure_ascii=False)})
        a = {"role": "assistant", "content": _text(rng, _length(rng), chinese)}
        if rng.random() < 0.15:
            a["reasoning_content"] = _text(rng, rng.randint(10, 60), chinese)
        msgs.append(a)
    row["messages"] = msgs
    return row


def cmd_gen(a):
    rng = random.Random(a.seed)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for i in range(a.rows):
            f.write(json.dumps(gen_row(rng, i), ensure_ascii=False) + "\n")
    print(f"wrote {a.rows} rows to {a.out} (seed {a.seed}, {os.path.getsize(a.out) / 1e6:.1f} MB)", file=sys.stderr)


# ---------------------------------------------------------------- benchmark

def _cpu_snapshot():
    """(wall, system-wide busy CPU seconds from /proc/stat, this process + its children's CPU seconds)."""
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError):
        pass
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def _foreign_load(before, after):
    """Average number of cores used by other processes between two snapshots."""
    wall, busy, ours = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - ours) / wall) if wall > 0 else float("nan")


def wait_quiet(max_wait, idle_needed=0.9):
    """Waits (up to max_wait s) until the CPUs are >= idle_needed idle over 3 s."""
    cores, t_end = os.cpu_count() or 1, time.time() + max_wait
    while True:
        a = _cpu_snapshot(); time.sleep(3); b = _cpu_snapshot()
        foreign = _foreign_load(a, b)
        if 1 - foreign / cores >= idle_needed:
            return foreign
        if time.time() > t_end:
            print(f"warning: machine still busy ({foreign:.2f} cores used by others); timing anyway", file=sys.stderr)
            return foreign
        print(f"  waiting for a quiet machine ({foreign:.2f} cores busy)...", file=sys.stderr)
        time.sleep(7)


def best_of(cmd, runs, threads, stdout_path=None):
    """Runs `cmd` `runs` times (RAYON_NUM_THREADS=threads when set); returns the best wall time
    and the last stderr. Exits when a run fails."""
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    best, err = float("inf"), ""
    for _ in range(runs):
        with open(stdout_path or os.devnull, "wb") as f:
            t0 = time.perf_counter()
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, env=env)
            dt = time.perf_counter() - t0
        err = p.stderr.decode(errors="replace")
        if p.returncode != 0:
            sys.exit(f"sft failed ({p.returncode}): {' '.join(cmd)}\n{err}")
        best = min(best, dt)
    return best, err


def time_sft(binary, tokdir, template, data, out, runs, threads):
    cmd = [binary, "render", "--tokenizer", tokdir, "--tokenize"]
    if template:
        cmd += ["--chat-template", template]
    cmd.append(data)
    best, _ = best_of(cmd, runs, threads, out)
    return best, cmd


def time_hf(tok, rows, template, mask, runs):
    kw = dict(tokenize=True, return_dict=True)
    if template is not None:
        kw["chat_template"] = template
    if mask:
        kw["return_assistant_tokens_mask"] = True
    best, outs = float("inf"), None
    for _ in range(runs):
        res = []
        t0 = time.perf_counter()
        for r in rows:
            res.append(tok.apply_chat_template(r["messages"], tools=r.get("tools"), **kw))
        dt = time.perf_counter() - t0
        best, outs = min(best, dt), res
    return best, outs


def compare(tok, sft_out, hf_outs, mask, show=5):
    with open(sft_out, encoding="utf-8") as f:
        ours = [json.loads(line) for line in f]
    ids_bad, mask_bad, shown = 0, 0, 0
    if len(ours) != len(hf_outs):
        print(f"  ROW COUNT MISMATCH: sft {len(ours)} vs transformers {len(hf_outs)}")
    for i, (o, h) in enumerate(zip(ours, hf_outs)):
        if "error" in o:
            ids_bad += 1
            if shown < show:
                print(f"  row {i}: sft error: {o['error']}")
                shown += 1
            continue
        hid = list(h["input_ids"])
        if o["input_ids"] != hid:
            ids_bad += 1
            if shown < show:
                k = next((j for j, (x, y) in enumerate(zip(o["input_ids"], hid)) if x != y), min(len(hid), len(o["input_ids"])))
                print(f"  row {i}: input_ids differ at {k} (len sft {len(o['input_ids'])}, hf {len(hid)}): "
                      f"sft {tok.decode(o['input_ids'][max(0, k - 5):k + 5])!r} vs hf {tok.decode(hid[max(0, k - 5):k + 5])!r}")
                shown += 1
        elif mask and o["assistant_mask"] != list(h["assistant_masks"]):
            mask_bad += 1
            if shown < show:
                k = next((j for j, (x, y) in enumerate(zip(o["assistant_mask"], h["assistant_masks"])) if x != y), -1)
                print(f"  row {i}: assistant mask differs at token {k} ({tok.decode(hid[max(0, k - 3):k + 3])!r})")
                shown += 1
    return ids_bad, mask_bad, len(ours)


# ---------------------------------------------------------------- sft prepare vs a Python reference pipeline

def ref_prepare_row(tok, row):
    """Python reference for `sft prepare` (masking assistant, tokenizer's own template, no EOS appended):
    returns {"input_ids", "labels"}, or a string saying why the row is excluded."""
    msgs, tools = row["messages"], row.get("tools")
    try:
        found = prefix_spans(transformers_render(tok, tools=tools), msgs)
    except Exception as e:  # noqa: BLE001 - the template raised: the row is excluded (sft does the same)
        return f"chat template failed ({type(e).__name__})"
    if found is None:
        return "assistant turn not locatable by prefix rendering"
    full, spans = found
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [-100] * len(ids)
    for k, (ts, te) in enumerate(enc["offset_mapping"]):
        for ss, se in spans:
            if te > ss and ts < se:
                labels[k] = ids[k]
                break
    return {"input_ids": ids, "labels": labels}


def time_ref_prepare(tok, rows, runs):
    best, outs = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        res = [ref_prepare_row(tok, r) for r in rows]
        dt = time.perf_counter() - t0
        best, outs = min(best, dt), res
    return best, outs


def run_sft_prepare(binary, tokdir, data, out_dir, runs, threads, emit=None):
    cmd = [binary, "prepare", "--tokenizer", tokdir, "--out", out_dir]
    if emit:
        cmd += ["--emit-jsonl", emit]
    cmd.append(data)
    best, err = best_of(cmd, runs, threads)
    return best, cmd, err


def _prepared_bytes(d):
    return [open(os.path.join(d, f), "rb").read() for f in ("tokens.bin", "labels.bin", "index.bin")]


def compare_prepare(tok, emitted, ref_outs, show=5):
    """Matches sft's examples (input order, excluded rows dropped) to the reference's kept rows, in order."""
    with open(emitted, encoding="utf-8") as f:
        ours = [json.loads(line) for line in f]
    kept = [(i, o) for i, o in enumerate(ref_outs) if isinstance(o, dict)]
    bad, shown = 0, 0
    if len(ours) != len(kept):
        print(f"  EXAMPLE COUNT MISMATCH: sft {len(ours)} vs python {len(kept)}")
    for o, (i, h) in zip(ours, kept):
        for key in ("input_ids", "labels"):
            if o[key] != h[key]:
                bad += 1
                if shown < show:
                    k = next((j for j, (x, y) in enumerate(zip(o[key], h[key])) if x != y), min(len(o[key]), len(h[key])))
                    print(f"  data row {i + 1}: {key} differ at token {k} (len sft {len(o[key])}, py {len(h[key])}): "
                          f"{tok.decode(h['input_ids'][max(0, k - 4):k + 4])!r}")
                    shown += 1
                break
    return bad + abs(len(ours) - len(kept)), len(ours), len(kept)


def cmd_bench(a):
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    with open(a.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    n = len(rows)
    os.makedirs(a.out_dir, exist_ok=True)
    table = []
    for case in a.case:
        name, tokdir, *rest = case.split(":")
        template_path = rest[0] if rest else None
        template = open(template_path, encoding="utf-8").read() if template_path else None
        mask = template is not None and "{% generation" in template.replace("{%-", "{%")
        print(f"== {name}: tokenizer {tokdir}, template {template_path or '(tokenizer own)'}"
              f"{', assistant mask' if mask else ''}", file=sys.stderr)
        out = os.path.join(a.out_dir, f"sft_{name}.jsonl")
        tok = AutoTokenizer.from_pretrained(tokdir)  # untimed
        wait_quiet(a.wait_quiet)
        snap = _cpu_snapshot()
        t1, cmd1 = time_sft(a.sft, tokdir, template_path, a.data, out + ".t1", a.runs, threads=1)
        tn, cmd = time_sft(a.sft, tokdir, template_path, a.data, out, a.runs, threads=None)
        th, hf_outs = time_hf(tok, rows, template, mask, a.runs)
        foreign = _foreign_load(snap, _cpu_snapshot())
        ids_bad, mask_bad, got = compare(tok, out, hf_outs, mask)
        same_1t = open(out, "rb").read() == open(out + ".t1", "rb").read()
        os.remove(out + ".t1")
        table.append((name, tn, t1, th, ids_bad, mask_bad if mask else None, same_1t, foreign))
        print(f"  command: {' '.join(cmd)} > {out}", file=sys.stderr)

    ptable = []
    for case in a.prepare:
        name, tokdir = case.split(":", 1)
        print(f"== prepare {name}: tokenizer {tokdir} (own template), masking assistant", file=sys.stderr)
        out_dir = os.path.join(a.out_dir, "prepared" if len(a.prepare) == 1 else f"prepared_{name}")
        emit = os.path.join(a.out_dir, f"sft_prepare_{name}.jsonl")
        tok = AutoTokenizer.from_pretrained(tokdir)  # untimed
        wait_quiet(a.wait_quiet)
        snap = _cpu_snapshot()
        t1, _, _ = run_sft_prepare(a.sft, tokdir, a.data, out_dir + "_1t", a.runs, threads=1)
        tn, cmd, err = run_sft_prepare(a.sft, tokdir, a.data, out_dir, a.runs, threads=None)
        th, ref_outs = time_ref_prepare(tok, rows, a.runs)
        foreign = _foreign_load(snap, _cpu_snapshot())
        # the examples to check: one more (untimed) run with --emit-jsonl; its stored records must equal the timed runs'
        run_sft_prepare(a.sft, tokdir, a.data, out_dir + "_emit", 1, threads=None, emit=emit)
        same = _prepared_bytes(out_dir) == _prepared_bytes(out_dir + "_1t") == _prepared_bytes(out_dir + "_emit")
        for d in (out_dir + "_1t", out_dir + "_emit"):
            for f in os.listdir(d):
                os.remove(os.path.join(d, f))
            os.rmdir(d)
        bad, n_sft, n_py = compare_prepare(tok, emit, ref_outs)
        summary = next((ln.strip() for ln in err.splitlines() if " rows read, " in ln), "?")
        reasons = {}
        for o in ref_outs:
            if isinstance(o, str):
                reasons[o] = reasons.get(o, 0) + 1
        print(f"  sft: {summary}", file=sys.stderr)
        for ln in err.splitlines():
            if ln.startswith("  excluded, "):
                print(f"    {ln.strip()}", file=sys.stderr)
        print(f"  python: {n_py} examples, {n - n_py} rows excluded", file=sys.stderr)
        for r, c in sorted(reasons.items(), key=lambda x: -x[1]):
            print(f"    excluded, {r}: {c}", file=sys.stderr)
        print(f"  command: {' '.join(cmd)}  (examples checked via --emit-jsonl {emit})", file=sys.stderr)
        ptable.append((name, tn, t1, th, n_sft, n_py, bad, same, foreign))

    cores = os.cpu_count()
    try:
        sft_ver = subprocess.run([a.sft, "--version"], capture_output=True, text=True).stdout.strip()
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    except OSError:
        sft_ver = rustc = commit = dirty = "?"
    print()
    print(f"{n} conversations ({os.path.getsize(a.data) / 1e6:.1f} MB), best of {a.runs}; "
          f"{cores} cores ({platform.processor() or platform.machine()})")
    print(f"{sft_ver} @ {commit}{' (dirty)' if dirty else ''}, {rustc}; python {platform.python_version()}, "
          f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    hdr = f"{'case':<8} {'sft conv/s':>11} {'sft 1-thr':>10} {'hf conv/s':>10} {'ratio':>7} {'ratio 1-thr':>11}  ids-mismatch  mask-mismatch  other-load"
    print(hdr)
    print("-" * len(hdr))
    for name, tn, t1, th, ib, mb, same, fl in table:
        print(f"{name:<8} {n / tn:>11.0f} {n / t1:>10.0f} {n / th:>10.0f} {th / tn:>6.1f}x {th / t1:>10.1f}x  "
              f"{ib:>12}  {'n/a' if mb is None else mb:>13}  {fl:>10.2f}{'' if same else '  (1-thr output differs!)'}")
    print("sft: wall clock of the whole process (start, load tokenizer+template, read, render, tokenize, write "
          "JSONL); 'sft 1-thr' = RAYON_NUM_THREADS=1.")
    print("hf: apply_chat_template(tokenize=True, return_dict=True) loop over pre-parsed rows, tokenizer "
          "loaded beforehand (untimed).\n"
          "ratio = sft conv/s / hf conv/s; other-load = avg cores used by other processes while timing the case.")
    if ptable:
        print()
        hdr = (f"{'prepare':<8} {'sft conv/s':>11} {'sft 1-thr':>10} {'py conv/s':>10} {'ratio':>7} {'ratio 1-thr':>11}"
               f"  examples sft/py  excluded sft/py  mismatch  other-load")
        print(hdr)
        print("-" * len(hdr))
        for name, tn, t1, th, ns, npy, bad, same, fl in ptable:
            print(f"{name:<8} {n / tn:>11.0f} {n / t1:>10.0f} {n / th:>10.0f} {th / tn:>6.1f}x {th / t1:>10.1f}x  "
                  f"{f'{ns}/{npy}':>15}  {f'{n - ns}/{n - npy}':>15}  {bad:>8}  {fl:>10.2f}"
                  f"{'' if same else '  (1-thr / emit-jsonl output differs!)'}")
        print("sft: wall clock of `sft prepare --tokenizer DIR --out DIR DATA` (masking assistant; start, load, read, "
              "render + prefix renders, tokenize, write the prepared dataset); 'sft 1-thr' = RAYON_NUM_THREADS=1.")
        print("py: per row apply_chat_template(tokenize=False) for the full text and, per assistant message i, "
              "messages[:i] (+generation prompt) and messages[:i+1] for its char span\n"
              "(with the boundary rules of tests/fixtures/prefix_spans.py for prompts the turn only partly has, trailers, and turns\n"
              "rendered differently once followed; excluded if no span is found, or the template raises), then "
              "tokenizer(text, add_special_tokens=False, return_offsets_mapping=True), labels = ids of tokens\n"
              "overlapping a span, -100 elsewhere; tokenizer loaded beforehand (untimed). conv/s counts all input rows, "
              "excluded ones included. mismatch = examples whose input_ids or labels differ.")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("out")
    g.add_argument("--rows", type=int, default=2000)
    g.add_argument("--seed", type=int, default=1234)
    b = sub.add_parser("bench")
    b.add_argument("--sft", required=True)
    b.add_argument("--data", required=True)
    b.add_argument("--out-dir", required=True)
    b.add_argument("--case", action="append", default=[], help="NAME:TOKENIZER_DIR[:TEMPLATE.jinja]")
    b.add_argument("--prepare", action="append", default=[], help="NAME:TOKENIZER_DIR: also time `sft prepare` "
                   "(tokenizer's own template, masking assistant) against the Python reference pipeline")
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--wait-quiet", type=float, default=600, help="max seconds to wait for idle CPUs per case")
    a = p.parse_args()
    {"gen": cmd_gen, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    main()
