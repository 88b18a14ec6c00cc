"""Streaming statistics over a dataset: rows, formats, turns, roles and, given a tokenizer, tokens.

Samples are counted as they pass and then forgotten; the only thing kept per row is its token
length, in a compact `array` (4 bytes a row, 400 kB for 100,000 rows), because percentiles and the
histogram need every length. Token counts come from `Example`s encoded with truncation off, so
this module can say how many rows `max_length` would cut and how many tokens that drops.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from tunesmith.data.forked import default_workers, fork_pool
from tunesmith.data.preference import PreferenceSample
from tunesmith.data.types import IGNORE_INDEX, Conversation, Sample
from tunesmith.errors import UserError

HISTOGRAM_BINS = 10
CHUNK_ROWS = 1024  # rows encoded per round trip to the workers: big enough to amortize, small for memory

Measure = Callable[[Sample], Any]
"""Sample -> `tunesmith.formatting.encode.Example`, encoded with truncation off."""


@dataclass(frozen=True)
class TokenStats:
    """Token lengths of the valid rows, as the model's tokenizer and chat template see them.

    Totals sum every sequence of a row; percentiles and the histogram take each row's longest
    sequence (the one max_length is compared with). They differ only for rows a history-rewriting
    template splits into one sequence per trained turn."""

    rows: int
    total_tokens: int
    trainable_tokens: int
    mean: float
    p50: int
    p90: int
    p99: int
    max: int
    histogram: list[dict[str, Any]]
    """Bins `{"low", "high", "rows"}` up to max_length (or the longest row); a last bin with high None
    counts the rows over max_length."""
    max_length: int | None
    rows_over_max_length: int
    tokens_cut: int
    """Tokens that max_length would drop from the ends of over-long rows."""
    trainable_tokens_cut: int
    rows_missing_end_of_turn: int
    """Rows with a trained assistant turn whose end-of-turn marker does not train (no stop learned)."""

    @property
    def trainable_share(self) -> float:
        return self.trainable_tokens / self.total_tokens if self.total_tokens else 0.0


@dataclass(frozen=True)
class Stats:
    rows: int
    valid_rows: int
    rows_by_format: dict[str, int]
    conversations: int
    turns_mean: float
    turns_max: int
    messages_by_role: dict[str, int]
    tokens: TokenStats | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.tokens is not None:
            out["tokens"]["trainable_share"] = round(self.tokens.trainable_share, 6)
        return out


class Measured(NamedTuple):
    """What statistics and checks need of one encoded row: a few numbers instead of token lists
    (cheap to send back from a worker process). A row may be several sequences (one per trained
    turn where the template rewrites history): counts are summed, `longest` is the longest one."""

    length: int
    """Tokens of the row (all its sequences)."""
    trainable: int
    eot_trained: bool
    trainable_cut: int
    """Trained tokens at or after max_length: what truncation would take from the loss."""
    longest: int = 0
    """The longest sequence: what max_length is compared with."""
    tokens_cut: int = 0
    """Tokens max_length would drop from the ends of the row's sequences."""
    double_bos: bool = False

    @classmethod
    def of(cls, examples: list[Any], max_length: int | None) -> Measured:
        """From a row's `Example`s, encoded with truncation off."""
        if len(examples) == 1:  # the common case, kept cheap: this runs on every row
            e = examples[0]
            n = len(e.input_ids)
            cut = n - max_length if max_length is not None and n > max_length else 0
            return cls(
                n,
                e.n_trainable,
                e.eot_trained,
                trainable_beyond(e.labels, max_length) if max_length is not None and cut else 0,
                n,
                cut,
                e.double_bos,
            )
        lengths = [len(e.input_ids) for e in examples]
        limit = max_length if max_length is not None else max(lengths, default=0)
        return cls(
            sum(lengths),
            sum(e.n_trainable for e in examples),
            all(e.eot_trained for e in examples),
            sum(trainable_beyond(e.labels, limit) for e, n in zip(examples, lengths) if n > limit),
            max(lengths, default=0),
            sum(max(0, n - limit) for n in lengths),
            any(e.double_bos for e in examples),
        )


@dataclass
class StatsAccumulator:
    """Feed it every row (`add_row`), every valid sample (`add_sample`) and, with a tokenizer, every
    encoded row (`add_measured`); `result()` gives the numbers. Memory: one int per encoded row."""

    max_length: int | None = None
    rows: int = 0
    valid_rows: int = 0
    by_format: Counter = field(default_factory=Counter)
    by_role: Counter = field(default_factory=Counter)
    conversations: int = 0
    turns: int = 0
    turns_max: int = 0
    lengths: array = field(default_factory=lambda: array("I"))
    total_tokens: int = 0
    trainable_tokens: int = 0
    over: int = 0
    cut: int = 0
    trainable_cut: int = 0
    missing_end_of_turn: int = 0

    def add_row(self) -> None:
        self.rows += 1

    def add_sample(self, sample: Sample | PreferenceSample, fmt: str) -> None:
        self.valid_rows += 1
        self.by_format[fmt] += 1
        if isinstance(sample, Conversation):
            self.conversations += 1
            self.turns += len(sample.messages)
            self.turns_max = max(self.turns_max, len(sample.messages))
            self.by_role.update(m.role for m in sample.messages)

    def add_measured(self, measured: Measured) -> None:
        """Count one row's token numbers (see `Measured.of`)."""
        self.lengths.append(measured.longest)
        self.total_tokens += measured.length
        self.trainable_tokens += measured.trainable
        self.missing_end_of_turn += not measured.eot_trained
        if measured.tokens_cut:
            self.over += 1
            self.cut += measured.tokens_cut
            self.trainable_cut += measured.trainable_cut

    def result(self) -> Stats:
        return Stats(
            self.rows,
            self.valid_rows,
            dict(self.by_format),
            self.conversations,
            round(self.turns / self.conversations, 3) if self.conversations else 0.0,
            self.turns_max,
            dict(self.by_role),
            self._token_stats(),
        )

    def _token_stats(self) -> TokenStats | None:
        if not self.lengths:
            return None
        ordered = sorted(self.lengths)
        return TokenStats(
            rows=len(ordered),
            total_tokens=self.total_tokens,
            trainable_tokens=self.trainable_tokens,
            mean=round(self.total_tokens / len(ordered), 3),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
            histogram=histogram(ordered, self.max_length),
            max_length=self.max_length,
            rows_over_max_length=self.over,
            tokens_cut=self.cut,
            trainable_tokens_cut=self.trainable_cut,
            rows_missing_end_of_turn=self.missing_end_of_turn,
        )


def trainable_beyond(labels: list[int], position: int) -> int:
    """How many trained labels lie at or after `position` (what truncation there would lose).

    >>> trainable_beyond([-100, 5, 6, -100, 7], 2)
    2
    """
    return sum(1 for label in labels[position:] if label != IGNORE_INDEX)


def percentile(ordered: list[int], p: float) -> int:
    """Nearest-rank percentile of a sorted list: a value that occurs in the data.

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90)
    9
    """
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def histogram(ordered: list[int], max_length: int | None, bins: int = HISTOGRAM_BINS) -> list[dict[str, Any]]:
    """Equal-width bins from 1 up to max_length (or the longest row), plus one bin over max_length.

    >>> [(b["low"], b["high"], b["rows"]) for b in histogram([3, 10, 20, 25], 20, bins=2)]
    [(1, 10, 2), (11, 20, 1), (21, None, 1)]
    """
    limit = max_length if max_length is not None else (ordered[-1] if ordered else 1)
    width = max(1, math.ceil(limit / bins))
    counts = [0] * bins
    over = 0
    for length in ordered:
        if max_length is not None and length > max_length:
            over += 1
        else:
            counts[min(bins - 1, max(0, length - 1) // width)] += 1
    out: list[dict[str, Any]] = [
        {"low": i * width + 1, "high": min(limit, (i + 1) * width), "rows": n}
        for i, n in enumerate(counts)
        if i * width + 1 <= limit
    ]
    if max_length is not None:
        out.append({"low": max_length + 1, "high": None, "rows": over})
    return out


# ---- encoding rows, in worker processes when there are several CPUs ----------------------------

_worker: tuple[Measure, int | None] | None = None
"""Set in each worker process by `_start_worker`; never in the parent."""


def _start_worker(measure: Measure, max_length: int | None) -> None:
    global _worker
    _worker = (measure, max_length)


def _measure_in_worker(sample: Sample) -> Measured | str:
    assert _worker is not None
    return measure_row(sample, *_worker)


def measure_row(sample: Sample, measure: Measure, max_length: int | None) -> Measured | str:
    """A row's token numbers, or the message of the `UserError` its encoding raised (a template
    refusing the conversation is a fact about that row, not the end of the check)."""
    try:
        return Measured.of(measure(sample), max_length)
    except UserError as err:
        return str(err)


class Measurer:
    """Encode samples with `measure`, in forked worker processes (data/forked.py) when there are
    several CPUs; the caller reads and checks the next rows while a chunk is encoded."""

    def __init__(self, measure: Measure | None, max_length: int | None, workers: int | None = None):
        self.measure, self.max_length = measure, max_length
        self.workers = default_workers() if workers is None else workers
        self.pool: Any = None

    @property
    def active(self) -> bool:
        return self.measure is not None

    def __enter__(self) -> Measurer:
        if self.measure is not None:
            self.pool = fork_pool(self.workers, _start_worker, (self.measure, self.max_length))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def submit(self, samples: list[Sample]) -> Callable[[], list[Measured | str]]:
        """Start encoding `samples`; the returned function waits for the results, in order.

        With workers, the caller reads and checks the next rows while these are encoded.
        """
        measure, max_length = self.measure, self.max_length
        if measure is None or not samples:
            return lambda: []
        if self.pool is None:
            return lambda: [measure_row(sample, measure, max_length) for sample in samples]
        size = max(1, len(samples) // (4 * self.workers))  # a few pieces per worker evens out long rows
        results = self.pool.map(_measure_in_worker, samples, chunksize=size)
        return lambda: list(results)
