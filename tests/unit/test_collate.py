"""Packed batches: no token sees another conversation, and the loss equals the unpacked loss."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.formatting.collate import collate_packed
from tunesmith.training.trainer import PackedTrainer


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return loaded.train()  # training mode, as in a run (dropout is 0 in this config)


def random_rows(lengths):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(10, 1000, (n,), generator=generator).tolist() for n in lengths]


def test_positions_restart_and_first_labels_are_masked():
    batch = collate_packed([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5]]
    assert "attention_mask" not in batch  # a mask would disable the block-diagonal packing path


def test_packed_logits_equal_separate_runs(model):
    rows = random_rows((7, 3, 11))
    batch = collate_packed([{"input_ids": r, "labels": r} for r in rows])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([r]), use_cache=False).logits[0] for r in rows])
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)


def test_trainer_loss_on_a_packed_batch_equals_token_weighted_separate_losses(model):
    """Goes through PackedTrainer.compute_loss: the code path training uses."""
    rows = random_rows((9, 4, 13))
    labels = [[-100] * 3 + r[3:] for r in rows]  # prompts untrained, as in chat data
    features = [{"input_ids": r, "labels": l} for r, l in zip(rows, labels)]
    loss_of = PackedTrainer.compute_loss.__get__(object.__new__(PackedTrainer))  # the method, no Trainer setup
    with torch.no_grad():
        packed = loss_of(model, collate_packed(features))
        total = sum(loss_of(model, collate_packed([f])) * (len(f["input_ids"]) - 3) for f in features)
    n_trained = sum(len(r) - 3 for r in rows)
    assert packed.item() == pytest.approx(total.item() / n_trained, abs=1e-5)
