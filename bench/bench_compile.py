"""Benchmark: `torch.compile` of each decoder layer against eager, at its best case.

The embedded SmolLM2-135M with LoRA r16 on all linear layers (peft), float32, transformers' sdpa
attention, one fixed micro-batch of 2 rows of 256 tokens (loss on the second half of each), AdamW:
the shapes never change, so nothing recompiles after the first step. Reports the first step (the
compile's warm-up) and the median of the steps after the fourth, for eager and compiled, each in a
fresh process, and how many steps the compiled run needs to win back its warm-up. Prints only: the
figures go to docs/benchmarks.md by hand, with the machine.

This is the lever's ceiling, not tunesmith's run: tunesmith packs conversations of varying length
and runs attention per conversation (`segments`), which reads positions on the host; see the
benchmarks doc for what compiling did there.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_compile.py [--steps 14]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchdoc import machine

TOKENS = 2 * 256


def worker(compiled: bool, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.models.embedded import ensure_embedded_model

    torch.manual_seed(0)
    path = ensure_embedded_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    if compiled:
        import torch._dynamo

        layers = model.base_model.model.model.layers
        torch._dynamo.config.cache_size_limit = 2 * len(layers)  # one compiled frame per layer instance
        for layer in layers:
            layer.compile()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(0, model.config.vocab_size, (2, TOKENS // 2), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : TOKENS // 4] = -100
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return {"first_s": times[0], "step_s": statistics.median(times[4:]), "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--worker", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "compiled", args.steps)))
        return
    print(machine())
    figures = {}
    for mode in ("eager", "compiled"):
        done = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        f = figures[mode]
        print(
            f"{mode}: first step {f['first_s']:.1f} s, then {TOKENS / f['step_s']:.1f} tokens/s, loss {f['loss']:.4f}"
        )
    eager, compiled = figures["eager"], figures["compiled"]
    saved = eager["step_s"] - compiled["step_s"]
    warmup = compiled["first_s"] - eager["first_s"]
    if saved > 0:
        print(
            f"compiled: {eager['step_s'] / compiled['step_s']:.2f}x per step; warm-up {warmup:.0f} s, "
            f"won back after {warmup / saved:.0f} steps ({warmup / saved * TOKENS:,.0f} tokens)"
        )
    else:
        print(
            f"compiled: {eager['step_s'] / compiled['step_s']:.2f}x per step; "
            f"never wins back its {warmup:.0f} s warm-up"
        )


if __name__ == "__main__":
    main()
