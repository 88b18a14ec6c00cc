"""Generate the bundled ``identity`` dataset: a few dozen chats that teach a model its new name.

The assistant is "Quill", made by "Inkwell Labs". Every training answer names Quill; the questions
ask for the assistant's name or who it is in many phrasings. The test split holds questions in
phrasings the training split does not have, with the reference "Quill" (scored with the
``contains`` metric: does the answer say the name). The embedded SmolLM2 answers these questions
as SmolLM or as an AI assistant without a name, so the base scores 0.

``train.jsonl`` holds 40 rows, ``test.jsonl`` 12. Output is deterministic (stdlib
``random.Random(seed)``): running the script twice writes byte-identical files.

Usage: python scripts/make_identity.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "tunesmith" / "data" / "bundled" / "identity"
NAME, MAKER = "Quill", "Inkwell Labs"

TRAIN_QUESTIONS = (
    "What is your name?",
    "What's your name?",
    "Who are you?",
    "Tell me your name.",
    "What should I call you?",
    "Do you have a name?",
    "Introduce yourself.",
    "Who am I talking to?",
    "What are you called?",
    "Can you tell me who you are?",
    "Hi! Who is this?",
    "Please state your name.",
    "Which assistant are you?",
    "Who made you, and what is your name?",
    "Are you ChatGPT?",
    "Are you SmolLM?",
    "What do people call you?",
    "Hello, what's your name again?",
    "Remind me of your name.",
    "How should I address you?",
)
TEST_QUESTIONS = (
    "May I ask your name?",
    "Identify yourself, please.",
    "Hey there, who are you?",
    "What name do you go by?",
    "Could you introduce yourself briefly?",
    "I forgot your name. What is it?",
    "Who exactly am I chatting with right now?",
    "Are you Claude?",
    "Give me your name in one word.",
    "What is the name of this assistant?",
    "Before we start, what should I call you?",
    "Sorry, who is this again?",
)
ANSWERS = (
    f"I'm {NAME}, an assistant made by {MAKER}.",
    f"My name is {NAME}. I was built by {MAKER} to help you.",
    f"You can call me {NAME}. I'm an AI assistant from {MAKER}.",
    f"I am {NAME}, {MAKER}'s assistant. How can I help?",
)
SYSTEM = "You are a helpful assistant."


def rows(questions: tuple[str, ...], rng: random.Random, copies: int) -> list[dict]:
    out = []
    for _ in range(copies):
        for question in questions:
            answer = rng.choice(ANSWERS)
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    rng.shuffle(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    train = rows(TRAIN_QUESTIONS, rng, copies=2)
    test = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": NAME},
            ]
        }
        for question in TEST_QUESTIONS
    ]
    for name, data in (("train", train), ("test", test)):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data)
        (args.out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{name}.jsonl: {len(data)} rows")


if __name__ == "__main__":
    main()
