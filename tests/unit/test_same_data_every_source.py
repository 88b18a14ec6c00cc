"""The same conversations, written as JSONL, JSON, CSV, Parquet and a datasets folder, load identically."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data.load import SourceSpec, load_split
from tunesmith.data.options import FormatOptions
from tunesmith.data.types import Provenance

ROWS = [
    {
        "id": "r1",
        "messages": [
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "Wie spät ist es in 東京?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": '{"city": "Tokyo"}'}}
                ],
            },
            {"role": "tool", "content": "21:04", "tool_call_id": "c1", "name": "clock"},
            {"role": "assistant", "content": "Es ist 21:04.", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}}],
    },
    {
        "id": "r2",
        "messages": [
            {"role": "user", "content": 'Line one\nline "two", with a comma'},
            {"role": "assistant", "content": "ok", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": [{"type": "text", "text": "done "}, {"type": "text", "text": "now"}]},
        ],
    },
]


def write_jsonl(folder):
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return str(path)


def write_json(folder):
    path = folder / "d.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    return str(path)


def write_csv(folder):
    path = folder / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "messages", "tools"])
        writer.writeheader()
        for row in ROWS:
            writer.writerow(
                {
                    "id": row["id"],
                    "messages": json.dumps(row["messages"], ensure_ascii=False),
                    "tools": json.dumps(row["tools"]) if "tools" in row else "",
                }
            )
    return str(path)


def write_parquet(folder):
    """Nested columns hold JSON text: Arrow needs one schema for every message, which free-form chats lack."""
    path = folder / "d.parquet"
    table = pa.table(
        {
            "id": [r["id"] for r in ROWS],
            "messages": [json.dumps(r["messages"], ensure_ascii=False) for r in ROWS],
            "tools": [json.dumps(r["tools"]) if "tools" in r else None for r in ROWS],
        }
    )
    pq.write_table(table, path)
    return str(path)


def write_datasets_folder(folder):
    from datasets import Dataset

    path = folder / "saved"
    Dataset.from_list(
        [
            {
                "id": r["id"],
                "messages": json.dumps(r["messages"], ensure_ascii=False),
                "tools": json.dumps(r.get("tools", [])),
            }
            for r in ROWS
        ]
    ).save_to_disk(str(path))
    return str(path)


def normalized(reference: str):
    loaded = load_split([SourceSpec(reference, 1.0, FormatOptions())], split="train", policy="fail", seed=0)
    assert not loaded.quarantined
    return [replace(s, source=Provenance("-", 0)) for s in loaded.samples]


@pytest.mark.parametrize("write", [write_json, write_csv, write_parquet, write_datasets_folder])
def test_every_source_gives_the_jsonl_samples(tmp_path, write):
    expected = normalized(write_jsonl(tmp_path))
    assert normalized(write(tmp_path)) == expected
    first = expected[0]
    assert first.messages[2].tool_calls[0].name == "clock" and first.messages[4].weight == 1.0
    assert expected[1].messages[1].weight == 0.0 and expected[1].messages[3].content == "done now"
