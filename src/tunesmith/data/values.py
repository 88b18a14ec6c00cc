"""Reading values out of rows: the shared helpers of the format adapters.

Each helper either returns the value in the type asked for or raises `RowError` naming the field.
A list or object that arrives as JSON text (a CSV cell) is decoded; text stays text.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from tunesmith.data.types import Issue, Provenance, RowError

_WEIGHT_TEXT = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}  # CSV cells


def fail(where: Provenance, code: str, field: str, message: str, hint: str = "") -> NoReturn:
    raise RowError(Issue(code, "error", where, field, message, hint))


def kind(value: Any) -> str:
    """The type name an error shows: `str`, `int`, `list`, `dict`, `null`."""
    return "null" if value is None else type(value).__name__


def short(value: Any, limit: int = 40) -> str:
    """A user value quoted in an error, cut to `limit` characters.

    >>> short("x" * 50, 10)
    "'xxxxxxxx…"
    """
    text_ = repr(value)
    return text_ if len(text_) <= limit else text_[: limit - 1] + "…"


def decoded(value: Any, want: type) -> Any:
    """`value`, or what its JSON text holds when that is a `want` (CSV cells hold lists as text)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        if isinstance(parsed, want):
            return parsed
    return value


def as_list(value: Any, where: Provenance, field: str) -> list:
    value = decoded(value, list)
    if not isinstance(value, (list, tuple)):
        fail(where, "wrong_type", field, f"expected a list, got {kind(value)}")
    return list(value)


def as_dict(value: Any, where: Provenance, field: str) -> dict:
    value = decoded(value, dict)
    if not isinstance(value, dict):
        fail(where, "wrong_type", field, f"expected an object, got {kind(value)}")
    return value


def text(value: Any, where: Provenance, field: str) -> str:
    if not isinstance(value, str):
        fail(where, "wrong_type", field, f"expected a string, got {kind(value)}")
    return value


def optional_str(value: Any, where: Provenance, field: str) -> str | None:
    return None if value is None else text(value, where, field)


def weight(value: Any, where: Provenance, field: str) -> float | None:
    """0 or 1 (also 0.0, 1.0 and their text, as CSV gives them) as a float; None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip() in _WEIGHT_TEXT:
        return _WEIGHT_TEXT[value.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return float(value)
    fail(
        where,
        "bad_weight",
        field,
        f"expected 0 or 1, got {short(value)}",
        "weight 1 trains this assistant turn, 0 leaves it out of the loss",
    )


def message_weight(item: dict, role: str, where: Provenance, field: str) -> float | None:
    """A message's `weight`, or LLaMA-Factory's `loss_weight`; both given must agree.

    LLaMA-Factory v1 writes `loss_weight: 0.0` on every system and user message; that is what
    happens to them anyway, so a 0 `loss_weight` off an assistant message is dropped.
    """
    given = weight(item.get("weight"), where, f"{field}.weight")
    loss = weight(item.get("loss_weight"), where, f"{field}.loss_weight")
    if given is not None and loss is not None and given != loss:
        fail(
            where,
            "conflicting_weight",
            f"{field}.loss_weight",
            f"loss_weight {loss:g} disagrees with weight {given:g}",
            "give one of them",
        )
    if loss == 0 and given is None and role != "assistant":
        return None
    return given if given is not None else loss
