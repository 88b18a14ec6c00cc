"""Preference rows: each format detected with its reason and read into the same prompt/answers,
and the rows a preference objective must not train on named by file:line and field."""

from __future__ import annotations

import pytest

from tunesmith.data.preference import (
    KtoSample,
    PreferencePair,
    check_preference,
    detect_preference_format,
    to_preference,
)
from tunesmith.data.types import Message, Provenance, RowError

WHERE = Provenance("prefs.jsonl", 7)
USER = {"role": "user", "content": "Turn on the kitchen light"}
GOOD = '{"device": "light", "room": "kitchen", "state": "on"}'
BAD = '{"device": "light", "room": "bedroom", "state": "on"}'
PROMPT = (Message("user", "Turn on the kitchen light"),)
CHOSEN = (Message("assistant", GOOD),)
REJECTED = (Message("assistant", BAD),)

ROWS = {
    "trl text": ({"prompt": USER["content"], "chosen": GOOD, "rejected": BAD}, "trl"),
    "trl messages": (
        {
            "prompt": [USER],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
        },
        "trl",
    ),
    "trl implicit prompt": (
        {
            "chosen": [USER, {"role": "assistant", "content": GOOD}],
            "rejected": [USER, {"role": "assistant", "content": BAD}],
        },
        "trl",
    ),
    "ultrafeedback binarized": (
        {
            "prompt": USER["content"],
            "chosen": [USER, {"role": "assistant", "content": GOOD}],
            "rejected": [USER, {"role": "assistant", "content": BAD}],
            "score_chosen": 9.0,
            "score_rejected": 3.0,
        },
        "trl",
    ),
    "llamafactory": (
        {
            "conversations": [{"from": "human", "value": USER["content"]}],
            "chosen": {"from": "gpt", "value": GOOD},
            "rejected": {"from": "gpt", "value": BAD},
        },
        "llamafactory",
    ),
    "openai / together dpo": (
        {
            "input": {"messages": [USER]},
            "preferred_output": [{"role": "assistant", "content": GOOD}],
            "non_preferred_output": [{"role": "assistant", "content": BAD}],
        },
        "openai_dpo",
    ),
    "anthropic hh": (
        {
            "chosen": f"\n\nHuman: {USER['content']}\n\nAssistant: {GOOD}",
            "rejected": f"\n\nHuman: {USER['content']}\n\nAssistant: {BAD}",
        },
        "hh",
    ),
}


@pytest.mark.parametrize("name", ROWS)
def test_each_pair_format_is_detected_and_reads_as_the_same_pair(name):
    row, fmt = ROWS[name]
    detected, reason = detect_preference_format(row)
    assert detected == fmt and reason
    pair = to_preference(row, WHERE, fmt)
    assert isinstance(pair, PreferencePair)
    assert (pair.prompt, pair.chosen, pair.rejected) == (PROMPT, CHOSEN, REJECTED)
    assert check_preference(pair) == []


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": USER["content"], "completion": BAD, "label": False},
        {"prompt": USER["content"], "completion": BAD, "label": "false"},  # a CSV cell
        {"messages": [USER, {"role": "assistant", "content": BAD}], "label": False},
    ],
)
def test_kto_rows_read_as_one_answer_marked_good_or_bad(row):
    assert detect_preference_format(row)[0] == "kto"
    sample = to_preference(row, WHERE, "kto")
    assert isinstance(sample, KtoSample)
    assert (sample.prompt, sample.completion, sample.desirable) == (PROMPT, REJECTED, False)


def test_a_multi_turn_prompt_with_a_tool_call_keeps_the_whole_conversation_before_the_answer():
    call = {"type": "function", "function": {"name": "lights", "arguments": {"room": "kitchen"}}}
    history = [
        {"role": "system", "content": "You control the house."},
        USER,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "ok"},
        {"role": "user", "content": "And the hall?"},
    ]
    row = {
        "chosen": [*history, {"role": "assistant", "content": "Hall light on."}],
        "rejected": [*history, {"role": "assistant", "content": "I cannot do that."}],
    }
    pair = to_preference(row, WHERE, "trl")
    assert len(pair.prompt) == 5 and pair.prompt[2].tool_calls[0].name == "lights"
    assert pair.chosen == (Message("assistant", "Hall light on."),)


@pytest.mark.parametrize(
    ("row", "fmt", "field", "words"),
    [
        (
            {
                "chosen": [USER, {"role": "assistant", "content": GOOD}],
                "rejected": [
                    {"role": "user", "content": "Turn on the bedroom light"},
                    {"role": "assistant", "content": BAD},
                ],
            },
            "trl",
            "rejected[0]",
            "share its prompt",
        ),
        ({"prompt": USER["content"], "completion": GOOD, "label": "yes"}, "kto", "label", "true or false"),
        ({"prompt": USER["content"], "completion": GOOD, "label": 1}, "kto", "label", "true or false"),
        (
            {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": GOOD, "rejected": BAD},
            "trl",
            "prompt",
            "user (or tool) turn",
        ),
        (
            {"prompt": USER["content"], "chosen": [{"role": "user", "content": "x"}], "rejected": BAD},
            "trl",
            "chosen[0].role",
            "user turn inside an answer",
        ),
        ({"chosen": "no transcript", "rejected": "x", "prompt": 3}, "trl", "prompt", "string or a list"),
    ],
)
def test_rows_that_cannot_be_a_preference_name_file_line_and_field(row, fmt, field, words):
    with pytest.raises(RowError) as caught:
        to_preference(row, WHERE, fmt)
    issue = caught.value.issue
    assert (issue.where, issue.field) == (WHERE, field), str(issue)
    assert words in str(issue) and str(issue).startswith("prefs.jsonl:7: ")


def test_empty_and_identical_answers_are_errors_at_their_field():
    same = to_preference({"prompt": "q", "chosen": GOOD, "rejected": GOOD}, WHERE, "trl")
    assert [(i.code, i.field) for i in check_preference(same)] == [("same_answers", "rejected")]
    empty = to_preference({"prompt": "q", "chosen": GOOD, "rejected": "  "}, WHERE, "trl")
    assert [(i.code, i.field) for i in check_preference(empty)] == [("empty_answer", "rejected")]
    assert str(check_preference(empty)[0]).startswith("prefs.jsonl:7: rejected: ")


def test_chat_rows_are_not_preference_rows():
    assert detect_preference_format({"messages": [USER]}) is None
    assert detect_preference_format({"prompt": "a", "completion": "b"}) is None


def test_a_chat_row_with_a_class_label_is_not_a_kto_row():
    assert detect_preference_format({"messages": [USER], "label": "positive"}) is None
    assert detect_preference_format({"messages": [USER], "label": True})[0] == "kto"
