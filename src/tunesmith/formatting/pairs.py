"""Preference rows -> sequences to score: each answer is its prompt's generation prompt, then what the
model generates, through the stop token, exactly as a supervised turn is encoded.

A pair becomes two Examples that share their prompt ids token for token (the prompt is tokenized
on its own, as at inference; `encode` does this for every trained turn), and whose trained labels are
the answer's tokens and its end-of-turn marker. Multi-turn prompts, tool calls and reasoning go
through the same template path as supervised rows. An answer the template splits into several
sequences (a template that rewrites earlier turns, with a multi-message answer) cannot be scored as
one sequence and is refused by its row.

For KTO a pair is two rows (the chosen answer good, the rejected bad), and every row also gets a
mismatched sequence, its prompt followed by another row's answer, for the KL reference point
(`training/preference_loss.py: kto_kl`). The partner is a seeded derangement over the split, so the
estimate does not depend on the micro-batch size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.data.preference import KtoSample, PreferencePair
from tunesmith.data.types import IGNORE_INDEX, Conversation
from tunesmith.errors import UserError
from tunesmith.formatting.encode import TOO_LONG, Example, encode
from tunesmith.formatting.prepare import SplitReport
from tunesmith.formatting.template import ChatTemplate

PAIRED = ("dpo", "orpo", "simpo")


@dataclass(frozen=True)
class Scored:
    """What one preference row trains on: its sequences (chosen then rejected for a pair; the answer
    then its mismatched partner for KTO) and, for KTO, whether the answer is good."""

    sequences: tuple[Example, ...]
    source_id: str
    desirable: bool | None = None

    def row(self, index: int) -> dict[str, Any]:
        """The Trainer's row: what the collator (`formatting/collate.py: collate_scored`) reads."""
        row: dict[str, Any] = {
            "sequences": [(e.input_ids, e.labels) for e in self.sequences],
            "index": index,
            "sources": [self.source_id],
        }
        if self.desirable is not None:
            row["desirable"] = self.desirable
        return row


def encode_answer(
    prompt: tuple,
    answer: tuple,
    sample: Any,
    template: ChatTemplate,
    tokenizer: Any,
    *,
    max_length: int,
    markers: tuple,
) -> Example:
    """One answer after its prompt, trained through its stop token; refused when it is not one sequence
    or max_length cuts it (a cut answer would be scored on part of itself)."""
    conversation = Conversation(
        messages=(*prompt, *answer), source=sample.source, tools=sample.tools, prompt_messages=len(prompt)
    )
    examples = encode(conversation, template, tokenizer, train_on="completion", max_length=max_length, markers=markers)
    if len(examples) != 1:
        raise UserError(
            f"{sample.source}: {template.name} renders this answer as {len(examples)} separate sequences "
            "(it rewrites earlier turns), so it cannot be scored as one; use one assistant message per answer"
        )
    example = examples[0]
    if example.truncated:
        raise UserError(
            f"{TOO_LONG}prompt and answer are {_length(conversation, template, tokenizer, markers):,} tokens, "
            f"max_length is {max_length:,}; raise template.max_length, or set data.on_bad_row: skip"
        )
    return example


def _length(conversation: Conversation, template: ChatTemplate, tokenizer: Any, markers: tuple) -> int:
    whole = encode(conversation, template, tokenizer, train_on="completion", max_length=10**9, markers=markers)
    return len(whole[0].input_ids)


def encode_preference(
    sample: PreferencePair | KtoSample,
    template: ChatTemplate,
    tokenizer: Any,
    *,
    objective: str,
    max_length: int,
    markers: tuple[str, ...],
) -> list[Scored]:
    """A preference row's Scored rows under `objective` (KTO partners are added by `with_partners`)."""
    options: dict[str, Any] = {"max_length": max_length, "markers": markers}
    source = str(sample.source)
    if isinstance(sample, KtoSample):
        if objective in PAIRED:
            raise UserError(
                f"{source}: a KTO row (one answer with a true/false label) is not a pair, and "
                f"train.objective: {objective} trains on pairs; use train.objective: kto"
            )
        answer = encode_answer(sample.prompt, sample.completion, sample, template, tokenizer, **options)
        return [Scored((answer,), source, sample.desirable)]
    chosen = encode_answer(sample.prompt, sample.chosen, sample, template, tokenizer, **options)
    rejected = encode_answer(sample.prompt, sample.rejected, sample, template, tokenizer, **options)
    if prompt_ids(chosen) != prompt_ids(rejected):  # the same prompt text: only a broken template differs here
        raise UserError(f"{source}: the chosen and rejected answers tokenize their shared prompt differently")
    if objective == "kto":
        return [Scored((chosen,), source, True), Scored((rejected,), source, False)]
    return [Scored((chosen, rejected), source)]


def prompt_ids(example: Example) -> list[int]:
    """The ids before the first trained token (position 0 never trains)."""
    first = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))
    return example.input_ids[:first]


def with_partners(rows: list[Scored], seed: int, max_length: int) -> list[Scored]:
    """KTO rows, each with a second sequence: its prompt, then the answer of another row (a seeded
    derangement; a split of one row is its own partner)."""
    order = list(range(len(rows)))
    random.Random(f"kto-kl:{seed}").shuffle(order)
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    scored = []
    for i, row in enumerate(rows):
        own, other = row.sequences[0], rows[partner[i]].sequences[0]
        prompt = prompt_ids(own)
        start = len(prompt_ids(other))
        ids = (prompt + other.input_ids[start:])[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + other.labels[start:])[:max_length]
        mismatched = Example(ids, labels, len(labels) - labels.count(IGNORE_INDEX), False, own.source_id, True)
        scored.append(Scored((own, mismatched), row.source_id, row.desirable))
    return scored


def encode_preference_split(
    samples: Sequence[Any],
    template: ChatTemplate,
    tokenizer: Any,
    *,
    objective: str,
    max_length: int,
    markers: tuple[str, ...],
    split: str,
    seed: int,
    on_bad_row: str = "fail",
    skipped: list[dict] | None = None,
) -> tuple[list[Scored], SplitReport]:
    """Every preference row of a split encoded; a row too long is an error naming it, or with
    `on_bad_row: skip` left out and recorded in `skipped`. Chat rows in a preference run are refused."""
    scored: list[Scored] = []
    for sample in samples:
        if not isinstance(sample, (PreferencePair, KtoSample)):
            raise UserError(
                f"{sample.source}: a chat row in a train.objective: {objective} run, which trains on "
                "preference rows (prompt, chosen, rejected or a KTO label); give it a preference file, or "
                "train chat rows with train.objective: sft"
            )
        try:
            scored += encode_preference(
                sample, template, tokenizer, objective=objective, max_length=max_length, markers=markers
            )
        except UserError as err:
            message = str(err)
            if not message.startswith(TOO_LONG):
                raise
            if on_bad_row != "skip":
                raise UserError(f"{sample.source}: {message.removeprefix(TOO_LONG)}") from None
            if skipped is not None:
                reason = message.removeprefix(TOO_LONG).split(";")[0]
                issue = {"code": "too_long", "severity": "error", "message": reason}
                skipped.append({"file": sample.source.file, "line": sample.source.line, "row": None, "issues": [issue]})
    if not scored:
        raise UserError(f"no {split} preference rows left to train (all were too long for template.max_length)")
    if objective == "kto":
        scored = with_partners(scored, seed, max_length)
    trained = [e for row in scored for e in row.sequences[: 1 if objective == "kto" else 2]]
    report = SplitReport(
        rows=len(scored),
        tokens=sum(len(e.input_ids) for row in scored for e in row.sequences),
        trainable_tokens=sum(e.n_trainable for e in trained),
        truncated=0,
        missing_end_of_turn=sum(not e.eot_trained for e in trained),
        examples=len(scored),
    )
    return scored, report
