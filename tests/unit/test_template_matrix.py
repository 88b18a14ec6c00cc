"""Every chat-template fixture × every kind of row: what trains is what the model generates at inference.

For each (template, case) the expectation is computed here independently, with transformers'
`apply_chat_template`: for each assistant turn i, the generation prompt P = render(messages[:i],
add_generation_prompt=True) and the continuation C = render(messages[:i+1])[len(P):] through the
model's stop token. The case is *faithful* when P starts the turn's render, C holds the stop, the
turn's answer, reasoning and tool calls, and the whole render holds the tools and tool results.
A faithful case must train exactly tokenize(C) after tokenize(P) for every turn, and nothing else;
any other case must be refused with a UserError naming the template. The outcome table in
docs/chat-templates.md is checked against what this computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.formats import to_sample
from tunesmith.data.options import FormatOptions
from tunesmith.data.types import IGNORE_INDEX, Provenance
from tunesmith.errors import UserError
from tunesmith.formatting.encode import encode

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
DOC = Path(__file__).parents[2] / "docs" / "chat-templates.md"
TEMPLATES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
STOP = {
    "phi-3-mini-128k-instruct": "<|end|>",
    "granite-3.1-1b-a400m-instruct": "<|end_of_text|>",
    "llama-3.2-3b-instruct": "<|eot_id|>",
    "qwen2.5-instruct": "<|im_end|>",
    "smollm3-3b": "<|im_end|>",
    "deepseek-r1-distill-qwen-32b": "<｜end▁of▁sentence｜>",
    "gemma-1-2b-it": "<end_of_turn>",
    "trl-cohere": "<|END_OF_TURN_TOKEN|>",
    "trl-lfm2": "<|im_end|>",
    "trl-llama3": "<|eot_id|>",
    "trl-nemotron_3_super": "<|im_end|>",
    "trl-qwen3_5_nothink": "<|im_end|>",
    "trl-qwen3_vl": "<|im_end|>",
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_RESULT = {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"}


def _u(text):
    return {"role": "user", "content": text}


def _a(text, **extra):
    return {"role": "assistant", "content": text, **extra}


CASES: dict[str, tuple[list[dict], list[dict]]] = {
    "single turn": ([_u("What is 2+2?"), _a("4")], []),
    "multi-turn": ([_u("Hi there"), _a("Hello! How can I help?"), _u("Say ok twice"), _a("ok ok")], []),
    "system message": ([{"role": "system", "content": "Be terse."}, _u("Hi"), _a("Hello.")], []),
    "whitespace in the answer": ([_u("Hi"), _a("  Hello there. \n")], []),
    "tool call, result, answer": (
        [_u("Weather in Paris?"), _a("", tool_calls=[CALL]), TOOL_RESULT, _a("It is 21 degrees in Paris.")],
        [WEATHER],
    ),
    "tool call after text": (
        [
            _u("Weather in Paris?"),
            _a("Let me check.", tool_calls=[CALL]),
            TOOL_RESULT,
            _a("It is 21 degrees in Paris."),
        ],
        [WEATHER],
    ),
    "reasoning in a field": ([_u("What is 2+2?"), _a("4", reasoning_content="Two plus two is four.")], []),
    "inline <think> in two turns": (
        [_u("2+2?"), _a("<think>\nAdd them.\n</think>\n\n4"), _u("3+3?"), _a("<think>\nAdd again.\n</think>\n\n6")],
        [],
    ),
}


@pytest.fixture(scope="module")
def loaded(template_loader):
    return template_loader  # tests/conftest.py


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _leaves(value):
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [str(value)]


def expected(tokenizer, name: str, messages: list[dict], tools: list[dict]) -> list[tuple[list, list]] | str:
    """(prompt ids, trained ids) for each assistant turn, from transformers; or why it is not faithful."""

    def render(msgs, **kw):
        return tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False, **kw)

    try:
        full = render(messages)
    except Exception as err:  # the template raised: nothing can train
        return f"template raises: {err}"
    for tool in tools:
        if tool["function"]["name"] not in full:
            return "tools not rendered"
    for m in messages:
        if m["role"] == "tool" and m["content"] not in full and json.dumps(m["content"])[1:-1] not in full:
            return "tool result not rendered"
    turns = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, own = render(messages[:i], add_generation_prompt=True), render(messages[: i + 1])
        if not own.startswith(prompt):
            return "generation prompt is not a prefix"
        rest = own[len(prompt) :]
        if STOP[name] not in rest:
            return "no stop token"
        generated = rest[: rest.index(STOP[name]) + len(STOP[name])]
        needed = [m["content"].strip(), m.get("reasoning_content", "").strip()]
        needed += [
            v
            for call in m.get("tool_calls", [])
            for v in [call["function"]["name"], *_leaves(call["function"]["arguments"])]
        ]
        if any(n not in generated for n in needed if n):
            return "turn not rendered as given"
        turns.append((_ids(tokenizer, prompt), _ids(tokenizer, generated)))
    return turns


def conversation(messages, tools):
    row = {"messages": messages, "tools": tools} if tools else {"messages": messages}
    return to_sample(json.loads(json.dumps(row)), Provenance("case.jsonl", 1), "messages", FormatOptions())


def outcome(name: str, case: str, loaded) -> tuple[str, str]:
    """("trains" | "refused", detail) for one cell, checked against the independent expectation."""
    tokenizer, template, markers = loaded(name)
    messages, tools = CASES[case]
    want = expected(tokenizer, name, messages, tools)
    try:
        examples = encode(
            conversation(messages, tools),
            template,
            tokenizer,
            train_on="assistant",
            max_length=100_000,
            markers=markers,
        )
    except UserError as err:
        assert isinstance(want, str), f"{name} / {case}: refused although faithful: {err}"
        assert str(err).startswith(f"chat template {template.name}") and "\n" not in str(err)
        return "refused", _reason(str(err))
    assert not isinstance(want, str), f"{name} / {case}: trained although {want}"
    found = []
    for example in examples:
        runs = _runs(example)
        assert runs, f"{name} / {case}: an example trains nothing"
        for start, end in runs:
            found.append((example.input_ids[:start], example.input_ids[start:end]))
    assert sorted(map(repr, found)) == sorted(map(repr, want)), f"{name} / {case}"
    return "trains", f"{len(examples)} example{'s' if len(examples) > 1 else ''}"


def _runs(example) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, label in enumerate([*example.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _reason(message: str) -> str:
    for key, short in (
        ("generation prompt", "prompt differs"),
        ("rewrites", "text dropped"),
        ("row's tools", "tools lost"),
        ("reasoning", "reasoning lost"),
        ("tool call", "tool call lost"),
        ("tool result", "tool result lost"),
        ("tools", "tools lost"),
        ("stop token", "no stop"),
        ("refused the conversation", "template raises"),
    ):
        if key in message:
            return short
    return "refused"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", TEMPLATES)
def test_trained_text_is_the_inference_continuation_or_refused(name, case, loaded):
    outcome(name, case, loaded)


def test_every_fixture_has_a_stop_token_here():
    assert set(TEMPLATES) == set(STOP)


def test_the_docs_table_is_what_the_matrix_gives(loaded):
    """docs/chat-templates.md lists each cell's outcome: it must be the one computed now."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(CASES) + 1 and cells[0].strip("`") in TEMPLATES:
            rows[cells[0].strip("`")] = cells[1:]
    assert set(rows) == set(TEMPLATES)
    got = {name: [_cell(*outcome(name, case, loaded)) for case in CASES] for name in TEMPLATES}
    table = "".join(f"| `{name}` | " + " | ".join(cells) + " |\n" for name, cells in got.items())
    assert rows == got, f"update the table in docs/chat-templates.md:\n{table}"


def _cell(kind: str, detail: str) -> str:
    return f"trains ({detail})" if kind == "trains" else f"refused: {detail}"
