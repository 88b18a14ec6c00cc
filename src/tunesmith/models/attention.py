"""`segments`: sdpa run once per packed conversation instead of once over the whole packed row.

A packed micro-batch is one row of several conversations (`formatting/collate.py`). transformers
keeps them apart on sdpa with a block-diagonal mask over the whole row: attention then costs
(row length)^2 whatever the conversations' lengths, the mask disables sdpa's causal fast path and
its float copy is kept for every layer's backward. Here each conversation, found from where
`position_ids` restart at 0, runs through transformers' own `sdpa_attention_forward` with no
mask (causal, grouped-query heads not repeated), and the outputs are concatenated: the cost is
the sum of the conversations' squared lengths and no mask is kept.

Everything else (padded batches, generation with a KV cache, a single conversation, a
conversation longer than a sliding window, attention-sink or position-bias layers) goes to plain
sdpa with transformers' mask, so the kernel is correct for every call a model makes. It is
registered through transformers' public `AttentionInterface` and `AttentionMaskInterface`, under
the name `segments`.
"""

from __future__ import annotations

from typing import Any

NAME = "segments"


def spans(position_ids: Any, length: int) -> list[tuple[int, int]] | None:
    """[start, end) of each packed conversation of a one-row batch, or None when the row is not
    several whole conversations (positions 0..n-1 each).

    >>> import torch
    >>> spans(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6)
    [(0, 3), (3, 5), (5, 6)]
    >>> spans(torch.tensor([[0, 1, 2, 3]]), 4) is None  # one conversation: plain sdpa
    True
    >>> spans(torch.tensor([[1, 1, 0, 1, 2]]), 5) is None  # left padding, as generate() numbers it
    True
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] != length:
        return None
    positions = position_ids[0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    if len(starts) < 2 or starts[0] != 0:
        return None
    bounds = [*starts, length]
    for start, end in zip(bounds, bounds[1:]):
        if positions[end - 1] != end - 1 - start:  # not a plain 0..n-1 run
            return None
    return list(zip(bounds, bounds[1:]))


def segment_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """The attention function of `segments` (same signature and output as transformers' sdpa one)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    found = None
    if (
        query.shape[2] == key.shape[2]
        and getattr(module, "is_causal", True)
        and kwargs.get("s_aux") is None
        and kwargs.get("position_bias") is None
    ):
        found = spans(kwargs.get("position_ids"), query.shape[2])
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    if found is not None and window is not None and max(b - a for a, b in found) > window:
        found = None  # a conversation longer than the window: the window must mask it
    if found is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True, **kwargs
        )[0]
        for a, b in found
    ]
    return torch.cat(outputs, dim=1), None  # [batch, tokens, heads, head_dim], as sdpa returns


def register() -> str:
    """Make `attn_implementation="segments"` loadable (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the fallback calls need sdpa's mask
    return NAME
