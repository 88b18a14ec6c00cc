"""Loss parity: each preference objective's loss and gradients equal TRL's trainers (1.16) on a
fixed batch of token ids, within 1e-5 in float32.

TRL's trainers are built for real (tiny Llama, its tokenizer, a two-row dataset) and handed the
same batch tunesmith's losses see, so the comparison runs through TRL's own forward pass, log-prob
gathering, reference handling and reduction, not a copy of its formulas. TRL is a test-only
dependency (`make test` installs it)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from tunesmith.training.preference_loss import (  # noqa: E402
    dpo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    reward_accuracy,
    sequence_logps,
    simpo_loss,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # weights far from init, so the policy and reference differ a lot
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, tokenizer


def _pairs(vocab: int, prompt_lengths=(3, 5), seed: int = 0):
    """Two pairs, right-padded: rows [chosen0, chosen1, rejected0, rejected1], with a completion
    mask over each answer's tokens (different lengths, so padding and per-token means matter)."""
    generator = torch.Generator().manual_seed(seed)
    answers = [(4, 6), (7, 2)]  # (chosen, rejected) lengths per pair
    rows, masks = [], []
    for side in (0, 1):
        for pair, prompt in enumerate(prompt_lengths):
            length = answers[pair][side]
            ids = torch.randint(10, vocab, (prompt + length,), generator=generator)
            if side == 1:  # the same prompt in chosen and rejected
                ids[:prompt] = rows[pair][:prompt]
            rows.append(ids)
            masks.append(torch.cat([torch.zeros(prompt), torch.ones(length)]).long())
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    completion = torch.zeros_like(input_ids)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        input_ids[i, : len(r)] = r
        attention[i, : len(r)] = 1
        completion[i, : len(m)] = m
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


KTO_SEED = 3


def _nudge(model, seed: int, size: float = 0.02) -> None:
    """Move every weight by seeded noise, whatever ran before (tests run in any order)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(size * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _labels(batch):
    return batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)


def _ours(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, _labels(batch))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(ours_loss, trl_loss, ours_model, trl_model):
    assert abs(float(ours_loss) - float(trl_loss)) < TOLERANCE, (float(ours_loss), float(trl_loss))
    ours, theirs = _grads(ours_model), _grads(trl_model)
    assert ours.keys() == theirs.keys() and ours
    worst = max(float((ours[n] - theirs[n]).abs().max()) for n in ours)
    assert worst < TOLERANCE, worst


def _dataset(paired: bool = True):
    from datasets import Dataset

    if paired:
        return Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    return Dataset.from_list([{"prompt": "a", "completion": "b", "label": flag} for flag in (True, False)])


def _args(config_cls, tmp_path, **settings):
    return config_cls(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, per_device_train_batch_size=2, **settings
    )


@pytest.mark.parametrize(("variant", "sft_weight"), [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("sigmoid", 0.7)])
def test_dpo_loss_and_gradients_equal_trls_dpo_trainer(tiny, tmp_path, variant, sft_weight):
    from trl import DPOConfig, DPOTrainer

    losses = {"loss_type": [variant]}
    if sft_weight:  # RPO: DPO plus the chosen answers' NLL
        losses = {"loss_type": [variant, "sft"], "loss_weights": [1.0, sft_weight]}

    model, tokenizer = tiny
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    _nudge(policy, seed=2)  # the policy has moved away from the reference
    trainer_model = copy.deepcopy(policy)
    trainer = DPOTrainer(
        model=trainer_model,
        ref_model=copy.deepcopy(reference),
        args=_args(DPOConfig, tmp_path, beta=0.3, **losses),
        train_dataset=_dataset(),
        processing_class=tokenizer,
    )
    batch = _pairs(len(tokenizer))
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()

    policy.train()
    with torch.no_grad():
        ref = _ours(reference, batch)
    out = dpo_loss(_ours(policy, batch), ref, beta=0.3, variant=variant, sft_weight=sft_weight)
    out.loss.backward()
    _assert_same(out.loss, theirs, policy, trainer_model)
    assert 0.0 <= reward_accuracy(out) <= 1.0


def test_conservative_label_smoothing_is_sigmoid_at_zero_and_stops_pushing_at_its_own_margin():
    """With ε, -(1-ε)·log σ(βΔ) - ε·log σ(-βΔ) is smallest where σ(βΔ) = 1-ε: the margin stops
    growing at βΔ = log((1-ε)/ε) instead of being pushed forever as plain DPO does."""
    import math

    from tunesmith.training.preference_loss import SequenceLogps

    beta, eps = 0.5, 0.1
    reference = SequenceLogps(torch.zeros(2), torch.tensor([3, 3]))
    margin = math.log((1 - eps) / eps) / beta
    for smoothing, gradient_is_zero in ((0.0, False), (eps, True)):
        total = torch.tensor([-1.0, -1.0 - margin], requires_grad=True)
        out = dpo_loss(SequenceLogps(total, torch.tensor([3, 3])), reference, beta=beta, label_smoothing=smoothing)
        out.loss.backward()
        assert (float(total.grad.abs().max()) < 1e-6) == gradient_is_zero, (smoothing, total.grad)
    plain = dpo_loss(SequenceLogps(torch.tensor([-1.0, -2.0]), torch.tensor([3, 3])), reference, beta=beta)
    assert abs(float(plain.loss) - math.log1p(math.exp(-beta))) < 1e-6


@pytest.mark.parametrize("loss_type", ["simpo", "sigmoid"])
def test_simpo_equals_trls_cpo_trainer(tiny, tmp_path, loss_type):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    trainer_model = copy.deepcopy(model)
    settings = {"loss_type": loss_type, "beta": 2.0, "cpo_alpha": 0.0, "label_smoothing": 0.1}
    if loss_type == "simpo":
        settings["simpo_gamma"] = 0.7
    trainer = CPOTrainer(
        model=trainer_model,
        args=_args(CPOConfig, tmp_path, **settings),
        train_dataset=_dataset(),
        processing_class=tokenizer,
    )
    batch = _pairs(len(tokenizer))
    trl_batch = _concatenated(batch)
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, trl_batch)
    theirs.backward()

    policy.train()
    logps = _ours(policy, batch)
    if loss_type == "simpo":
        out = simpo_loss(logps, beta=2.0, gamma=0.7, label_smoothing=0.1)
    else:  # CPO's sigmoid without its NLL term: DPO without a reference, summed log-probs
        zero = type(logps)(torch.zeros_like(logps.total), logps.tokens)
        out = dpo_loss(logps, zero, beta=2.0, label_smoothing=0.1)
    out.loss.backward()
    _assert_same(out.loss, theirs, policy, trainer_model)


def test_orpo_equals_trls_orpo_trainer(tiny, tmp_path):
    """A one-token prompt: TRL's ORPO takes the NLL over prompt and answer, and the first token is
    never predicted, so there both count the answer's tokens only."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer = tiny
    policy, trainer_model = copy.deepcopy(model), copy.deepcopy(model)
    trainer = ORPOTrainer(
        model=trainer_model,
        args=_args(ORPOConfig, tmp_path, beta=0.25),
        train_dataset=_dataset(),
        processing_class=tokenizer,
    )
    batch = _pairs(len(tokenizer), prompt_lengths=(1, 1))
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, _concatenated(batch))
    theirs.backward()
    policy.train()
    out = orpo_loss(_ours(policy, batch), beta=0.25)
    out.loss.backward()
    _assert_same(out.loss, theirs, policy, trainer_model)


def test_orpos_nll_leaves_the_prompt_untrained(tiny):
    model, tokenizer = tiny
    batch = _pairs(len(tokenizer))
    policy = copy.deepcopy(model)
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logps(logits, _labels(batch))
    out = orpo_loss(logps, beta=0.0)  # the NLL alone
    chosen = slice(0, 2)
    expected = torch.nn.functional.cross_entropy(
        logits[chosen, :-1].reshape(-1, logits.shape[-1]), _labels(batch)[chosen, 1:].reshape(-1)
    )
    assert abs(float(out.loss) - float(expected)) < TOLERANCE


def test_kto_loss_and_gradients_equal_trls_kto_trainer(tiny, tmp_path):
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = tiny
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    _nudge(policy, seed=KTO_SEED)
    trainer_model = copy.deepcopy(policy)
    settings = {"beta": 0.2, "desirable_weight": 1.3, "undesirable_weight": 0.8}
    trainer = KTOTrainer(
        model=trainer_model,
        ref_model=copy.deepcopy(reference),
        args=_args(KTOConfig, tmp_path, **settings),
        train_dataset=_dataset(paired=False),
        processing_class=tokenizer,
    )
    rows = _pairs(len(tokenizer))  # four answers: the first and third desirable
    mismatched = _pairs(len(tokenizer), seed=1)  # other rows' answers after these prompts
    label = torch.tensor([True, False, True, False])
    batch = {
        **rows,
        "label": label,
        "KL_input_ids": mismatched["input_ids"],
        "KL_attention_mask": mismatched["attention_mask"],
        "KL_completion_mask": mismatched["completion_mask"],
    }
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()

    policy.train()
    with torch.no_grad():
        z = kto_kl(_ours(policy, mismatched).total, _ours(reference, mismatched).total)
        ref = _ours(reference, rows).total
    assert float(z) > 0.01, z  # the reference point is in play, not clamped away
    out = kto_loss(_ours(policy, rows).total, ref, label, z, **settings)
    out.loss.backward()
    _assert_same(out.loss, theirs, policy, trainer_model)


def _concatenated(batch):
    """The batch as TRL's CPO/ORPO trainers take it: chosen_* and rejected_* halves with labels."""
    labels = _labels(batch)
    half = batch["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, half)), ("rejected", slice(half, None))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = labels[rows]
    return out
