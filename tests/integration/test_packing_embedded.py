"""Packing on the embedded model with real chat rows: the loss of a packed micro-batch (and of a
padded one) equals the token-weighted loss of the same conversations run one by one, within 1e-5
in float32, on every attention kernel that runs on this CPU. flex_attention runs forward on CPU
(compiled first, about a minute), but torch has no CPU backward for it, so training refuses it
there; its packed mask is still checked here."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

from tunesmith.config import load_config
from tunesmith.formatting.collate import collate_packed, collate_padded
from tunesmith.formatting.packing import pack
from tunesmith.training.prepare import prepare
from tunesmith.training.trainer import PackedTrainer

pytestmark = pytest.mark.integration

MAX_LENGTH = 256  # the quick start's bins


@pytest.fixture(scope="module")
def prepared():
    config = load_config(None, ["data.train=bundled:smart_home/train.jsonl", f"template.max_length={MAX_LENGTH}"])
    return prepare(config, Console(quiet=True))


@pytest.fixture(scope="module")
def rows(prepared):
    """Eight real conversations encoded with the embedded tokenizer (assistant answers trained)."""
    examples = prepared.splits["train"].examples[:8]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def load(prepared, kernel):
    model = AutoModelForCausalLM.from_pretrained(prepared.ref.path, dtype=torch.float32, attn_implementation=kernel)
    return model.train()  # as in training; the model's dropout is 0


def loss_of(model, batch):
    """PackedTrainer.compute_loss, the code path training uses, without any Trainer setup."""
    with torch.no_grad():
        return PackedTrainer.compute_loss(object.__new__(PackedTrainer), model, dict(batch)).item()


def trained(row):
    return sum(label != -100 for label in row["labels"][1:])


@pytest.fixture(scope="module")
def one_by_one(prepared, rows):
    """The token-weighted loss of the conversations run one at a time, on eager attention (the plain
    softmax(QK^T)V, and one compile per length would make this take minutes on flex)."""
    model = load(prepared, "eager")
    return sum(loss_of(model, collate_packed([r])) * trained(r) for r in rows) / sum(trained(r) for r in rows)


def test_rows_have_realistic_masks_and_pack_into_several_bins(rows):
    assert all(0 < trained(r) < len(r["input_ids"]) / 2 for r in rows)  # prompt untrained, answer trained
    bins = pack(rows, MAX_LENGTH)
    assert 2 <= len(bins) < len(rows) and all(len(b["input_ids"]) <= MAX_LENGTH for b in bins)


@pytest.mark.parametrize("kernel", ["sdpa", "eager", "flex_attention"])
def test_packed_and_padded_losses_equal_the_one_by_one_loss(prepared, rows, one_by_one, kernel):
    model = load(prepared, kernel)
    packed = loss_of(model, collate_packed(pack(rows, MAX_LENGTH)))  # every bin in one micro-batch row
    padded = loss_of(model, collate_padded(rows, pad_id=prepared.tokenizer.pad_token_id))  # packing: none
    assert packed == pytest.approx(one_by_one, abs=1e-5)
    assert padded == pytest.approx(one_by_one, abs=1e-5)
