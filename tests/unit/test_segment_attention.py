"""`segments` attention (models/attention.py): the same numbers as sdpa's block-diagonal mask,
computed once per packed conversation, and plain sdpa wherever the row is not packed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

from tunesmith.formatting.collate import collate_packed
from tunesmith.machine import attention_implementation
from tunesmith.models.attention import register, spans

register()  # `segments` loadable by name in the models these tests build


class CountAttention(TorchFunctionMode):
    """Records the sequence length of every scaled_dot_product_attention call and whether it had a mask."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append((args[0].shape[-2], mask is not None))
        return func(*args, **kwargs)


def load(folder, kernel):
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attention_implementation(kernel, "cpu")
    )


def packed_batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(10, 1000, (n,), generator=generator).tolist() for n in lengths]
    return collate_packed([{"input_ids": r, "labels": r} for r in rows])


def test_spans_accept_only_whole_conversations():
    assert spans(torch.tensor([[0, 1, 0, 1, 2]]), 5) == [(0, 2), (2, 5)]
    assert spans(torch.tensor([[0, 1, 0, 1, 2]]), 6) is None  # not the query length
    assert spans(torch.tensor([[0, 1, 0, 2]]), 4) is None  # a gap in the positions
    assert spans(torch.tensor([[0, 1], [0, 1]]), 2) is None  # two rows: transformers' mask handles them
    assert spans(None, 3) is None


def test_packed_row_runs_once_per_conversation_without_a_mask(tiny_model_dir):
    model = load(tiny_model_dir, "segments")
    batch = packed_batch((9, 4, 13))
    with CountAttention() as seen, torch.no_grad():
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    layers = model.config.num_hidden_layers
    assert seen.calls == [(9, False), (4, False), (13, False)] * layers


def test_loss_and_gradients_equal_sdpa_with_its_block_mask(tiny_model_dir):
    batch = packed_batch((9, 4, 13, 7), seed=3)
    results = {}
    for kernel in ("segments", "sdpa"):
        model = load(tiny_model_dir, kernel).train()
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        loss = F.cross_entropy(out.logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100)
        loss.backward()
        results[kernel] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["segments"][0], results["sdpa"][0], atol=1e-6, rtol=1e-6)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["segments"][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_generation_with_left_padding_falls_back_to_sdpa(tiny_model_dir):
    ids = torch.tensor([[0, 0, 17, 18, 19], [20, 21, 22, 23, 24]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    outputs = {
        kernel: load(tiny_model_dir, kernel).generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
        )
        for kernel in ("segments", "sdpa")
    }
    assert torch.equal(outputs["segments"], outputs["sdpa"])


def test_a_conversation_longer_than_the_sliding_window_keeps_the_window(tmp_path):
    config = MistralConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=6,
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    for lengths, segmented in (((10, 4), False), ((5, 4, 6), True)):
        batch = packed_batch(lengths)
        logits = {}
        for kernel in ("segments", "sdpa"):
            with CountAttention() as seen, torch.no_grad():
                logits[kernel] = load(tmp_path, kernel)(
                    input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
                ).logits
            if kernel == "segments":
                assert (len(seen.calls) == 2 * len(lengths)) is segmented
        torch.testing.assert_close(logits["segments"], logits["sdpa"], atol=1e-5, rtol=1e-5)


def test_model_folder_config_does_not_record_the_kernel(tiny_model_dir, tmp_path):
    """A merged model saved from a `segments` run loads anywhere (the name is ours, not transformers')."""
    load(tiny_model_dir, "segments").save_pretrained(tmp_path)
    assert "segments" not in (tmp_path / "config.json").read_text()
