"""One code path for every method: what differs between LoRA, QLoRA and full fine-tuning is how the
model is loaded and which of its weights train, decided here from the config.

- `lora`: the base in `model.dtype` (or 8-bit with `model.load_in_8bit`), frozen; a PEFT adapter
  (rsLoRA and DoRA as options) trains.
- `qlora`: the base quantized to 4-bit NF4 with double quantization (bitsandbytes), frozen; an
  adapter trains in the compute dtype.
- `full`: every weight trains; the result is a whole model folder, not an adapter.

`check_method` refuses what cannot run here before any data is read or a run folder exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from tunesmith.config import Config
from tunesmith.errors import UserError

BITSANDBYTES_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}
OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_fused": "adamw_torch_fused",
    "sgd": "sgd",
    "adafactor": "adafactor",
    **BITSANDBYTES_OPTIMIZERS,
}


def check_method(config: Config, device: str) -> None:
    """Refuse a method, quantization or optimizer this machine cannot run, naming the key.

    Quantized bases and 8-bit optimizers run wherever bitsandbytes' backend for `device` works
    (its CUDA kernels, or its CPU backend): `tunesmith.models.quant.support` tries it."""
    from tunesmith.models.quant import support

    if config.model.adapter is not None:
        adapter_folder(config)
    if config.train.optimizer == "paged_adamw_8bit" and device != "cuda":
        raise UserError(
            f"{config.origin('train.optimizer')}: train.optimizer: paged_adamw_8bit pages optimizer "
            "state between GPU and CPU memory, and there is no GPU here; on CPU use adamw_8bit"
        )
    needs: list[tuple[str, str]] = []  # (config key, what needs bitsandbytes)
    if config.method == "qlora":
        needs.append(("method", "method: qlora (4-bit NF4 base)"))
    if config.model.load_in_8bit:
        needs.append(("model.load_in_8bit", "model.load_in_8bit"))
    if config.train.optimizer in BITSANDBYTES_OPTIMIZERS:
        needs.append(("train.optimizer", f"train.optimizer: {config.train.optimizer}"))
    if not needs:
        return
    reason = support(device)
    if reason:
        key, what = needs[0]
        instead = "method: lora" if key != "train.optimizer" else "train.optimizer: adamw"
        raise UserError(
            f"{config.origin(key)}: {what} needs bitsandbytes on {device}, and {reason}; or train with {instead}"
        )


def adapter_folder(config: Config) -> Any:
    """The LoRA adapter `model.adapter` names (a run folder's adapter/, or an adapter folder), checked
    to be one and to belong to `model.name` as far as its run record says."""
    from pathlib import Path

    from tunesmith.runfolder.record import RunRecord

    given = Path(str(config.model.adapter)).expanduser()
    where = f"{config.origin('model.adapter')}: model.adapter"
    folder = next((f for f in (given / "adapter", given) if (f / "adapter_config.json").is_file()), None)
    if folder is None:
        raise UserError(
            f"{where}: {given} holds no LoRA adapter (no adapter_config.json in it or in its adapter/); "
            "name a finished LoRA run folder or an adapter folder"
        )
    record = RunRecord.read(folder, strict=False) if (folder / "tunesmith.json").is_file() else None
    base = record.base_model if record is not None else None
    if base is not None and Path(base).name != Path(config.model.name).name:
        raise UserError(
            f"{where}: the adapter in {folder} was trained on {base}, and model.name is {config.model.name}"
        )
    return folder.resolve()


def optimizer_name(config: Config) -> str:
    """transformers' `optim` name for `train.optimizer`.

    >>> from tunesmith.config import load_config
    >>> optimizer_name(load_config(None, ["data.train=x.jsonl", "train.optimizer=paged_adamw_8bit"]))
    'paged_adamw_8bit'
    """
    return OPTIMIZERS[config.train.optimizer]


@dataclass(frozen=True)
class Trainable:
    """A model ready to train and what trains in it."""

    model: Any
    trainable: int
    total: int
    summary: str


def trainable_model(config: Config, ref: Any, *, device: str, precision: str) -> Trainable:
    """Load the base as the method says and mark what trains; `summary` is the line printed."""
    from tunesmith.machine import quantized_bits
    from tunesmith.models.load import count_parameters, load_model
    from tunesmith.models.quant import bitsandbytes_config

    bits = quantized_bits(config)
    model = load_model(
        ref,
        dtype=config.model.dtype,
        device=device,
        attention=config.model.attention,
        quantization=bitsandbytes_config(bits, precision) if bits else None,
    )
    if config.method == "full":
        model.requires_grad_(True)
        if config.train.gradient_checkpointing:
            model.config.use_cache = False
        trainable, total = count_parameters(model)
        return Trainable(
            model, trainable, total, f"full fine-tuning: {trainable:,} trainable of {total:,} parameters (100%)"
        )
    if bits:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.train.gradient_checkpointing)
    elif config.train.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    if config.model.adapter is not None:  # train an existing adapter on (SFT, then a preference objective)
        from peft import PeftModel

        folder = adapter_folder(config)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        trainable, total = count_parameters(model)
        r = getattr(model.peft_config["default"], "r", "?")
        share = 100 * trainable / total
        summary = f"LoRA r={r} from {folder}: {trainable:,} trainable of {total:,} parameters ({share:.2f}%)"
        return Trainable(model, trainable, total, summary)
    model = add_adapter(model, config)
    from tunesmith.training.lora_init import after_adapter

    after_adapter(model, config, ref.path)
    trainable, total = count_parameters(model)
    lora = config.lora
    kind = ("DoRA" if lora.dora else "LoRA") + (f" ({lora.init} init)" if lora.init != "default" else "")
    base = {4: " on a 4-bit NF4 base", 8: " on an 8-bit base"}.get(bits or 0, "")
    scale = f"alpha/sqrt(r) = {lora.alpha / lora.r**0.5:g}" if lora.rslora else f"alpha/r = {lora.alpha / lora.r:g}"
    summary = (
        f"{kind} r={lora.r}{base} ({scale}): {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    return Trainable(model, trainable, total, summary)


def add_adapter(model: Any, config: Config) -> Any:
    """A fresh LoRA/rsLoRA/DoRA adapter on `model`; only adapter weights train. Seeded."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.training.lora_init import peft_init

    lora = config.lora
    torch.manual_seed(config.train.seed)  # adapter init is part of what the seed fixes
    peft_config = LoraConfig(
        r=lora.r,
        # peft types lora_alpha int, but scales by alpha / r: a float alpha works
        lora_alpha=lora.alpha,  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.rslora,
        use_dora=lora.dora,
        init_lora_weights=peft_init(config),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, peft_config)


def expected_lora_parameters(model: Any, config: Config) -> int:
    """What a LoRA adapter on `model` must have: r * (in + out) per adapted linear layer (plus one
    magnitude per output feature with DoRA). Used to check the printed count is exact."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    total = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            # nn.Module types an attribute it does not declare as Tensor | Module: a linear layer's sizes are ints
            in_features, out_features = cast(int, base.in_features), cast(int, base.out_features)
            total += config.lora.r * (in_features + out_features)
            if config.lora.dora:
                total += out_features
    return total
