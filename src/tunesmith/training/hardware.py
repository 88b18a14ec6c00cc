"""Where a run computes and in which precision, decided once from the machine."""

from __future__ import annotations

from tunesmith.errors import UserError


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively. Without them bf16 is emulated and slow."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_precision(setting: str, device: str) -> str:
    """`auto` -> bf16 where the hardware runs it natively, else fp32. fp16 needs a GPU."""
    import torch

    if setting == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if setting == "fp16" and device != "cuda":
        raise UserError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    return setting
