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


def collate_scored(features: list[dict[str, Any]], detached: int = 0) -> dict[str, Any]:
    """Preference rows (`formatting/pairs.py`) packed into one [1, total] row of sequences, laid out
    as the losses expect: every row's first sequence (chosen), then every row's second (rejected).
    `segments` gives each position its sequence's index, and `reference` each sequence's reference
    log-probability when the rows carry them. The last `detached` sequences of each row (KTO's
    mismatched partners, scored without gradient) go into a second packed row under `detached`.

    >>> pair = {"sequences": [([1, 2], [-100, 2]), ([1, 3], [-100, 3])]}
    >>> b = collate_scored([pair, {"sequences": [([4], [4]), ([5, 6], [5, 6])]}])
    >>> b["input_ids"].tolist(), b["segments"].tolist(), b["labels"].tolist()
    ([[1, 2, 4, 1, 3, 5, 6]], [[0, 0, 1, 2, 2, 3, 3]], [[-100, 2, -100, -100, 3, -100, 6]])
    """
    import torch

    width = len(features[0]["sequences"])
    kept = width - detached
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


def _pack_sequences(sequences: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    for index, (seq_ids, seq_labels) in enumerate(sequences):
        ids.extend(seq_ids)
        labels.extend([IGNORE_INDEX, *seq_labels[1:]][: len(seq_ids)])
        positions.extend(range(len(seq_ids)))
        segments.extend([index] * len(seq_ids))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "segments": torch.tensor([segments], dtype=torch.long),
        "sequences": len(sequences),
    }


def collator_for(packing: str, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collator of a `train.packing` mode (`bins` or `none`)."""
    return collate_packed if packing == "bins" else partial(collate_padded, pad_id=pad_id)
