"""The sample rules: each fires on a minimal sample with its code, field and severity; clean data passes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunesmith.data.keys import content_key, near_key, normalize_text
from tunesmith.data.types import Conversation, Message, Provenance, TextSample, TokenSample, ToolCall
from tunesmith.data.validate import check_sample

WHERE = Provenance("data.jsonl", 7)


def conv(*messages: Message, tools: tuple[dict, ...] = ()) -> Conversation:
    return Conversation(tuple(messages), WHERE, tools=tools)


def user(content: str = "hi", **kw) -> Message:
    return Message("user", content, **kw)


def assistant(content: str = "hello", **kw) -> Message:
    return Message("assistant", content, **kw)


CALL = ToolCall("get_weather", '{"city": "Paris"}', id="call_1")


def found(sample) -> list[tuple[str, str, str]]:
    return [(i.code, i.field, i.severity) for i in check_sample(sample)]


def test_a_clean_conversation_has_no_issues():
    clean = conv(
        Message("system", "Be brief."),
        user("Weather in Paris?"),
        assistant("", tool_calls=(CALL,)),
        Message("tool", "18C", name="get_weather", tool_call_id="call_1"),
        assistant("18C and sunny.", weight=1),
        user("Thanks"),
        assistant("You're welcome.", weight=0),
    )
    assert check_sample(clean) == []


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (conv(user(), assistant("  ")), ("empty_content", "messages[1].content", "error")),
        (conv(user(""), assistant()), ("empty_content", "messages[0].content", "warning")),
        (conv(Message("system", ""), user(), assistant()), ("empty_content", "messages[0].content", "warning")),
        (conv(user(), user("again"), assistant()), ("consecutive_roles", "messages[1].role", "warning")),
        (
            conv(user(), assistant(), Message("system", "late"), user(), assistant()),
            ("system_not_first", "messages[2].role", "error"),
        ),
        (conv(user(), Message("tool", "18C"), assistant()), ("orphan_tool_message", "messages[1].role", "error")),
        (
            conv(user(), assistant("", tool_calls=(CALL,)), Message("tool", "18C", tool_call_id="call_9"), assistant()),
            ("unknown_tool_call_id", "messages[2].tool_call_id", "error"),
        ),
        (conv(user(weight=1.0), assistant()), ("weight_not_assistant", "messages[0].weight", "error")),
        (conv(user()), ("no_assistant", "messages", "error")),
        (conv(user(), assistant(weight=0.0), user(), assistant(weight=0.0)), ("all_weights_zero", "messages", "error")),
        (conv(), ("empty_conversation", "messages", "error")),
        (conv(user("a\ud800b"), assistant()), ("lone_surrogate", "messages[0].content", "error")),
        (
            conv(user(), assistant("", tool_calls=(ToolCall("f", '"\udc00"'),))),
            ("lone_surrogate", "messages[1].tool_calls[0]", "error"),
        ),
        (TextSample("x\udfff", WHERE), ("lone_surrogate", "text", "error")),
        (TextSample(" \n", WHERE), ("empty_text", "text", "error")),
        (TokenSample((), None, WHERE), ("empty_input_ids", "input_ids", "error")),
        (TokenSample((1, 2, 3), (-100, -100, -100), WHERE), ("no_trainable_tokens", "labels", "error")),
        (TokenSample((1, 2, 3), (1, 2), WHERE), ("bad_labels", "labels", "error")),
    ],
)
def test_each_rule_fires_with_code_field_and_severity(sample, expected):
    assert found(sample) == [expected]
    issue = check_sample(sample)[0]
    assert issue.where == WHERE and issue.message


def test_every_issue_carries_a_hint_where_a_fix_is_not_obvious():
    issue = check_sample(conv(user()))[0]
    assert str(issue) == (
        "data.jsonl:7: messages: no assistant message, so nothing would train "
        "(every conversation needs at least one assistant reply)"
    )


def test_parallel_tool_results_and_tool_call_turns_are_fine():
    second = ToolCall("get_time", "{}", id="call_2")
    sample = conv(
        user(),
        assistant("", tool_calls=(CALL, second)),
        Message("tool", "18C", tool_call_id="call_1"),
        Message("tool", "noon", tool_call_id="call_2"),
        assistant(),
    )
    assert check_sample(sample) == []


def test_a_tool_message_after_a_plain_assistant_turn_is_an_orphan():
    sample = conv(
        user(), assistant("", tool_calls=(CALL,)), Message("tool", "18C"), assistant("done"), Message("tool", "late")
    )
    assert found(sample) == [("orphan_tool_message", "messages[4].role", "error")]


def test_token_rows_with_trainable_labels_pass():
    assert check_sample(TokenSample((1, 2, 3), (-100, 2, 3), WHERE)) == []
    assert check_sample(TokenSample((1, 2, 3), None, WHERE)) == []
    assert check_sample(TextSample("some text", WHERE)) == []


def test_content_key_ignores_where_and_id_but_not_content():
    a = conv(user("hi"), assistant("yo"))
    moved = Conversation(a.messages, Provenance("other.jsonl", 99), id="row-5")
    assert content_key(a) == content_key(moved)
    assert content_key(a) != content_key(conv(user("hi"), assistant("yo!")))
    assert content_key(a) != content_key(conv(user("hi"), assistant("yo", weight=0.0)))
    assert content_key(a) != content_key(conv(Message("system", "hi"), assistant("yo")))


def test_near_key_ignores_case_spacing_and_punctuation_but_keeps_digits():
    a = conv(user("What is 2 + 2?"), assistant("It is 4."))
    assert near_key(a) == near_key(conv(user("what  is 2+2"), assistant("IT IS 4")))
    assert near_key(a) != near_key(conv(user("What is 3 + 3?"), assistant("It is 6.")))
    assert near_key(a) != near_key(conv(Message("system", "What is 2 + 2?"), assistant("It is 4.")))


def test_normalize_text_handles_unicode_forms():
    assert normalize_text("Ｃａｆé!") == normalize_text("cafe\u0301")


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_the_ascii_fast_path_of_normalize_text_matches_the_general_rule(text):
    from tunesmith.data.keys import _PUNCTUATION

    assert normalize_text(text) == " ".join(_PUNCTUATION.sub(" ", text.lower()).split())
