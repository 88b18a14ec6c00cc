"""Generation metrics: each takes (prediction, reference) and returns 0.0 or 1.0."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_MISSING = object()


def parse_json(text: str) -> Any:
    """The JSON value in `text` (surrounding whitespace allowed), or a sentinel if it is not JSON.

    >>> parse_json(' {"a": 1} ')
    {'a': 1}
    """
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return _MISSING


def exact(prediction: str, reference: str) -> float:
    """Same text, ignoring surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


def json_valid(prediction: str, reference: str) -> float:
    """The prediction is a JSON object (what the structured tasks ask for)."""
    return float(isinstance(parse_json(prediction), dict))


def json_exact(prediction: str, reference: str) -> float:
    """The prediction parses to the same JSON value as the reference (key order and spacing ignored).

    >>> json_exact('{"b": 2, "a": 1}', '{"a": 1, "b": 2}'), json_exact('{"a": 1}', '{"a": 2}')
    (1.0, 0.0)
    """
    predicted = parse_json(prediction)
    return float(predicted is not _MISSING and predicted == parse_json(reference))


METRICS: dict[str, Callable[[str, str], float]] = {"exact": exact, "json_exact": json_exact, "json_valid": json_valid}


def score(prediction: str, reference: str, names: list[str]) -> dict[str, float]:
    return {name: METRICS[name](prediction, reference) for name in names}
