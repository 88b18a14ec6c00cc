from tunesmith.evaluate.metrics import exact, json_exact, json_valid, score


def test_json_exact_ignores_key_order_and_spacing_but_not_values():
    reference = '{"intent": "lights_on", "slots": {"room": "kitchen"}}'
    assert json_exact('{"slots":{"room":"kitchen"},"intent":"lights_on"}', reference) == 1.0
    assert json_exact('{"intent": "lights_on", "slots": {"room": "garage"}}', reference) == 0.0
    assert json_exact('{"intent": "lights_on", "slots": {"room": "kitchen"}', reference) == 0.0  # truncated


def test_json_valid_wants_an_object():
    assert json_valid('{"a": 1}', "") == 1.0
    assert json_valid("[1, 2]", "") == 0.0
    assert json_valid("Sure! Here is the JSON: {}", "") == 0.0


def test_exact_strips_whitespace_only():
    assert exact(" yes\n", "yes") == 1.0
    assert exact("Yes", "yes") == 0.0
    assert score("1", "1", ["exact", "json_exact", "json_valid"]) == {
        "exact": 1.0,
        "json_exact": 1.0,
        "json_valid": 0.0,
    }


# --- metrics added with issue 6; every expected value below is worked out by hand in the comment ---

import math  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tunesmith.errors import UserError  # noqa: E402
from tunesmith.evaluate.metrics import (  # noqa: E402
    contains,
    json_fields,
    normalize_answer,
    normalized,
    resolve_metrics,
    rouge_l,
)


def test_normalized_ignores_case_punctuation_articles_and_spacing():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalized("the eiffel tower.", "Eiffel   Tower") == 1.0
    assert normalized("an apple", "apple") == 1.0
    assert normalized("theme park", "me park") == 0.0  # "the" inside a word is not an article
    assert normalized("Paris", "London") == 0.0


def test_contains_is_verbatim_substring_of_the_stripped_reference():
    assert contains("The answer is 42.", " 42\n") == 1.0
    assert contains("The answer is 4", "42") == 0.0
    assert contains("Paris", "paris") == 0.0  # case counts
    assert contains("", "") == 1.0 and contains("x", "") == 0.0


def test_regex_metric_uses_the_configured_pattern():
    metrics = resolve_metrics(["regex"], regex=r"^\d{3}-\d{4}$")
    assert metrics["regex"]("555-1234", "ignored") == 1.0
    assert metrics["regex"]("call 555-1234", "ignored") == 0.0
    with pytest.raises(UserError, match="eval.regex"):
        resolve_metrics(["regex"])


def test_json_fields_counts_equal_leaves_of_the_reference():
    reference = '{"intent": "lights_on", "slots": {"room": "kitchen", "level": 3}, "tags": ["a", "b"]}'
    # leaves: intent, slots.room, slots.level, tags -> 4
    assert json_fields(reference, reference) == 1.0
    # intent right, room wrong, level right, tags wrong order -> 2/4
    assert (
        json_fields('{"intent": "lights_on", "slots": {"room": "hall", "level": 3}, "tags": ["b", "a"]}', reference)
        == 0.5
    )
    # extra keys in the prediction do not count against it; "3" (a string) is not 3 -> 2/4 (intent, tags)
    assert json_fields('{"intent": "lights_on", "x": 1, "slots": {"level": "3"}, "tags": ["a", "b"]}', reference) == 0.5
    assert json_fields('{"intent": "lights_on", "slots": {"room": "kitchen"', reference) == 0.0  # not JSON
    assert json_fields('{"level": 1}', '{"level": true}') == 0.0  # True == 1 in Python, not in JSON
    assert json_fields("[1, 2]", "[1, 2]") == 1.0  # a non-object reference: parsed equality


def test_rouge_l_f1_from_the_longest_common_subsequence():
    # LCS("a b c d e", "a c e f") = a c e = 3; P = 3/5, R = 3/4, F = 2PR/(P+R) = 0.9/1.35 = 2/3
    assert math.isclose(rouge_l("a b c d e", "a c e f"), 2 / 3)
    # reversed order: LCS = 1; P = R = 1/3; F = 1/3
    assert math.isclose(rouge_l("x y z", "z y x"), 1 / 3)
    assert rouge_l("same words here", "same words here") == 1.0
    assert rouge_l("nothing shared", "at all") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "word") == 0.0


def test_user_metric_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_eval_metrics.py").write_text(
        "def length_ratio(prediction, reference):\n"
        "    return min(len(prediction), len(reference)) / max(len(prediction), len(reference), 1)\n"
        "def too_big(prediction, reference):\n    return 2.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        scores = score("abcd", "ab", ["exact", "my_eval_metrics:length_ratio"])
        assert scores == {"exact": 0.0, "my_eval_metrics:length_ratio": 0.5}
        with pytest.raises(UserError, match="outside"):
            score("a", "b", ["my_eval_metrics:too_big"])
        with pytest.raises(UserError, match="has no function nope"):
            resolve_metrics(["my_eval_metrics:nope"])
    finally:
        sys.modules.pop("my_eval_metrics", None)
    with pytest.raises(UserError) as err:
        resolve_metrics(["no_such_module_xyz.sub:f"])
    assert "no_such_module_xyz.sub:f" in str(err.value) and "\n" not in str(err.value)


def test_config_accepts_new_metrics_and_checks_regex():
    from pydantic import ValidationError

    from tunesmith.config.schema import EvalConfig

    config = EvalConfig(metrics=["normalized", "rouge_l", "json_fields", "contains", "pkg.mod:fn"])
    assert config.metrics[-1] == "pkg.mod:fn"
    assert EvalConfig(metrics=["regex"], regex=r"\d+").regex == r"\d+"
    for bad in ({"metrics": ["regex"]}, {"metrics": ["exact"], "regex": "("}, {"metrics": ["rouge"]}):
        with pytest.raises(ValidationError):
            EvalConfig(**bad)
