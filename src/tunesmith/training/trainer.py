"""transformers' Trainer, wired for packed (or padded) batches and a loss computed only where tokens train.

The subclass changes one thing: the output head runs only at positions whose next token is
trained (a 49k-vocabulary head is a large share of a small model's compute), and the summed loss
is divided by the trained-token count of the whole optimizer step, so batch size, gradient
accumulation and packing do not change the result (`tests/unit/test_grad_parity.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from tunesmith.config.schema import Config
from tunesmith.data.types import IGNORE_INDEX
from tunesmith.formatting.collate import collator_for
from tunesmith.formatting.packing import PackedBins
from tunesmith.training import tracking
from tunesmith.training.checkpoints import CheckpointMixin
from tunesmith.training.defaults import settled
from tunesmith.training.guards import is_finite, non_finite_gradients, non_finite_loss
from tunesmith.training.methods import optimizer_name
from tunesmith.training.strategies import launched_arguments


class PackedTrainer(CheckpointMixin, Trainer):
    """Trainer whose loss is token-normalized over the optimizer step (see module docstring).

    `num_items_in_batch` is the Trainer's count of trained labels over every micro-batch of the
    step: exactly the targets below, since padding and every sequence start are -100 (so it is the
    same count whether the Trainer looks at `labels` or `labels[:, 1:]`).
    """

    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("sources", None)  # row names, recorded by training_step
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        keep = _pad_false(targets != IGNORE_INDEX)
        # use_cache=False is load-bearing: with a KV cache object present, transformers skips the
        # packed-sequence (block-diagonal) mask and packed conversations attend to each other.
        # Trainer happens to switch config.use_cache off too; we do not rely on that.
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits.float()
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[targets != IGNORE_INDEX], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
        loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # the count was summed over processes and DDP averages gradients over them: undo the average
            # (what Trainer.compute_loss does too; single-process runs never get here)
            loss = loss * self.args.world_size
        if model.training and not is_finite(loss.detach()):
            raise non_finite_loss(self.state.global_step + 1, float(loss), getattr(self, "_step_sources", []))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Remember the rows (`file:line`) of every micro-batch of the optimizer step, so a
        non-finite loss or gradient can name them."""
        if getattr(self, "_sources_step", None) != self.state.global_step:
            self._sources_step, self._step_sources = self.state.global_step, []
        self._step_sources.extend(inputs.get("sources", ()))
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_grad_norm(self, model, grad_norm=None):
        """The step's gradient norm (transformers computes it while clipping); non-finite stops the
        run before the optimizer applies it. With fp16 loss scaling an inf norm is the scaler's
        normal overflow signal (the step is skipped, the scale lowered), so only the loss is checked."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if norm is not None and not self.args.fp16 and not is_finite(norm):
            raise non_finite_gradients(self.state.global_step + 1, float(norm), getattr(self, "_step_sources", []))
        return norm


def _pad_false(mask: Any) -> Any:
    """[B, T-1] bool -> [B, T] bool with a False last column (the last position predicts nothing)."""
    return torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)


def training_arguments(
    config: Config, output_dir: Path, *, device: str, precision: str, has_eval: bool
) -> TrainingArguments:
    """TrainingArguments from the run config: one place where our fields meet transformers'."""
    t, chosen = config.train, settled(config)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=chosen.batch_size,
        per_device_eval_batch_size=chosen.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        num_train_epochs=chosen.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=chosen.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optimizer_name(config),
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss stops the run (training/guards.py), never hidden in the logs
        eval_strategy=("steps" if t.eval_steps else "epoch") if has_eval else "no",
        eval_steps=t.eval_steps if has_eval else None,
        metric_for_best_model="eval_loss" if has_eval else None,  # tracked for early stopping and the best checkpoint
        greater_is_better=False if has_eval else None,
        # checkpoints (training/checkpoints.py): every save_steps, and at the end whatever the setting
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        report_to=tracking.report_to(config),  # MLflow / W&B / TensorBoard: training/tracking.py
        run_name=config.name,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # padded rows: count real tokens (the attention mask); packed rows have no padding to leave out
        include_num_input_tokens_seen="all" if chosen.packing == "bins" or t.objective != "sft" else "non_padding",
        **launched_arguments(config, device),  # DDP / FSDP2 / DeepSpeed under --nproc: training/strategies.py
    )


def dataset_rows(rows: list[dict], config: Config) -> Sequence[dict]:
    """What the Trainer's sampler shuffles: packed bins (`packing: bins`) or the rows themselves.

    Bins are built in a fixed order (best-fit decreasing, ties by input order), and the Trainer
    shuffles them with `train.seed`, so the data order of a run is reproducible.
    """
    if settled(config).packing == "bins" and config.train.objective == "sft":
        return PackedBins(rows, config.template.max_length)  # bins concatenated as the loader reads them
    return rows


def build_trainer(
    model: Any,
    config: Config,
    output_dir: Path,
    train_rows: Sequence[dict],
    eval_rows: Sequence[dict],
    *,
    pad_id: int,
    device: str,
    precision: str,
    callbacks: list[Any],
) -> PackedTrainer:
    """The Trainer of a run; `train_rows`/`eval_rows` are what `dataset_rows` returns."""
    from transformers.trainer_callback import PrinterCallback

    from tunesmith.training.fit import checkpoint_callbacks

    t = config.train
    args = training_arguments(config, output_dir, device=device, precision=precision, has_eval=bool(eval_rows))
    callbacks = callbacks + checkpoint_callbacks(
        early_stopping_patience=t.early_stopping_patience if eval_rows else None,
        save_on_best=bool(eval_rows) and t.load_best_at_end,
    )
    common = {"model": model, "args": args, "train_dataset": train_rows, "eval_dataset": eval_rows or None}
    if t.objective != "sft":  # preference rows, packed as sequences: training/preference.py
        from tunesmith.formatting.collate import collate_scored
        from tunesmith.training.preference import PreferenceTrainer, prompt_shared

        detached = 1 if t.objective == "kto" else 0  # KTO's mismatched partners, scored without gradient
        collator = partial(collate_scored, detached=detached, share_prompt=prompt_shared(model))
        trainer: PackedTrainer = PreferenceTrainer(
            **common, data_collator=collator, callbacks=callbacks, run_config=config
        )
    else:
        trainer = PackedTrainer(
            **common, data_collator=collator_for(settled(config).packing, pad_id), callbacks=callbacks
        )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl report instead
    trainer.keep_checkpoints = t.keep_checkpoints
    trainer.load_best_at_end = bool(eval_rows) and t.load_best_at_end
    return trainer
