"""`tunesmith data convert --to openai|together`: rows in the providers' documented fine-tuning
formats, and what those formats cannot carry named by file:line and field, never dropped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunesmith.cli.main import main


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": f"lights {i}"},
            {"role": "assistant", "content": f'{{"level": {i}}}'},
        ]
    }


TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "name": "weather", "content": "-3 C"},
        {"role": "assistant", "content": "It is -3 C.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
}


@pytest.mark.parametrize("provider", ["openai", "together"])
def test_chats_with_tool_calls_become_the_providers_rows(tmp_path, provider, capsys):
    source = write_rows(tmp_path / "in.jsonl", [chat(i) for i in range(10)] + [TOOL_ROW])
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(source), "--to", provider, "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == chat(0) and len(rows) == 11
    call = rows[10]["messages"][1]["tool_calls"][0]
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    assert rows[10]["messages"][2] == {"role": "tool", "content": "-3 C", "tool_call_id": "call_1"}
    assert rows[10]["messages"][3]["weight"] == 1 and rows[10]["tools"] == TOOL_ROW["tools"]
    assert "Wrote 11 of 11 rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("provider", "row", "field", "message"),
    [
        (
            "openai",
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "reasoning_content": "r"},
                ]
            },
            r"messages\[1\].reasoning",
            "no field for reasoning",
        ),
        (
            "together",
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "user", "content": "q2"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            r"messages\[1\].role",
            "alternate user and assistant; found user where assistant belongs",
        ),
    ],
)
def test_what_a_format_cannot_carry_is_named_by_line_and_field(tmp_path, provider, row, field, message, capsys):
    source = write_rows(tmp_path / "in.jsonl", [chat(i) for i in range(10)] + [row])
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(source), "--to", provider, "-o", str(out)]) == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"in.jsonl:11: {field}: .*{message}", printed), printed
    assert "1 bad row: nothing written" in printed and not out.exists()
    assert main(["data", "convert", str(source), "--to", provider, "-o", str(out), "--skip-bad"]) == 0
    assert len(out.read_text().splitlines()) == 10


@pytest.mark.parametrize(
    ("provider", "row", "field", "message"),
    [
        ("openai", {"text": "raw"}, "text", "conversations only, not raw text"),
        ("together", {"input_ids": [1, 2], "labels": [-100, 2]}, "input_ids", "pre-tokenized rows .* as Parquet"),
    ],
)
def test_rows_a_format_has_no_place_for_are_refused(tmp_path, provider, row, field, message, capsys):
    source = write_rows(tmp_path / "in.jsonl", [row] * 10)
    assert main(["data", "convert", str(source), "--to", provider, "-o", str(tmp_path / "o.jsonl")]) == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"in.jsonl:1: {field}: .*{message}", printed) and "10 bad rows" in printed, printed


def test_a_file_the_provider_refuses_whole_is_not_written(tmp_path, capsys):
    source = write_rows(tmp_path / "in.jsonl", [chat(i) for i in range(9)])
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(source), "--to", "openai", "-o", str(out)]) == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert "9 rows: openai needs at least 10" in printed and "nothing written" in printed and not out.exists()
    assert main(["data", "convert", str(source), "--to", "together", "-o", str(out)]) == 0  # Together takes 1+
    assert (
        main(
            [
                "data",
                "convert",
                str(write_rows(tmp_path / "t.jsonl", [{"text": "raw"}])),
                "--to",
                "together",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text()) == {"text": "raw"}
