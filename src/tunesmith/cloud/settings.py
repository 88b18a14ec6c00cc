"""A run's config as a hosted fine-tuning job's settings, and every setting the provider cannot honour.

What tunesmith does itself is not the provider's business: the data is checked, templated, tokenized
and masked here and uploaded pre-tokenized (so `data.*` and `template.*` hold exactly), and the run is
evaluated here after `fetch` (`eval.*`). What the job runs on the provider is mapped; whatever else
differs from its default, and the provider has no setting for, is listed before anything is uploaded,
so a hosted run is never silently another run than the config describes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import Config
from tunesmith.training.defaults import settled

MODEL_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""tunesmith's built-in names -> the provider's model ids."""

_LOCAL = ("name", "output_dir", "data.", "template.", "eval.", "model.attention", "train.gradient_checkpointing")
"""Settings tunesmith carries out itself, or that change only how fast, not what trains."""
_MAPPED = (
    "method",
    "model.name",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    "train.epochs",
    "train.batch_size",
    "train.gradient_accumulation",
    "train.learning_rate",
    "train.lr_scheduler",
    "train.warmup_ratio",
    "train.weight_decay",
    "train.max_grad_norm",
    "train.seed",
    "train.packing",
    "train.logging_steps",
    "train.save_steps",
    "train.keep_checkpoints",
)


@dataclass
class JobSettings:
    """The provider's job arguments (without the file ids) and what it cannot honour, one line each."""

    arguments: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def provider_model(config: Config) -> str:
    return MODEL_IDS.get(config.model.name, config.model.name)


def together_settings(config: Config, limits: Any) -> JobSettings:
    """`client.fine_tuning.create(...)` arguments for `config` on a model with these `limits`
    (the provider's FinetuneModelLimits)."""
    out = JobSettings()
    where = config.origin
    train, lora = config.train, config.lora
    chosen = settled(config)  # batch size, epochs and learning rate, chosen from the data if unset
    args = out.arguments
    args.update(model=provider_model(config), random_seed=train.seed, suffix=_suffix(config.name or "tunesmith"))
    if config.method == "qlora":
        out.problems.append(f"{where('method')}: method qlora: Together trains LoRA on the unquantized model only")
    elif config.method == "full":
        out.problems.append(
            f"{where('method')}: method full: tunesmith cloud fetch brings back LoRA adapters only, so a full "
            "fine-tune on Together could not be checked or completed here; use method lora, or train full locally"
        )
    if config.method == "lora":
        training = limits.lora_training
        args.update(lora=True, lora_r=lora.r, lora_alpha=float(lora.alpha), lora_dropout=lora.dropout)
        if lora.r > training.max_rank:
            out.problems.append(
                f"{where('lora.r')}: lora.r {lora.r}: Together's largest rank for this model is {training.max_rank}"
            )
        modules = lora.target_modules
        if modules == "all-linear":
            args["lora_trainable_modules"] = "all-linear"
        elif not set(modules) <= set(training.target_modules):
            unknown = sorted(set(modules) - set(training.target_modules))
            out.problems.append(
                f"{where('lora.target_modules')}: {', '.join(unknown)}: not among Together's modules for this model "
                f"({', '.join(training.target_modules)})"
            )
        else:
            args["lora_trainable_modules"] = ",".join(modules)
    else:
        args["lora"] = False
        training = limits.full_training
    epochs = chosen.epochs
    if epochs != int(epochs):
        out.problems.append(f"{where('train.epochs')}: train.epochs {epochs}: Together trains whole epochs only")
    elif epochs > limits.max_num_epochs:
        out.problems.append(
            f"{where('train.epochs')}: train.epochs {epochs:g}: Together's most is {limits.max_num_epochs}"
        )
    args["n_epochs"] = int(epochs)
    if training is not None:
        if not training.min_batch_size <= chosen.batch_size <= training.max_batch_size:
            out.problems.append(
                f"{where('train.batch_size')}: train.batch_size {chosen.batch_size}: Together takes "
                f"{training.min_batch_size} to {training.max_batch_size} for this model"
            )
    args.update(batch_size=chosen.batch_size, gradient_accumulation_steps=train.gradient_accumulation)
    if not limits.min_learning_rate <= chosen.learning_rate <= limits.max_learning_rate:
        out.problems.append(
            f"{where('train.learning_rate')}: train.learning_rate {chosen.learning_rate:g}: Together takes "
            f"{limits.min_learning_rate:g} to {limits.max_learning_rate:g}"
        )
    args["learning_rate"] = chosen.learning_rate
    if train.lr_scheduler == "constant":
        out.problems.append(
            f"{where('train.lr_scheduler')}: train.lr_scheduler constant: Together has linear and cosine"
        )
    else:
        args["lr_scheduler_type"] = train.lr_scheduler
    args.update(warmup_ratio=train.warmup_ratio, weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm)
    length = config.template.max_length
    if not limits.min_max_seq_length <= length <= limits.max_seq_length_sft:
        out.problems.append(
            f"{where('template.max_length')}: template.max_length {length}: Together takes "
            f"{limits.min_max_seq_length} to {limits.max_seq_length_sft} for this model"
        )
    args["max_seq_length"] = length
    out.problems += _unmapped(config)
    return out


def _unmapped(config: Config) -> list[str]:
    """Each setting that differs from its default and that neither tunesmith nor the job carries out."""
    defaults = _flatten(Config.model_validate({"data": {"train": "x.jsonl"}}).model_dump())
    found = []
    for key, value in _flatten(config.model_dump()).items():
        if _covered(key, _LOCAL) or _covered(key, _MAPPED) or defaults.get(key) == value:
            continue
        found.append(f"{config.origin(key)}: {key} {value!r}: Together has no such setting")
    return found


def _covered(key: str, names: tuple[str, ...]) -> bool:
    """`key` is one of `names`, or inside one of those that end in "." (a whole section)."""
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in names)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("variables", "columns", "roles"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _suffix(name: str) -> str:
    """Together's model-name suffix: at most 40 characters of letters, digits, '-' and '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:40].strip("-") or "tunesmith"
