"""Micro-batches for the two `train.packing` modes.

`bins`: the micro-batch's features (packed bins, or single conversations) are concatenated into
one [1, total] row with no padding. `position_ids` restart at 0 for every conversation and no
attention mask is passed, so transformers builds a block-diagonal causal mask on sdpa, eager and
flex attention, and flash attention runs varlen on the same boundaries (it does so only for a
batch of one row, which is why a micro-batch is one row). The forward call must pass
`use_cache=False` (see `training/trainer.py`): with a cache, transformers does not look for
packed sequences. Every label at position 0 is -100, so no token is trained to predict the start
of the next conversation.

`none`: one conversation per row, right-padded, with an attention mask; labels are -100 on
padding and on each row's first token.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from tunesmith.data.types import IGNORE_INDEX


def collate_packed(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate features into a [1, total] batch with per-conversation positions.

    A feature's own `position_ids` (a packed bin) are kept; without them it is one conversation.

    >>> b = collate_packed([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    >>> b["position_ids"].tolist(), b["labels"].tolist()
    ([[0, 1, 2, 0, 1]], [[-100, 6, 7, -100, 9]])
    """
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for feature in features:
        n = len(feature["input_ids"])
        ids.extend(feature["input_ids"])
        labels.extend(feature["labels"])
        positions.extend(feature.get("position_ids", range(n)))
    labels = [IGNORE_INDEX if p == 0 else label for label, p in zip(labels, positions)]
    batch = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
    }
    return batch | _sources(features)


def _sources(features: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The `file:line` of every row in the batch, when the features carry them (for error messages)."""
    sources = [s for f in features for s in f.get("sources", ())]
    return {"sources": sources} if sources else {}


def collate_padded(features: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """One conversation per row, right-padded to the longest, with an attention mask.

    >>> b = collate_padded([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    >>> b["attention_mask"].tolist(), b["labels"].tolist()
    ([[1, 1, 1], [1, 1, 0]], [[-100, 6, 7], [-100, 9, -100]])
    """
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids, labels, mask = [], [], []
    for feature in features:
        n = len(feature["input_ids"])
        ids.append([*feature["input_ids"], *[pad_id] * (width - n)])
        labels.append([IGNORE_INDEX, *feature["labels"][1:]][:n] + [IGNORE_INDEX] * (width - n))
        mask.append([1] * n + [0] * (width - n))
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
    return batch | _sources(features)


def collate_scored(features: list[dict[str, Any]], detached: int = 0, share_prompt: bool = False) -> dict[str, Any]:
    """Preference rows (`formatting/pairs.py`) packed into one [1, total] row of sequences, laid out
    as the losses expect: every row's first sequence (chosen), then every row's second (rejected).
    What is scored is explicit: the logits at `predict_at` predict `targets`, which belong to the
    sequences `target_segments`; `reference` holds each sequence's reference log-probability when the
    rows carry them. The last `detached` sequences of each row (KTO's mismatched partners, scored
    without gradient) go into a second packed row under `detached`.

    With `share_prompt` a pair's prompt is laid out once, followed by both answers (`_pack_pairs`);
    otherwise every sequence is its own conversation (positions restart at 0, no mask).

    >>> pair = {"sequences": [([1, 2], [-100, 2]), ([1, 3], [-100, 3])]}
    >>> b = collate_scored([pair, {"sequences": [([4], [4]), ([5, 6], [5, 6])]}])
    >>> b["input_ids"].tolist(), b["predict_at"].tolist(), b["targets"].tolist(), b["target_segments"].tolist()
    ([[1, 2, 4, 1, 3, 5, 6]], [0, 3, 5], [2, 3, 6], [0, 2, 3])
    """
    import torch

    width = len(features[0]["sequences"])
    kept = width - detached
    if share_prompt and kept == 2:
        batch = _pack_pairs([f["sequences"][:2] for f in features])
    else:
        batch = _pack_sequences([f["sequences"][k] for k in range(kept) for f in features])
    if all("reference" in f for f in features):
        batch["reference"] = torch.tensor([f["reference"][k] for k in range(kept) for f in features])
    if all("desirable" in f for f in features):
        batch["desirable"] = torch.tensor([f["desirable"] for f in features], dtype=torch.bool)
    if detached:
        batch["detached"] = _pack_sequences([f["sequences"][k] for k in range(kept, width) for f in features])
        if "reference" in batch:
            batch["detached"]["reference"] = torch.tensor(
                [f["reference"][k] for k in range(kept, width) for f in features]
            )
    return batch | _sources(features)


def _scored(
    labels: list[int], segment: int, where: tuple[int, int, int], found: tuple[list[int], list[int], list[int]]
) -> None:
    """Append to `found` (predict_at, targets, target_segments) every trained label of one sequence
    laid out as `where` = (start, prompt, branch): its first `prompt` tokens from row position
    `start`, the rest from `branch`. The token at sequence index t is predicted by the logits of
    index t - 1."""
    start, prompt, branch = where
    for t in range(1, len(labels)):
        if labels[t] != IGNORE_INDEX:
            s = t - 1
            found[0].append(start + s if s < prompt else branch + s - prompt)
            found[1].append(labels[t])
            found[2].append(segment)


def _pack_sequences(sequences: list[tuple[list[int], list[int]]]) -> dict[str, Any]:

    ids: list[int] = []
    positions: list[int] = []
    found: tuple[list[int], list[int], list[int]] = ([], [], [])
    for index, (seq_ids, seq_labels) in enumerate(sequences):
        start = len(ids)
        ids.extend(seq_ids)
        positions.extend(range(len(seq_ids)))
        _scored(seq_labels, index, (start, len(seq_ids), start), found)
    return _scored_batch(ids, positions, found, len(sequences))


def shared_prefix(chosen: tuple[list[int], list[int]], rejected: tuple[list[int], list[int]]) -> int:
    """How many leading tokens a pair's two sequences share untrained: its prompt.

    >>> shared_prefix(([1, 2, 3, 4], [-100, -100, 3, 4]), ([1, 2, 3, 5], [-100, -100, 3, 5]))
    2
    """
    n = 0
    for a, b, la, lb in zip(chosen[0], rejected[0], chosen[1], rejected[1]):
        if a != b or la != IGNORE_INDEX or lb != IGNORE_INDEX:
            break
        n += 1
    return n


def _pack_pairs(pairs: list[Any]) -> dict[str, Any]:
    """Pairs with their prompt once: [prompt, chosen answer, rejected answer] per pair. Positions
    continue from the prompt in both answers, as in each full sequence, and a 4D boolean mask
    (True: may attend) lets each token see its own pair's prompt and the earlier tokens of its own
    answer, and nothing else: the same attention each token has as its own sequence, so the
    log-probabilities are the separate sequences' (tests/unit/test_shared_prompt.py), for the
    prompt's compute and activations once instead of twice.

    >>> b = _pack_pairs([(([1, 2], [-100, 2]), ([1, 3, 4], [-100, 3, 4]))])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["predict_at"].tolist()
    ([[1, 2, 3, 4]], [[0, 1, 1, 2]], [0, 0, 2])
    >>> b["attention_mask"][0, 0].int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    """
    import torch

    n = len(pairs)
    ids: list[int] = []
    positions: list[int] = []
    found: tuple[list[int], list[int], list[int]] = ([], [], [])
    units: list[tuple[int, int, int]] = []  # (start, prompt length, chosen answer length)
    for k, (chosen, rejected) in enumerate(pairs):
        start = len(ids)
        p = shared_prefix(chosen, rejected)
        ids.extend(chosen[0][:p])
        positions.extend(range(p))
        for segment, (seq_ids, seq_labels) in ((k, chosen), (n + k, rejected)):
            branch = len(ids)
            ids.extend(seq_ids[p:])
            positions.extend(range(p, len(seq_ids)))
            _scored(seq_labels, segment, (start, p, branch), found)
        units.append((start, p, len(chosen[0]) - p))
    units_end = [*(u[0] for u in units[1:]), len(ids)]
    mask = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    for (start, p, c), end in zip(units, units_end):
        block = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        block[p + c :, p : p + c] = False  # the rejected answer does not see the chosen one
        mask[start:end, start:end] = block
    batch = _scored_batch(ids, positions, found, 2 * n)
    batch["attention_mask"] = mask[None, None]
    return batch


def _scored_batch(
    ids: list[int], positions: list[int], found: tuple[list[int], list[int], list[int]], sequences: int
) -> dict[str, Any]:
    import torch

    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "predict_at": torch.tensor(found[0], dtype=torch.long),
        "targets": torch.tensor(found[1], dtype=torch.long),
        "target_segments": torch.tensor(found[2], dtype=torch.long),
        "sequences": sequences,
    }


def collator_for(packing: str, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collator of a `train.packing` mode (`bins` or `none`)."""
    return collate_packed if packing == "bins" else partial(collate_padded, pad_id=pad_id)
