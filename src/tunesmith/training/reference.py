"""A preference run's reference log-probabilities: every sequence of every train and validation row
scored once, before the first step, by the model as it starts, and kept in the run folder
(`reference_logps.safetensors`, one [rows, sequences] tensor per split).

Scoring once replaces a reference forward pass in every step (a third of a DPO step's compute), and
needs no second model in memory for full fine-tuning. The model as it starts is the right
reference for every method: the base for a fresh LoRA adapter (which starts as the base) or a full
fine-tune, and the adapter itself when a run starts from one (`model.adapter`), where switching the
adapter off would compare against the base instead. A resumed run reads the file, so its reference
is the one the interrupted run trained against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunesmith.formatting.collate import collate_scored
from tunesmith.runfolder import atomic_file

SCORE_ROWS = 8
"""Rows scored per forward pass (packed, so memory grows with their tokens only)."""


def attach_reference(
    model: Any, splits: dict[str, list[dict]], path: Path, log: Any = print, *, precision: str = "fp32"
) -> None:
    """Set `row["reference"]` (one float per sequence) on every row of `splits`: read from `path`
    when it holds these splits' shapes, else computed now, at the run's `precision`, and written there."""
    from safetensors.torch import load_file, save_file

    shapes = {name: (len(rows), len(rows[0]["sequences"])) for name, rows in splits.items() if rows}
    stored = load_file(str(path)) if path.is_file() else {}
    if stored and {k: tuple(v.shape) for k, v in stored.items()} == shapes:
        log(f"reference log-probabilities read from {path.name}")
    else:
        stored = {name: reference_logps(model, splits[name], precision) for name in shapes}
        with atomic_file(path) as staging:
            save_file(stored, str(staging))
        log(f"reference log-probabilities of {sum(s[0] for s in shapes.values()):,} rows computed, kept in {path.name}")
    for name, values in stored.items():
        for row, value in zip(splits[name], values.tolist()):
            row["reference"] = value


def reference_logps(model: Any, rows: list[dict], precision: str = "fp32") -> torch.Tensor:
    """[rows, sequences] summed log-probabilities under `model` in eval mode (no dropout, no gradient),
    computed as the Trainer computes the policy's: under autocast in a bf16 or fp16 run, so that the
    first step's policy equals its reference and rewards start at exactly 0."""
    from tunesmith.training.preference import prompt_shared, score

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = len(rows[0]["sequences"])
    shared = prompt_shared(model)
    cast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    parts = []
    with torch.no_grad(), torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
        for start in range(0, len(rows), SCORE_ROWS):
            chunk = rows[start : start + SCORE_ROWS]
            packed = collate_scored(chunk, share_prompt=shared)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in packed.items()}
            totals = score(model, batch).total.float().cpu()
            parts.append(totals.reshape(width, len(chunk)).T)  # sequence k of every row, then k+1
    model.train(was_training)
    return torch.cat(parts).contiguous()
