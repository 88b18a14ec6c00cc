"""Benchmark: one training lever against the default, on the quick start, in fresh processes.

The quick start (embedded SmolLM2-135M, LoRA r16 on all linear layers, bins of 256 tokens, 2 per
micro-batch) for 16 optimizer steps, once with the defaults and once with each `--set` given,
alternating for `--rounds`; tokens/s after 3 warm-up steps (from metrics.jsonl, as
bench_roofline.py reads it) and the loss at the last step. Prints only: the figures go to
docs/benchmarks.md by hand, with the machine.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_levers.py model.dtype=bfloat16 [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from benchdoc import machine

WARMUP = 3


def worker(settings: list[str]) -> None:
    from tunesmith.config import load_config
    from tunesmith.training.run import train

    with tempfile.TemporaryDirectory(prefix="bench-levers-") as out:
        config = load_config(
            Path(str(resources.files("tunesmith") / "examples" / "quickstart.yaml")),
            [
                f"output_dir={out}",
                "name=lever",
                "train.max_steps=16",
                "train.logging_steps=1",
                "data.validation=null",
                "data.test=null",
                *settings,
            ],
        )
        result = train(config)
        records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    marks = [(r["elapsed_s"], r["tokens_seen"]) for r in records if "tokens_seen" in r]
    (t0, n0), (t1, n1) = marks[WARMUP - 1], marks[-1]
    losses = [r["loss"] for r in records if "loss" in r]
    print(json.dumps({"tokens_per_s": (n1 - n0) / (t1 - t0), "loss": losses[-1]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", help="config settings for the lever, as --set takes them")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.settings)
        return
    print(machine())
    for round_ in range(args.rounds):
        for label, settings in (("default", []), (" ".join(args.settings), args.settings)):
            done = subprocess.run(
                [sys.executable, __file__, "--worker", *settings], capture_output=True, text=True, check=True
            )
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {round_ + 1} {label}: {figures['tokens_per_s']:.1f} tokens/s, loss {figures['loss']:.4f}")


if __name__ == "__main__":
    main()
