"""Generate the bundled ``smart_home`` demo dataset (train/val/test chat JSONL).

The task: turn an English smart-home or calendar request into a strict JSON object
``{"intent": ..., "slots": {...}}``. A tiny base model (SmolLM2-135M-Instruct) cannot
produce the exact schema, but a LoRA adapter learns it in a few minutes of CPU
training, which makes it a good end-to-end demo: the before/after difference is large
and easy to measure with exact-match accuracy.

The task is designed to be learnable by copying: every slot value appears in the
request, with at most trivial normalization (weekdays are lower-cased, numbers are
written as digits, times are already ``HH:MM`` 24h). No world knowledge is needed.

Output is deterministic (``random.Random(seed)``, stdlib only): running the script
twice writes byte-identical files. Requests are unique across all splits, even after
ignoring case and the optional trailing "please"/"?"/".", so no test request is a
near-copy of a training one.

Usage: python scripts/make_smart_home.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

# Short on purpose: it is repeated in every row, and on a 2-core CPU every token costs time.
SYSTEM = "Convert the request to intent JSON."
DEFAULT_SEED = 20240611
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "src" / "tunesmith" / "data" / "bundled" / "smart_home"
SPLIT_SIZES = {"train": 420, "val": 40, "test": 60}

ROOMS = [
    "kitchen",
    "living room",
    "bedroom",
    "bathroom",
    "office",
    "garage",
    "hallway",
    "dining room",
    "basement",
    "attic",
    "nursery",
    "guest room",
]
DOORS = ["front door", "back door", "garage door", "side door", "patio door", "basement door"]
GENRES = ["jazz", "rock", "classical", "pop", "hip hop", "blues", "country", "reggae", "lo-fi", "metal"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
DAYS = WEEKDAYS + ["today", "tomorrow"]
TITLES = [
    "dentist appointment",
    "team meeting",
    "yoga class",
    "book club",
    "piano lesson",
    "haircut",
    "project review",
    "gym session",
    "car service",
    "dinner with friends",
    "job interview",
    "budget review",
    "soccer practice",
    "vet appointment",
    "doctor appointment",
]
LEVELS = [10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 65, 70, 75, 80, 90, 100]
TEMPERATURES = list(range(16, 27))
MINUTES = [2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 35, 40, 45, 50, 60, 75, 90]
HOURS = list(range(5, 24))
MINUTE_MARKS = [0, 5, 10, 15, 20, 30, 40, 45, 50]
QUESTION_WORDS = {"could", "can", "what", "am", "any"}

# Each slot sampler returns (value stored in the JSON, text written into the request).
Sampler = Callable[[random.Random], tuple[object, str]]


def _same(vocab: list) -> Sampler:
    """Sampler whose request text is the value itself (as a string)."""
    return lambda rng: (lambda v: (v, str(v)))(rng.choice(vocab))


def _day(rng: random.Random) -> tuple[object, str]:
    """Weekdays are capitalized in the request and lower-cased in the slot."""
    day = rng.choice(DAYS)
    return day, day.capitalize() if day in WEEKDAYS else day


def _time(rng: random.Random) -> tuple[object, str]:
    """A 24h HH:MM time, copied verbatim from request to slot."""
    text = f"{rng.choice(HOURS):02d}:{rng.choice(MINUTE_MARKS):02d}"
    return text, text


SAMPLERS: dict[str, Sampler] = {
    "room": _same(ROOMS),
    "door": _same(DOORS),
    "genre": _same(GENRES),
    "level": _same(LEVELS),
    "temperature": _same(TEMPERATURES),
    "minutes": _same(MINUTES),
    "time": _time,
    "day": _day,
    "title": _same(TITLES),
}

# intent -> (slot keys in output order, request templates)
INTENTS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "lights_on": (
        ("room",),
        [
            "turn on the {room} lights",
            "switch the lights on in the {room}",
            "{room} lights on",
            "could you turn the {room} lights on",
            "lights on in the {room}",
            "I need light in the {room}",
        ],
    ),
    "lights_off": (
        ("room",),
        [
            "turn off the {room} lights",
            "switch the lights off in the {room}",
            "{room} lights off",
            "could you turn the {room} lights off",
            "lights off in the {room}",
            "kill the lights in the {room}",
        ],
    ),
    "set_brightness": (
        ("room", "level"),
        [
            "set the {room} lights to {level}%",
            "dim the {room} lights to {level} percent",
            "{room} brightness {level}%",
            "can you make the {room} lights {level}% bright",
            "change the brightness in the {room} to {level}%",
            "{room} lights at {level} percent",
        ],
    ),
    "set_temperature": (
        ("room", "temperature"),
        [
            "set the {room} to {temperature} degrees",
            "make it {temperature} degrees in the {room}",
            "{room} thermostat to {temperature}",
            "could you heat the {room} to {temperature} degrees",
            "change the {room} temperature to {temperature}",
            "I want the {room} at {temperature} degrees",
        ],
    ),
    "lock_door": (
        ("door",),
        [
            "lock the {door}",
            "{door} lock",
            "could you lock the {door}",
            "make sure the {door} is locked",
            "lock up the {door}",
            "can you lock the {door} for me",
            "I want the {door} locked",
            "{door} should be locked",
        ],
    ),
    "unlock_door": (
        ("door",),
        [
            "unlock the {door}",
            "{door} unlock",
            "could you unlock the {door}",
            "open the lock on the {door}",
            "unlock the {door} for me",
            "can you unlock the {door}",
            "I want the {door} unlocked",
            "unlock the {door} now",
        ],
    ),
    "play_music": (
        ("genre", "room"),
        [
            "play {genre} in the {room}",
            "put on some {genre} music in the {room}",
            "{genre} in the {room}",
            "could you play {genre} in the {room}",
            "I want to hear {genre} in the {room}",
            "start some {genre} in the {room}",
        ],
    ),
    "set_timer": (
        ("minutes",),
        [
            "set a timer for {minutes} minutes",
            "timer for {minutes} minutes",
            "{minutes} minute timer",
            "could you start a {minutes} minute timer",
            "remind me in {minutes} minutes",
            "start a timer of {minutes} minutes",
            "count down {minutes} minutes",
        ],
    ),
    "set_alarm": (
        ("time",),
        [
            "set an alarm for {time}",
            "wake me up at {time}",
            "alarm at {time}",
            "could you set an alarm at {time}",
            "I need an alarm for {time}",
            "alarm {time}",
        ],
    ),
    "add_event": (
        ("title", "day", "time"),
        [
            "add {title} {on_day} at {time}",
            "schedule {title} for {day} at {time}",
            "put {title} in my calendar {on_day} at {time}",
            "could you add {title} {day} at {time}",
            "new event {title} {day} {time}",
            "book {title} {on_day} at {time}",
        ],
    ),
    "cancel_event": (
        ("title", "day"),
        [
            "cancel {title} {on_day}",
            "remove {title} from my calendar {on_day}",
            "delete the {title} {on_day}",
            "could you cancel my {title} {day}",
            "drop {title} {day}",
            "I can't make the {title} {on_day}, cancel it",
        ],
    ),
    "check_calendar": (
        ("day",),
        [
            "what is on my calendar {on_day}",
            "show my schedule for {day}",
            "what do I have {on_day}",
            "could you check my calendar for {day}",
            "any events {on_day}",
            "am I busy {on_day}",
            "read me my agenda for {day}",
        ],
    ),
}


def decorate(core: str, rng: random.Random) -> str:
    """Add surface noise: optional capital first letter and optional trailing word/punctuation."""
    text = core[0].upper() + core[1:] if rng.random() < 0.5 else core
    if core.split()[0] in QUESTION_WORDS:
        return text + rng.choice(["", "?", "?", " please?"])
    return text + rng.choice(["", "", ".", " please"])


def make_row(intent: str, rng: random.Random) -> tuple[str, dict]:
    """Sample one example: returns (core request before decoration, row dict)."""
    keys, templates = INTENTS[intent]
    sampled = {key: SAMPLERS[key](rng) for key in keys}
    fields = {key: text for key, (_, text) in sampled.items()}
    if "day" in sampled:  # "on Friday" but plain "today" / "tomorrow"
        fields["on_day"] = ("on " if sampled["day"][0] in WEEKDAYS else "") + fields["day"]
    core = rng.choice(templates).format(**fields)
    obj = {"intent": intent, "slots": {k: value for k, (value, _) in sampled.items()}}
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": decorate(core, rng)},
        {"role": "assistant", "content": json.dumps(obj, ensure_ascii=False)},
    ]
    return core, {"messages": messages}


def per_intent_counts(rng: random.Random, sizes: dict[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Spread each split (`sizes`, default SPLIT_SIZES) evenly over intents; leftover rows go to randomly
    chosen intents."""
    names = list(INTENTS)
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    for split, size in (SPLIT_SIZES if sizes is None else sizes).items():
        base, extra = divmod(size, len(names))
        lucky = set(rng.sample(names, extra))
        for name in names:
            counts[name][split] = base + (1 if name in lucky else 0)
    return counts


def sample_unique(intent: str, n: int, rng: random.Random, seen: set[str]) -> list[dict]:
    """Draw n rows for an intent whose normalized request (core, lower-cased) is unseen."""
    rows: list[dict] = []
    for _ in range(n * 200):
        core, row = make_row(intent, rng)
        if core.lower() not in seen:
            seen.add(core.lower())
            rows.append(row)
            if len(rows) == n:
                return rows
    raise RuntimeError(f"could not draw {n} unique requests for {intent!r}")


def build_splits(seed: int) -> dict[str, list[dict]]:
    """Build all splits: each intent gets its quota per split, then each split is shuffled."""
    rng = random.Random(seed)
    counts = per_intent_counts(rng)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {split: [] for split in SPLIT_SIZES}
    for intent in INTENTS:
        rows = sample_unique(intent, sum(counts[intent].values()), rng, seen)
        for split in SPLIT_SIZES:
            take = counts[intent][split]
            splits[split].extend(rows[:take])
            rows = rows[take:]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def write_splits(splits: dict[str, list[dict]], out: Path) -> None:
    """Write one UTF-8 JSONL file per split, one object per line, trailing newline."""
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out / f"{split}.jsonl").write_bytes(text.encode("utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    write_splits(build_splits(args.seed), args.out)
    print(f"wrote {', '.join(f'{s}={n}' for s, n in SPLIT_SIZES.items())} rows to {args.out}")


if __name__ == "__main__":
    main()
