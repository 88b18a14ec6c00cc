"""The Trainer of a preference run (`train.objective`: dpo, orpo, simpo, kto).

A micro-batch is `train.batch_size` preference rows packed into one row of sequences
(`formatting/collate.py: collate_scored`): no padding, and no attention between sequences, as in
supervised packing. Where the model allows it (`prompt_shared`), a pair's prompt is laid out once
for both answers, with a mask that keeps the answers apart. The output head runs only where a token
is scored, and each sequence's log-probability is the sum over its answer's tokens (`score`). The losses are
`training/preference_loss.py`'s, checked against TRL's trainers.

The reference model's log-probabilities are computed once, before the first step, by the model as
it starts (`training/reference.py`), and read from the run folder on resume. For LoRA this is the
base with a fresh adapter (which starts as the base), or the adapter a run starts from
(`model.adapter`): the SFT model an SFT-then-DPO run must stay near. No second copy of the model
is held, and no step spends a forward pass on the reference.

Each loss is the mean over its micro-batch's rows; the Trainer divides by the accumulation steps.
Rewards, reward accuracy and margins are logged beside the loss (`rewards/...`, and `eval_rewards/...`
for the validation split) into metrics.jsonl and the trackers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.config.schema import Config
from tunesmith.training import preference_loss as pl
from tunesmith.training.guards import is_finite, non_finite_loss
from tunesmith.training.trainer import PackedTrainer


def prompt_shared(model: Any) -> bool:
    """Whether this model scores a pair with its prompt laid out once (models/attention.py: shares_prompt)."""
    from tunesmith.models.attention import shares_prompt

    config = model.config
    return shares_prompt(config, getattr(config, "_attn_implementation", None) or "")


def score(model: Any, batch: dict[str, Any]) -> pl.SequenceLogps:
    """Each packed sequence's summed log-probability of its trained tokens, and their counts. The
    output head runs only at `predict_at`, the positions whose logits predict a trained token."""
    at = batch["predict_at"]
    mask = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
    # use_cache=False keeps the packed sequences apart (see training/trainer.py)
    outputs = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, logits_to_keep=at, **mask
    )
    logits = outputs.logits[0].float()
    token_logps = -F.cross_entropy(logits, batch["targets"], reduction="none")
    segments = batch["target_segments"]
    count = int(batch["sequences"])
    total = torch.zeros(count, dtype=token_logps.dtype, device=token_logps.device).index_add(0, segments, token_logps)
    return pl.SequenceLogps(total, torch.bincount(segments, minlength=count))


def preference_losses(config: Config, policy: pl.SequenceLogps, batch: dict[str, Any], kl: Any = None) -> pl.LossOut:
    """The run's objective on one micro-batch."""
    t = config.train
    beta = t.preference_beta
    if t.objective == "dpo":
        reference = pl.SequenceLogps(batch["reference"].to(policy.total), policy.tokens)
        return pl.dpo_loss(
            policy,
            reference,
            beta=beta,
            variant=t.dpo_loss,
            label_smoothing=t.label_smoothing,
            sft_weight=t.sft_weight,
        )
    if t.objective == "simpo":
        return pl.simpo_loss(policy, beta=beta, gamma=t.simpo_gamma, label_smoothing=t.label_smoothing)
    if t.objective == "orpo":
        return pl.orpo_loss(policy, beta=beta)
    return pl.kto_loss(
        policy.total,
        batch["reference"].to(policy.total),
        batch["desirable"],
        kl,
        beta=beta,
        desirable_weight=t.kto_desirable_weight,
        undesirable_weight=t.kto_undesirable_weight,
    )


class PreferenceTrainer(PackedTrainer):
    """PackedTrainer (sources, NaN guards, checkpoints) with a preference objective's loss."""

    loss_is_scaled_for_ga = False  # a mean over the micro-batch's rows: the Trainer divides by accumulation

    def __init__(self, *args: Any, run_config: Config, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        self._sums: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(lambda: [0.0, 0.0]),
            "eval": defaultdict(lambda: [0.0, 0.0]),
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("sources", None)
        policy = score(model, inputs)
        kl = None
        if self.run_config.train.objective == "kto":
            detached = inputs["detached"]
            with torch.no_grad():
                kl = pl.kto_kl(score(model, detached).total, detached["reference"].to(policy.total))
        out = preference_losses(self.run_config, policy, inputs, kl)
        if model.training and not is_finite(out.loss.detach()):
            raise non_finite_loss(self.state.global_step + 1, float(out.loss), getattr(self, "_step_sources", []))
        self._record("train" if model.training else "eval", policy, out, kl)
        return (out.loss, None) if return_outputs else out.loss

    def _record(self, mode: str, policy: pl.SequenceLogps, out: pl.LossOut, kl: Any) -> None:
        sums = self._sums[mode]

        def add(key: str, values: Any) -> None:
            values = values.detach().float()
            sums[key][0] += float(values.sum())
            sums[key][1] += values.numel()

        add("rewards/chosen", out.chosen_rewards)
        add("rewards/rejected", out.rejected_rewards)
        if kl is not None:
            add("kl", kl.reshape(1))
            return
        chosen, rejected = policy.chunk()
        add("rewards/accuracy", (out.chosen_rewards > out.rejected_rewards).float())
        add("rewards/margin", out.chosen_rewards - out.rejected_rewards)
        add("logps/chosen", chosen.total)
        add("logps/rejected", rejected.total)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        if mode == "eval" or "loss" in logs:
            for key, (total, count) in self._sums[mode].items():
                if count:
                    logs[prefix + key] = round(total / count, 6)
            self._sums[mode].clear()
        super().log(logs, start_time)


def held_out_preferences(
    model: Any, rows: list[dict], config: Config, precision: str = "fp32"
) -> dict[str, Any] | None:
    """Reward accuracy, margin and log-probabilities on the validation pairs, the tuned model beside
    the reference (the model as the run started). KTO rows made from pairs count as those pairs;
    None when the split holds no pairs. Rewards are DPO's implicit ones, β·(log π - log π_ref), for
    every objective, so runs of different objectives compare."""
    from tunesmith.training.reference import reference_logps

    if not rows or any("reference" not in row for row in rows):
        return None
    policy = reference_logps(model, rows, precision)[:, :2]  # the model as it is now, in eval mode
    reference = torch.tensor([row["reference"] for row in rows])[:, :2]
    if config.train.objective == "kto":  # a pair's good then bad row, next to each other
        pairs = [
            i
            for i in range(len(rows) - 1)
            if rows[i]["sources"] == rows[i + 1]["sources"]
            and rows[i].get("desirable")
            and not rows[i + 1].get("desirable")
        ]
        if not pairs:
            return None
        index = torch.tensor(pairs)
        policy = torch.stack([policy[index, 0], policy[index + 1, 0]], dim=1)
        reference = torch.stack([reference[index, 0], reference[index + 1, 0]], dim=1)
    beta = config.train.preference_beta
    rewards = beta * (policy - reference)

    def side(logps: torch.Tensor) -> dict[str, float]:
        return {
            "logps_chosen": round(float(logps[:, 0].mean()), 4),
            "logps_rejected": round(float(logps[:, 1].mean()), 4),
            "prefers_chosen": round(float((logps[:, 0] > logps[:, 1]).float().mean()), 4),
        }

    return {
        "pairs": len(policy),
        "beta": beta,
        "reward_accuracy": round(float((rewards[:, 0] > rewards[:, 1]).float().mean()), 4),
        "margin": round(float((rewards[:, 0] - rewards[:, 1]).mean()), 4),
        "tuned": side(policy),
        "reference": side(reference),
    }


def record_held_out(
    model: Any, rows: list[dict], config: Config, run_dir: Path, console: Any, precision: str = "fp32"
) -> dict[str, Any]:
    """A preference run's held-out pairs scored (training/preference.py), printed and written to
    eval/preference.json."""
    from tunesmith.runfolder import RunFolder, write_json

    found = held_out_preferences(model, rows, config, precision)
    if found is None:
        return {}
    write_json(RunFolder(run_dir).eval / "preference.json", found)
    console.print(
        f"Held-out pairs ({found['pairs']}): reward accuracy {found['reward_accuracy']:.3f}, margin "
        f"{found['margin']:.3f}; chosen preferred by the tuned model {found['tuned']['prefers_chosen']:.3f}, "
        f"by the reference {found['reference']['prefers_chosen']:.3f}"
    )
    return {"preference": found}
