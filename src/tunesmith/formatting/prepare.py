"""Turn a split's conversations into training examples, and audit them before any compute.

The audit is what stops the classic silent failures: rows that train nothing (an error, naming the
template), assistant turns whose end-of-turn token is not trained (the model never learns to stop),
assistant turns cut by max_length, rows that start with two BOS tokens, and a split where almost
no token trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.data.forked import default_workers, fork_pool
from tunesmith.data.types import IGNORE_INDEX, Conversation, Sample
from tunesmith.errors import UserError
from tunesmith.formatting.encode import TOO_LONG, Example, encode_sample
from tunesmith.formatting.template import ChatTemplate

LOW_TRAINABLE_SHARE = 0.05
"""Below this share of trained tokens, most compute goes into tokens that teach nothing: say so."""


@dataclass(frozen=True)
class SplitReport:
    rows: int
    tokens: int
    trainable_tokens: int
    truncated: int
    """Rows with a sequence longer than max_length (cut)."""
    missing_end_of_turn: int
    """Rows with a trained assistant turn whose end-of-turn marker does not train."""
    examples: int = 0
    """Training sequences: one per row, or one per trained turn where the template rewrites history."""
    truncated_turns: int = 0
    """Trained assistant turns that max_length cut, partly or wholly."""
    double_bos: int = 0
    """Rows whose ids start with two BOS tokens."""

    @property
    def trainable_share(self) -> float:
        return self.trainable_tokens / max(self.tokens, 1)


def encode_split(
    samples: Sequence[Sample],
    template: ChatTemplate,
    tokenizer: Any,
    *,
    train_on: str,
    max_length: int,
    markers: tuple[str, ...],
    split: str,
    on_bad_row: str = "fail",
    skipped: list[dict] | None = None,
) -> tuple[list[Example], SplitReport]:
    """Encode every sample and flatten their Examples. A row too long to train (its prompt alone
    fills max_length, or its text is far beyond any max_length) is an error naming it, or with
    `on_bad_row: skip` is left out and recorded in `skipped` ({file, line, issues}); a row that
    trains nothing for another reason is an error naming the template. A per-turn Example that trains
    nothing (its turn cut away by max_length) is left out: it would only cost compute, and the report
    counts the cut turn."""
    options = {"train_on": train_on, "max_length": max_length, "markers": markers}
    rows = encode_rows(samples, template, tokenizer, dict(options, on_bad_row=on_bad_row))
    long = [
        (sample, row)
        for sample, row in zip(samples, rows)
        if isinstance(row, str) or (row and sum(e.n_trainable for e in row) == 0 and all(e.truncated for e in row))
    ]
    if long:
        reasons = [
            row if isinstance(row, str) else _prompt_too_long(sample, template, tokenizer, options)
            for sample, row in long
        ]
        if on_bad_row != "skip":
            raise UserError(
                f"{long[0][0].source}: {reasons[0]} ({len(long)} of {len(rows)} {split} rows); raise "
                "template.max_length, or set data.on_bad_row: skip to leave such rows out"
            )
        for (sample, _), reason in zip(long, reasons):
            if skipped is not None:
                skipped.append(
                    {
                        "file": sample.source.file,
                        "line": sample.source.line,
                        "row": None,
                        "issues": [{"code": "too_long", "severity": "error", "message": reason}],
                    }
                )
        kept = {id(sample) for sample, _ in long}
        rows = [row for sample, row in zip(samples, rows) if id(sample) not in kept]
    encoded = [row for row in rows if not isinstance(row, str)]  # a reason (str) is in `long`: raised or left out
    empty = [row[0].source_id for row in encoded if row and sum(e.n_trainable for e in row) == 0]
    if empty:
        raise UserError(
            f"{empty[0]}: {len(empty)} of {len(encoded)} {split} rows train no token "
            f"with {template.name} and train_on={train_on} (is the assistant text rendered?)"
        )
    examples = [e for row in encoded for e in row if e.n_trainable > 0]
    report = SplitReport(
        rows=len(encoded),
        tokens=sum(len(e.input_ids) for e in examples),
        trainable_tokens=sum(e.n_trainable for e in examples),
        truncated=sum(any(e.truncated for e in row) for row in encoded),
        missing_end_of_turn=sum(not all(e.eot_trained for e in row) for row in encoded),
        examples=len(examples),
        truncated_turns=sum(e.truncated_turns for row in encoded for e in row),
        double_bos=sum(any(e.double_bos for e in row) for row in encoded),
    )
    return examples, report


def _prompt_too_long(sample: Sample, template: ChatTemplate, tokenizer: Any, options: dict[str, Any]) -> str:
    """Why a row trains nothing once cut: its first trained token lies past max_length."""
    whole = encode_sample(sample, template, tokenizer, **dict(options, max_length=10**9))
    firsts = [next((i for i, label in enumerate(e.labels) if label != IGNORE_INDEX), len(e.labels)) for e in whole]
    return f"prompt is {min(firsts, default=0):,} tokens, max_length is {options['max_length']:,}"


PARALLEL_ROWS = 4096
"""From this many rows a split is encoded in forked worker processes (below it, forking costs more)."""

_job: tuple[Sequence[Sample], ChatTemplate, Any, dict[str, Any]] | None = None
"""What a forked worker encodes: set in each worker by `_start_job` (inherited through the fork,
never pickled), so nothing but the results crosses between processes."""


def encode_rows(
    samples: Sequence[Sample],
    template: ChatTemplate,
    tokenizer: Any,
    options: dict[str, Any],
    workers: int | None = None,
) -> list[list[Example] | str]:
    """Each sample's Examples, in order. A large split is cut into pieces encoded in forked
    worker processes (data/forked.py). The first row a template refuses raises its UserError here."""
    workers = default_workers() if workers is None else workers
    pool = (
        fork_pool(workers, _start_job, (samples, template, tokenizer, options))
        if len(samples) >= PARALLEL_ROWS
        else None
    )
    if pool is None:
        return [_encode_row(s, template, tokenizer, **options) for s in samples]
    size = -(-len(samples) // (8 * workers))  # a few pieces per worker evens out long rows
    pieces = [(start, min(start + size, len(samples))) for start in range(0, len(samples), size)]
    with pool:
        return [row for piece in pool.map(_encode_piece, pieces) for row in piece]


def _start_job(samples: Sequence[Sample], template: ChatTemplate, tokenizer: Any, options: dict[str, Any]) -> None:
    global _job
    _job = (samples, template, tokenizer, options)


def _encode_piece(bounds: tuple[int, int]) -> list[list[Example] | str]:
    assert _job is not None
    samples, template, tokenizer, options = _job
    return [_encode_row(s, template, tokenizer, **options) for s in samples[bounds[0] : bounds[1]]]


def _encode_row(
    sample: Sample, template: ChatTemplate, tokenizer: Any, *, on_bad_row: str = "fail", **options: Any
) -> list[Example] | str:
    """One sample's Examples; a template refusing it is an error naming the row. A row too long to
    encode at all is, with `on_bad_row: skip`, the reason instead (the caller leaves it out)."""
    try:
        return encode_sample(sample, template, tokenizer, **options)
    except UserError as err:
        message = str(err)
        if on_bad_row == "skip" and message.startswith(TOO_LONG):
            return message[len(TOO_LONG) :].split(";")[0]
        if message.startswith(str(sample.source)):
            raise
        raise UserError(f"{sample.source}: {message.removeprefix(TOO_LONG)}") from None


def shared_system_prompt(samples: Sequence[Any]) -> str | None:
    """The system prompt every conversation starts with, if they all share one.

    Chat and export use it as the default, so inference sees what training saw. Preference rows
    count by their prompt.
    """
    firsts = [
        s.messages[0] if isinstance(s, Conversation) else s.prompt[0] if getattr(s, "prompt", None) else None
        for s in samples
    ]
    if not firsts or any(m is None for m in firsts):
        return None
    prompts = {m.content if m.role == "system" else None for m in firsts if m is not None}
    return prompts.pop() if len(prompts) == 1 else None


def warnings_for(report: SplitReport, split: str) -> list[str]:
    """The audit's findings a person should read before training starts."""
    notes = []
    if report.truncated:
        notes.append(f"{report.truncated} {split} rows are longer than max_length and were cut")
    if report.truncated_turns:
        notes.append(
            f"{report.truncated_turns} assistant turns in {split} were cut by max_length, partly or "
            "wholly; raise template.max_length or shorten the rows"
        )
    if report.missing_end_of_turn:
        notes.append(
            f"{report.missing_end_of_turn} {split} rows have an assistant turn whose end-of-turn token "
            "is not trained; the model may not learn to stop"
        )
    if report.double_bos:
        notes.append(
            f"{report.double_bos} {split} rows start with two BOS tokens (the template writes BOS and "
            "the text holds one too); remove the BOS text from the data"
        )
    if report.tokens and report.trainable_share < LOW_TRAINABLE_SHARE:
        notes.append(
            f"only {report.trainable_share:.1%} of {split} tokens train (under "
            f"{LOW_TRAINABLE_SHARE:.0%}); most compute goes into prompts (check train_on and the data)"
        )
    return notes
