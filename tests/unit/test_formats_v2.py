"""Reasoning, tool-call arguments as given, LLaMA-Factory rows, and rows supervised training must refuse."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.check import check_files
from tunesmith.data.convert import sample_to_row
from tunesmith.data.formats import detect_format, to_sample
from tunesmith.data.keys import content_key, near_key
from tunesmith.data.options import FormatOptions
from tunesmith.data.types import Conversation, Message, Provenance, RowError, ToolCall
from tunesmith.data.validate import check_sample

WHERE = Provenance("data.jsonl", 7)
AUTO = FormatOptions()


def sample(row: dict, options: FormatOptions = AUTO):
    fmt, _ = detect_format(row, WHERE, options)
    return to_sample(row, WHERE, fmt, options)


def issue_of(row: dict, options: FormatOptions = AUTO):
    with pytest.raises(RowError) as caught:
        sample(row, options)
    return caught.value.issue


def found(conversation: Conversation) -> list[tuple[str, str, str]]:
    return [(i.code, i.field, i.severity) for i in check_sample(conversation)]


def chat(*messages: Message) -> Conversation:
    return Conversation(tuple(messages), WHERE)


def qa_row(answer: str, reasoning_key: str | None = None, reasoning=None) -> dict:
    last = {"role": "assistant", "content": answer}
    if reasoning_key:
        last[reasoning_key] = reasoning
    return {"messages": [{"role": "user", "content": "2+2?"}, last]}


# --- 1. reasoning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["reasoning_content", "thinking", "reasoning"])
def test_reasoning_is_read_from_any_key_and_written_under_all(key):
    message = sample(qa_row("4", key, "Two and two."))
    assert message.messages[1].reasoning == "Two and two."
    assert message.messages[1].as_dict() == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "Two and two.",
        "thinking": "Two and two.",
        "reasoning": "Two and two.",
    }
    assert "reasoning_content" not in message.messages[0].as_dict()


def test_reasoning_keys_are_read_in_order_and_null_or_empty_means_the_next():
    row = qa_row("4")
    row["messages"][1].update(reasoning_content=None, thinking="", reasoning="last")
    assert sample(row).messages[1].reasoning == "last"
    row["messages"][1].update(reasoning_content="first")
    assert sample(row).messages[1].reasoning == "first"
    assert sample(qa_row("4", "thinking", "")).messages[1].reasoning is None


def test_reasoning_of_the_wrong_type_names_its_key():
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "thinking": ["x"]},
        ]
    }
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("wrong_type", "messages[3].thinking")
    assert issue.message == "expected a string, got list"


def test_reasoning_on_a_user_message_is_an_error():
    conversation = sample(
        {
            "messages": [
                {"role": "user", "content": "q", "reasoning_content": "hm"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    assert found(conversation) == [("reasoning_not_assistant", "messages[0].reasoning", "error")]
    assert check_sample(sample(qa_row("4", "reasoning_content", "hm"))) == []


def test_reasoning_counts_in_content_and_near_keys_and_survives_convert():
    plain, reasoned = sample(qa_row("4")), sample(qa_row("4", "reasoning_content", "Two and two."))
    assert content_key(plain) != content_key(reasoned) and near_key(plain) != near_key(reasoned)
    assert sample(sample_to_row(reasoned)) == reasoned


def test_lone_surrogate_in_reasoning_is_found():
    conversation = chat(Message("user", "q"), Message("assistant", "a", reasoning="x\ud800"))
    assert found(conversation) == [("lone_surrogate", "messages[1].reasoning", "error")]


# --- 2. tool-call arguments as given --------------------------------------------------------------------


def test_tool_call_arguments_stay_as_given():
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"function": {"name": "f", "arguments": {"city": "Zürich"}}},
                    {"function": {"name": "g", "arguments": '{"n": 1}'}},
                    {"function": {"name": "h", "arguments": "not json"}},
                ],
            },
        ]
    }
    f, g, h = sample(row).messages[1].tool_calls
    assert (f.arguments, g.arguments, h.arguments) == ({"city": "Zürich"}, '{"n": 1}', "not json")
    assert (f.arguments_object, g.arguments_object, h.arguments_object) == ({"city": "Zürich"}, {"n": 1}, None)
    assert (f.arguments_text, g.arguments_text, h.arguments_text) == ('{"city": "Zürich"}', '{"n": 1}', "not json")
    assert ToolCall("f", "[1, 2]").arguments_object is None


@pytest.mark.parametrize(
    "form, given_object, given_text, bad_text",
    [
        ("given", {"a": 1}, '{"a": 1}', "oops"),
        ("object", {"a": 1}, {"a": 1}, "oops"),
        ("string", '{"a": 1}', '{"a": 1}', "oops"),
    ],
)
def test_tool_call_as_dict_argument_forms(form, given_object, given_text, bad_text):
    def arguments(call: ToolCall):
        return call.as_dict(form)["function"]["arguments"]

    assert arguments(ToolCall("f", {"a": 1})) == given_object
    assert arguments(ToolCall("f", '{"a": 1}')) == given_text
    assert arguments(ToolCall("f", "oops")) == bad_text


def test_message_and_conversation_pass_the_argument_form_through():
    conversation = chat(Message("user", "q"), Message("assistant", "", tool_calls=(ToolCall("f", '{"a": 1}', "c1"),)))
    assert conversation.as_dicts()[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}, "id": "c1"}
    ]
    assert conversation.as_dicts("object")[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert conversation.messages[1].as_dict("object")["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    with pytest.raises(ValueError, match="given, object, string"):
        conversation.as_dicts("json")


def test_unserializable_argument_objects_are_bad_tool_calls():
    row = {
        "messages": [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"when": object()}}}],
            }
        ]
    }
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("bad_tool_call", "messages[0].tool_calls[0].function.arguments")


def test_keys_are_the_same_for_arguments_given_as_text_or_object():
    def conv(arguments) -> Conversation:
        return chat(Message("user", "q"), Message("assistant", "", tool_calls=(ToolCall("f", arguments),)))

    assert content_key(conv({"a": "é"})) == content_key(conv('{"a": "é"}'))
    assert near_key(conv({"a": "é"})) == near_key(conv('{"a": "é"}'))
    assert content_key(conv('{"a": 1}')) != content_key(conv('{"a":1}'))  # text is kept exactly


def test_convert_writes_arguments_as_given():
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "f", "arguments": {"a": 1}}},
                    {"type": "function", "function": {"name": "g", "arguments": '{"b": 2}'}},
                ],
            },
        ]
    }
    written = sample_to_row(sample(row))["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in written] == [{"a": 1}, '{"b": 2}']


def test_lone_surrogate_in_object_arguments_is_found():
    conversation = chat(Message("user", "q"), Message("assistant", "", tool_calls=(ToolCall("f", {"a": "\udc00"}),)))
    assert found(conversation) == [("lone_surrogate", "messages[1].tool_calls[0]", "error")]


# --- 3. LLaMA-Factory v1 rows ---------------------------------------------------------------------------


def test_llamafactory_v1_messages_row():
    row = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "value": "Be brief."}], "loss_weight": 0.0},
            {
                "role": "user",
                "content": [{"type": "text", "value": "Hi, "}, {"type": "text", "value": "who?"}],
                "loss_weight": 0.0,
            },
            {"role": "assistant", "content": [{"type": "text", "value": "An assistant."}], "loss_weight": 1.0},
            {"role": "user", "content": [{"type": "text", "value": "Sure?"}], "loss_weight": 0},
            {"role": "assistant", "content": [{"type": "text", "value": "Yes."}], "loss_weight": 0.0},
        ]
    }
    conversation = sample(row)
    assert conversation == chat(
        Message("system", "Be brief."),
        Message("user", "Hi, who?"),
        Message("assistant", "An assistant.", 1.0),
        Message("user", "Sure?"),
        Message("assistant", "Yes.", 0.0),
    )
    assert check_sample(conversation) == []


def test_llamafactory_sharegpt_turns_take_loss_weight():
    row = {
        "conversations": [
            {"from": "human", "value": "q", "loss_weight": 0.0},
            {"from": "gpt", "value": "a", "loss_weight": 0},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": "b", "loss_weight": "1"},
        ]
    }
    assert [m.weight for m in sample(row).messages] == [None, 0.0, None, 1.0]


def test_loss_weight_one_off_an_assistant_is_kept_so_the_validator_refuses_it():
    conversation = sample(
        {"messages": [{"role": "user", "content": "q", "loss_weight": 1.0}, {"role": "assistant", "content": "a"}]}
    )
    assert found(conversation) == [("weight_not_assistant", "messages[0].weight", "error")]


@pytest.mark.parametrize(
    "row, field",
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 1, "loss_weight": 0.0},
                ]
            },
            "messages[1].loss_weight",
        ),
        (
            {"conversations": [{"from": "gpt", "value": "a", "weight": 0, "loss_weight": 1}]},
            "conversations[0].loss_weight",
        ),
    ],
)
def test_weight_and_loss_weight_that_disagree_are_an_error(row, field):
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("conflicting_weight", field)
    assert "loss_weight" in issue.message and "weight" in issue.message


def test_agreeing_weight_and_loss_weight_and_bad_loss_weight():
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "weight": 1, "loss_weight": 1.0},
        ]
    }
    assert sample(row).messages[1].weight == 1.0
    row["messages"][1] = {"role": "assistant", "content": "a", "loss_weight": 0.5}
    assert (issue_of(row).code, issue_of(row).field) == ("bad_weight", "messages[1].loss_weight")


def test_text_part_prefers_text_over_value_and_names_a_missing_one():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "t", "value": "v"}]}]}
    assert sample(row).messages[0].content == "t"
    issue = issue_of({"messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert (issue.code, issue.field) == ("missing_key", "messages[0].content[0].text")
    issue = issue_of({"messages": [{"role": "user", "content": [{"type": "text", "value": 3}]}]})
    assert (issue.code, issue.field) == ("wrong_type", "messages[0].content[0].value")


# --- 4. KTO rows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, options",
    [
        ({"prompt": "Capital of France?", "completion": "Paris", "label": True}, AUTO),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": "a"}],
                "label": False,
            },
            AUTO,
        ),
        ({"completion": "Paris", "label": False}, AUTO),
        ({"prompt": "q", "completion": "a", "label": "false"}, AUTO),  # a CSV cell
        ({"prompt": "q", "completion": "a", "label": True}, FormatOptions(format="prompt_completion")),
        ({"prompt": "q", "answer": "a", "label": True}, FormatOptions(columns={"completion": "answer"})),
    ],
)
def test_kto_rows_are_refused(row, options):
    issue = issue_of(row, options)
    assert (issue.code, issue.severity, issue.field) == ("kto_row", "error", "label")
    assert str(issue).startswith(
        "data.jsonl:7: label: this is a KTO row (an answer marked good or bad); "
        "supervised training would train every answer as if it were good"
    )
    assert "train.objective: kto" in issue.hint and "label false" in issue.hint


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "q", "completion": "a", "label": "positive"},  # a text label is just a column
        {"prompt": "q", "completion": "a", "label": 1},
        {"text": "t", "label": True},  # no completion
    ],
)
def test_other_label_columns_are_not_kto(row):
    assert sample(row) is not None


def test_data_check_reads_kto_rows_as_preference_data_and_supervised_loading_refuses_them(tmp_path):
    from tunesmith.data.formats import load_conversations
    from tunesmith.errors import UserError

    path = tmp_path / "kto.jsonl"
    rows = [{"prompt": "q", "completion": "a", "label": True}, {"prompt": "q", "completion": "b", "label": "maybe"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = check_files([str(path)], options=AUTO)
    assert report.files[0].format == "kto"
    assert [(i.code, i.where.line, i.field) for i in report.issues] == [("wrong_type", 2, "label")]
    with pytest.raises(UserError, match="KTO row"):
        load_conversations(str(path))


# --- 5. rows with images --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, field",
    [
        (
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "images": ["a.jpg"],
            },
            "images",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "image": "a.jpg"},
            "image",
        ),
        ({"instruction": "i", "output": "o", "videos": '["v.mp4"]'}, "videos"),
        ({"text": "t", "audios": ["a.wav"]}, "audios"),
    ],
)
def test_rows_with_media_keys_are_refused(row, field):
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("vision_row", field)
    assert "not supported yet" in issue.message and "remove the images or the rows" in issue.hint


@pytest.mark.parametrize("empty", [None, "", [], "[]"])
def test_empty_media_keys_are_fine(empty):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "images": empty}
    assert check_sample(sample(row)) == []


@pytest.mark.parametrize(
    "part_type, medium", [("image", "image"), ("image_url", "image"), ("video", "video"), ("input_audio", "audio")]
)
def test_media_content_parts_are_refused(part_type, medium):
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "user", "content": [{"type": part_type, part_type: {}}, {"type": "text", "text": "?"}]},
        ]
    }
    issue = issue_of(row)
    assert (issue.code, issue.field) == ("vision_row", "messages[1].content[0]")
    assert str(issue) == (
        f"data.jsonl:7: messages[1].content[0]: {medium} content is not supported yet "
        "(vision models are not supported; remove the images or the rows)"
    )


def test_image_placeholders_in_text_are_refused():
    row = {"conversations": [{"from": "human", "value": "<image>What is this?"}, {"from": "gpt", "value": "A cat."}]}
    assert found(sample(row)) == [("vision_row", "messages[0].content", "error")]


# --- 6. unreplaced placeholders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, shown", [("Dear {{name}}, thanks.", "{{name}}"), ("Hi {{ user.first_name }}!", "{{ user.first_name }}")]
)
def test_placeholder_in_an_answer_is_a_warning(answer, shown):
    conversation = sample(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": answer},
            ]
        }
    )
    issues = [i for i in check_sample(conversation) if i.code == "template_placeholder"]
    assert [(i.field, i.severity) for i in issues] == [("messages[2].content", "warning")]
    assert issues[0].message == f"unreplaced placeholder {shown} in the answer"


@pytest.mark.parametrize("answer", ["Use {{ 1 + 1 }} in Jinja.", "A set: {{}}", "{x}", "{{9lives}}"])
def test_braces_that_are_no_placeholder_are_fine(answer):
    assert check_sample(chat(Message("user", "q"), Message("assistant", answer))) == []


def test_placeholders_in_a_prompt_are_fine():
    assert check_sample(chat(Message("user", "Write to {{name}}."), Message("assistant", "Done."))) == []


def test_data_check_counts_placeholders_as_warnings(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(qa_row("Hello {{name}}")) + "\n")
    report = check_files([str(path)], options=AUTO)
    assert report.counts_by_code == {"template_placeholder": 1}
    assert not report.failed() and report.failed("warning")


# --- 7. LLaMA-Factory ShareGPT with tools -----------------------------------------------------------------

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_llamafactory_sharegpt_row_with_tools_function_call_and_observation():
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": json.dumps({"temp": 21})},
            {"from": "gpt", "value": "It is 21 degrees in Paris."},
        ],
        "system": "You are helpful.",
        "tools": json.dumps(TOOLS),
    }
    conversation = sample(row)
    assert conversation.tools == tuple(TOOLS)
    assert conversation.messages == (
        Message("system", "You are helpful."),
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
        Message("tool", '{"temp": 21}'),
        Message("assistant", "It is 21 degrees in Paris."),
    )
    assert isinstance(conversation.messages[2].tool_calls[0].arguments, dict)
    assert check_sample(conversation) == []


def test_sharegpt_tools_that_are_not_a_list_of_objects():
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[1]"}
    assert (issue_of(row).code, issue_of(row).field) == ("wrong_type", "tools[0]")
    row["tools"] = "get_weather"
    assert (issue_of(row).code, issue_of(row).field) == ("wrong_type", "tools")
