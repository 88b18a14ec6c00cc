"""Rows and templates tunesmith refuses (docs/chat-templates.md), through the real command line.

Each refusal is `tunesmith train CONFIG` in its own process on the embedded SmolLM2 model: exit 2,
exactly one line on stderr naming the row's `file:line` (or the config line) and the template, and
no run folder. Where the refusal names a way out, `tunesmith inspect --json` with that way out
shows what then trains. Only the tokenizer is loaded: refusals come before any weights, so the
embedded model's cache entry here is SmolLM2's tokenizer without weights (tests/fixtures/tokenizers);
a command that reached for the weights would fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli.main import main
from tunesmith.models.embedded import SOURCE_FILE

MODEL = "smollm2-135m-instruct"
GOOD = {"messages": [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello!"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ],
    "tools": [WEATHER_TOOL],
}
REASONING_ROW = {
    "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
    ]
}
# LLaMA-Factory's ShareGPT with tools: a function_call turn, an observation, tools as a JSON string.
SHAREGPT_TOOL_ROW = {
    "conversations": [
        {"from": "human", "value": "What's the weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "It is 21 degrees."},
    ],
    "tools": '[{"name": "get_weather", "description": "Weather", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}}}]',
}


@pytest.fixture()
def cache(tmp_path, smol_tokenizer_dir, monkeypatch) -> Path:
    """A cache of this test's own whose embedded `smollm2-135m-instruct` is its tokenizer, template and
    configs (no weights), marked complete as a conversion marks it: the name resolves, nothing converts."""
    root = tmp_path / "cache"
    folder = root / "models" / MODEL
    folder.mkdir(parents=True)
    for file in smol_tokenizer_dir.iterdir():
        if file.name != "SOURCE.txt":
            (folder / file.name).symlink_to(file)
    (folder / SOURCE_FILE).write_text(
        json.dumps({"name": MODEL, "note": "tokenizer only, for tests"}), encoding="utf-8"
    )
    monkeypatch.setenv("TUNESMITH_CACHE", str(root))
    return root


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_config(tmp_path: Path, data: Path, template: str = "") -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model:\n  name: {MODEL}\ndata:\n  train: {data}\noutput_dir: {tmp_path / 'runs'}\nname: refused\n{template}",
        encoding="utf-8",
    )
    return config


def train_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(config), *args],
        capture_output=True,
        text=True,
        cwd=config.parent,
        env=env,
        timeout=300,
    )


def assert_refused(done: subprocess.CompletedProcess, tmp_path: Path, *expected: str) -> str:
    """Exit 2, one line on stderr holding every expected piece, no run folder; returns the line."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for piece in expected:
        assert piece in line, f"{piece!r} not in {line!r}"
    assert not (tmp_path / "runs" / "refused").exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    return line


def inspect_json(tmp_path: Path, config: Path, *args: str) -> list[dict]:
    out = tmp_path / "inspect.jsonl"
    assert main(["inspect", str(config), "--json", str(out), *args]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# ---- rows the model's own template cannot express, and their way out ----


def test_tools_and_a_tool_call_on_smollm2s_template_point_to_chatml_tools(tmp_path, cache, capsys):
    data = write_rows(tmp_path / "tools.jsonl", [GOOD, TOOL_ROW])
    config = write_config(tmp_path, data)
    assert_refused(
        train_cli(config),
        tmp_path,
        f"{data}:2: ",
        f"chat template {MODEL} (the model's own)",
        "template.chat_template: chatml_tools",
    )

    records = inspect_json(tmp_path, config, "--set", "template.chat_template=chatml_tools")
    assert [r["source"] for r in records] == [f"{data}:1", f"{data}:2"]
    call, answer = records[1]["trained"]
    assert "<tool_call>" in call and "get_weather" in call and "Paris" in call and call.endswith("<|im_end|>")
    assert answer == "It is 21 degrees.<|im_end|>"
    assert all(prompt.endswith("<|im_start|>assistant\n") for prompt in records[1]["prompts"])
    assert "get_weather" in records[1]["prompts"][0]  # the tool schema is in the prompt, untrained
    assert '{"temp": 21}' in records[1]["prompts"][1]  # so is the tool result


def test_a_tool_call_without_tools_on_smollm2s_template_is_refused_too(tmp_path, cache):
    row = {"messages": TOOL_ROW["messages"]}
    data = write_rows(tmp_path / "calls.jsonl", [row])
    line = assert_refused(train_cli(write_config(tmp_path, data)), tmp_path, f"{data}:1: ", "chatml_tools")
    assert "tool call" in line or "tool result" in line


def test_reasoning_the_template_drops_is_refused_until_dropped(tmp_path, cache):
    data = write_rows(tmp_path / "reasoning.jsonl", [GOOD, REASONING_ROW])
    config = write_config(tmp_path, data)
    assert_refused(
        train_cli(config), tmp_path, f"{data}:2: ", f"chat template {MODEL}", "reasoning", "template.drop: [reasoning]"
    )

    records = inspect_json(tmp_path, config, "--set", "template.drop=[reasoning]")
    assert records[1]["source"] == f"{data}:2" and records[1]["trained"] == ["4<|im_end|>"]
    assert "Two and two" not in records[1]["text"]


# ---- templates that cannot train, refused whatever the rows ----


def test_a_jinja_template_writing_an_unknown_special_token_is_refused_before_any_data(tmp_path, cache):
    template = tmp_path / "foo.jinja"
    template.write_text(
        "{% for m in messages %}<|foo_bar|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|foo_bar|>assistant\n{% endif %}",
        encoding="utf-8",
    )
    data = tmp_path / "never_read.jsonl"
    data.write_text(json.dumps(GOOD) + "\n{ not json\n", encoding="utf-8")  # reading it would fail otherwise
    config = write_config(tmp_path, data, f"template:\n  chat_template: {template}\n")
    done = train_cli(config)
    assert_refused(done, tmp_path, f"{config}:8: template.chat_template: ", f"chat template {template}", "<|foo_bar|>")
    assert "never_read.jsonl" not in done.stdout  # no split was loaded, let alone encoded


@pytest.mark.parametrize(
    ("jinja", "expected"),
    [
        (
            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}",
            "no stop token",
        ),
        (
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}",
            "generation prompt",
        ),
    ],
    ids=["no-stop-token", "prompt-not-a-prefix"],
)
def test_a_template_whose_turns_cannot_be_generated_is_refused(tmp_path, cache, jinja, expected):
    template = tmp_path / "turns.jinja"
    template.write_text(jinja, encoding="utf-8")
    data = write_rows(tmp_path / "chats.jsonl", [GOOD, GOOD])
    config = write_config(tmp_path, data, f"template:\n  chat_template: {template}\n")
    assert_refused(train_cli(config), tmp_path, f"{data}:1: ", f"chat template {template}", expected)


# ---- rows no supervised chat template can train ----


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "Is the sky green?", "completion": "Yes.", "label": False}, "KTO"),
        (
            {
                "messages": [
                    {"role": "user", "content": "<image>What is this?"},
                    {"role": "assistant", "content": "A cat."},
                ],
                "images": ["cat.png"],
            },
            "image",
        ),
    ],
    ids=["kto", "images"],
)
def test_kto_and_image_rows_are_refused(tmp_path, cache, row, expected):
    data = write_rows(tmp_path / "rows.jsonl", [GOOD, row])
    assert_refused(train_cli(write_config(tmp_path, data)), tmp_path, f"{data}:2: ", expected)


# ---- LLaMA-Factory ShareGPT tool-call rows ----


def test_llama_factory_sharegpt_tool_rows_are_refused_then_train_with_chatml_tools(tmp_path, cache):
    data = write_rows(tmp_path / "glaive.jsonl", [SHAREGPT_TOOL_ROW])
    config = write_config(tmp_path, data)
    assert_refused(
        train_cli(config), tmp_path, f"{data}:1: ", f"chat template {MODEL}", "template.chat_template: chatml_tools"
    )

    [record] = inspect_json(tmp_path, config, "--set", "template.chat_template=chatml_tools")
    assert record["source"] == f"{data}:1"
    call, answer = record["trained"]
    assert "<tool_call>" in call and "</tool_call>" in call and "get_weather" in call and "Paris" in call
    assert json.loads(call.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0]) == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert answer == "It is 21 degrees.<|im_end|>"
    assert record["text"].count("It is 21 degrees.") == 1 and '{"temp": 21}' in record["text"]
