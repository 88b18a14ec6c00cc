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
        units = _masked_units(query, key, attention_mask, kwargs, window)
        if units is not None:  # pairs sharing their prompt: each pair with its own block of the mask
            kwargs.pop("is_causal", None)
            outputs = [
                sdpa_attention_forward(
                    module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], attention_mask[:, :, a:b, a:b], **kwargs
                )[0]
                for a, b in units
            ]
            return torch.cat(outputs, dim=1), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True, **kwargs
        )[0]
        for a, b in found
    ]
    return torch.cat(outputs, dim=1), None  # [batch, tokens, heads, head_dim], as sdpa returns


def _masked_units(query: Any, key: Any, mask: Any, kwargs: dict, window: Any) -> list[tuple[int, int]] | None:
    """[start, end) of each unit of a one-row batch that comes with its own 4D mask and restarts
    `position_ids` at 0 per unit: pairs laid out with their prompt once (formatting/collate.py:
    _pack_pairs), whose mask is block-diagonal over these units. None for anything else."""
    if (
        window is not None
        or mask is None
        or mask.dim() != 4
        or mask.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or tuple(mask.shape[-2:]) != (query.shape[2], key.shape[2])
        or kwargs.get("s_aux") is not None
        or kwargs.get("position_bias") is not None
    ):
        return None
    positions = kwargs.get("position_ids")
    if positions is None or positions.dim() != 2 or positions.shape != (1, query.shape[2]):
        return None
    starts = [i for i, p in enumerate(positions[0].tolist()) if p == 0]
    if len(starts) < 2 or starts[0] != 0:
        return None
    return list(zip(starts, [*starts[1:], query.shape[2]]))


def shares_prompt(hf_config: Any, kernel: str) -> bool:
    """Whether a pair's prompt can be laid out once for both answers (formatting/collate.py:
    _pack_pairs): the kernel takes a 4D mask (sdpa, or `segments`, which splits it per pair), and
    every layer is full causal attention over positions, in a family known to be only that (no
    sliding window the custom mask would bypass, no recurrent or linear-attention layer that would
    carry the chosen answer into the rejected one). Anything else scores each sequence on its own."""
    if kernel not in (NAME, "sdpa") or getattr(hf_config, "model_type", None) not in FULL_ATTENTION_FAMILIES:
        return False
    layer_types = getattr(hf_config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return False
    return getattr(hf_config, "sliding_window", None) is None or getattr(hf_config, "use_sliding_window", True) is False


FULL_ATTENTION_FAMILIES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "phi3", "gemma", "olmo2"}
)
"""Decoder families whose every layer is causal attention with rotary positions from `position_ids`."""


def register() -> str:
    """Make `attn_implementation="segments"` loadable (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the fallback calls need sdpa's mask
    return NAME
