"""Loss and perplexity of a model on a held-out split, masked exactly as in training.

The split is encoded by `formatting` the way training encodes it (same template, `train_on`,
`max_length` and end-of-turn markers), batched with the training collator for packed rows
(`collate_packed`: no padding, positions restart per conversation, the first token of each
conversation never predicted), and scored like `PackedTrainer.compute_loss`: the output head
runs only where the next token trains. The result is the summed cross-entropy over the whole
split divided by the number of trained tokens (not a mean of per-batch means), and
perplexity = exp(loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tunesmith.data.types import IGNORE_INDEX, Sample
from tunesmith.formatting.collate import collate_packed
from tunesmith.formatting.encode import Example
from tunesmith.formatting.prepare import encode_split

DEFAULT_TOKENS_PER_BATCH = 4096


def encode_for_loss(
    samples: Sequence[Sample],
    template: Any,
    tokenizer: Any,
    *,
    train_on: str,
    max_length: int,
    markers: Sequence[str],
    split: str = "test",
) -> list[Example]:
    """The split's Examples, exactly as training would build them."""
    examples, _ = encode_split(
        samples, template, tokenizer, train_on=train_on, max_length=max_length, markers=tuple(markers), split=split
    )
    return examples


def _groups(examples: list[Example], budget: int) -> list[list[Example]]:
    """Consecutive examples packed into rows of at most `budget` tokens (a longer one alone)."""
    groups: list[list[Example]] = []
    current: list[Example] = []
    size = 0
    for example in examples:
        n = len(example.input_ids)
        if current and size + n > budget:
            groups.append(current)
            current, size = [], 0
        current.append(example)
        size += n
    if current:
        groups.append(current)
    return groups


def split_loss(model: Any, examples: list[Example], *, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH) -> dict:
    """{"loss", "perplexity", "tokens"}: total loss / total trained tokens over all `examples`."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    count = 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for group in _groups(examples, tokens_per_batch):
            batch = collate_packed([{"input_ids": e.input_ids, "labels": e.labels} for e in group])
            targets = batch["labels"][:, 1:].to(device)
            trained = targets != IGNORE_INDEX
            if not trained.any():
                continue
            keep = torch.cat([trained, torch.zeros_like(trained[:, :1])], dim=1)  # last position predicts nothing
            with torch.inference_mode():
                # use_cache=False keeps packed conversations apart (see training/trainer.py)
                outputs = model(
                    input_ids=batch["input_ids"].to(device),
                    position_ids=batch["position_ids"].to(device),
                    use_cache=False,
                    logits_to_keep=keep,
                )
                logits = outputs.logits.float()
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[trained], reduction="sum"))
            count += int(trained.sum())
    finally:
        model.train(was_training)
    if count == 0:
        return {"loss": None, "perplexity": None, "tokens": 0}
    loss = total / count
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = None  # beyond a float (JSON has no infinity)
    return {"loss": round(loss, 6), "perplexity": None if perplexity is None else round(perplexity, 6), "tokens": count}
