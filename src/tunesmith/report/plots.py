"""loss.png: train and eval loss, learning rate, tokens/s and (preference runs) reward accuracy and
margin against the optimizer step.

Drawn with matplotlib's Agg canvas directly (no pyplot), so no global backend is chosen for the
process that trains, and nothing needs a display.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Curves:
    """metrics.jsonl split into its series, each a list of (step, value) in file order."""

    train: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: list[tuple[int, float]] = field(default_factory=list)
    accuracy: list[tuple[int, float]] = field(default_factory=list)
    """A preference run's reward accuracy on the validation pairs (train batches without validation)."""
    margin: list[tuple[int, float]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)


def read_curves(path: Path) -> Curves:
    """The series in metrics.jsonl; a missing file or a half-written last line gives what is there."""
    curves = Curves()
    if not path.is_file():
        return curves
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        curves.records.append(record)
        step = record["step"]
        for key, series in (
            ("loss", curves.train),
            ("eval_loss", curves.evals),
            ("lr", curves.lr),
            ("tokens_per_s", curves.tokens_per_s),
            ("eval_rewards/accuracy", curves.accuracy),
            ("eval_rewards/margin", curves.margin),
        ):
            if isinstance(record.get(key), (int, float)):
                series.append((step, float(record[key])))
    if not curves.accuracy:  # no validation split: the train batches' own
        for record in curves.records:
            for key, series in (("rewards/accuracy", curves.accuracy), ("rewards/margin", curves.margin)):
                if isinstance(record.get(key), (int, float)):
                    series.append((record["step"], float(record[key])))
    return curves


def draw_loss_png(curves: Curves, path: Path) -> Path | None:
    """Write loss.png (loss, learning rate, tokens/s panels); None when there is no train loss."""
    if not curves.train:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 1 + bool(curves.lr) + bool(curves.tokens_per_s) + bool(curves.accuracy)
    figure = Figure(figsize=(8, 2.6 * panels + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    loss = axes[0]
    loss.plot(*zip(*curves.train), label="train loss", color="#1f77b4", linewidth=1.2)
    if curves.evals:
        loss.plot(*zip(*curves.evals), label="eval loss", color="#d62728", marker="o", linewidth=1.5)
    loss.set_ylabel("loss")
    loss.legend(loc="upper right")
    loss.grid(alpha=0.3)
    index = 1
    if curves.lr:
        axes[index].plot(*zip(*curves.lr), color="#2ca02c", linewidth=1.2)
        axes[index].set_ylabel("learning rate")
        axes[index].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        axes[index].grid(alpha=0.3)
        index += 1
    if curves.tokens_per_s:
        axes[index].plot(*zip(*curves.tokens_per_s), color="#9467bd", linewidth=1.2)
        axes[index].set_ylabel("tokens/s")
        axes[index].grid(alpha=0.3)
        index += 1
    if curves.accuracy:
        axes[index].plot(*zip(*curves.accuracy), label="reward accuracy", color="#ff7f0e", marker="o", linewidth=1.2)
        if curves.margin:
            axes[index].plot(*zip(*curves.margin), label="reward margin", color="#8c564b", marker="s", linewidth=1.2)
        axes[index].set_ylabel("preference")
        axes[index].legend(loc="lower right")
        axes[index].grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    from tunesmith.runfolder import atomic_file

    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", metadata={"Software": None})
    return path
