"""Known GPUs: memory, bf16 support and dense peak tensor throughput (vendor data sheets, no sparsity).

The peak is the 16-bit tensor-core figure (bf16 where supported, else fp16); `tunesmith plan`
multiplies it by `GPU_EFFICIENCY` to estimate time without `--measure`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunesmith.errors import UserError

GPU_EFFICIENCY = 0.35
"""Share of the peak a fine-tuning step reaches (model FLOPs utilization) on a single GPU: small
micro-batches, attention, norms and the optimizer step keep it well below the peak."""


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float
    bf16: bool
    tflops: float


KNOWN_GPUS: dict[str, GPU] = {g.name.lower(): g for g in (
    GPU("T4", 16, False, 65),
    GPU("V100-16GB", 16, False, 125),
    GPU("V100-32GB", 32, False, 125),
    GPU("L4", 24, True, 121),
    GPU("A10G", 24, True, 70),
    GPU("A10", 24, True, 125),
    GPU("RTX-3090", 24, True, 71),
    GPU("RTX-4090", 24, True, 165),
    GPU("RTX-A6000", 48, True, 155),
    GPU("L40S", 48, True, 362),
    GPU("A100-40GB", 40, True, 312),
    GPU("A100-80GB", 80, True, 312),
    GPU("H100", 80, True, 989),
    GPU("H100-PCIe", 80, True, 756),
    GPU("H200", 141, True, 989),
    GPU("B200", 180, True, 2250),
)}

ALIASES = {"a100": "a100-80gb", "v100": "v100-16gb", "3090": "rtx-3090", "4090": "rtx-4090",
           "a6000": "rtx-a6000", "h100-sxm": "h100"}


def known_names() -> str:
    return ", ".join(g.name for g in KNOWN_GPUS.values())


def _key(name: str) -> str:
    key = re.sub(r"[\s_]+", "-", name.strip().lower()).removeprefix("nvidia-")
    return ALIASES.get(key, key)


def find_gpu(name: str) -> GPU:
    """The GPU a `--gpu` name means (case, spaces and an `nvidia` prefix do not matter).

    >>> find_gpu("nvidia a100_40gb").memory_gb
    40
    """
    key = _key(name)
    if key in KNOWN_GPUS:
        return KNOWN_GPUS[key]
    raise UserError(f"unknown GPU {name!r}; known GPUs: {known_names()} (or give --vram GB)")


def match_device_name(device_name: str) -> GPU | None:
    """The known GPU a CUDA device name (`torch.cuda.get_device_name`) is, if any.

    >>> match_device_name("NVIDIA H100 80GB HBM3").name
    'H100'
    >>> match_device_name("NVIDIA A100-SXM4-40GB").name
    'A100-40GB'
    """
    text = device_name.lower().replace("-", " ")
    memory = re.search(r"(\d+)\s*gb", text)
    for gpu in sorted(KNOWN_GPUS.values(), key=lambda g: -len(g.name)):
        model, _, variant = gpu.name.lower().partition("-")
        if model.startswith("rtx"):
            model, variant = (variant or model).removeprefix("rtx"), ""
        if not re.search(rf"\b{re.escape(model)}\b", text):
            continue
        if variant.endswith("gb") and (memory is None or memory.group(1) + "gb" != variant):
            continue
        if variant == "pcie" and "pcie" not in text:
            continue
        return gpu
    return None
