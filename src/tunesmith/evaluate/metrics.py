"""Generation metrics: each takes (prediction, reference) and returns a score in [0, 1].

Built-in metrics are named in `eval.metrics`; a user metric is a `module:function` entry whose
function takes (prediction, reference) and returns a float in [0, 1].
"""

from __future__ import annotations

import importlib
import json
import math
import re
import string
from collections.abc import Callable
from typing import Any

from tunesmith.errors import UserError

_MISSING = object()
Metric = Callable[[str, str], float]


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


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization: lowercase, no punctuation, no articles (a, an, the), single spaces.

    >>> normalize_answer("  The Cat, sat on  a MAT! ")
    'cat sat on mat'
    """
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalized(prediction: str, reference: str) -> float:
    """Same text after `normalize_answer`."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains(prediction: str, reference: str) -> float:
    """The reference (surrounding whitespace stripped) appears verbatim in the prediction.
    An empty reference is contained only in an empty prediction."""
    wanted = reference.strip()
    if not wanted:
        return float(not prediction.strip())
    return float(wanted in prediction)


def regex_metric(pattern: str) -> Metric:
    """A metric: 1.0 when `re.search(pattern, prediction)` finds a match (the reference is unused)."""
    compiled = re.compile(pattern)

    def regex(prediction: str, reference: str) -> float:
        return float(compiled.search(prediction) is not None)

    return regex


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


def _leaves(value: Any, path: tuple = ()) -> dict[tuple, Any]:
    """Leaf fields of nested objects by key path; a list or scalar (or an empty object) is one leaf."""
    if isinstance(value, dict) and value:
        out: dict[tuple, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, (*path, key)))
        return out
    return {path: value}


def json_fields(prediction: str, reference: str) -> float:
    """Share of the reference object's leaf fields (top-level and nested) that the prediction has,
    at the same key path, with an equal value. A reference that is not a JSON object scores as
    `json_exact`; a prediction that is not an object scores 0.

    >>> json_fields('{"a": 1, "b": {"c": 2, "d": 3}}', '{"a": 1, "b": {"c": 2, "d": 4}, "e": 5}')
    0.5
    """
    ref = parse_json(reference)
    if not isinstance(ref, dict) or not ref:
        return json_exact(prediction, reference)
    pred = parse_json(prediction)
    if not isinstance(pred, dict):
        return 0.0
    wanted, got = _leaves(ref), _leaves(pred)
    hits = sum(
        1 for path, value in wanted.items() if path in got and got[path] == value and type(got[path]) is type(value)
    )
    return hits / len(wanted)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one row of the DP table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens: LCS-based precision and recall, harmonic mean.

    >>> round(rouge_l("the cat sat down", "the cat was sitting down"), 4)  # LCS 3: P 3/4, R 3/5
    0.6667
    """
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


_CALL_BLOCKS = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def tool_calls_in(text: str) -> list[tuple[str, Any]] | None:
    """The (name, arguments) of each `<tool_call>{"name", "arguments"}</tool_call>` block (Hermes/Qwen
    JSON style, as `chatml_tools` writes them), arguments parsed when given as JSON text; None when a
    block is not such a JSON call.

    >>> tool_calls_in('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>')
    [('f', {'a': 1})]
    """
    calls = []
    for block in _CALL_BLOCKS.findall(text):
        call = parse_json(block)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            arguments = parse_json(arguments)
        calls.append((call["name"], arguments))
    return calls


def tool_call(prediction: str, reference: str) -> float:
    """The prediction calls the same tools with the same arguments as the reference (both as
    `<tool_call>` JSON blocks; argument key order and spacing ignored), and the reference has a call.

    >>> tool_call('<tool_call>{"name": "f", "arguments": {"a": 1, "b": 2}}</tool_call>',
    ...           '<tool_call>{"name": "f", "arguments": {"b": 2, "a": 1}}</tool_call>')
    1.0
    """
    expected = tool_calls_in(reference)
    got = tool_calls_in(prediction)
    return float(bool(expected) and got == expected)


def tool_name(prediction: str, reference: str) -> float:
    """The prediction calls the reference's tools by name (arguments not compared)."""
    expected, got = tool_calls_in(reference), tool_calls_in(prediction)
    if not expected or got is None:
        return 0.0
    return float([n for n, _ in got] == [n for n, _ in expected])


METRICS: dict[str, Metric] = {
    "exact": exact,
    "normalized": normalized,
    "contains": contains,
    "json_exact": json_exact,
    "json_valid": json_valid,
    "json_fields": json_fields,
    "rouge_l": rouge_l,
    "tool_call": tool_call,
    "tool_name": tool_name,
}


def user_metric(entry: str) -> Metric:
    """The function named by a `module:function` entry of eval.metrics, or a one-line UserError."""
    module_name, _, function_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's module
        raise UserError(
            f"eval.metrics: {entry}: cannot import {module_name} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"eval.metrics: {entry}: {module_name} has no function {function_name}")
    return _checked(entry, function)


def _checked(entry: str, function: Callable[[str, str], Any]) -> Metric:
    def run(prediction: str, reference: str) -> float:
        value = function(prediction, reference)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"eval.metrics: {entry} returned {value!r}, not a number in [0, 1]") from None
        if math.isnan(number) or not 0.0 <= number <= 1.0:
            raise UserError(f"eval.metrics: {entry} returned {number}, outside [0, 1]")
        return number

    return run


def resolve_metrics(names: list[str], *, regex: str | None = None) -> dict[str, Metric]:
    """The metric function of every name, user metrics imported now (before any generation)."""
    resolved: dict[str, Metric] = {}
    for name in names:
        if name in METRICS:
            resolved[name] = METRICS[name]
        elif name == "regex":
            if not regex:
                raise UserError("eval.metrics: regex needs eval.regex (the pattern answers must match)")
            resolved[name] = regex_metric(regex)
        elif ":" in name:
            resolved[name] = user_metric(name)
        else:
            raise UserError(
                f"eval.metrics: unknown metric {name!r}; known: {', '.join([*METRICS, 'regex'])} or module:function"
            )
    return resolved


def score(
    prediction: str, reference: str, names: list[str] | dict[str, Metric], *, regex: str | None = None
) -> dict[str, float]:
    """Every metric's score for one answer; `names` may be already resolved (`resolve_metrics`)."""
    metrics = names if isinstance(names, dict) else resolve_metrics(names, regex=regex)
    return {name: metric(prediction, reference) for name, metric in metrics.items()}
