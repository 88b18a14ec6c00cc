"""Preference objectives as functions of per-sequence log-probabilities: DPO (sigmoid, IPO, hinge,
with conservative label smoothing), SimPO, ORPO and KTO.

Everything here works on what a forward pass gives: the log-probability of each trained token
(`token_logps`, positions whose label is -100 are not counted), summed or averaged per sequence.
A batch of pairs is laid out as TRL lays it out, chosen rows first, then the rejected rows in the
same order, so `logps.chunk(2)` splits it. Each loss returns the mean over the batch (what the
optimizer sees) and the per-sequence rewards the report plots.

The definitions, and where they differ from TRL 1.16 (tests/unit/test_preference_loss.py checks
the rest against TRL's trainers to 1e-5 in float32, losses and gradients):
- DPO: -log σ(β·Δ), Δ = (log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r)), log-probs summed over
  the answer's tokens. `label_smoothing` ε gives conservative DPO, -(1-ε)·log σ(βΔ) - ε·log σ(-βΔ)
  (Mitchell 2023), the form TRL's DPO had before 1.0 and its CPO trainer still has. `sft_weight` w
  adds w times the chosen answers' NLL per token (RPO, Pang et al. 2024), which keeps the chosen
  answer likely while the margin grows (TRL: loss_type [variant, "sft"], loss_weights [1, w]). IPO:
  (Δ/len - 1/(2β))², Δ's terms averaged per token as TRL and the IPO authors do. Hinge: relu(1 - βΔ).
- SimPO: -log σ(β·(mean log π(c) - mean log π(r)) - γ), no reference model; TRL's CPO "simpo".
- ORPO: NLL of the chosen answer - β·log σ(log odds(c) - log odds(r)), odds from the mean token
  log-probability. The NLL covers the answer's tokens only, as the ORPO paper defines it; TRL's
  ORPO trainer also trains the prompt's tokens there, which tunesmith does not do.
- KTO: desirable 1 - σ(β·(r - z)), undesirable 1 - σ(β·(z - r)), r the log-ratio of the answer, z
  the batch's KL estimate (answers paired with other rows' prompts, clamped at 0, no gradient),
  weighted by `desirable_weight` / `undesirable_weight`; the mean over all rows of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DPO_VARIANTS = ("sigmoid", "ipo", "hinge")
OBJECTIVES = ("dpo", "simpo", "orpo", "kto")


@dataclass(frozen=True)
class SequenceLogps:
    """Per-sequence sums of the trained tokens' log-probabilities, and how many tokens each has."""

    total: Any
    tokens: Any

    @property
    def mean(self) -> Any:
        return self.total / self.tokens.clamp(min=1)

    def chunk(self) -> tuple[SequenceLogps, SequenceLogps]:
        """The chosen half and the rejected half of a batch of pairs."""
        total, tokens = self.total.chunk(2), self.tokens.chunk(2)
        return SequenceLogps(total[0], tokens[0]), SequenceLogps(total[1], tokens[1])


@dataclass(frozen=True)
class LossOut:
    loss: Any
    chosen_rewards: Any
    rejected_rewards: Any


def sequence_logps(logits: Any, labels: Any) -> SequenceLogps:
    """Log-probabilities of `labels` under `logits` (batch x length x vocab, unshifted: position t
    predicts token t+1), summed per sequence over positions whose label is not -100."""
    import torch

    labels = labels[:, 1:]
    logits = logits[:, :-1, :]
    trained = labels != -100
    picked = torch.where(trained, labels, 0)
    token_logps = torch.gather(logits.float().log_softmax(-1), 2, picked.unsqueeze(-1)).squeeze(-1)
    return SequenceLogps((token_logps * trained).sum(-1), trained.sum(-1))


def dpo_loss(
    policy: SequenceLogps,
    reference: SequenceLogps,
    *,
    beta: float,
    variant: str = "sigmoid",
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
) -> LossOut:
    """DPO and its variants over a batch of pairs (chosen rows, then rejected rows). `sft_weight` adds
    that much of the chosen answers' NLL per token (RPO; TRL's loss_type [variant, "sft"])."""
    import torch.nn.functional as F

    chosen, rejected = policy.chunk()
    ref_chosen, ref_rejected = reference.chunk()
    chosen_ratio = chosen.total - ref_chosen.total
    rejected_ratio = rejected.total - ref_rejected.total
    delta = chosen_ratio - rejected_ratio
    if variant == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif variant == "ipo":
        per_token = chosen_ratio / chosen.tokens.clamp(min=1) - rejected_ratio / rejected.tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    elif variant == "hinge":
        losses = (1 - beta * delta).relu()
    else:
        raise ValueError(f"unknown DPO variant {variant!r} (one of {', '.join(DPO_VARIANTS)})")
    loss = losses.mean()
    if sft_weight:
        loss = loss + sft_weight * -chosen.total.sum() / chosen.tokens.sum().clamp(min=1)
    return LossOut(loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo_loss(policy: SequenceLogps, *, beta: float, gamma: float, label_smoothing: float = 0.0) -> LossOut:
    """SimPO: length-normalized log-probabilities, a target margin `gamma`, no reference model."""
    import torch.nn.functional as F

    chosen, rejected = policy.chunk()
    margin = beta * (chosen.mean - rejected.mean) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return LossOut(losses.mean(), beta * chosen.mean.detach(), beta * rejected.mean.detach())


def orpo_loss(policy: SequenceLogps, *, beta: float) -> LossOut:
    """ORPO: the chosen answer's NLL (per token, over the batch's chosen tokens) minus β times the
    mean log-sigmoid of the log odds ratio."""
    import torch
    import torch.nn.functional as F

    chosen, rejected = policy.chunk()
    nll = -chosen.total.sum() / chosen.tokens.sum().clamp(min=1)

    def log_odds(mean_logp: Any) -> Any:
        # log(p / (1 - p)) with log(1 - p) computed stably from log p < 0
        return mean_logp - torch.log(-torch.expm1(mean_logp))

    ratio = F.logsigmoid(log_odds(chosen.mean.float()) - log_odds(rejected.mean.float()))
    return LossOut(nll - beta * ratio.mean(), beta * chosen.mean.detach(), beta * rejected.mean.detach())


def kto_kl(policy_mismatched: Any, reference_mismatched: Any) -> Any:
    """KTO's reference point z: the batch's mean log-ratio on mismatched (prompt, answer) rows,
    clamped at 0, without gradient."""
    return (policy_mismatched - reference_mismatched).mean().detach().clamp(min=0)


def kto_loss(
    policy: Any,
    reference: Any,
    desirable: Any,
    kl: Any,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOut:
    """KTO over a batch of single answers: `policy`, `reference` are per-row summed log-probs,
    `desirable` a bool per row. Rewards are returned for the desirable and the undesirable rows."""
    import torch

    ratio = policy - reference
    good = 1 - torch.sigmoid(beta * (ratio[desirable] - kl))
    bad = 1 - torch.sigmoid(beta * (kl - ratio[~desirable]))
    losses = torch.cat((desirable_weight * good, undesirable_weight * bad))
    rewards = beta * ratio.detach()
    return LossOut(losses.mean(), rewards[desirable], rewards[~desirable])


def reward_accuracy(out: LossOut) -> float:
    """Share of pairs whose chosen reward is above the rejected one."""
    return float((out.chosen_rewards > out.rejected_rewards).float().mean())
