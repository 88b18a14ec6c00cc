"""Measurement: `tunesmith plan`'s CPU memory estimate against the peak of real training runs, on
shapes other than the embedded model's (random-weight models built from configs, see
`tunesmith.plan.measure.RANDOM_MODELS`), for fitting and checking the CPU allocator model.

Each run is `python -m tunesmith.plan.measure` in a fresh process (what
tests/integration/test_plan_memory.py runs): 3 optimizer steps on the quick start's packed data,
peak resident set above the idle process. Prints predicted, measured, the error, and the allocator
share the run implies ((measured - live tensors) / (activations + logits)); `--json` writes the rows.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/fit_plan_memory.py [--only NAME ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# (model, method, precision, max_length, batch): precision "auto" is bf16 autocast where the CPU
# has AVX-512 BF16 / AMX, else fp32
GRID = [
    ("embedded", "lora", "auto", 128, 2),
    ("embedded", "full", "auto", 128, 2),
    ("embedded", "lora", "fp32", 128, 2),
    ("embedded", "full", "fp32", 128, 2),
    ("qwen2-biases", "lora", "auto", 256, 1),
    ("qwen2-biases", "full", "auto", 256, 1),
    ("qwen2-biases", "lora", "auto", 1024, 2),
    ("qwen2-biases", "full", "auto", 1024, 2),
    ("qwen2-biases", "lora", "fp32", 1024, 2),
    ("qwen2-biases", "full", "fp32", 256, 1),
    ("llama-wide", "lora", "auto", 256, 2),
    ("llama-wide", "full", "auto", 256, 2),
    ("llama-wide", "lora", "fp32", 256, 2),
    ("mistral-hd128", "lora", "auto", 1024, 1),
    ("mistral-hd128", "full", "auto", 1024, 1),
    ("mistral-hd128", "lora", "fp32", 1024, 2),
]


OLD_SHARE = 0.65
"""The allocator model this script replaced: CPU_ALLOCATOR_OVERHEAD x (activations + logits)."""


def settings_for(model: str, method: str, precision: str, length: int, batch: int, folder: Path) -> list[str]:
    out = [
        f"method={method}",
        f"train.precision={precision}",
        f"template.max_length={length}",
        f"train.batch_size={batch}",
    ]
    if model != "embedded":
        from tunesmith.plan.measure import random_model

        out.append(f"model.name={random_model(folder / model, model)}")
    return out


def measure(settings: list[str], steps: int = 3) -> dict:
    from tunesmith.cli.train import quickstart_config_path

    args = [sys.executable, "-m", "tunesmith.plan.measure", str(quickstart_config_path()), "--steps", str(steps)]
    for setting in settings:
        args += ["--set", setting]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="model names to run")
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "tunesmith" / "plan-bench-models"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from tunesmith.cli.train import quickstart_config_path
    from tunesmith.config import load_config
    from tunesmith.plan.estimate import estimate_memory

    rows = []
    print(
        f"{'shape':40} {'tokens':>6} {'before':>7} {'after':>7} {'measured':>8} {'before':>7} {'after':>7} "
        f"{'live':>6} {'heap':>6} {'share':>6} {'s':>4}   (MiB; errors; share: (measured - live) / heap)"
    )
    for model, method, precision, length, batch in GRID:
        if args.only and model not in args.only:
            continue
        settings = settings_for(model, method, precision, length, batch, Path(args.models))
        est = estimate_memory(load_config(quickstart_config_path(), settings), device_kind="cpu")
        started = time.perf_counter()
        got = measure(settings)
        seconds = time.perf_counter() - started
        measured = got["peak_rss_above_idle_bytes"]
        live = est.total_bytes - est.parts.get("allocator", 0)
        phase = est.parts["activations"] + est.parts["logits"]
        heap = est.settings["heap_activation_bytes"]
        before = live + int(OLD_SHARE * phase)
        row = {
            "model": model,
            "method": method,
            "precision": got["precision"],
            "max_length": length,
            "batch": batch,
            "tokens": est.batch.tokens,
            "before": before,
            "predicted": est.total_bytes,
            "measured": measured,
            "live": live,
            "activation_phase": phase,
            "heap": heap,
            "parts": est.parts,
            "error_before": before / measured - 1,
            "error": est.total_bytes / measured - 1,
            "implied_heap_share": (measured - live) / max(heap, 1),
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        name = f"{model} {method} {got['precision']} {length}x{batch}"
        mib = 2**20
        print(
            f"{name:40} {est.batch.tokens:6} {before / mib:7.0f} {est.total_bytes / mib:7.0f} {measured / mib:8.0f} "
            f"{row['error_before']:+7.1%} {row['error']:+7.1%} {live / mib:6.0f} {heap / mib:6.0f} "
            f"{row['implied_heap_share']:6.2f} {seconds:4.0f}",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    for key, label in (
        ("error_before", f"before (one share {OLD_SHARE} of activations + logits)"),
        ("error", "after (cpu_allocator_bytes)"),
    ):
        errors = [r[key] for r in rows]
        if errors:
            print(
                f"{label}: within 20% {sum(abs(e) < 0.2 for e in errors)} of {len(errors)}, mean "
                f"{sum(errors) / len(errors):+.1%}, worst {max(errors, key=abs):+.1%}"
            )


if __name__ == "__main__":
    main()
