"""Benchmark: preparing 100,000 Alpaca rows for training, then the same again from the cache.

Timed: what `tunesmith train` does before the model loads, i.e. `prepare()` (read and check every row,
render it with the model's chat template, tokenize, mask to the answer and its end-of-turn token,
audit) and packing the examples into bins (`dataset_rows`), in the calling process as a run does
(module imports done before the clock starts).
First with a cold processed-data cache, then a second time in a new process (as the next run is),
which reads the cache. The issue-10 bars:
under 30 s cold, under 3 s from the cache, on the 2-core machine. Writes its section of
docs/benchmarks.md (replaced on each run) unless --no-write.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prepare.py [--rows 100000] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdoc  # noqa: E402
from bench_data_check import alpaca_rows  # noqa: E402 - the same seeded rows as the data check
from benchdoc import machine  # noqa: E402

SECTION = "## data preparation"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_prepare.py"
MAX_LENGTH = 512


def write_rows(path: Path, rows: int) -> None:
    """The seeded rows, with a fresh marker in the first one so the first run really starts cold."""
    with path.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(alpaca_rows(rows)):
            if i == 0:
                row["output"] += f" {uuid.uuid4().hex}"
            handle.write(json.dumps(row) + "\n")


def prepare_once(config) -> tuple[float, object, list[dict]]:
    from rich.console import Console

    from tunesmith.training.prepare import prepare
    from tunesmith.training.run import _rows
    from tunesmith.training.trainer import dataset_rows

    started = time.perf_counter()
    prepared = prepare(config, Console(file=io.StringIO()))
    bins = dataset_rows(_rows(prepared, "train"), prepared.config)  # with the settings chosen from the data
    return time.perf_counter() - started, prepared, bins


def bins_digest(bins) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([b["input_ids"] for b in bins]).encode()).hexdigest()


def cached_run(config_path: Path) -> tuple[float, str]:
    """The cached pass in a fresh process: seconds and a digest of its bins."""
    done = subprocess.run(
        [sys.executable, __file__, "--cached", str(config_path)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["digest"]


def cached_pass(config_path: str) -> None:
    import tunesmith.training.trainer  # noqa: F401 - imports are not data work, as in `run`
    from tunesmith.config import load_config

    took, prepared, bins = prepare_once(load_config(config_path))
    assert prepared.splits["train"].cached, "the second run did not read the cache"
    print(json.dumps({"seconds": took, "digest": bins_digest(bins)}))


def tokenizer_alone(tokenizer, examples) -> dict[str, float]:
    """Seconds the tokenizer alone takes on the same rendered text: every example's ids decoded back
    to text (not timed), then encoded in one batch call on the fast tokenizer's own threads, both as
    transformers users call it (`tokenizer(texts)`, with offsets) and as tunesmith's workers do
    (`encode_batch_fast`: the same ids, no offsets). The bar's ratio is against the faster."""
    texts = tokenizer.batch_decode([e.input_ids for e in examples], skip_special_tokens=False)
    expected = sum(len(e.input_ids) for e in examples)
    calls = {
        "call": lambda: tokenizer(texts, add_special_tokens=False)["input_ids"],
        "fast": lambda: [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)],
    }
    seconds = {}
    for name, call in calls.items():
        started = time.perf_counter()
        encoded = call()
        seconds[name] = time.perf_counter() - started
        assert sum(map(len, encoded)) > 0.9 * expected
    return seconds


def run(rows: int) -> dict:
    from tunesmith.config import load_config
    from tunesmith.formatting import cache
    from tunesmith.models.embedded import ensure_embedded_model
    from tunesmith.training.prepare import _formatting, _key, _resolve

    ensure_embedded_model("smollm2-135m-instruct")
    import tunesmith.training.trainer  # noqa: F401 - imports (transformers' Trainer: seconds) are not data work

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as folder:
        data = Path(folder) / "alpaca.jsonl"
        write_rows(data, rows)
        config_path = Path(folder) / "config.yaml"
        config_path.write_text(
            json.dumps(
                {
                    "name": "bench",
                    "output_dir": str(Path(folder) / "runs"),
                    "model": {"name": "smollm2-135m-instruct"},
                    "data": {"train": str(data)},
                    "template": {"train_on": "assistant", "max_length": MAX_LENGTH},
                    "train": {"packing": "bins"},
                }
            )
        )
        config = load_config(config_path)
        cold, prepared, bins = prepare_once(config)
        assert not prepared.splits["train"].cached
        os.sync()  # the cold pass's cache writes reach the disk on its account, not inside the cached pass
        warm, digest = cached_run(config_path)  # in a new process, as the next `tunesmith train` reads it
        assert digest == bins_digest(bins), "cache changed the bins"
        from rich.console import Console

        ref = _resolve(config, Console(file=io.StringIO()), fetch=False)
        tokenizer, template, markers = _formatting(config, ref)
        tokenizer_s = tokenizer_alone(tokenizer, prepared.splits["train"].examples)
        shutil.rmtree(cache.cache_dir() / _key(config, "train", tokenizer, template, markers), ignore_errors=True)
    report = prepared.splits["train"].report
    return {
        "rows": rows,
        "cold_s": cold,
        "cached_s": warm,
        "tokenizer_s": min(tokenizer_s.values()),
        "tokenizer_call_s": tokenizer_s["call"],
        "tokenizer_fast_s": tokenizer_s["fast"],
        "examples": report.examples,
        "tokens": report.tokens,
        "trained": report.trainable_tokens,
        "bins": len(bins),
    }


def write_section(result: dict) -> None:
    benchdoc.write_machine_section(
        SECTION,
        (
            f"{result['rows']:,} Alpaca rows (the data check's seeded rows), embedded model's tokenizer and chat "
            f"template, max length {MAX_LENGTH}: read, check, render, tokenize, mask, audit, cache and group into "
            f"{result['bins']:,} bins (each bin's lists are concatenated when the data loader reads it): "
            f"**{result['cold_s']:.1f} s** cold, **{result['cached_s']:.2f} s** from the processed-data cache in a new "
            f"process, as the next run reads it (bars: "
            f"30 s and 3 s). The tokenizer alone on the same text (the examples' ids decoded, then encoded in one "
            f"batch call on the tokenizer's own threads): {result['tokenizer_call_s']:.1f} s as `tokenizer(texts)`, "
            f"{result['tokenizer_fast_s']:.1f} s as `encode_batch_fast` (no offsets, as tunesmith's workers call "
            f"it), so the whole preparation takes "
            f"**{result['cold_s'] / result['tokenizer_s']:.2f}x** the faster of the two (bar: 1.5x). "
            f"{result['tokens']:,} tokens, {result['trained']:,} trained. {machine()}.\n\n"
            f"```bash\n{COMMAND}{'' if result['rows'] == 100_000 else ' --rows ' + str(result['rows'])}\n```"
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--cached", metavar="CONFIG", help=argparse.SUPPRESS)  # the cached pass's own process
    args = parser.parse_args()
    if args.cached:
        return cached_pass(args.cached)
    result = run(args.rows)
    print(json.dumps(result))
    if not args.no_write:
        write_section(result)
        print("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
