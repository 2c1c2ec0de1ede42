#!/usr/bin/env python3
"""Helper for scripts/bench-train.sh: one training step of transformers (+PEFT LoRA) on the same
shapes as crates/sft-train/examples/bench_train.rs, in this process, printed as one JSON line.

  bench_train.py MODEL_DIR lora|full STEPS SEQ BATCH [--autocast-bf16]

LoRA: r=16, alpha=32, all linear layers (PEFT "all-linear"), no dropout. AdamW lr 1e-4. Every
sequence has its first half masked (-100); ids are the same pseudo-random function of the position
as the Rust side. One untimed warm-up step. Peak RSS from getrusage.
"""
import json
import resource
import sys
import time


def main():
    import torch
    from transformers import LlamaForCausalLM
    dir_, mode, steps, seq, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    autocast = "--autocast-bf16" in sys.argv
    model = LlamaForCausalLM.from_pretrained(dir_, dtype=torch.float32, attn_implementation="sdpa")
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor([[3 + ((b * seq + t) * 2654435761 % (vocab - 3)) for t in range(seq)] for b in range(batch)])
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step > 0:
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step_seconds": times, "tokens_per_s": seq * batch / mean, "peak_rss_mib": peak,
                      "trainable": sum(p.numel() for p in params), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
