"""A short real warm-up: a few training steps of a config, timed, with the peak memory they used.

`tunesmith plan --measure` calls `warm_up` for the step time; the memory test runs it in a fresh
process (`python -m tunesmith.plan.measure CONFIG --set ...`) so that the peak resident set it
reports is this run's alone. This is the one part of `plan/` that loads real weights: only when
the user asks for a measurement.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunesmith.config import Config


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (Linux), 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_memory_bytes(meminfo: str | Path = "/proc/meminfo") -> int:
    """Memory a new process can use without swapping: the kernel's `MemAvailable` (Linux >= 3.14:
    free pages plus the page cache and reclaimable slab it can drop), else free pages from sysconf
    (`SC_AVPHYS_PAGES`, which leaves the page cache out: 5.8 GB of a 24 GB machine that had 23 GB
    available), else 0."""
    import os

    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM (the peak resident set) to the current resident set (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def warm_up(config: Config, *, steps: int = 4, console: Any = None) -> dict[str, Any]:
    """Train `steps` optimizer steps of `config` in a scratch folder and report the mean step time
    (the first step, which pays for lazy initialization, left out) and the peak memory above what
    the process held before the model was loaded (CUDA: `max_memory_allocated`)."""
    import torch
    import transformers  # noqa: F401 - imported before the baseline: libraries are not the run's memory
    from transformers import Trainer, TrainerCallback  # noqa: F401

    from tunesmith.config import with_settings
    from tunesmith.machine import pick_device, pick_precision
    from tunesmith.plan.shapes import QuietConsole
    from tunesmith.training.methods import check_method, trainable_model
    from tunesmith.training.prepare import prepare
    from tunesmith.training.trainer import build_trainer, dataset_rows

    config = with_settings(
        config,
        {
            "train.max_steps": steps,
            "train.save_steps": None,
            "tracking.backends": [],
            "data.validation": None,
            "data.test": None,
        },
    )
    device = pick_device()
    precision = pick_precision(config.train.precision, device)
    check_method(config, device)
    prepared = prepare(config, console or QuietConsole(), print_warnings=False)
    config = prepared.config  # with the settings it leaves unset chosen from the data
    examples = prepared.splits["train"].examples
    preference = config.train.objective != "sft"  # Scored rows (formatting/pairs.py)
    rows = [e.row(i) if preference else {"input_ids": e.input_ids, "labels": e.labels} for i, e in enumerate(examples)]
    train_rows = dataset_rows(rows, config)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    baseline = _status("VmRSS")
    reset = _reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated()
    model = trainable_model(config, prepared.ref, device=device, precision=precision).model
    with tempfile.TemporaryDirectory(prefix="tunesmith-plan-") as scratch:
        if config.train.objective in ("dpo", "kto"):  # the run scores its reference first: part of its peak
            from tunesmith.training.reference import attach_reference

            attach_reference(
                model,
                {"train": rows},
                Path(scratch) / "reference_logps.safetensors",
                log=lambda _: None,
                precision=precision,
            )
        trainer = build_trainer(
            model,
            config,
            Path(scratch),
            train_rows,
            [],
            pad_id=prepared.tokenizer.pad_token_id or 0,
            device=device,
            precision=precision,
            callbacks=[Timer()],
        )
        trainer.train()
        peak_rss = _status("VmHWM")
    result: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "steps": len(times),
        "step_seconds": sum(times[1:]) / max(len(times) - 1, 1) if len(times) > 1 else (times[0] if times else None),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak_rss,
        "peak_rss_above_idle_bytes": peak_rss - baseline if reset else None,
    }
    if device == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated() - cuda_baseline
    return result


RANDOM_MODELS: dict[str, dict[str, Any]] = {
    # shapes unlike the embedded SmolLM2 (576 wide, 30 layers, head_dim 64, no biases), scaled so
    # that one CPU training step takes seconds; the embedded tokenizer's 49152-token vocabulary
    "qwen2-biases": {
        "model_type": "qwen2",
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    },  # Qwen2: q/k/v biases
    "llama-wide": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 4096,
        "num_hidden_layers": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
    },
    "mistral-hd128": {
        "model_type": "mistral",
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "sliding_window": None,
    },
}
"""Random-weight models built from configs, for checking the memory estimate off the embedded model."""


def random_model(folder: Path, shape: str) -> Path:
    """Save a model of `RANDOM_MODELS[shape]` with random weights (seed 0) and the embedded model's
    tokenizer into `folder` (once: an existing folder is reused)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.models.embedded import ensure_embedded_model

    folder = Path(folder)
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    source = ensure_embedded_model("smollm2-135m-instruct")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    settings = dict(RANDOM_MODELS[shape])
    config = AutoConfig.for_model(
        settings.pop("model_type"),
        vocab_size=49152,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        max_position_embeddings=4096,
        **settings,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    """`python -m tunesmith.plan.measure CONFIG [--steps N] [--set k=v ...]`: one JSON line."""
    import argparse

    from tunesmith.config import load_config
    from tunesmith.console import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m tunesmith.plan.measure")
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    quiet_libraries()
    result = warm_up(load_config(args.config, args.overrides), steps=args.steps)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
