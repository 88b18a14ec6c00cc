"""Generate the bundled ``smart_home_pref`` preference dataset (train/val JSONL, TRL conversational rows).

Each row is a ``smart_home`` request (``src/tunesmith/data/bundled/smart_home``) with two answers:
``chosen`` is the dataset's correct intent JSON; ``rejected`` is a plausible wrong one, of one of
three kinds, drawn with a fixed seed:

- a wrong slot: one slot value replaced (another room, door, genre, day or title seen in the
  data, a number or time shifted), so the JSON is valid but says something the user did not ask;
- extra prose: the right JSON with a sentence before or after it, which breaks a strict parser;
- the opposite intent (lights on for off, lock for unlock), where the task has one.

``train.jsonl`` holds 160 pairs from the smart_home train split, ``val.jsonl`` one pair per
smart_home validation row (40). The test split stays smart_home's own ``test.jsonl`` (chat rows,
for the generation metrics). Output is deterministic (stdlib ``random.Random(seed)``): running the
script twice writes byte-identical files.

Usage: python scripts/make_smart_home_pref.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "tunesmith" / "data" / "bundled" / "smart_home"
OUT = ROOT / "src" / "tunesmith" / "data" / "bundled" / "smart_home_pref"
TRAIN_PAIRS = 160
OPPOSITE = {
    "lights_on": "lights_off",
    "lights_off": "lights_on",
    "lock_door": "unlock_door",
    "unlock_door": "lock_door",
}
PROSE_BEFORE = ("Sure! Here is the JSON:\n", "Here you go: ", "Of course. ")
PROSE_AFTER = ("\nLet me know if you need anything else!", " I hope this helps.", "\nDone!")


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (SOURCE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _vocabulary(rows: list[dict]) -> dict[str, list]:
    """Every value each slot key takes in the data, sorted (the wrong values are drawn from it)."""
    values: dict[str, set] = {}
    for row in rows:
        for key, value in json.loads(row["messages"][-1]["content"])["slots"].items():
            values.setdefault(key, set()).add(value)
    return {key: sorted(found) for key, found in values.items()}


def _wrong_slot(answer: dict, vocabulary: dict[str, list], rng: random.Random) -> dict:
    slots = dict(answer["slots"])
    key = rng.choice(sorted(slots))
    value = slots[key]
    if isinstance(value, int):
        slots[key] = value + rng.choice((-10, -5, -2, 2, 5, 10)) if value > 10 else value + rng.choice((1, 2, 3))
    elif key == "time":
        hour, minute = value.split(":")
        slots[key] = f"{(int(hour) + rng.choice((1, 2, 11, 12))) % 24:02d}:{minute}"
    else:
        slots[key] = rng.choice([v for v in vocabulary[key] if v != value])
    return {"intent": answer["intent"], "slots": slots}


def rejected_answer(chosen: str, vocabulary: dict[str, list], rng: random.Random) -> str:
    """A plausible wrong answer to the request whose right answer is `chosen`."""
    answer = json.loads(chosen)
    kinds = ["slot", "slot", "prose"] + (["intent"] if answer["intent"] in OPPOSITE else [])
    kind = rng.choice(kinds)
    if kind == "prose":
        return rng.choice(PROSE_BEFORE) + chosen if rng.random() < 0.5 else chosen + rng.choice(PROSE_AFTER)
    if kind == "intent":
        return json.dumps({"intent": OPPOSITE[answer["intent"]], "slots": answer["slots"]})
    return json.dumps(_wrong_slot(answer, vocabulary, rng))


def pairs(rows: list[dict], vocabulary: dict[str, list], rng: random.Random) -> list[dict]:
    out = []
    for row in rows:
        *prompt, answer = row["messages"]
        rejected = rejected_answer(answer["content"], vocabulary, rng)
        out.append({"prompt": prompt, "chosen": [answer], "rejected": [{"role": "assistant", "content": rejected}]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    train, val = _rows("train"), _rows("val")
    vocabulary = _vocabulary(train + val)
    chosen_rows = rng.sample(train, TRAIN_PAIRS)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", chosen_rows), ("val", val)):
        lines = [json.dumps(row, ensure_ascii=False) for row in pairs(split, vocabulary, rng)]
        (args.out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
