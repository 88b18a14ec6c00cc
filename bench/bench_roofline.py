"""Benchmark: how close a tunesmith training step comes to what this CPU does on the step's own matmuls.

The limit: bare matmuls of the quick start's step shapes, in the run's compute dtype (bf16 where the CPU
has it natively, else fp32), timed on this machine. Per decoder layer, for a micro-batch of T tokens:
each frozen linear layer's forward (T x in @ in x out) and its input gradient (T x out @ out x in), the
two that LoRA training runs for every base weight. The output head is timed on the trained positions
only, as tunesmith runs it. Their FLOPs over their time are the machine's rate on these shapes.
They are timed right before and right after tunesmith's run and the two rates averaged: on a shared
machine both drift, and timing them minutes apart moved the share by up to 9 points.

The achieved rate: tunesmith's quick start (the embedded SmolLM2-135M, LoRA r16 on all linear layers,
bins of 256 tokens, 2 per micro-batch) for STEPS optimizer steps. Tokens per second after WARMUP
steps, from metrics.jsonl, times the FLOPs per token:
- 4N for the frozen linear weights (forward and input gradient; N of them per token);
- attention (QK^T and AV) at three times its forward cost, over the mean context of a packed
  conversation;
- the output head at 4 x hidden x vocab per trained token.
LoRA's own matmuls are left out: they count against tunesmith.

Reported: the share of the limit, and each part's timing.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_roofline.py [--steps 16] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import benchdoc

SECTION = "## Roofline: a training step against this CPU's matmuls"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_roofline.py"
WARMUP = 3
MODEL = "smollm2-135m-instruct"


def timed(fn, repeats: int = 20) -> float:
    """Median seconds of `fn()` after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_limit(text, tokens: int, trained: int, dtype) -> dict:
    """FLOPs and seconds of one step's bare base-weight matmuls (forward and input gradient)."""
    import torch

    hidden, inter = text.hidden_size, text.intermediate_size
    heads, kv = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    shapes = [
        (hidden, heads * head_dim),  # q
        (hidden, kv * head_dim),  # k
        (hidden, kv * head_dim),  # v
        (heads * head_dim, hidden),  # o
        (hidden, inter),  # gate
        (hidden, inter),  # up
        (inter, hidden),  # down
    ]
    flops = seconds = 0.0
    for fan_in, fan_out in shapes:
        x = torch.randn(tokens, fan_in, dtype=dtype)
        w = torch.randn(fan_out, fan_in, dtype=dtype)
        g = torch.randn(tokens, fan_out, dtype=dtype)
        forward = timed(lambda x=x, w=w: x @ w.T)
        backward = timed(lambda g=g, w=w: g @ w)
        flops += text.num_hidden_layers * 4 * tokens * fan_in * fan_out
        seconds += text.num_hidden_layers * (forward + backward)
    x = torch.randn(trained, hidden, dtype=dtype)
    head = torch.randn(text.vocab_size, hidden, dtype=dtype)
    g = torch.randn(trained, text.vocab_size, dtype=dtype)
    seconds += timed(lambda: x @ head.T) + timed(lambda: g @ head)
    flops += 4 * trained * hidden * text.vocab_size
    return {"flops": flops, "seconds": seconds, "rate": flops / seconds}


def quick_start(out: Path, steps: int, settings: tuple[str, ...] = ()) -> Any:
    """The quick start's config for `steps` optimizer steps, writing under `out`."""
    from importlib import resources

    from tunesmith.config import load_config

    return load_config(
        Path(str(resources.files("tunesmith") / "examples" / "quickstart.yaml")),
        [
            f"output_dir={out}",
            "name=roofline",
            f"train.max_steps={steps}",
            "train.logging_steps=1",
            "data.validation=null",
            "data.test=null",
            *settings,
        ],
    )


def trained_share(config: Any) -> float:
    """The share of the quick start's tokens that train, from tunesmith's own data preparation."""
    import io

    from rich.console import Console

    from tunesmith.training.prepare import prepare

    return prepare(config, Console(file=io.StringIO())).splits["train"].report.trainable_share


def tunesmith_run(out: Path, steps: int, settings: tuple[str, ...] = ()) -> dict:
    """The quick start for `steps` optimizer steps: tokens/s after WARMUP, and its data's shape."""
    from tunesmith.training.run import train

    config = quick_start(out, steps, settings)
    result = train(config)
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    marks = [(r["elapsed_s"], r["tokens_seen"]) for r in records if "tokens_seen" in r]
    (t0, n0), (t1, n1) = marks[WARMUP - 1], marks[-1]
    report = json.loads((Path(result.run_dir) / "data_report.json").read_text())["splits"]["train"]
    return {
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "loss": [r["loss"] for r in records if "loss" in r][-1],
        "trained_share": report["trainable_tokens"] / report["tokens"],
        "mean_conversation": report["tokens"] / report["rows"],
        "precision": result.metrics.get("precision", "?"),
        "batch_size": config.train.batch_size,
        "max_length": config.template.max_length,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig

    from tunesmith.machine import cpu_has_native_bf16
    from tunesmith.models.embedded import ensure_embedded_model

    text = AutoConfig.from_pretrained(ensure_embedded_model(MODEL)).get_text_config()
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    with tempfile.TemporaryDirectory(prefix="bench-roofline-") as tmp:
        config = quick_start(Path(tmp), args.steps)
        tokens = config.train.batch_size * config.template.max_length  # a micro-batch of full bins
        trained = round(tokens * trained_share(config))
        # this machine's speed drifts: the limit is timed on both sides of the run and averaged
        before = matmul_limit(text, tokens, trained, dtype)
        run = tunesmith_run(Path(tmp), args.steps)
        after = matmul_limit(text, tokens, trained, dtype)
    limit = {"rate": (before["rate"] + after["rate"]) / 2}

    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    linear = sum(
        p.numel()
        for name, p in _meta_model(text).named_parameters()
        if name.endswith("weight") and p.dim() == 2 and "embed" not in name and "lm_head" not in name
    )
    context = run["mean_conversation"] / 2  # causal: a token attends to half its conversation on average
    attention = 3 * 4 * text.num_hidden_layers * heads * head_dim * context
    head = 4 * text.hidden_size * text.vocab_size * run["trained_share"]
    per_token = 4 * linear + attention + head
    achieved = run["tokens_per_s"] * per_token
    share = achieved / limit["rate"]
    body = (
        f"{benchdoc.machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads. The quick start "
        f"(embedded SmolLM2-135M, LoRA r16 on all linear layers, bins of {run['max_length']} tokens, "
        f"{run['batch_size']} per micro-batch, {run['precision']}) for {args.steps} optimizer steps; the limit is "
        f"bare {str(dtype).removeprefix('torch.')} matmuls of the same step's base weights (forward and input "
        f"gradient, {tokens} tokens; the head on {trained} trained positions).\n\n"
        f"| | value |\n|---|---:|\n"
        f"| FLOPs per token (4N linear + attention + head) | {per_token / 1e6:,.0f} M |\n"
        f"| tunesmith tokens/s (after {WARMUP} warm-up steps) | {run['tokens_per_s']:,.0f} |\n"
        f"| tunesmith achieved | {achieved / 1e9:,.1f} GFLOP/s |\n"
        f"| bare matmuls of the step's shapes (mean of before and after the run: "
        f"{before['rate'] / 1e9:,.1f} and {after['rate'] / 1e9:,.1f}) | {limit['rate'] / 1e9:,.1f} GFLOP/s |\n"
        f"| **share of the limit** | **{share:.0%}** |\n\n"
        f"```bash\n{COMMAND} --steps {args.steps}\n```\n"
    )
    print(body)
    if not args.no_write:
        benchdoc.write_machine_section(SECTION, body)


def _meta_model(text):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(text)


if __name__ == "__main__":
    main()
