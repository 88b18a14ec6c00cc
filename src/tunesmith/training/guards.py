"""Stop a diverging run before it writes anything non-finite.

A NaN or inf loss, or non-finite gradients, stop the run *before* the optimizer step, so the
weights in memory (and every checkpoint) are still those of the last good step. The error names
the optimizer step and the rows (`file:line`) of the micro-batches that produced it. transformers'
default of quietly replacing a NaN loss in the logs (`logging_nan_inf_filter`) is switched off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from tunesmith.errors import TunesmithError

SHOWN_SOURCES = 8


class NonFiniteError(TunesmithError):
    """Training produced NaN/inf; nothing non-finite was written."""


def describe_sources(sources: Sequence[str]) -> str:
    """The rows of a step, deduplicated, the first few named.

    >>> describe_sources(["a.jsonl:3", "a.jsonl:9", "a.jsonl:3"])
    'rows a.jsonl:3, a.jsonl:9'
    >>> describe_sources([f"d.jsonl:{i}" for i in range(1, 11)])
    'rows d.jsonl:1, d.jsonl:2, d.jsonl:3, d.jsonl:4, d.jsonl:5, d.jsonl:6, d.jsonl:7, d.jsonl:8 and 2 more'
    """
    unique = list(dict.fromkeys(sources))
    if not unique:
        return "rows unknown"
    shown = ", ".join(unique[:SHOWN_SOURCES])
    more = len(unique) - SHOWN_SOURCES
    return f"rows {shown}" + (f" and {more} more" if more > 0 else "")


def non_finite_loss(step: int, value: float, sources: Sequence[str]) -> NonFiniteError:
    return NonFiniteError(
        f"training stopped at step {step}: the loss is {value} ({describe_sources(sources)}); "
        "nothing from this step was applied or saved. Lower train.learning_rate, check these "
        "rows, or use train.precision: fp32/bf16 instead of fp16"
    )


def non_finite_gradients(step: int, norm: float, sources: Sequence[str]) -> NonFiniteError:
    return NonFiniteError(
        f"training stopped at step {step}: the gradient norm is {norm} "
        f"({describe_sources(sources)}); the optimizer step was not taken and nothing was saved. "
        "Lower train.learning_rate or train.max_grad_norm, or check these rows"
    )


def is_finite(value: Any) -> bool:
    """A float or a one-element tensor is finite (not NaN, not +-inf)."""
    return math.isfinite(float(value))


def check_finite_weights(model: Any) -> None:
    """Raise before saving if any trainable weight is NaN/inf (the guard should make this impossible)."""
    check_finite_tensors(((n, p) for n, p in model.named_parameters() if p.requires_grad), what="trainable weight")


def check_finite_tensors(named: Iterable[tuple[str, Any]], *, what: str) -> None:
    """Raise `NonFiniteError` naming the first of `named`'s floating-point tensors holding NaN/inf."""
    import torch

    bad = [name for name, t in named if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"refusing to save: {len(bad)} {what} tensors hold NaN/inf (first: {bad[0]})")
