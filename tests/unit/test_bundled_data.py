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


# --- smart_home_tools: the tool-calling twin of smart_home ------------------------------

TOOLS_SCRIPT = REPO_ROOT / "scripts" / "make_smart_home_tools.py"
TOOLS_DIR = REPO_ROOT / "src" / "tunesmith" / "data" / "bundled" / "smart_home_tools"
TOOLS_SPLITS = {"train": 240, "val": 24, "test": 40}
JSON_TYPES = {"string": str, "integer": int}


def _load_tools_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_smart_home_tools", TOOLS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool_rows(split: str) -> list[dict]:
    text = (TOOLS_DIR / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _call(row: dict) -> dict:
    """The single function call ({name, arguments}) the assistant makes in one row."""
    (call,) = row["messages"][2]["tool_calls"]
    assert call["type"] == "function"
    return call["function"]


def test_tools_regenerating_gives_byte_identical_files(tmp_path: Path) -> None:
    _load_tools_generator().main(["--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{s}.jsonl" for s in TOOLS_SPLITS)
    for split in TOOLS_SPLITS:
        committed = (TOOLS_DIR / f"{split}.jsonl").read_bytes()
        assert (tmp_path / f"{split}.jsonl").read_bytes() == committed, split


@pytest.mark.parametrize("split", list(TOOLS_SPLITS))
def test_tools_files_are_well_formed(split: str) -> None:
    raw = (TOOLS_DIR / f"{split}.jsonl").read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    rows = _tool_rows(split)
    assert len(rows) == TOOLS_SPLITS[split]
    for row in rows:
        assert list(row) == ["tools", "messages"]
        system, user, assistant = row["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert set(system) == set(user) == {"role", "content"}
        assert isinstance(user["content"], str) and user["content"]
        assert list(assistant) == ["role", "content", "tool_calls"] and assistant["content"] == ""
    assert {row["messages"][0]["content"] for row in rows} == {"Call the tool that does the request."}


@pytest.mark.parametrize("split", list(TOOLS_SPLITS))
def test_tools_rows_offer_three_tools_including_the_called_one(split: str) -> None:
    for row in _tool_rows(split):
        names = [tool["function"]["name"] for tool in row["tools"]]
        assert len(names) == 3 and len(set(names)) == 3, names
        assert set(names) <= set(SCHEMA)
        assert _call(row)["name"] in names
        for tool in row["tools"]:
            assert tool["type"] == "function"
            function = tool["function"]
            assert list(function) == ["name", "description", "parameters"]
            assert 2 <= len(function["description"].split()) <= 5, function
            params = function["parameters"]
            assert params["type"] == "object"
            # the schema matches the smart_home slots: same keys, same order, same types
            assert list(params["properties"]) == list(SCHEMA[function["name"]])
            assert params["required"] == list(params["properties"])
            for key, prop in params["properties"].items():
                assert prop == {"type": prop["type"]}
                assert JSON_TYPES[prop["type"]] is SCHEMA[function["name"]][key]


@pytest.mark.parametrize("split", list(TOOLS_SPLITS))
def test_tools_call_arguments_match_the_schema(split: str) -> None:
    for row in _tool_rows(split):
        call = _call(row)
        assert list(call) == ["name", "arguments"]
        schema = next(t["function"]["parameters"] for t in row["tools"] if t["function"]["name"] == call["name"])
        args = call["arguments"]
        assert isinstance(args, dict), args  # an object, not a JSON string
        assert list(args) == list(schema["properties"])
        assert set(schema["required"]) <= set(args)
        for key, value in args.items():
            assert type(value) is JSON_TYPES[schema["properties"][key]["type"]], (key, call)


@pytest.mark.parametrize("split", list(TOOLS_SPLITS))
def test_tools_argument_values_are_copied_from_the_request(split: str) -> None:
    for row in _tool_rows(split):
        request = row["messages"][1]["content"].lower()
        for key, value in _call(row)["arguments"].items():
            assert str(value).lower() in request, (key, value, request)


def test_tools_requests_are_unique_across_splits() -> None:
    # same rule as make_smart_home.py: ignore case and the trailing "please"/"?"/"."
    def core(text: str) -> str:
        text = text.lower()
        for suffix in (" please?", " please", "?", "."):
            if text.endswith(suffix):
                return text[: -len(suffix)]
        return text

    requests = [core(row["messages"][1]["content"]) for split in TOOLS_SPLITS for row in _tool_rows(split)]
    assert len(requests) == sum(TOOLS_SPLITS.values())
    assert len(set(requests)) == len(requests)


@pytest.mark.parametrize("split", list(TOOLS_SPLITS))
def test_tools_every_function_called_in_every_split(split: str) -> None:
    assert {_call(row)["name"] for row in _tool_rows(split)} == set(SCHEMA)


PREF_SCRIPT = REPO_ROOT / "scripts" / "make_smart_home_pref.py"
PREF_DIR = DATA_DIR.parent / "smart_home_pref"


def test_preference_pairs_regenerate_byte_identical_and_each_rejected_answer_is_wrong(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_smart_home_pref", PREF_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    for split, n in (("train", 160), ("val", 40)):
        committed = (PREF_DIR / f"{split}.jsonl").read_bytes()
        assert (tmp_path / f"{split}.jsonl").read_bytes() == committed, split
        rows = [json.loads(line) for line in committed.decode().splitlines()]
        assert len(rows) == n
        for row in rows:
            chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
            assert chosen != rejected
            try:
                assert json.loads(rejected) != json.loads(chosen)  # a wrong slot or intent
            except json.JSONDecodeError:
                assert chosen in rejected  # extra prose around the right JSON
