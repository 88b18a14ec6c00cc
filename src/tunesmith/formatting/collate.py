"""Batches without padding: a micro-batch's conversations are concatenated into one row.

`position_ids` restart at 0 for every conversation, and no attention mask is passed, so the
model builds a block-diagonal causal mask: no token attends across a conversation boundary.
The forward call must pass `use_cache=False` (see `train/trainer.py`): with a cache, transformers
does not look for packed sequences.
The first token of every conversation has label -100, so no token is trained to predict the
start of the next conversation.
"""

from __future__ import annotations

from typing import Any

from tunesmith.formatting.encode import IGNORE_INDEX


def collate_packed(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate examples into a [1, total] batch with per-conversation positions.

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
        labels.append(IGNORE_INDEX)
        labels.extend(feature["labels"][1:])
        positions.extend(range(n))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
    }
