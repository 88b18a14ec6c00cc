"""RoPE as GGUF says it: the base frequency and scaling keys, and Llama-3-style per-dimension factors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError


def rope_settings(config: dict) -> tuple[float, dict | None]:
    """(rope theta, scaling) from config.json: transformers 5 writes `rope_parameters`, older ones
    `rope_theta` and `rope_scaling` at the top level."""
    parameters = config.get("rope_parameters") or {}
    if isinstance(parameters.get("full_attention"), dict):  # per layer type (Gemma 3): the global layers'
        parameters = parameters["full_attention"]
    theta = float(parameters.get("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or (
        parameters if parameters.get("rope_type", "default") != "default" else None
    )
    return theta, scaling


def llama3_rope_factors(config: dict, where: Path) -> Any:
    """Per-frequency divisors for Llama-3-style RoPE scaling (GGUF's rope_freqs tensor); None if unscaled."""
    import numpy as np

    base, scaling = rope_settings(config)
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return ("linear", float(scaling["factor"]))
    if kind != "llama3":
        raise UserError(
            f"{where}: rope_scaling type {kind!r} is not supported by `tunesmith export gguf` "
            "(supported: none, linear, llama3)"
        )
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / inv_freq
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    # scaled inv_freq = inv_freq / divisor: long wavelengths by `factor`, short ones untouched, between blended
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    return divisor.astype(np.float32)
