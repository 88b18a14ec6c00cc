"""Benchmark: `check_files` on 100,000 Alpaca rows with the embedded model's tokenizer.

The bar (from the issue that asked for `tunesmith data check`): under 60 s on the 2-core CI
machine, so checking a dataset up front costs less than a minute of the run it protects.
Writes the result into docs/benchmarks.md (its own section, replaced on each run).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_data_check.py [--rows 100000] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import benchdoc
from benchdoc import machine

SECTION = "## data check"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_data_check.py"
WORDS = (
    "light kitchen garage set turn brightness degrees calendar meeting remind tomorrow please the a "
    "morning evening music volume door lock open close temperature weather add event at to of on"
).split()


def alpaca_rows(count: int, seed: int = 0):
    """Seeded Alpaca rows of realistic, varied length (10-80 word instructions, 5-60 word outputs)."""
    rng = random.Random(seed)
    for i in range(count):
        instruction = " ".join(rng.choices(WORDS, k=rng.randint(10, 80))).capitalize() + f" #{i}?"
        extra = " ".join(rng.choices(WORDS, k=rng.randint(0, 20))) if rng.random() < 0.4 else ""
        output = " ".join(rng.choices(WORDS, k=rng.randint(5, 60))) + "."
        yield {"instruction": instruction, "input": extra, "output": output}


def run(rows: int, workers: int | None = None) -> tuple[float, object]:
    from tunesmith.data.check import check_files
    from tunesmith.data.formats import FormatOptions
    from tunesmith.formatting.measure import measure_for as build_measure

    measure = build_measure("smollm2-135m-instruct", train_on="assistant")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "alpaca.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in alpaca_rows(rows):
                handle.write(json.dumps(row) + "\n")
        started = time.perf_counter()
        report = check_files([str(path)], options=FormatOptions(), measure=measure, max_length=1024, workers=workers)
        return time.perf_counter() - started, report


def write_section(rows: int, seconds: float, workers: int) -> None:
    benchdoc.write_section(
        SECTION,
        (
            f"data check, {rows:,} Alpaca rows, embedded tokenizer: **{seconds:.1f} s** "
            f"({rows / seconds:,.0f} rows/s) on {machine()}; rows encoded in {workers} worker "
            f"process{'es' if workers > 1 else ''}. Timed: the `check_files` call (read, check, encode, "
            f"deduplicate, count every row); loading the tokenizer (a few seconds) is not.\n\n"
            f"```bash\n{COMMAND}{'' if rows == 100_000 else f' --rows {rows}'}\n```"
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, help="encoding processes (default: one per CPU, at most 8)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    seconds, report = run(args.rows, args.workers)
    tokens = report.stats.tokens
    print(f"{args.rows} rows in {seconds:.1f} s: {args.rows / seconds:,.0f} rows/s on {machine()}")
    print(f"issues {report.counts_by_severity}, tokens {tokens.total_tokens}, trained {tokens.trainable_share:.1%}")
    if not args.no_write:
        from tunesmith.data.forked import default_workers

        write_section(args.rows, seconds, args.workers or default_workers())
        print("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
