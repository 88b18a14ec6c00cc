"""Generate the bundled ``smart_home_tools`` demo dataset (train/val/test chat JSONL).

The task: answer an English smart-home or calendar request by calling the right tool.
It is the tool-calling twin of ``smart_home`` (``scripts/make_smart_home.py``): the same
requests, vocabularies and phrasings, but each intent is a function and the slots are
its arguments. Every row offers exactly 3 compact tool schemas (the right one plus 2
distractors drawn at random from the other 11, in random order), and the assistant's
answer is only the tool call, e.g. ``set_timer(minutes=10)``; there is no tool result
and no final message.

Requests are drawn by the ``smart_home`` generator itself (imported from the script next
to this one), so the dedupe rule is the same: requests are unique across all splits,
even after ignoring case and the optional trailing "please"/"?"/".".

Output is deterministic (``random.Random(seed)``, stdlib only): running the script
twice writes byte-identical files.

Usage: python scripts/make_smart_home_tools.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType


def _load_smart_home() -> ModuleType:
    """Import ``make_smart_home.py`` from this folder (scripts/ is not a package)."""
    name = "make_smart_home"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sh = _load_smart_home()

# Short on purpose: it is repeated in every row, and on a 2-core CPU every token costs time.
SYSTEM = "Call the tool that does the request."
DEFAULT_SEED = 20240612
DEFAULT_OUT = sh.REPO_ROOT / "src" / "tunesmith" / "data" / "bundled" / "smart_home_tools"
SPLIT_SIZES = {"train": 240, "val": 24, "test": 40}
TOOLS_PER_ROW = 3

# Slots whose values are ints in smart_home (level %, degrees, minutes); the rest are strings.
INTEGER_SLOTS = {"level", "temperature", "minutes"}

# function name -> short description (2-5 words); arguments come from sh.INTENTS.
DESCRIPTIONS: dict[str, str] = {
    "lights_on": "Turn on room lights",
    "lights_off": "Turn off room lights",
    "set_brightness": "Set light brightness percent",
    "set_temperature": "Set room temperature",
    "lock_door": "Lock a door",
    "unlock_door": "Unlock a door",
    "play_music": "Play music in room",
    "set_timer": "Start a timer",
    "set_alarm": "Set an alarm",
    "add_event": "Add a calendar event",
    "cancel_event": "Cancel a calendar event",
    "check_calendar": "Show a day's events",
}


def tool_schema(name: str) -> dict:
    """Compact OpenAI function schema: name, short description, property types, required."""
    keys = sh.INTENTS[name][0]
    properties = {k: {"type": "integer" if k in INTEGER_SLOTS else "string"} for k in keys}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": DESCRIPTIONS[name],
            "parameters": {"type": "object", "properties": properties, "required": list(keys)},
        },
    }


TOOLS: dict[str, dict] = {name: tool_schema(name) for name in sh.INTENTS}


def to_tool_row(row: dict, rng: random.Random) -> dict:
    """Turn a smart_home row into a tool-calling row with 3 shuffled tool schemas."""
    request = row["messages"][1]["content"]
    target = json.loads(row["messages"][2]["content"])
    name = target["intent"]
    others = [other for other in TOOLS if other != name]
    offered = [name] + rng.sample(others, TOOLS_PER_ROW - 1)
    rng.shuffle(offered)
    call = {"type": "function", "function": {"name": name, "arguments": target["slots"]}}
    return {
        "tools": [TOOLS[n] for n in offered],
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": request},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ],
    }


def per_function_counts(rng: random.Random) -> dict[str, dict[str, int]]:
    """Spread each split evenly over functions, as the smart_home generator does for its intents."""
    return sh.per_intent_counts(rng, SPLIT_SIZES)


def build_splits(seed: int) -> dict[str, list[dict]]:
    """Each function gets its quota per split (unique requests), then each split is shuffled."""
    rng = random.Random(seed)
    counts = per_function_counts(rng)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {split: [] for split in SPLIT_SIZES}
    for name in sh.INTENTS:
        rows = sh.sample_unique(name, sum(counts[name].values()), rng, seen)
        for split in SPLIT_SIZES:
            take = counts[name][split]
            splits[split].extend(to_tool_row(row, rng) for row in rows[:take])
            rows = rows[take:]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    sh.write_splits(build_splits(args.seed), args.out)
    print(f"wrote {', '.join(f'{s}={n}' for s, n in SPLIT_SIZES.items())} rows to {args.out}")


if __name__ == "__main__":
    main()
