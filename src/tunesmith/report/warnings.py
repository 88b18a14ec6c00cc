"""Warnings a report shows first: overfitting, truncated rows, few trained tokens.

The overfitting rule (see `overfitting`): with at least two evaluations, warn when the last eval
loss is above the lowest eval loss by more than OVERFIT_RISE (relative) and OVERFIT_MIN_RISE
(absolute), while the train loss at the last evaluation is lower than at the best one.
"""

from __future__ import annotations

from typing import Any

OVERFIT_RISE = 0.10
"""The last eval loss must exceed the minimum by more than this share of the minimum..."""
OVERFIT_MIN_RISE = 0.01
"""...and by more than this absolute amount (near-zero losses wobble by large shares)."""
TRAIN_WINDOW = 3
"""Train loss at an evaluation: the mean of the last this-many train losses logged up to its step."""
LOW_TRAINABLE_SHARE = 0.05
"""Same threshold as tunesmith.formatting.prepare.LOW_TRAINABLE_SHARE (not imported: no tokenizers here)."""


def train_loss_at(train: list[tuple[int, float]], step: int, window: int = TRAIN_WINDOW) -> float | None:
    """Mean of the last `window` train losses logged at or before `step`; None if none was."""
    before = [loss for s, loss in train if s <= step][-window:]
    return sum(before) / len(before) if before else None


def overfitting(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> str | None:
    """The overfitting warning, or None. `train` and `evals` are (step, loss) in step order."""
    if len(evals) < 2:
        return None
    best_step, best = min(evals, key=lambda point: (point[1], point[0]))
    last_step, last = evals[-1]
    if last_step <= best_step:
        return None
    rise = last - best
    if rise <= max(OVERFIT_RISE * abs(best), OVERFIT_MIN_RISE):
        return None
    train_best, train_last = train_loss_at(train, best_step), train_loss_at(train, last_step)
    if train_best is None or train_last is None or not train_last < train_best:
        return None  # both rising is not overfitting (learning rate too high, data changed...)
    return (
        f"overfitting: eval loss rose from {best:.4f} (step {best_step}) to {last:.4f} (step {last_step}), "
        f"+{rise / abs(best) if best else float('inf'):.0%}, while train loss fell from {train_best:.4f} to "
        f"{train_last:.4f}; train fewer epochs, use more data, or keep the best checkpoint "
        f"(train.load_best_at_end, train.early_stopping_patience)"
    )


def data_warnings(data_report: dict[str, Any] | None) -> list[str]:
    """Truncated rows, untrained end-of-turn markers and a low trained-token share, per split."""
    notes: list[str] = []
    few = ((data_report or {}).get("schedule") or {}).get("warning")
    if few:  # too few optimizer steps (training/defaults.py)
        notes.append(few)
    for split, report in ((data_report or {}).get("splits") or {}).items():
        if not isinstance(report, dict) or "tokens" not in report:
            continue  # the test split records only its row count
        rows = report.get("rows", 0)
        if report.get("truncated"):
            notes.append(
                f"truncated rows: {report['truncated']} of {rows} {split} rows are longer than "
                "template.max_length and were cut"
            )
        if report.get("truncated_turns"):
            notes.append(
                f"truncated turns: {report['truncated_turns']} assistant turns in {split} were cut by "
                "template.max_length"
            )
        if report.get("missing_end_of_turn"):
            notes.append(
                f"end of turn not trained: {report['missing_end_of_turn']} {split} rows; the model may "
                "not learn to stop"
            )
        share = report.get("trainable_share")
        if report.get("tokens") and share is not None and share < LOW_TRAINABLE_SHARE:
            notes.append(
                f"low trainable-token share: only {share:.1%} of {split} tokens train (under "
                f"{LOW_TRAINABLE_SHARE:.0%}); most compute goes into prompts (check template.train_on)"
            )
    return notes


def run_warnings(
    train: list[tuple[int, float]], evals: list[tuple[int, float]], data_report: dict[str, Any] | None
) -> list[str]:
    found = overfitting(train, evals)
    return ([found] if found else []) + data_warnings(data_report)
