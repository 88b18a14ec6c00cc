"""Batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same gradients, through the real
PackedTrainer (its collator, sampler, `num_items_in_batch` and loss), in both packing modes; and
the two packing modes give the same gradients for the same conversations."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tunesmith.config import load_config
from tunesmith.formatting.packing import pack
from tunesmith.training.methods import add_adapter
from tunesmith.training.trainer import build_trainer, dataset_rows

CAPACITY = 64
LENGTHS = (47, 46, 45, 44, 43, 42, 41, 40, 17, 16, 15, 14, 13, 12, 11, 10, 5, 4, 3)  # 8 bins of <= 64 tokens


class GradientCapture(TrainerCallback):
    """The trainable parameters' gradients just before the (single) optimizer step."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}
        self.steps = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.steps += 1


def chat_rows(lengths):
    """Rows with an untrained prompt (the first third) and a trained answer, as in chat data."""
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 1000, (n,), generator=generator).tolist() for n in lengths]
    return [{"input_ids": r, "labels": [-100] * (len(r) // 3) + r[len(r) // 3 :]} for r in rows]


def lora_model(model_dir):
    """The tiny model with a LoRA adapter whose B is random too, so A gets a gradient as well."""
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = add_adapter(base, load_config(None, ["data.train=x.jsonl", "lora.r=4", "lora.alpha=8", "train.seed=0"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def step_gradients(model_dir, tmp_path, rows, *, packing, batch_size, accumulation):
    config = load_config(
        None,
        [
            "data.train=unused.jsonl",
            f"template.max_length={CAPACITY}",
            f"train.packing={packing}",
            f"train.batch_size={batch_size}",
            f"train.gradient_accumulation={accumulation}",
            "train.max_steps=1",
            "train.epochs=1",
            "train.learning_rate=2e-4",
            "train.max_grad_norm=1e9",
            "train.warmup_ratio=0",
        ],
    )
    capture = GradientCapture()
    trainer = build_trainer(
        lora_model(model_dir),
        config,
        tmp_path / f"{packing}-{batch_size}x{accumulation}",
        dataset_rows(rows, config),
        [],
        pad_id=0,
        device="cpu",
        precision="fp32",
        callbacks=[capture],
    )
    trainer.train()
    assert capture.steps == 1
    return capture.grads


def assert_same_gradients(first, second):
    assert first.keys() == second.keys() and len(first) > 0
    assert all(g.abs().max() > 0 for g in first.values())  # every adapter matrix (A and B) gets a gradient
    worst = max((first[k] - second[k]).abs().max().item() for k in first)
    assert worst < 1e-5, worst


def test_the_rows_make_eight_bins():
    assert len(pack(chat_rows(LENGTHS), CAPACITY)) == 8


@pytest.mark.parametrize(
    ("packing", "rows"), [("bins", chat_rows(LENGTHS)), ("none", chat_rows(LENGTHS[:8]))], ids=["bins", "none"]
)
def test_batch_8_equals_batch_1_times_accumulation_8(packing, rows, tiny_model_dir, tmp_path):
    eight = step_gradients(tiny_model_dir, tmp_path, rows, packing=packing, batch_size=8, accumulation=1)
    accumulated = step_gradients(tiny_model_dir, tmp_path, rows, packing=packing, batch_size=1, accumulation=8)
    assert_same_gradients(eight, accumulated)


def test_packed_and_padded_steps_give_the_same_gradients(tiny_model_dir, tmp_path):
    """One step over all 19 conversations: 8 packed bins, or 19 padded rows."""
    rows = chat_rows(LENGTHS)
    packed = step_gradients(tiny_model_dir, tmp_path, rows, packing="bins", batch_size=8, accumulation=1)
    padded = step_gradients(tiny_model_dir, tmp_path, rows, packing="none", batch_size=len(rows), accumulation=1)
    assert_same_gradients(packed, padded)
