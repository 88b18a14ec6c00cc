"""How a LoRA adapter starts (`lora.init`), and what that asks of saving it.

- `default`: peft's (A Kaiming-uniform, B zero): the adapter starts as the base model exactly.
- `gaussian`: A Gaussian with std 1/r, B zero: also starts as the base; some find it steadier at high r.
- `loftq` (QLoRA): A and B start as the best rank-r approximation of what 4-bit quantization took away,
  `W - dequant(Q(W))`, so the model starts closer to the full-precision base (the LoftQ paper, one
  iteration). Computed here: peft 0.21.2's `replace_lora_weights_loftq` moves weights to CUDA
  unconditionally (no CPU) and leaves out the alpha/r scaling, so its update is scaled twice unless
  alpha == r; this one divides by the scaling and runs on any device.
- `pissa`, `olora` (unquantized bases): A and B start from the principal singular vectors (PiSSA) or
  a QR decomposition (OLoRA) of W, and W becomes the residual; training converges faster on many
  tasks. Because the base weights change in memory, the adapter saved at the end is converted by peft
  to a plain LoRA of rank 2r on the untouched base (what eval, chat and merge load); checkpoints keep
  the trainable form, which resume rebuilds exactly (both decompositions are deterministic).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.errors import UserError

PEFT_INIT: dict[str, Any] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
REWRITES_BASE = ("pissa", "olora")
INITIAL_STATE = "_tunesmith_initial_adapter"  # attribute on the peft model: the adapter as it started


def peft_init(config: Config) -> Any:
    """`init_lora_weights` for peft's LoraConfig (LoftQ starts as default and is replaced after)."""
    return PEFT_INIT.get(config.lora.init, True)


def after_adapter(model: Any, config: Config, base_path: str) -> None:
    """What the init needs once the adapter exists: LoftQ's A and B, or a copy of PiSSA/OLoRA's
    starting adapter for the conversion at save time."""
    if config.lora.init == "loftq":
        loftq(model, base_path)
    elif config.lora.init in REWRITES_BASE:
        from peft import get_peft_model_state_dict

        setattr(model, INITIAL_STATE, {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()})


def loftq(model: Any, base_path: str) -> None:
    """Set every 4-bit LoRA layer's A, B so that scale * B A is the best rank-r approximation of
    W - dequant(Q(W)), W read from the base's safetensors. Must run before the first forward pass
    (see `models.quant.dequantized` on bitsandbytes' CPU repacking)."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import Linear4bit

    files = sorted(_local_folder(base_path).glob("*.safetensors"))
    if not files:
        raise UserError(
            f"lora.init: loftq reads the full-precision weights from safetensors files, and {base_path} has none"
        )
    from safetensors import safe_open

    handles = [safe_open(str(f), "pt") for f in files]
    where = {key: h for h in handles for key in h.keys()}
    prefix = "base_model.model."
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, Linear4bit):
                continue
            key = name.removeprefix(prefix) + ".weight"
            if key not in where:
                raise UserError(f"lora.init: loftq found no {key} in {base_path}'s safetensors")
            weight = where[key].get_tensor(key).float()
            base = module.get_base_layer().weight
            if getattr(base.quant_state, "packing_format_for_cpu", False):
                raise RuntimeError(f"{name}: 4-bit weight repacked by a forward pass before LoftQ init")
            residual = weight - bnb.functional.dequantize_4bit(base.data, base.quant_state).float().cpu()
            for adapter, r in module.r.items():
                u, s, vh = torch.linalg.svd(residual, full_matrices=False)
                root = (s[:r] / module.scaling[adapter]).sqrt()
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                a.copy_((root[:, None] * vh[:r]).to(a.dtype))
                b.copy_((u[:, :r] * root[None, :]).to(b.dtype))


def _local_folder(base_path: str) -> Path:
    """The folder holding the base's files: itself, or a hub id's snapshot in the local cache (it was
    just loaded from there)."""
    if Path(base_path).is_dir():
        return Path(base_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base_path, allow_patterns=["*.safetensors", "*.json"]))


def save_adapter(model: Any, folder: Path, state: dict | None) -> None:
    """`model.save_pretrained`, converting a PiSSA/OLoRA adapter to a plain LoRA of the untouched base."""
    initial = getattr(model, INITIAL_STATE, None)
    if initial is None:
        model.save_pretrained(str(folder), state_dict=state)
        return
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="tunesmith-init-") as scratch:
        save_file({k: v.contiguous() for k, v in initial.items()}, str(Path(scratch) / "adapter_model.safetensors"))
        model.save_pretrained(str(folder), state_dict=state, path_initial_model_for_weight_conversion=scratch)
