"""Resolve a model reference and load it: built-in name, local folder, or hub id.

Resolution is cheap (a config read at most) and happens before any run folder exists, so an
unknown model is a clean exit 2, not a half-made run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from tunesmith.errors import UserError
from tunesmith.models.embedded import EMBEDDED_MODELS, embedded_model_path, ensure_embedded_model, is_embedded_name


@dataclass(frozen=True)
class ModelRef:
    """A model reference made concrete: what the user wrote and what transformers is given."""

    name: str
    path: str
    kind: str  # "embedded" | "local" | "hub"
    revision: str | None = None


@overload
def resolve_model(
    name: str, *, revision: str | None = ..., log: Callable[[str], None] = ..., fetch: Literal[True] = ...
) -> ModelRef: ...


@overload
def resolve_model(
    name: str, *, revision: str | None = ..., log: Callable[[str], None] = ..., fetch: bool
) -> ModelRef | None: ...


def resolve_model(
    name: str, *, revision: str | None = None, log: Callable[[str], None] = lambda m: None, fetch: bool = True
) -> ModelRef | None:
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
        raise UserError(
            f"model {name!r} is not a built-in name ({known}), not a local folder, "
            f"and the model hub could not provide it: {reason}"
        ) from None


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    ref: ModelRef, *, dtype: str = "auto", device: str = "cpu", attention: str = "auto", quantization: Any = None
) -> Any:
    """The model of `ref` on `device`, with the `model.attention` kernel (checked for the device).

    `quantization` (a transformers `BitsAndBytesConfig`) loads the weights quantized, straight onto
    the device (the GPU, or the CPU through bitsandbytes' CPU backend): a quantized model is placed
    at load and never moved afterwards.
    """
    from transformers import AutoModelForCausalLM

    from tunesmith.machine import SEGMENTS, attention_implementation, torch_dtype

    kernel = attention_implementation(attention, device)
    if kernel == SEGMENTS:
        from tunesmith.models.attention import register

        register()  # idempotent; the one place a kernel is registered with transformers
    kwargs: dict[str, Any] = {
        "revision": ref.revision,
        "dtype": torch_dtype(dtype, device),
        "attn_implementation": kernel,
    }
    if quantization is not None:
        import torch

        from tunesmith.models.quant import own_storage, unpooled_load

        placement = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
        with unpooled_load() if device == "cpu" else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(
                ref.path, quantization_config=quantization, device_map=placement, **kwargs
            )
        return own_storage(model) if device == "cpu" else model
    model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    # transformers wraps PreTrainedModel.to in functools.wraps, whose typeshed stub does not bind self
    return model.to(device)  # type: ignore[arg-type]


def load_adapter(base: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
