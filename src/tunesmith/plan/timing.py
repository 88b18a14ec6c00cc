"""Time per epoch before a run: model FLOPs per token over what this CPU (measured) or a known GPU does."""

from __future__ import annotations

import math
from typing import Any

from tunesmith.config import Config
from tunesmith.plan.estimate import MemoryEstimate
from tunesmith.training.defaults import settled

CPU_EFFICIENCY = 0.5
"""Share of the measured matmul rate a CPU training step reaches (attention, norms, the optimizer)."""


def cpu_flops_per_second(seconds: float = 1.0) -> float:
    """float32 matmul rate of this machine, measured for about `seconds`."""
    import time

    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        done += 1
    return done * 2 * 1024**3 / (time.perf_counter() - started)


def time_estimate(
    config: Config,
    estimate: MemoryEstimate,
    hf_config: Any,
    *,
    flops_per_second: float,
    step_seconds: float | None = None,
) -> dict[str, Any]:
    """Optimizer steps and seconds per epoch: from a measured step time if given, else from the
    model's FLOPs (6N per token for full fine-tuning, 4N for adapters, +2N with checkpointing,
    attention, and the head at trained positions only) at `flops_per_second`."""
    text = hf_config.get_text_config()
    batch = estimate.batch
    micro_steps = math.ceil(batch.sequences / settled(config).batch_size)
    steps = math.ceil(micro_steps / config.train.gradient_accumulation)
    head = text.hidden_size * text.vocab_size
    body = estimate.total_parameters - estimate.trainable * (estimate.method != "full") - head * 2
    passes = (6 if estimate.method == "full" else 4) + (2 if config.train.gradient_checkpointing else 0)
    heads = getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    attention = 6 * text.num_hidden_layers * heads * head_dim * batch.mean_sequence
    flops = batch.epoch_tokens * (passes * max(body, 0) + attention) + batch.epoch_trained * 6 * head
    if step_seconds is not None:
        seconds, source = step_seconds * steps, "measured warm-up"
    else:
        seconds, source = flops / flops_per_second, f"{flops_per_second / 1e12:.2f} TFLOP/s effective"
    return {
        "steps_per_epoch": steps,
        "seconds_per_epoch": round(seconds, 1),
        "epoch_tflops": round(flops / 1e12, 2),
        "source": source,
    }
