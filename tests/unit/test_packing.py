"""Best-fit-decreasing packing: complete, within capacity, near-optimal, deterministic."""

from __future__ import annotations

import random
from functools import cache

import pytest

from tunesmith.formatting.packing import PackingSummary, best_fit_decreasing, pack, summarize


def random_lengths(seed: int, n: int, low: int, high: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def optimal_bin_count(lengths: list[int], capacity: int) -> int:
    """Exact minimum by search over bin loads (small inputs only)."""
    items = sorted(lengths, reverse=True)

    @cache
    def fewest(i: int, loads: tuple[int, ...]) -> int:
        if i == len(items):
            return len(loads)
        options = {tuple(sorted((*loads, items[i])))}  # a new bin
        options |= {
            tuple(sorted((*loads[:j], load + items[i], *loads[j + 1 :])))
            for j, load in enumerate(loads)
            if load + items[i] <= capacity
        }
        return min(fewest(i + 1, option) for option in options)

    return fewest(0, ())


@pytest.mark.parametrize("seed", range(30))
def test_every_item_lands_in_exactly_one_bin_and_no_bin_overflows(seed):
    lengths = random_lengths(seed, n=200, low=1, high=256)
    bins = best_fit_decreasing(lengths, capacity=256)
    placed = sorted(i for group in bins for i in group)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in group) <= 256 for group in bins)
    assert all(group for group in bins)


@pytest.mark.parametrize(
    ("lengths", "optimal"),
    [
        ([7, 3, 6, 4, 5, 5], 3),  # perfect pairs
        ([4, 4, 4, 4, 3, 3, 2, 2, 2, 2], 3),  # small items fill the gaps the large ones leave
        ([6, 6, 6, 4, 4, 4], 3),
        ([10, 10, 10], 3),  # exactly full bins
        ([1] * 25, 3),
        ([9, 8, 2, 2, 5, 4], 4),  # 9 shares with nothing: 4 is optimal
    ],
)
def test_optimal_on_crafted_cases(lengths, optimal):
    assert len(best_fit_decreasing(lengths, capacity=10)) == optimal


def test_never_more_than_one_bin_above_optimal_on_small_random_cases():
    extra = []
    for seed in range(150):
        lengths = random_lengths(seed, n=random.Random(seed).randint(3, 9), low=1, high=20)
        found = len(best_fit_decreasing(lengths, capacity=20))
        best = optimal_bin_count(lengths, 20)
        assert best <= found <= best + 1, lengths
        extra.append(found - best)
    assert sum(extra) <= 0.05 * len(extra)  # optimal in at least 95% of the cases


def first_fit_in_order(lengths: list[int], capacity: int) -> int:
    """Bin count of the naive packing: each row into the first bin it fits, in data order."""
    loads: list[int] = []
    for n in lengths:
        at = next((j for j, load in enumerate(loads) if load + n <= capacity), None)
        if at is None:
            loads.append(n)
        else:
            loads[at] += n
    return len(loads)


def test_chat_like_lengths_reach_the_lower_bound():
    """Long-tailed lengths (mostly short rows, a few long ones) fill the bins: ceil(tokens / capacity) or one more."""
    for seed in range(10):
        rng = random.Random(seed)
        lengths = [min(256, max(8, int(rng.lognormvariate(4.0, 0.6)))) for _ in range(420)]
        bins = best_fit_decreasing(lengths, capacity=256)
        assert len(bins) <= -(-sum(lengths) // 256) + 1
        assert len(bins) <= first_fit_in_order(lengths, 256)


def test_deterministic_with_ties_in_input_order():
    lengths = random_lengths(7, n=300, low=1, high=64)
    assert best_fit_decreasing(lengths, 128) == best_fit_decreasing(list(lengths), 128)
    assert best_fit_decreasing([3, 3, 3, 3], capacity=6) == [[0, 1], [2, 3]]


def test_an_item_longer_than_a_bin_is_refused():
    with pytest.raises(ValueError, match="item 1 has length 11"):
        best_fit_decreasing([3, 11], capacity=10)


def test_pack_keeps_every_token_restarts_positions_and_masks_each_start():
    rows = [
        {"input_ids": list(range(100 * k, 100 * k + n)), "labels": list(range(100 * k, 100 * k + n))}
        for k, n in enumerate(random_lengths(3, n=40, low=1, high=30))
    ]
    bins = pack(rows, capacity=64)
    assert all(len(b["input_ids"]) == len(b["labels"]) == len(b["position_ids"]) <= 64 for b in bins)
    tokens = sorted(t for b in bins for t in b["input_ids"])
    assert tokens == sorted(t for r in rows for t in r["input_ids"])
    for b in bins:
        starts = [i for i, p in enumerate(b["position_ids"]) if p == 0]
        assert starts[0] == 0 and all(b["labels"][i] == -100 for i in starts)
        trained = [label for i, label in enumerate(b["labels"]) if i not in starts]
        assert trained == [t for i, t in enumerate(b["input_ids"]) if i not in starts]
    assert sum(b["position_ids"].count(0) for b in bins) == len(rows)


def test_summary_counts_fill():
    rows = [{"input_ids": [1] * n, "labels": [1] * n} for n in (60, 50, 40, 30, 20)]
    summary = summarize(rows, pack(rows, 100), capacity=100)
    assert summary == PackingSummary(rows=5, bins=2, tokens=200, capacity=100)
    assert summary.fill == 1.0 and summary.lower_bound == 2
