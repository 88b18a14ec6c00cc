"""Resolve a model reference and load it: built-in name, local folder, or hub id.

Resolution is cheap (a config read at most) and happens before any run folder exists, so an
unknown model is a clean exit 2, not a half-made run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import UserError
from tunesmith.models.embedded import EMBEDDED_MODELS, embedded_model_path, ensure_embedded_model, is_embedded_name


@dataclass(frozen=True)
class ModelRef:
    """A model reference made concrete: what the user wrote and what transformers is given."""

    name: str
    path: str
    kind: str  # "embedded" | "local" | "hub"
    revision: str | None = None


def resolve_model(name: str, *, revision: str | None = None, log: Callable[[str], None] = lambda m: None,
                  fetch: bool = True) -> ModelRef | None:
    """Find the model a config names, fetching the embedded one if needed.

    With `fetch=False` an embedded model that is not in the cache yet gives None instead of a
    download, so cheap checks can run before the expensive fetch.
    """
    if is_embedded_name(name):
        if not fetch:
            found = embedded_model_path(name)
            return ModelRef(name, str(found), "embedded") if found else None
        return ModelRef(name, str(ensure_embedded_model(name, log=log)), "embedded")
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"model folder {name} has no config.json (is it a Hugging Face model folder?)")
        return ModelRef(name, str(local.resolve()), "local")
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model not found: {name} (not a folder with config.json)")
    _check_hub_id(name, revision)
    return ModelRef(name, name, "hub", revision)


def _check_hub_id(name: str, revision: str | None) -> None:
    """Ask transformers for the config of a hub id; offline or unknown gives one clear line."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as err:
        known = ", ".join(EMBEDDED_MODELS)
        reason = str(err).strip().splitlines()[0][:200]
        raise UserError(f"model {name!r} is not a built-in name ({known}), not a local folder, "
                        f"and the model hub could not provide it: {reason}") from None


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(setting: str, device: str) -> Any:
    """The weight dtype for a `model.dtype` setting on this device."""
    import torch

    if setting == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, setting)


def attention_implementation(setting: str, device: str) -> str:
    """The `attn_implementation` for a `model.attention` setting on this device, or a UserError.

    Packed training needs a kernel that keeps packed conversations apart. transformers does it
    from `position_ids` (a block-diagonal mask for sdpa, eager and flex; varlen for flash), and
    `segments` (models/attention.py) runs sdpa once per conversation, so what is refused here is
    what cannot train on this device at all. `auto` is `segments` on CPU (no whole-row mask: the
    measured lever in docs/benchmarks.md) and sdpa on a GPU, where the per-layer host read of the
    conversation boundaries would stall the device (flash_attention_2 is varlen there).

    >>> attention_implementation("auto", "cpu")
    'segments'
    """
    if setting == "segments" or (setting == "auto" and device == "cpu"):
        from tunesmith.models.attention import register

        return register()
    if setting == "auto":
        return "sdpa"
    if setting == "flash_attention_2":
        if device != "cuda":
            raise UserError("model.attention: flash_attention_2 needs a CUDA GPU; use sdpa or eager on CPU")
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise UserError("model.attention: flash_attention_2 needs the flash-attn package "
                            "(pip install flash-attn --no-build-isolation); or use sdpa")
    if setting == "flex_attention" and device == "cpu":
        import torch

        # Checked on torch 2.13: flex_attention raises NotImplementedError on a CPU backward pass.
        raise UserError(f"model.attention: flex_attention cannot train on CPU (torch {torch.__version__} has no "
                        "FlexAttention backward pass there); use sdpa or eager")
    return setting


def load_model(ref: ModelRef, *, dtype: str = "auto", device: str = "cpu", attention: str = "auto",
               quantization: Any = None) -> Any:
    """The model of `ref` on `device`, with the `model.attention` kernel (checked for the device).

    `quantization` (a transformers `BitsAndBytesConfig`) loads the weights quantized, straight onto
    the device (the GPU, or the CPU through bitsandbytes' CPU backend): a quantized model is placed
    at load and never moved afterwards.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": ref.revision, "dtype": torch_dtype(dtype, device),
                              "attn_implementation": attention_implementation(attention, device)}
    if quantization is not None:
        import torch

        from tunesmith.models.quant import own_storage

        placement = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
        model = AutoModelForCausalLM.from_pretrained(ref.path, quantization_config=quantization,
                                                     device_map=placement, **kwargs)
        return own_storage(model) if device == "cpu" else model
    model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    return model.to(device)


def load_adapter(base: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
