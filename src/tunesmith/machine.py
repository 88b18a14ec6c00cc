"""What a config runs with on this machine: device, precision, weight dtype, attention kernel and
quantized bits. Every stage asks here (training, plan, evaluate, export), so they cannot disagree.

Decisions only, from the config's settings and what the hardware reports: nothing is loaded, and
nothing is registered with transformers (`models.attention.register()` does that, where a model loads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith.errors import UserError

if TYPE_CHECKING:
    from tunesmith.config import Config

SEGMENTS = "segments"  # tunesmith's per-conversation sdpa kernel (models/attention.py)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively. Without them bf16 is emulated and slow."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def native_bf16(device: str) -> bool:
    """Whether `device` here runs bf16 natively (a GPU that supports it; AVX-512 BF16 or AMX)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def pick_precision(setting: str, device: str, *, bf16: bool | None = None) -> str:
    """`auto` -> bf16 where the hardware runs it natively, else fp16 on a GPU and fp32 on a CPU.
    fp16 needs a GPU. `bf16` answers for a machine other than this one (`plan --gpu`).

    >>> pick_precision("auto", "cuda", bf16=False), pick_precision("auto", "cpu", bf16=True)
    ('fp16', 'bf16')
    """
    if setting == "auto":
        native = native_bf16(device) if bf16 is None else bf16
        return "bf16" if native else ("fp16" if device == "cuda" else "fp32")
    if setting == "fp16" and device != "cuda":
        raise UserError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    return setting


def torch_dtype(setting: str, device: str, *, bf16: bool | None = None) -> Any:
    """The weight dtype for a `model.dtype` setting on this device: `auto` is bf16 on a GPU that
    runs it, else float32 (a CPU keeps float32 weights and computes in bf16 under autocast)."""
    import torch

    if setting == "auto":
        native = native_bf16(device) if bf16 is None else bf16
        return torch.bfloat16 if device == "cuda" and native else torch.float32
    return getattr(torch, setting)


def attention_implementation(setting: str, device: str) -> str:
    """The `attn_implementation` for a `model.attention` setting on this device, or a UserError.
    Decides only: `models.attention.register()` makes `segments` loadable, once, where a model loads.

    Packed training needs a kernel that keeps packed conversations apart. transformers does it
    from `position_ids` (a block-diagonal mask for sdpa, eager and flex; varlen for flash), and
    `segments` (models/attention.py) runs sdpa once per conversation, so what is refused here is
    what cannot train on this device at all. `auto` is `segments` on CPU (no whole-row mask: the
    measured lever in docs/benchmarks.md) and sdpa on a GPU, where the per-layer host read of the
    conversation boundaries would stall the device (flash_attention_2 is varlen there).

    >>> attention_implementation("auto", "cpu")
    'segments'
    """
    kernel = attention_for(setting, device)
    if kernel == "flash_attention_2":
        if device != "cuda":
            raise UserError("model.attention: flash_attention_2 needs a CUDA GPU; use sdpa or eager on CPU")
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise UserError(
                "model.attention: flash_attention_2 needs the flash-attn package "
                "(pip install flash-attn --no-build-isolation); or use sdpa"
            )
    if kernel == "flex_attention" and device == "cpu":
        import torch

        # Checked on torch 2.13: flex_attention raises NotImplementedError on a CPU backward pass.
        raise UserError(
            f"model.attention: flex_attention cannot train on CPU (torch {torch.__version__} has no "
            "FlexAttention backward pass there); use sdpa or eager"
        )
    return kernel


def attention_for(setting: str, device: str) -> str:
    """The kernel a `model.attention` setting means on `device`, unchecked (what `plan` sizes for a
    machine it is not running on); `attention_implementation` checks it can run here."""
    if setting == "segments" or (setting == "auto" and device == "cpu"):
        return SEGMENTS
    return "sdpa" if setting == "auto" else setting


def quantized_bits(config: Config) -> int | None:
    """4 for QLoRA, 8 for LoRA on an 8-bit base, else None (no quantization)."""
    if config.method == "qlora":
        return 4
    return 8 if config.model.load_in_8bit else None
