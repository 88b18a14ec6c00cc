"""Every common row format becomes one normalized `Sample`; what cannot be normalized is a `RowError`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import detect_format, load_conversations, to_sample
from tunesmith.data.options import FORMATS, FormatOptions
from tunesmith.data.types import (
    Conversation,
    Message,
    Provenance,
    RowError,
    TextSample,
    TokenSample,
    ToolCall,
)
from tunesmith.errors import UserError

WHERE = Provenance("data.jsonl", 7)
AUTO = FormatOptions()


def sample(row: dict, options: FormatOptions = AUTO):
    fmt, _ = detect_format(row, WHERE, options)
    return to_sample(row, WHERE, fmt, options)


def chat(*messages: Message, id: str = "", tools: tuple[dict, ...] = ()) -> Conversation:
    return Conversation(tuple(messages), WHERE, id, tools)


def issue_of(row: dict, options: FormatOptions = AUTO):
    with pytest.raises(RowError) as caught:
        sample(row, options)
    return caught.value.issue


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str, weight: float | None = None) -> Message:
    return Message("assistant", text, weight)


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


# --- messages ----------------------------------------------------------------------------------------


def test_messages_with_parts_tool_calls_weights_names_and_tools():
    row = {
        "id": 12,
        "tools": [WEATHER],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
            {
                "role": "assistant",
                "content": None,
                "weight": 0,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": {"city": "Paris", "note": "é"}},
                    },
                    {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Nice"}'}},
                ],
            },
            {"role": "tool", "content": "18C", "name": "weather", "tool_call_id": "c1"},
            {"role": "assistant", "content": "18C in Paris.", "weight": 1.0, "refusal": None},
        ],
    }
    assert sample(row) == chat(
        Message("system", "Be brief."),
        user("Weather in Paris?"),
        Message(
            "assistant",
            "",
            0.0,
            (ToolCall("weather", {"city": "Paris", "note": "é"}, "c1"), ToolCall("weather", '{"city": "Nice"}', "c2")),
        ),
        Message("tool", "18C", name="weather", tool_call_id="c1"),
        assistant("18C in Paris.", 1.0),
        id="12",
        tools=(WEATHER,),
    )


@pytest.mark.parametrize(
    "given, expected", [(0, 0.0), (1, 1.0), (0.0, 0.0), (1.0, 1.0), ("0", 0.0), ("1", 1.0), (None, None)]
)
def test_message_weights(given, expected):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": given}]}
    assert sample(row).messages[1].weight == expected


@pytest.mark.parametrize("bad", [2, 0.5, -1, "yes", "", True, [1], {"w": 1}])
def test_bad_weight_names_the_message(bad):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": bad}]}
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("bad_weight", "messages[1].weight")


def test_flat_and_legacy_tool_calls_and_openai_role_aliases():
    row = {
        "messages": [
            {"role": "developer", "content": "Use tools."},
            {"role": "assistant", "tool_calls": [{"name": "lookup", "arguments": {}}]},
            {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": "{}"}},
            {"role": "function", "name": "lookup", "content": "none"},
        ]
    }
    assert sample(row).messages == (
        Message("system", "Use tools."),
        Message("assistant", "", tool_calls=(ToolCall("lookup", {}),)),
        Message("assistant", "", tool_calls=(ToolCall("lookup", "{}"),)),
        Message("tool", "none", name="lookup"),
    )


def test_unknown_role_lists_the_allowed_ones():
    issue = issue_of({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})
    assert (issue.code, issue.field) == ("unknown_role", "messages[1].role")
    assert "system, user, assistant, tool" in issue.hint
    assert (
        str(issue) == "data.jsonl:7: messages[1].role: unknown role 'bot' "
        "(expected one of system, user, assistant, tool, developer, function)"
    )


@pytest.mark.parametrize(
    "row, code, field",
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}
                ]
            },
            "vision_row",
            "messages[0].content[1]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "unsupported_content",
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": [{"text": "a"}]}]}, "missing_key", "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": None}]}, "wrong_type", "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "missing_key", "messages[0].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "wrong_type", "messages[0].content"),
        ({"messages": [{"content": "x"}]}, "missing_key", "messages[0].role"),
        ({"messages": ["hi"]}, "wrong_type", "messages[0]"),
        ({"messages": "hello"}, "wrong_type", "messages"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}
                ]
            },
            "bad_tool_call",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}]},
            "missing_key",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"type": "code", "function": {}}]}]},
            "unsupported_content",
            "messages[0].tool_calls[0].type",
        ),
        ({"messages": [{"role": "user", "content": "q", "name": 3}]}, "wrong_type", "messages[0].name"),
        ({"messages": [], "tools": ["weather"]}, "wrong_type", "tools[0]"),
        ({"messages": [], "id": [1]}, "wrong_type", "id"),
    ],
)
def test_messages_errors_carry_code_and_field(row, code, field):
    issue = issue_of(row)
    assert (issue.code, issue.field, issue.where) == (code, field, WHERE)


def test_wrong_type_message_names_both_types():
    issue = issue_of({"messages": "not json"})
    assert issue.message == "expected a list, got str"


def test_messages_semantics_are_left_to_the_validator():
    row = {"messages": [{"role": "user", "content": "", "weight": 1}, {"role": "user", "content": "again"}]}
    assert sample(row) == chat(Message("user", "", 1.0), user("again"))


# --- sharegpt ----------------------------------------------------------------------------------------


def test_sharegpt_with_system_tools_function_call_and_observation():
    row = {
        "system": "You call tools.",
        "tools": json.dumps([WEATHER]),
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "18C"},
            {"from": "gpt", "value": "18C."},
        ],
    }
    assert sample(row) == chat(
        Message("system", "You call tools."),
        user("Weather in Paris?"),
        Message("assistant", "", tool_calls=(ToolCall("weather", {"city": "Paris"}),)),
        Message("tool", "18C"),
        assistant("18C."),
        tools=(WEATHER,),
    )


def test_sharegpt_function_call_list():
    row = {
        "conversations": [
            {"from": "function_call", "value": [{"name": "a", "arguments": "{}"}, {"name": "b", "arguments": {"x": 1}}]}
        ]
    }
    assert sample(row).messages[0].tool_calls == (ToolCall("a", "{}"), ToolCall("b", {"x": 1}))


def test_sharegpt_custom_keys_and_roles():
    options = FormatOptions(
        columns={"conversations": "dialog", "from": "speaker", "value": "text"},
        roles={"bot": "assistant", "gpt": "user"},
    )
    row = {"dialog": [{"speaker": "gpt", "text": "hi"}, {"speaker": "bot", "text": "hello"}]}
    assert detect_format(row, WHERE, options) == ("sharegpt", "key dialog")
    assert sample(row, options) == chat(user("hi"), assistant("hello"))


def test_sharegpt_unknown_speaker_suggests_data_roles():
    row = {
        "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "bot", "value": "c"}]
    }
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("unknown_role", "conversations[2].from")
    assert "data.roles" in issue.hint


@pytest.mark.parametrize(
    "row, code, field",
    [
        ({"conversations": [{"from": "human"}]}, "missing_key", "conversations[0].value"),
        ({"conversations": [{"from": "human", "value": 5}]}, "wrong_type", "conversations[0].value"),
        (
            {"conversations": [{"from": "function_call", "value": "weather(Paris)"}]},
            "bad_tool_call",
            "conversations[0].value",
        ),
        (
            {"conversations": [{"from": "function_call", "value": '{"arguments": {}}'}]},
            "missing_key",
            "conversations[0].value.name",
        ),
        ({"conversations": [{"from": "gpt", "value": "x", "weight": 3}]}, "bad_weight", "conversations[0].weight"),
        ({"conversations": [{"from": ["gpt"], "value": "x"}]}, "unknown_role", "conversations[0].from"),
    ],
)
def test_sharegpt_errors(row, code, field):
    issue = issue_of(row)
    assert (issue.code, issue.field) == (code, field)


# --- alpaca, qa, prompt_completion, text, tokens -------------------------------------------------------


def test_alpaca_with_input_system_and_history():
    row = {
        "system": "Be kind.",
        "history": [["Hi", "Hello!"], ["Who are you?", "A model."]],
        "instruction": "Translate to French.",
        "input": "Good morning",
        "output": "Bonjour",
    }
    assert sample(row) == chat(
        Message("system", "Be kind."),
        user("Hi"),
        assistant("Hello!"),
        user("Who are you?"),
        assistant("A model."),
        user("Translate to French.\n\nGood morning"),
        assistant("Bonjour"),
    )


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": None}, {"system": ""}, {"history": []}])
def test_alpaca_without_input(extra):
    assert sample({"instruction": "Say hi.", "output": "hi", **extra}) == chat(user("Say hi."), assistant("hi"))


def test_alpaca_renamed_columns_and_errors_name_the_files_keys():
    options = FormatOptions(columns={"instruction": "task", "output": "answer"})
    assert detect_format({"task": "t", "answer": "a"}, WHERE, options) == ("alpaca", "keys task and answer")
    assert sample({"task": "t", "answer": "a"}, options) == chat(user("t"), assistant("a"))
    issue = issue_of({"task": "t", "answer": 4}, options)
    assert (issue.code, issue.field, issue.message) == ("wrong_type", "answer", "expected a string, got int")
    forced = FormatOptions(format="alpaca", columns={"instruction": "task"})
    issue = issue_of({"output": "o"}, forced)
    assert (issue.code, issue.field) == ("missing_key", "task")
    assert "data.columns" in issue.hint


def test_alpaca_bad_history_pair():
    issue = issue_of({"instruction": "i", "output": "o", "history": [["only one"]]})
    assert (issue.code, issue.field) == ("wrong_type", "history[0]")


def test_qa_with_system():
    assert sample({"question": "2+2?", "answer": "4", "system": "Math."}) == chat(
        Message("system", "Math."), user("2+2?"), assistant("4")
    )


def test_qa_never_stringifies_numbers():
    issue = issue_of({"question": "2+2?", "answer": 4})
    assert (issue.code, issue.field) == ("wrong_type", "answer")


def test_prompt_completion_strings():
    assert sample({"prompt": "Capital of France?", "completion": " Paris"}) == replace(
        chat(user("Capital of France?"), assistant(" Paris")), prompt_messages=1
    )


def test_prompt_completion_conversational():
    row = {
        "prompt": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hey"}],
    }
    assert sample(row) == replace(chat(Message("system", "Terse."), user("Hi"), assistant("Hey")), prompt_messages=2)
    row["prompt"][1]["role"] = "human"
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("unknown_role", "prompt[1].role")


def test_prompt_completion_text_that_looks_like_json_stays_text():
    assert sample({"prompt": "[1, 2]", "completion": '{"role": "x"}'}) == replace(
        chat(user("[1, 2]"), assistant('{"role": "x"}')), prompt_messages=1
    )


def test_text_and_content():
    assert sample({"text": "Once upon a time", "id": "a"}) == TextSample("Once upon a time", WHERE, "a")
    assert sample({"content": "Raw page"}) == TextSample("Raw page", WHERE)
    issue = issue_of({"text": ["a"]})
    assert (issue.code, issue.field) == ("wrong_type", "text")


def test_tokens_with_and_without_labels():
    assert sample({"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}) == TokenSample((5, 6, 7), (-100, 6, 7), WHERE)
    assert sample({"input_ids": [0, 1]}) == TokenSample((0, 1), None, WHERE)


@pytest.mark.parametrize(
    "row, code, field",
    [
        ({"input_ids": [1, 2, 3, "4"]}, "wrong_type", "input_ids[3]"),
        ({"input_ids": [1, 2, 3, 4.0]}, "wrong_type", "input_ids[3]"),
        ({"input_ids": [1, 2, 3, True]}, "wrong_type", "input_ids[3]"),
        ({"input_ids": [1, 2, 3, -100]}, "bad_token_id", "input_ids[3]"),
        ({"input_ids": [1, 2], "labels": [1, -5]}, "bad_token_id", "labels[1]"),
        ({"input_ids": [1, 2], "labels": [1]}, "bad_labels", "labels"),
        ({"input_ids": "1 2 3"}, "wrong_type", "input_ids"),
    ],
)
def test_token_errors(row, code, field):
    issue = issue_of(row)
    assert (issue.code, issue.field) == (code, field)


# --- detection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, fmt, reason",
    [
        ({"messages": [], "text": "x"}, "messages", "key messages"),
        ({"conversations": []}, "sharegpt", "key conversations"),
        ({"input_ids": [], "text": "x"}, "tokens", "key input_ids"),
        ({"instruction": "", "input": "", "output": ""}, "alpaca", "keys instruction and output"),
        ({"question": "", "answer": ""}, "qa", "keys question and answer"),
        ({"prompt": "", "completion": ""}, "prompt_completion", "keys prompt and completion"),
        ({"text": ""}, "text", "key text"),
        ({"content": "x", "meta": 1}, "text", "key content (a string)"),
    ],
)
def test_detection_with_reason(row, fmt, reason):
    assert detect_format(row, WHERE, AUTO) == (fmt, reason)


def test_format_setting_skips_detection():
    options = FormatOptions(format="text")
    assert detect_format({"messages": [], "text": "x"}, WHERE, options) == ("text", "set by data.format")
    assert sample({"messages": [], "text": "x"}, options) == TextSample("x", WHERE)


@pytest.mark.parametrize("row", [{"content": ["x"]}, {"instruction": "only"}, {"prompt": "p", "answer": "a"}])
def test_row_fitting_nothing_names_its_keys(row):
    issue = issue_of(row)
    assert issue.code == "unknown_format"
    assert issue.message == f"row fits no known format (its keys: {', '.join(row)})"
    assert "data.format" in issue.hint and "data.columns" in issue.hint


def test_preference_rows_are_refused_with_a_hint():
    issue = issue_of({"prompt": "p", "chosen": "good", "rejected": "bad"})
    assert issue.code == "unknown_format"
    assert "preference" in issue.hint and "chosen" in issue.message


def test_bad_options_are_user_errors():
    for kwargs in ({"format": "jsonl"}, {"columns": {"instr": "x"}}, {"roles": {"bot": "robot"}}):
        with pytest.raises(UserError):
            FormatOptions(**kwargs)


# --- CSV cells: every value a string, nested values as JSON text -----------------------------------


def csv_cells(row: dict) -> dict:
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in row.items()}


@pytest.mark.parametrize(
    "row",
    [
        {
            "id": "3",
            "tools": [WEATHER],
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "1"}],
        },
        {
            "id": "4",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            "tools": [WEATHER],
        },
        {"instruction": "i", "input": "", "output": "123", "history": [["h", "i"]], "system": ""},
        {"question": "2+2?", "answer": "4"},
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
        {"text": "42"},
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "id": "7"},
    ],
)
def test_csv_rows_equal_json_rows(row):
    assert sample(csv_cells(row)) == sample(row)


def test_csv_empty_optional_cells_mean_absent():
    assert sample({"input_ids": "[1]", "labels": "", "id": ""}) == TokenSample((1,), None, WHERE)
    assert sample({"messages": '[{"role": "user", "content": "q"}]', "tools": ""}) == chat(user("q"))


# --- load_conversations (kept for training and eval) ---------------------------------------------------


def test_load_conversations_reads_the_bundled_set():
    conversations = load_conversations("bundled:smart_home/train.jsonl")
    assert conversations and all(isinstance(c, Conversation) for c in conversations)


def test_load_conversations_stops_at_the_first_bad_row(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=rf"^{path}:2: messages\[1\]\.role: unknown role 'bot'"):
        load_conversations(str(path))


def test_load_conversations_reads_other_chat_formats_and_refuses_text(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    assert load_conversations(str(path))[0].as_dicts() == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    path.write_text('{"text": "t"}\n')
    with pytest.raises(UserError, match="not conversations"):
        load_conversations(str(path))


def test_load_conversations_reads_csv_cells(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,system\n2+2?,4,\n")
    assert load_conversations(str(path)) == [Conversation((user("2+2?"), assistant("4")), Provenance(str(path), 2))]


# --- property: any JSON-like row gives a Sample or a RowError, nothing else -------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
GARBAGE = (
    JSON_SCALARS | st.lists(JSON_SCALARS, max_size=2) | st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)
)
REAL_KEYS = st.sampled_from(
    [
        "messages",
        "role",
        "content",
        "instruction",
        "output",
        "input",
        "history",
        "system",
        "conversations",
        "from",
        "value",
        "question",
        "answer",
        "prompt",
        "completion",
        "text",
        "input_ids",
        "labels",
        "tools",
        "tool_calls",
        "function",
        "name",
        "arguments",
        "type",
        "weight",
        "id",
        "chosen",
        "rejected",
        "function_call",
        "tool_call_id",
    ]
)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value, sometimes its JSON text (as a CSV cell holds it), sometimes garbage."""
    return valid | valid.map(json.dumps) | GARBAGE


def row_of(required: dict, **optional: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(required, optional=optional)


TEXT = maybe(st.text(max_size=5))
ROLE = st.sampled_from(
    ["system", "user", "assistant", "tool", "developer", "human", "gpt", "function_call", "observation"]
)
PART = row_of({"type": st.sampled_from(["text", "image_url"]) | GARBAGE}, text=TEXT)
FUNCTION = row_of({}, name=TEXT, arguments=maybe(st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)))
CALL = row_of({}, id=TEXT, type=st.just("function") | GARBAGE, function=maybe(FUNCTION), name=TEXT, arguments=GARBAGE)
WEIGHT = st.sampled_from([0, 1, 0.0, "1", 2, "x"]) | GARBAGE
MESSAGE = row_of(
    {"role": maybe(ROLE)},
    content=TEXT | st.lists(PART, max_size=3),
    weight=WEIGHT,
    tool_calls=maybe(st.lists(CALL, max_size=2)),
    name=TEXT,
    tool_call_id=TEXT,
    function_call=CALL | GARBAGE,
)
TURN = row_of({"from": maybe(ROLE), "value": TEXT | CALL}, weight=WEIGHT)
TOKENS = maybe(st.lists(st.integers(min_value=-101, max_value=50), max_size=5))
COMMON = {
    "id": TEXT | st.integers(),
    "tools": maybe(st.lists(st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2), max_size=2)),
    "system": TEXT,
}
NEAR_VALID = st.one_of(
    row_of({"messages": maybe(st.lists(MESSAGE, max_size=4))}, **COMMON),
    row_of({"conversations": maybe(st.lists(TURN, max_size=4))}, **COMMON),
    row_of(
        {"instruction": TEXT, "output": TEXT},
        input=TEXT,
        history=maybe(st.lists(st.lists(TEXT, max_size=3), max_size=2)),
        **COMMON,
    ),
    row_of({"question": TEXT, "answer": TEXT}, **COMMON),
    row_of(
        {"prompt": TEXT | st.lists(MESSAGE, max_size=2), "completion": TEXT | st.lists(MESSAGE, max_size=2)}, **COMMON
    ),
    row_of({}, text=TEXT, content=TEXT, **COMMON),
    row_of({"input_ids": TOKENS}, labels=TOKENS, **COMMON),
    row_of({"chosen": GARBAGE, "rejected": GARBAGE}, prompt=TEXT),
)
ROWS = (
    st.dictionaries(st.text(max_size=6), JSON, max_size=5)
    | st.dictionaries(REAL_KEYS, GARBAGE, max_size=5)
    | NEAR_VALID
)


@settings(max_examples=2000, deadline=None)
@given(row=ROWS, fmt=st.just("auto") | st.sampled_from(FORMATS))
def test_any_row_gives_a_sample_or_a_row_error(row, fmt):
    options = FormatOptions(format=fmt)
    try:
        detected, _ = detect_format(row, WHERE, options)
        result = to_sample(row, WHERE, detected, options)
    except RowError as err:
        assert err.issue.where == WHERE and err.issue.code and err.issue.message
        return
    assert isinstance(result, (Conversation, TextSample, TokenSample))
