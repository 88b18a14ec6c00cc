"""What is planned for, without weights: the model on the meta device with its real PEFT adapter and
its parameter counts, and the largest micro-batch the data makes (tokens and trained positions)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunesmith.config import Config, with_settings
from tunesmith.data.types import IGNORE_INDEX
from tunesmith.errors import UserError
from tunesmith.training.defaults import settled


@dataclass(frozen=True)
class MicroBatch:
    """The largest micro-batch the data gives, and what one epoch holds."""

    rows: int  # tensor rows of the micro-batch (1 when packed: bins are concatenated)
    tokens: int  # positions in the micro-batch, padding included
    trained: int  # positions whose next token trains (where the output head runs)
    longest: int  # the longest attention span (a bin, or the padded width)
    sequences: int  # training sequences per epoch (bins when packed, else rows)
    epoch_tokens: int
    epoch_trained: int
    max_length: int
    mean_sequence: float  # mean conversation length (for attention FLOPs)
    mean_micro_tokens: float = 0.0


def hf_config_for(config: Config) -> Any:
    """The model's transformers config, read from its folder or the hub (no weights)."""
    from transformers import AutoConfig

    from tunesmith.models.load import resolve_model

    try:
        ref = resolve_model(config.model.name, revision=config.model.revision)
    except UserError as err:
        raise UserError(f"{config.origin('model.name')}: model.name: {err}") from None
    return AutoConfig.from_pretrained(ref.path, revision=ref.revision)


def meta_model(
    hf_config: Any,
    *,
    method: str = "lora",
    r: int = 16,
    alpha: float = 32,
    target_modules: list[str] | str = "all-linear",
    dora: bool = False,
    dtype: Any = None,
    attention: str = "sdpa",
) -> Any:
    """The model of `hf_config` on the meta device, with the real PEFT adapter for lora/qlora."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype or torch.float32, attn_implementation=attention)
    if method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=r,
        # peft types lora_alpha int, but scales by alpha / r: a float alpha works
        lora_alpha=alpha,  # type: ignore[arg-type]
        target_modules=target_modules,
        use_dora=dora,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, peft_config)


def parameter_counts(
    hf_config: Any,
    *,
    method: str = "lora",
    r: int = 16,
    target_modules: list[str] | str = "all-linear",
    dora: bool = False,
) -> tuple[int, int]:
    """(trainable, total) parameters, counted on a meta-device model with the real adapter."""
    model = meta_model(hf_config, method=method, r=r, target_modules=target_modules, dora=dora)
    return _counts(model)


def _counts(model: Any) -> tuple[int, int]:
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():  # tied weights are one parameter; .parameters() yields it once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def micro_batch(
    config: Config, *, console: Any = None, max_length: int | None = None, batch_size: int | None = None
) -> MicroBatch:
    """The largest micro-batch of the training split as tunesmith will build it (templated,
    tokenized, cut to max_length and packed by the real pipeline; no model weights loaded)."""
    return prepared_shape(config, console=console, max_length=max_length, batch_size=batch_size)[1]


def prepared_shape(
    config: Config, *, console: Any = None, max_length: int | None = None, batch_size: int | None = None
) -> tuple[Config, MicroBatch]:
    """`micro_batch`, and the config as the run will train it: the settings it leaves unset chosen
    from the data (training/defaults.py)."""
    from tunesmith.training.prepare import prepare

    config = with_settings(config, {"template.max_length": max_length} if max_length else {})
    prepared = prepare(config, console or QuietConsole(), print_warnings=False)
    config = prepared.config
    if config.train.objective != "sft":
        scored = prepared.splits["train"].examples
        return config, preference_shape(scored, config, batch_size=batch_size, shared=_shares_prompt(config))
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.splits["train"].examples]
    return config, shape_of(rows, config, batch_size=batch_size)


def _shares_prompt(config: Config) -> bool:
    """Whether the run lays a pair's prompt out once (models/attention.py: shares_prompt); `auto`
    means `segments` on a CPU and sdpa on a GPU, and both do."""
    from tunesmith.machine import attention_for
    from tunesmith.models.attention import shares_prompt

    kernel = attention_for(config.model.attention, "cpu" if config.model.attention == "auto" else "cuda")
    return config.train.objective != "kto" and shares_prompt(hf_config_for(config), kernel)


def preference_shape(
    scored: list[Any], config: Config, *, batch_size: int | None = None, shared: bool = False
) -> MicroBatch:
    """A preference run's micro-batch: `batch_size` rows packed into one row of sequences, a pair's
    chosen and rejected both holding activations for the backward pass, its prompt once when
    `shared` (KTO: the answer only; its mismatched partner is scored without gradient, in a pass
    that frees as it goes)."""
    from tunesmith.formatting.collate import shared_prefix

    b = batch_size or settled(config).batch_size
    width = 1 if config.train.objective == "kto" else 2
    sizes = [sum(len(e.input_ids) for e in row.sequences[:width]) for row in scored]
    once = [0] * len(scored)  # prompt tokens laid out once instead of twice
    if shared:
        once = [shared_prefix(*[(e.input_ids, e.labels) for e in row.sequences[:2]]) for row in scored]
        sizes = [size - p for size, p in zip(sizes, once)]
    trained = [sum(e.n_trainable for e in row.sequences[:width]) for row in scored]
    longest = max((len(e.input_ids) for row in scored for e in row.sequences), default=0)
    passes = max(len(row.sequences) for row in scored) if scored else 1
    n = max(len(scored), 1)
    return MicroBatch(
        rows=1,
        tokens=max(sum(sorted(sizes, reverse=True)[:b]), 1),
        trained=max(sum(sorted(trained, reverse=True)[:b]), 1),
        longest=longest,
        sequences=len(scored),
        epoch_tokens=sum(len(e.input_ids) for row in scored for e in row.sequences[:passes]) - sum(once),
        epoch_trained=sum(trained),
        max_length=config.template.max_length,
        mean_sequence=sum(len(e.input_ids) for row in scored for e in row.sequences) / (n * passes),
        mean_micro_tokens=sum(sizes) / max(math.ceil(len(sizes) / b), 1),
    )


def shape_of(rows: list[dict], config: Config, *, batch_size: int | None = None) -> MicroBatch:
    """A `MicroBatch` from encoded rows (`input_ids`, `labels`) under the config's packing."""
    from tunesmith.formatting.packing import pack

    b = batch_size or settled(config).batch_size
    length = config.template.max_length
    packed = settled(config).packing == "bins"
    sequences = pack(rows, length) if packed else rows
    sizes = [len(s["input_ids"]) for s in sequences]
    # trained positions: labels that are not -100 after each sequence's first (the collator masks it)
    trained = [sum(1 for x in s["labels"][1:] if x != IGNORE_INDEX) for s in sequences]
    top = sorted(range(len(sequences)), key=lambda i: -sizes[i])[:b]
    top_trained = sum(sorted(trained, reverse=True)[:b])
    if packed:
        tokens, n_rows, longest = sum(sizes[i] for i in top), 1, max(sizes, default=0)
    else:
        longest = max(sizes, default=0)
        tokens, n_rows = longest * min(b, len(sizes)), min(b, len(sizes))
    n = max(len(rows), 1)
    return MicroBatch(
        rows=n_rows,
        tokens=max(tokens, 1),
        trained=max(top_trained, 1),
        longest=longest,
        sequences=len(sequences),
        epoch_tokens=sum(sizes),
        epoch_trained=sum(trained),
        max_length=length,
        mean_sequence=sum(len(r["input_ids"]) for r in rows) / n,
        mean_micro_tokens=sum(sizes) / max(math.ceil(len(sizes) / b), 1),
    )


def scaled_batch(
    batch: MicroBatch, *, batch_size_from: int, batch_size_to: int, max_length: int | None = None
) -> MicroBatch:
    """`batch` with another micro-batch size (and max_length): tokens scale with the bins per
    micro-batch; a shorter max_length caps every bin (rows are cut)."""
    scale = batch_size_to / batch_size_from
    tokens, trained, longest = batch.tokens * scale, batch.trained * scale, batch.longest
    if max_length and max_length < batch.max_length:
        cut = max_length / batch.max_length
        tokens, trained, longest = tokens * cut, trained * cut, min(longest, max_length)
    return MicroBatch(
        rows=batch.rows if batch.rows == 1 else batch_size_to,
        tokens=max(int(tokens), 1),
        trained=max(int(trained), 1),
        longest=longest,
        sequences=batch.sequences,
        epoch_tokens=batch.epoch_tokens,
        epoch_trained=batch.epoch_trained,
        max_length=max_length or batch.max_length,
        mean_sequence=batch.mean_sequence,
        mean_micro_tokens=batch.mean_micro_tokens * scale,
    )


class QuietConsole:
    def print(self, *args: Any, **kwargs: Any) -> None:
        pass
