"""Training settings chosen from the data when the config leaves them out.

`train.packing`, `batch_size`, `epochs` and `learning_rate` default to "choose from the data". A
fixed default cannot fit both 40 identity rows and 100,000 chats: packed into 8 bins of 1024
tokens a step, 80 short rows make 2 optimizer steps and teach nothing. `choose` fills each unset
setting from the training split's token lengths, once the data is encoded and before any weight
is loaded, and says why:

- packing: bins when the data fills at least `MIN_STEPS_PER_EPOCH` bins, else one conversation
  per row (a few bins would be a few steps);
- batch size: the largest up to `MAX_AUTO_BATCH` that still gives `MIN_STEPS_PER_EPOCH` steps an
  epoch;
- epochs: the whole number that comes nearest `TARGET_STEPS` optimizer steps, at least 1 and at
  most `MAX_AUTO_EPOCHS` (unless `max_steps` is set);
- learning rate: for LoRA, 2e-4 scaled by sqrt(1000 / steps) between 2e-4 and 1e-3 (a short run
  needs larger steps to move at all); a full fine-tune a tenth of that; preference objectives
  5e-5 (LoRA) or 1e-6 (full), since they sharpen a model that already answers.

Settings the config gives are kept as they are. A run of fewer than `FEW_STEPS` optimizer steps
gets a warning, whoever chose its settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import Config, with_settings

MIN_STEPS_PER_EPOCH = 32
TARGET_STEPS = 60
MAX_AUTO_EPOCHS = 8
MAX_AUTO_BATCH = 8
FEW_STEPS = 20
LORA_BASE_LR = 2e-4
LORA_MAX_LR = 1e-3
PREFERENCE_LR = {"lora": 5e-5, "full": 1e-6}


@dataclass(frozen=True)
class Choice:
    setting: str  # e.g. "train.batch_size"
    value: Any
    reason: str


@dataclass(frozen=True)
class Schedule:
    """What a run will do, and which of its settings were chosen here."""

    units: int  # bins, conversations or preference rows per epoch
    unit: str  # "bins", "conversations" or "rows"
    steps_per_epoch: int
    total_steps: int
    chosen: tuple[Choice, ...] = field(default_factory=tuple)
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "unit": self.unit,
            "steps_per_epoch": self.steps_per_epoch,
            "optimizer_steps": self.total_steps,
            "chosen": [{"setting": c.setting, "value": c.value, "reason": c.reason} for c in self.chosen],
            "warning": self.warning,
        }

    def lines(self) -> list[str]:
        return [f"{c.setting}: {c.value} ({c.reason})" for c in self.chosen]


def bins_needed(lengths: Sequence[int], capacity: int) -> int:
    """Bins of `capacity` tokens first-fit-decreasing packing fills (formatting/packing.py packs
    this way), computed from lengths alone.

    >>> bins_needed([6, 5, 4, 3, 2], 10)
    2
    """
    from tunesmith.formatting.packing import bin_groups

    return len(bin_groups([min(n, capacity) for n in lengths], capacity))


def choose(config: Config, lengths: Sequence[int]) -> tuple[Config, Schedule]:
    """`config` with its unset training settings chosen for a training split of `lengths` (tokens
    per example; a preference row counts as one), and the schedule that follows."""
    t = config.train
    preference = t.objective != "sft"
    chosen: list[Choice] = []
    packing = t.packing
    if packing is None:
        bins = 0 if preference else bins_needed(lengths, config.template.max_length)
        if preference:
            packing = "bins"  # a preference micro-batch is always one packed row of pairs
        elif bins >= MIN_STEPS_PER_EPOCH:
            packing = "bins"
            chosen.append(Choice("train.packing", packing, f"{len(lengths):,} rows fill {bins:,} bins"))
        else:
            packing = "none"
            chosen.append(
                Choice(
                    "train.packing",
                    packing,
                    f"{len(lengths):,} rows fill only {bins} bins of {config.template.max_length} tokens: "
                    "one conversation per step item gives more steps",
                )
            )
    if preference:
        units, unit = len(lengths), "rows"
    elif packing == "bins":
        units, unit = bins_needed(lengths, config.template.max_length), "bins"
    else:
        units, unit = len(lengths), "conversations"
    units = max(units, 1)
    accumulation = t.gradient_accumulation
    batch = t.batch_size
    if batch is None:
        batch = 1
        for b in range(MAX_AUTO_BATCH, 0, -1):
            if units / (b * accumulation) >= MIN_STEPS_PER_EPOCH:
                batch = b
                break
        chosen.append(
            Choice(
                "train.batch_size",
                batch,
                f"{units:,} {unit} make {math.ceil(units / (batch * accumulation))} optimizer steps an epoch",
            )
        )
    per_epoch = max(math.ceil(units / (batch * accumulation)), 1)
    epochs = t.epochs
    if epochs is None:
        if t.max_steps is not None:
            epochs = 1.0  # max_steps decides
        else:
            epochs = float(min(max(math.floor(TARGET_STEPS / per_epoch + 0.5), 1), MAX_AUTO_EPOCHS))
            chosen.append(
                Choice(
                    "train.epochs",
                    epochs,
                    f"{per_epoch} steps an epoch; about {TARGET_STEPS} steps in all, at most {MAX_AUTO_EPOCHS} epochs",
                )
            )
    total = t.max_steps or max(math.ceil(per_epoch * epochs), 1)
    rate = t.learning_rate
    if rate is None:
        rate, why = _learning_rate(config, total)
        chosen.append(Choice("train.learning_rate", rate, why))
    settings = {
        "train.packing": packing,
        "train.batch_size": batch,
        "train.epochs": epochs,
        "train.learning_rate": rate,
    }
    warning = None
    if total < FEW_STEPS:
        warning = (
            f"this run makes only {total} optimizer steps: too few to learn much; lower train.batch_size, "
            "raise train.epochs, or add data"
        )
    schedule = Schedule(units, unit, per_epoch, total, tuple(chosen), warning)
    return with_settings(config, settings), schedule


def _learning_rate(config: Config, steps: int) -> tuple[float, str]:
    full = config.method == "full"
    if config.train.objective != "sft":
        rate = PREFERENCE_LR["full" if full else "lora"]
        return rate, "preference objectives sharpen a model that already answers: a small step"
    rate = min(max(LORA_BASE_LR * math.sqrt(1000 / steps), LORA_BASE_LR), LORA_MAX_LR)
    why = f"{LORA_BASE_LR:g} x sqrt(1000 / {steps} steps), within {LORA_BASE_LR:g}..{LORA_MAX_LR:g}"
    if full:
        rate /= 10
        why += ", a tenth for a full fine-tune"
    return float(f"{rate:.3g}"), why


@dataclass(frozen=True)
class Settled:
    """A prepared run's training settings, each set (by the config or by `choose`)."""

    packing: str
    batch_size: int
    epochs: float
    learning_rate: float


def settled(config: Config) -> Settled:
    """The training settings of a config that `prepare` has returned (what code after it reads);
    a RuntimeError if one was never chosen."""
    t = config.train
    if t.packing is None or t.batch_size is None or t.epochs is None or t.learning_rate is None:
        raise RuntimeError("train settings not chosen yet: read the config that prepare returns")
    return Settled(t.packing, t.batch_size, t.epochs, t.learning_rate)


def with_chosen(config: Config, prepared: Config) -> Config:
    """`config` (e.g. finalized with its run name) with the settings `prepare` chose, from `prepared`."""
    chosen = settled(prepared)
    return with_settings(
        config,
        {
            "train.packing": chosen.packing,
            "train.batch_size": chosen.batch_size,
            "train.epochs": chosen.epochs,
            "train.learning_rate": chosen.learning_rate,
        },
    )
