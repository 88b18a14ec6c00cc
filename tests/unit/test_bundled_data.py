"""Checks for the bundled smart_home dataset: reproducible, well-formed, and copyable by design."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_smart_home.py"
DATA_DIR = REPO_ROOT / "src" / "tunesmith" / "data" / "bundled" / "smart_home"
SPLITS = {"train": 420, "val": 40, "test": 60}

# intent -> slot keys in their required order, and the type of each slot value
SCHEMA: dict[str, dict[str, type]] = {
    "lights_on": {"room": str},
    "lights_off": {"room": str},
    "set_brightness": {"room": str, "level": int},
    "set_temperature": {"room": str, "temperature": int},
    "lock_door": {"door": str},
    "unlock_door": {"door": str},
    "play_music": {"genre": str, "room": str},
    "set_timer": {"minutes": int},
    "set_alarm": {"time": str},
    "add_event": {"title": str, "day": str, "time": str},
    "cancel_event": {"title": str, "day": str},
    "check_calendar": {"day": str},
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_smart_home", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(split: str) -> list[dict]:
    text = (DATA_DIR / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _parts(row: dict) -> tuple[str, dict]:
    """The request text and the parsed assistant JSON of one row."""
    messages = row["messages"]
    return messages[1]["content"], json.loads(messages[2]["content"])


def test_regenerating_gives_byte_identical_files(tmp_path: Path) -> None:
    _load_generator().main(["--out", str(tmp_path)])
    for split in SPLITS:
        committed = (DATA_DIR / f"{split}.jsonl").read_bytes()
        assert (tmp_path / f"{split}.jsonl").read_bytes() == committed, split


@pytest.mark.parametrize("split", list(SPLITS))
def test_files_are_well_formed(split: str) -> None:
    raw = (DATA_DIR / f"{split}.jsonl").read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    rows = _rows(split)
    assert len(rows) == SPLITS[split]
    for row in rows:
        assert list(row) == ["messages"]
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in messages)
        assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    assert len({row["messages"][0]["content"] for row in rows}) == 1


@pytest.mark.parametrize("split", list(SPLITS))
def test_targets_follow_the_schema(split: str) -> None:
    for row in _rows(split):
        _, obj = _parts(row)
        assert list(obj) == ["intent", "slots"]
        assert obj["intent"] in SCHEMA
        expected = SCHEMA[obj["intent"]]
        assert list(obj["slots"]) == list(expected)
        for key, kind in expected.items():
            assert type(obj["slots"][key]) is kind, (key, obj)
        # canonical text: default separators, fixed key order
        assert row["messages"][2]["content"] == json.dumps(obj, ensure_ascii=False)


def test_requests_are_unique_across_splits() -> None:
    requests = [_parts(row)[0].lower() for split in SPLITS for row in _rows(split)]
    assert len(requests) == sum(SPLITS.values())
    assert len(set(requests)) == len(requests)


@pytest.mark.parametrize("split", list(SPLITS))
def test_every_intent_in_every_split(split: str) -> None:
    assert {_parts(row)[1]["intent"] for row in _rows(split)} == set(SCHEMA)


@pytest.mark.parametrize("split", list(SPLITS))
def test_slot_values_are_copied_from_the_request(split: str) -> None:
    for row in _rows(split):
        request, obj = _parts(row)
        for key, value in obj["slots"].items():
            assert str(value).lower() in request.lower(), (key, value, request)
