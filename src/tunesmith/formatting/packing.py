"""Best-fit-decreasing packing: conversations into bins of at most `capacity` tokens.

A bin is the unit a packed micro-batch counts (`train.batch_size` bins per micro-batch, the
Axolotl convention), so bins should be few and full: every token of room left in a bin is a
token of compute that trains nothing, or, with `batch_size` fixed, fewer conversations per step.

Best-fit decreasing (longest first; each into the open bin with the least room that still fits
it) never uses more than 11/9 of the optimal bin count plus 6/9 (Dósa, 2007), and on chat data,
with many short rows to fill the gaps, it lands on the lower bound ceil(tokens / capacity) or one
above. It is deterministic: equal lengths keep their input order and equal room goes to the
older bin, so the same rows always give the same bins.

Inside a bin the rows keep their identity: `position_ids` restart at 0 for each row (which is
how transformers finds the boundaries and builds a block-diagonal mask, see `collate.py`), and
each row's first label is -100, so no token learns to predict the start of the next row.
"""

from __future__ import annotations

import functools
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import cast

from tunesmith.data.types import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins whose lengths sum to at most `capacity`.

    Bins come in the order they were opened; inside a bin, indices in the order placed.

    >>> best_fit_decreasing([5, 3, 6, 2, 4], capacity=10)
    [[2, 4], [0, 1, 3]]
    """
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (room left, bin number) of bins not yet full, kept sorted
    # longest first, ties in input order (the sort is stable, `reverse` included)
    for index in sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True):
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"item {index} has length {size}, more than the bin capacity {capacity}")
        at = bisect_left(room, (size, -1))  # the least room that still fits; the older bin on a tie
        if at == len(room):
            bins.append([index])
            left, number = capacity - size, len(bins) - 1
        else:
            left, number = room.pop(at)
            bins[number].append(index)
            left -= size
        if left > 0:
            insort(room, (left, number))
    return bins


def bin_groups(lengths: Sequence[int], capacity: int) -> tuple[tuple[int, ...], ...]:
    """`best_fit_decreasing(lengths, capacity)`, remembered for the last few inputs: a run asks
    twice for the same split (the defaults count its bins, then the data loader packs it), and on
    100,000 examples each grouping costs about half a second."""
    return _bin_groups(tuple(lengths), capacity)


@functools.lru_cache(maxsize=4)
def _bin_groups(lengths: tuple[int, ...], capacity: int) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, best_fit_decreasing(lengths, capacity)))


def pack(rows: Sequence[Mapping[str, Sequence[int]]], capacity: int) -> list[dict[str, list[int]]]:
    """Rows (`input_ids`, `labels`) packed best-fit-decreasing into bins of at most `capacity` tokens.

    Each bin is one row again: ids and labels concatenated, `position_ids` restarting per row,
    the first label of every row -100.

    >>> rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]},
    ...         {"input_ids": [6, 7, 8, 9], "labels": [6, 7, 8, 9]}]
    >>> [b["position_ids"] for b in pack(rows, capacity=6)]
    [[0, 1, 2, 3, 0, 1], [0, 1, 2]]
    >>> pack(rows, capacity=6)[0]["labels"]
    [-100, 7, 8, 9, -100, 5]
    """
    return list(PackedBins(rows, capacity))


class PackedBins(SequenceABC):
    """`pack(rows, capacity)` as a sequence whose bins are concatenated when read: what the
    Trainer's data loader indexes. The grouping is computed once, up front; the 3 concatenated
    lists of every bin (millions of ids for a large split) are built one micro-batch at a time.

    >>> bins = PackedBins([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}], 4)
    >>> len(bins), bins[0]["position_ids"], [b["input_ids"] for b in bins]
    (1, [0, 1, 2, 0], [[1, 2, 3, 4]])
    """

    def __init__(self, rows: Sequence[Mapping[str, Sequence[int]]], capacity: int):
        self.rows, self.capacity = rows, capacity
        self.groups = bin_groups([len(r["input_ids"]) for r in rows], capacity)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _concatenate([self.rows[i] for i in self.groups[index]])


def _concatenate(rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    sources: list[str] = []
    for row in rows:
        ids.extend(row["input_ids"])
        labels.append(IGNORE_INDEX)
        labels.extend(row["labels"][1:])
        positions.extend(range(len(row["input_ids"])))
        sources.extend(cast(Sequence[str], row.get("sources", ())))  # row names: the one column not of ids
    packed: dict[str, list] = {"input_ids": ids, "labels": labels, "position_ids": positions}
    return packed | ({"sources": sources} if sources else {})


@dataclass(frozen=True)
class PackingSummary:
    """How well rows filled their bins, for the console and the tests."""

    rows: int
    bins: int
    tokens: int
    capacity: int

    @property
    def fill(self) -> float:
        """Share of the bins' capacity that holds tokens.

        >>> PackingSummary(rows=5, bins=2, tokens=15, capacity=10).fill
        0.75
        """
        return self.tokens / max(self.bins * self.capacity, 1)

    @property
    def lower_bound(self) -> int:
        """No packing can use fewer bins than ceil(tokens / capacity).

        >>> PackingSummary(rows=5, bins=2, tokens=15, capacity=10).lower_bound
        2
        """
        return -(-self.tokens // self.capacity)


def summarize(
    rows: Sequence[Mapping[str, Sequence[int]]], bins: Sequence[Mapping[str, Sequence[int]]], capacity: int
) -> PackingSummary:
    """Counts of a packing: rows, bins, tokens, capacity."""
    # a bin holds its rows' tokens exactly, so the rows are counted (no bin is built for it)
    return PackingSummary(
        rows=len(rows), bins=len(bins), tokens=sum(len(r["input_ids"]) for r in rows), capacity=capacity
    )
