"""Known GPUs: memory, bf16 support and dense peak tensor throughput (vendor data sheets, no sparsity).

Memory has one unit everywhere in `tunesmith plan` and `doctor`: GiB (2^30 bytes). Each GPU's
capacity is the `memory.total` nvidia-smi reports for it, in MiB (2^20 bytes): the memory the
driver exposes, which is what `torch.cuda.get_device_properties(0).total_memory` sees on that card
(within a few hundred MiB) and what `--vram` means when given the same number of GiB. The data
sheet's figure (the "80GB" of an H100 80GB) is kept beside it as `marketed_gb`, for display only:
vendors use it as a name, neither 10^9 nor 2^30 bytes exactly (an H100 80GB reports 81559 MiB =
79.6 GiB, a T4 "16GB" 15360 MiB = 15.0 GiB). ECC and driver versions move the reported figure by
up to about 2%; `recommend` keeps 8% headroom.

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

MIB = 2**20
GIB = 2**30
"""The one memory unit tunesmith prints: GiB, 2^30 bytes."""


@dataclass(frozen=True)
class GPU:
    name: str
    marketed_gb: int
    """The data sheet's memory figure, as in the card's name ("80GB"): for display only."""
    memory_mib: int
    """memory.total as nvidia-smi reports it, MiB (2^20 bytes): the capacity `plan` sizes against."""
    bf16: bool
    tflops: float

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def memory_gib(self) -> float:
        """
        >>> round(find_gpu("H100-80GB").memory_gib, 2)
        79.65
        """
        return self.memory_bytes / GIB

    def describe(self) -> str:
        """
        >>> find_gpu("H100").describe()
        'H100 (80 GB card: 79.6 GiB as nvidia-smi reports)'
        """
        return f"{self.name} ({self.marketed_gb} GB card: {self.memory_gib:.1f} GiB as nvidia-smi reports)"


KNOWN_GPUS: dict[str, GPU] = {
    g.name.lower(): g
    for g in (
        GPU("T4", 16, 15360, False, 65),
        GPU("V100-16GB", 16, 16160, False, 125),
        GPU("V100-32GB", 32, 32768, False, 125),
        GPU("L4", 24, 23034, True, 121),
        GPU("A10G", 24, 23028, True, 70),
        GPU("A10", 24, 23028, True, 125),
        GPU("RTX-3090", 24, 24576, True, 71),
        GPU("RTX-4090", 24, 24564, True, 165),
        GPU("RTX-A6000", 48, 49140, True, 155),
        GPU("L40S", 48, 46068, True, 362),
        GPU("A100-40GB", 40, 40960, True, 312),
        GPU("A100-80GB", 80, 81920, True, 312),
        GPU("H100", 80, 81559, True, 989),
        GPU("H100-PCIe", 80, 81559, True, 756),
        GPU("H200", 141, 143771, True, 989),
        GPU("B200", 180, 183359, True, 2250),
    )
}

ALIASES = {
    "a100": "a100-80gb",
    "v100": "v100-16gb",
    "3090": "rtx-3090",
    "4090": "rtx-4090",
    "a6000": "rtx-a6000",
    "h100-sxm": "h100",
    "h100-80gb": "h100",
    "h100-sxm-80gb": "h100",
    "h100-pcie-80gb": "h100-pcie",
    "h200-141gb": "h200",
    "t4-16gb": "t4",
    "l4-24gb": "l4",
    "l40s-48gb": "l40s",
    "a10g-24gb": "a10g",
    "b200-180gb": "b200",
}


def known_names() -> str:
    return ", ".join(g.name for g in KNOWN_GPUS.values())


def _key(name: str) -> str:
    key = re.sub(r"[\s_]+", "-", name.strip().lower()).removeprefix("nvidia-")
    return ALIASES.get(key, key)


def find_gpu(name: str) -> GPU:
    """The GPU a `--gpu` name means (case, spaces and an `nvidia` prefix do not matter; the name
    nvidia-smi or torch prints works too).

    >>> find_gpu("nvidia a100_40gb").memory_mib, find_gpu("NVIDIA H100 80GB HBM3").name
    (40960, 'H100')
    """
    key = _key(name)
    if key in KNOWN_GPUS:
        return KNOWN_GPUS[key]
    matched = match_device_name(name)
    if matched is not None:
        return matched
    raise UserError(f"unknown GPU {name!r}; known GPUs: {known_names()} (or give --vram GiB)")


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
