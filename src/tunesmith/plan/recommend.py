"""Settings that fit a memory target: the config's method first, then the others, without gradient
checkpointing where possible, the largest micro-batch, the config's max_length if anything fits with it."""

from __future__ import annotations

import math
from typing import Any

from tunesmith.config import Config, with_settings
from tunesmith.models.quant import plannable
from tunesmith.plan.estimate import CUDA_CONTEXT_BYTES, CUDA_HEADROOM, estimate_memory
from tunesmith.plan.shapes import MicroBatch, hf_config_for, prepared_shape, scaled_batch
from tunesmith.training.defaults import settled


def recommend(
    config: Config,
    *,
    target_bytes: int,
    device_kind: str,
    methods: tuple[str, ...] | None = None,
    batch: MicroBatch | None = None,
    hf_config: Any = None,
    bf16: bool | None = None,
) -> dict[str, Any]:
    """Settings that fit `target_bytes`: the config's method first (QLoRA where bitsandbytes runs), without
    gradient checkpointing if possible (faster), the largest micro-batch up to the config's, the
    config's max_length if anything fits with it; gradient accumulation keeps the effective batch
    (micro-batch x accumulation) of the config."""
    hf_config = hf_config or hf_config_for(config)
    if batch is None:
        config, batch = prepared_shape(config)
    chosen_batch = settled(config).batch_size
    usable = target_bytes * (1 - CUDA_HEADROOM) - CUDA_CONTEXT_BYTES if device_kind == "cuda" else target_bytes
    order = [config.method, *[m for m in ("lora", "qlora", "full") if m != config.method]]
    quantizes = plannable(device_kind)
    order = [m for m in order if (methods is None or m in methods) and (m != "qlora" or quantizes)]
    effective = chosen_batch * config.train.gradient_accumulation
    lengths = [config.template.max_length]
    while lengths[-1] // 2 >= 256:
        lengths.append(lengths[-1] // 2)
    for length in lengths:
        for method in order:
            for checkpointing in (False, True):
                micro = chosen_batch
                while micro >= 1:
                    trial = with_settings(
                        config,
                        {
                            "train.batch_size": micro,
                            "template.max_length": length,
                            "train.gradient_checkpointing": checkpointing,
                        },
                    )
                    shaped = scaled_batch(batch, batch_size_from=chosen_batch, batch_size_to=micro, max_length=length)
                    found = estimate_memory(
                        trial, method=method, device_kind=device_kind, batch=shaped, hf_config=hf_config, bf16=bf16
                    )
                    if found.total_bytes <= usable:
                        return {
                            "fits": True,
                            "method": method,
                            "micro_batch": micro,
                            "gradient_accumulation": max(1, math.ceil(effective / micro)),
                            "max_length": length,
                            "gradient_checkpointing": checkpointing,
                            "peak_bytes": found.total_bytes,
                            "target_bytes": int(target_bytes),
                            "note": ""
                            if length == config.template.max_length
                            else f"rows longer than {length} tokens are cut",
                        }
                    micro //= 2
    return {
        "fits": False,
        "target_bytes": int(target_bytes),
        "method": None,
        "note": "nothing fits: try a smaller model, QLoRA on a GPU, or more memory",
    }
