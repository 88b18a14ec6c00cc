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
from pathlib import Path

from bench_roofline import tunesmith_run
from benchdoc import machine


def worker(settings: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-levers-") as out:
        figures = tunesmith_run(Path(out), 16, tuple(settings))  # the roofline's run, with the lever's settings
    print(json.dumps({"tokens_per_s": figures["tokens_per_s"], "loss": figures["loss"]}))


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
