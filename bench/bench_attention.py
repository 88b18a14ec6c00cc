"""Benchmark: one LoRA training step on packed bins, `segments` attention against sdpa's block mask.

Both kernels run in this process on the same bins (embedded SmolLM2-135M, LoRA r=16 on all linear
layers, stdlib-docstring rows packed into 512-token bins), alternating step by step after warm-up
steps, so the ratio is not skewed by the machine warming up or slowing down. Prints tokens/s per
kernel and their ratio; `--profile` adds torch.profiler's table of the `segments` step.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_attention.py [--steps 6] [--bins-per-step 2] [--profile] [--no-write]

Writes its section of docs/benchmarks.md (replaced on each run) unless --no-write.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdoc  # noqa: E402
from bench_trl import docstring_rows  # noqa: E402 - the same real instruction rows as the TRL benchmark

KERNELS = ("segments", "sdpa")
SECTION = "## segments attention against sdpa (CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bins-per-step", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.formatting.collate import collate_packed
    from tunesmith.formatting.packing import pack
    from tunesmith.machine import attention_implementation
    from tunesmith.models.attention import register
    from tunesmith.models.embedded import ensure_embedded_model

    register()

    path = ensure_embedded_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = []
    for row in docstring_rows(200):
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_dict=False)
        full = tokenizer.apply_chat_template(row["messages"], return_dict=False)[: args.max_length]
        rows.append({"input_ids": full, "labels": [-100] * len(prompt) + full[len(prompt) :]})
    bins = pack(rows, args.max_length)
    per = args.bins_per_step
    batches = [collate_packed(bins[i : i + per]) for i in range(0, len(bins) - per + 1, per)]
    need = args.warmup + args.steps
    if len(batches) < need:
        raise SystemExit(f"only {len(batches)} batches; ask for fewer --steps")

    models, optimizers = {}, {}
    for kernel in KERNELS:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation=attention_implementation(kernel, "cpu")
        )
        models[kernel] = get_peft_model(
            base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        ).train()
        optimizers[kernel] = torch.optim.AdamW([p for p in models[kernel].parameters() if p.requires_grad], lr=2e-4)

    def step(kernel: str, batch: dict) -> float:
        targets = batch["labels"][:, 1:]
        keep = torch.cat([targets != -100, torch.zeros_like(targets[:, :1], dtype=torch.bool)], dim=1)
        started = time.perf_counter()
        out = models[kernel](
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, logits_to_keep=keep
        )
        loss = F.cross_entropy(out.logits.float(), targets[targets != -100])
        loss.backward()
        optimizers[kernel].step()
        optimizers[kernel].zero_grad(set_to_none=True)
        return time.perf_counter() - started

    rates: dict[str, list[float]] = {k: [] for k in KERNELS}
    for i, batch in enumerate(batches[:need]):
        for kernel in KERNELS if i % 2 == 0 else KERNELS[::-1]:
            seconds = step(kernel, batch)
            if i >= args.warmup:
                rates[kernel].append(batch["input_ids"].numel() / seconds)
    tokens = statistics.mean(b["input_ids"].numel() for b in batches[args.warmup : need])
    ratio = statistics.median(a / b for a, b in zip(rates["segments"], rates["sdpa"]))
    lines = [
        f"Embedded SmolLM2-135M, LoRA r=16 on all linear layers, fp32, one training step (forward, backward, "
        f"AdamW) on {per} packed bins of <= {args.max_length} tokens (mean {tokens:.0f} tokens per step) of "
        f"stdlib-docstring rows; both kernels in one process, alternating step by step, median of "
        f"{args.steps} steps after {args.warmup} warm-up; {torch.get_num_threads()} threads, {benchdoc.machine()}.",
        "",
        "| kernel | tokens/s |",
        "|---|---:|",
    ]
    lines += [f"| {kernel} | {statistics.median(rates[kernel]):.1f} |" for kernel in KERNELS]
    lines += [
        "",
        f"segments / sdpa, median of the per-step ratios: **{ratio:.2f}x**",
        "",
        "```bash",
        "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_attention.py"
        + ("" if (args.steps, per) == (6, 2) else f" --steps {args.steps} --bins-per-step {per}"),
        "```",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        benchdoc.write_section(SECTION, body)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step("segments", batches[0])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
