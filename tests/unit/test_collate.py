"""Batches: no token sees another conversation, and the loss equals the unpacked loss, in both
packing modes and on every attention kernel this machine can train with."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.formatting.collate import collate_packed, collate_padded, collator_for
from tunesmith.formatting.packing import pack
from tunesmith.machine import attention_implementation
from tunesmith.models.attention import register
from tunesmith.training.trainer import PackedTrainer

register()  # `segments` loadable by name in the models these tests build


CPU_KERNELS = (
    "segments",
    "sdpa",
    "eager",
)  # flex_attention: tests/integration/test_packing_embedded.py (compiles ~1 min)


@pytest.fixture(scope="module", params=CPU_KERNELS)
def model(request, tiny_model_dir):
    loaded = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attention_implementation(request.param, "cpu")
    )
    return loaded.train()  # training mode, as in a run (dropout is 0 in this config)


def random_rows(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 1000, (n,), generator=generator).tolist() for n in lengths]


def chat_like(lengths, seed=0):
    """Rows whose first third is an untrained prompt, as in chat data."""
    return [{"input_ids": r, "labels": [-100] * (len(r) // 3) + r[len(r) // 3 :]} for r in random_rows(lengths, seed)]


def loss_of(model, batch):
    """PackedTrainer.compute_loss, the code path training uses, without any Trainer setup."""
    with torch.no_grad():
        return PackedTrainer.compute_loss(object.__new__(PackedTrainer), model, dict(batch))


def trained(row):
    return sum(label != -100 for label in row["labels"][1:])


def test_positions_restart_and_first_labels_are_masked():
    batch = collate_packed([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5]]
    assert "attention_mask" not in batch  # a mask would disable the block-diagonal packing path


def test_bins_concatenate_into_one_row_keeping_their_positions():
    bins = pack(chat_like((9, 4, 13, 7, 5)), capacity=16)
    batch = collate_packed(bins)
    assert batch["input_ids"].shape == (1, sum(len(b["input_ids"]) for b in bins))
    assert batch["position_ids"][0].tolist() == [p for b in bins for p in b["position_ids"]]
    assert (batch["position_ids"][0] == 0).sum() == 5
    assert all(batch["labels"][0, i] == -100 for i in (batch["position_ids"][0] == 0).nonzero().flatten())


def test_padded_rows_mask_padding_in_labels_and_attention():
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}, {"input_ids": [5, 6], "labels": [5, 6]}]
    batch = collate_padded(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, 4], [-100, 6, -100, -100]]
    assert collator_for("bins", 0) is collate_packed


def test_packed_logits_equal_separate_runs(model):
    rows = random_rows((7, 3, 11))
    batch = collate_packed([{"input_ids": r, "labels": r} for r in rows])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([r]), use_cache=False).logits[0] for r in rows])
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)


def test_packed_bins_logits_equal_separate_runs(model):
    """Several bins of several conversations each, in one row: still no attention across any boundary."""
    bins = pack(chat_like((9, 4, 13, 7, 5, 12, 3, 10)), capacity=24)
    assert len(bins) >= 3 and all(b["position_ids"].count(0) >= 2 for b in bins[:2])
    batch = collate_packed(bins)
    starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0] + [batch["input_ids"].shape[1]]
    ids = batch["input_ids"][0]
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        separate = torch.cat(
            [model(input_ids=ids[a:b][None], use_cache=False).logits[0] for a, b in zip(starts, starts[1:])]
        )
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)


def test_padded_logits_equal_separate_runs_where_tokens_are_real(model):
    rows = random_rows((7, 3, 11))
    batch = collate_padded([{"input_ids": r, "labels": r} for r in rows])
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        for i, r in enumerate(rows):
            alone = model(input_ids=torch.tensor([r]), use_cache=False).logits[0]
            torch.testing.assert_close(padded[i, : len(r)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("collate", [collate_packed, collate_padded], ids=["bins", "none"])
def test_trainer_loss_equals_token_weighted_separate_losses(model, collate):
    """Goes through PackedTrainer.compute_loss: the code path training uses."""
    features = chat_like((9, 4, 13, 6))
    batch = pack(features, capacity=16) if collate is collate_packed else features
    total = sum(loss_of(model, collate([f])) * trained(f) for f in features)
    n_trained = sum(trained(f) for f in features)
    assert loss_of(model, collate(batch)).item() == pytest.approx(total.item() / n_trained, abs=1e-5)


def test_packing_modes_give_the_same_loss(model):
    features = chat_like((9, 4, 13, 6, 15, 2), seed=1)
    packed = loss_of(model, collate_packed(pack(features, capacity=20)))
    padded = loss_of(model, collate_padded(features))
    assert packed.item() == pytest.approx(padded.item(), abs=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusals")
@pytest.mark.parametrize(
    ("setting", "reason"), [("flash_attention_2", "needs a CUDA GPU"), ("flex_attention", "cannot train on CPU")]
)
def test_kernels_that_cannot_train_on_cpu_are_refused_before_any_work(
    setting, reason, tiny_model_dir, chat_jsonl, tmp_path
):
    with pytest.raises(UserError, match=reason):
        attention_implementation(setting, "cpu")
    config = load_config(
        None,
        [
            f"data.train={chat_jsonl}",
            f"model.name={tiny_model_dir}",
            f"output_dir={tmp_path}",
            "name=refused",
            f"model.attention={setting}",
        ],
    )
    with pytest.raises(UserError, match=rf"--set model.attention={setting}: model.attention: .*{reason}"):
        tunesmith.train(config)
    assert not (tmp_path / "refused").exists()


def test_auto_attention_is_segments_on_cpu_and_sdpa_on_gpu():
    assert attention_implementation("auto", "cpu") == "segments"
    assert attention_implementation("auto", "cuda") == "sdpa"
    assert attention_implementation("eager", "cpu") == "eager"


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["sdpa", "eager", "flex_attention", "flash_attention_2"])
def test_packed_bins_logits_equal_separate_runs_on_gpu(kernel, tiny_model_dir):
    try:
        attention_implementation(kernel, "cuda")
    except UserError as err:
        pytest.skip(str(err))
    dtype = torch.bfloat16 if kernel == "flash_attention_2" else torch.float32
    gpu = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation=kernel).cuda().train()
    bins = pack(chat_like((9, 4, 13, 7, 5, 12, 3, 10)), capacity=24)
    batch = {k: v.cuda() for k, v in collate_packed(bins).items()}
    starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0] + [batch["input_ids"].shape[1]]
    ids = batch["input_ids"][0]
    with torch.no_grad():
        packed = gpu(input_ids=ids[None], position_ids=batch["position_ids"], use_cache=False).logits[0].float()
        separate = torch.cat(
            [gpu(input_ids=ids[a:b][None], use_cache=False).logits[0].float() for a, b in zip(starts, starts[1:])]
        )
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(packed, separate, atol=tolerance, rtol=tolerance)
