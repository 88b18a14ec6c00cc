"""A pair's prompt laid out once (formatting/collate.py: _pack_pairs): the same log-probabilities and
gradients as scoring chosen and rejected as separate sequences, on sdpa and on `segments`, with no
attention from one answer to the other or across pairs; and only where the model allows it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from tunesmith.data.types import IGNORE_INDEX
from tunesmith.formatting.collate import collate_scored
from tunesmith.machine import attention_implementation
from tunesmith.models.attention import register, shares_prompt
from tunesmith.training.preference import prompt_shared, score

register()


def _pairs(seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(10, 200, (n,), generator=generator).tolist()

    rows = []
    for prompt, good, bad in ((6, 4, 7), (9, 5, 2), (3, 8, 8)):
        p = ids(prompt)
        chosen, rejected = p + ids(good), p + ids(bad)
        rows.append(
            {
                "sequences": [
                    (chosen, [IGNORE_INDEX] * prompt + chosen[prompt:]),
                    (rejected, [IGNORE_INDEX] * prompt + rejected[prompt:]),
                ]
            }
        )
    return rows


def _load(folder, kernel):
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attention_implementation(kernel, "cpu")
    )


@pytest.mark.parametrize("kernel", ["segments", "sdpa"])
def test_a_shared_prompt_scores_and_backpropagates_as_separate_sequences(tiny_model_dir, kernel):
    model = _load(tiny_model_dir, kernel)
    assert prompt_shared(model)
    rows = _pairs()
    results = {}
    for shared in (False, True):
        model.zero_grad()
        batch = collate_scored(rows, share_prompt=shared)
        total = score(model, batch).total
        (total * torch.tensor([1.0, -0.5, 2.0, 0.3, 1.5, -1.0])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[shared] = (total.detach(), grads, batch["input_ids"].shape[1])
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert results[True][2] == results[False][2] - (6 + 9 + 3)  # each prompt once


def test_one_answer_never_sees_the_other_nor_another_pair(tiny_model_dir):
    """Changing a pair's chosen answer changes no other sequence's log-probability."""
    model = _load(tiny_model_dir, "segments").eval()
    rows = _pairs()
    with torch.no_grad():
        before = score(model, collate_scored(rows, share_prompt=True)).total
        ids, labels = rows[0]["sequences"][0]
        changed = ids[:6] + [(t + 7) % 200 + 10 for t in ids[6:]]
        rows[0]["sequences"][0] = (changed, [IGNORE_INDEX] * 6 + changed[6:])
        after = score(model, collate_scored(rows, share_prompt=True)).total
    assert not torch.isclose(after[0], before[0])
    torch.testing.assert_close(after[1:], before[1:], atol=1e-6, rtol=1e-6)


def test_only_full_attention_families_on_a_mask_taking_kernel_share():
    assert shares_prompt(LlamaConfig(), "segments") and shares_prompt(LlamaConfig(), "sdpa")
    assert not shares_prompt(LlamaConfig(), "flash_attention_2")  # takes no custom mask
    assert not shares_prompt(LlamaConfig(), "eager")
    assert not shares_prompt(MistralConfig(sliding_window=64), "sdpa")  # the mask would bypass the window
    assert shares_prompt(MistralConfig(sliding_window=None), "sdpa")
    assert shares_prompt(Qwen2Config(use_sliding_window=False), "sdpa")
    assert not shares_prompt(Qwen2Config(use_sliding_window=True, sliding_window=64, max_window_layers=0), "sdpa")
    assert not shares_prompt(type("Hybrid", (), {"model_type": "qwen3_next"})(), "sdpa")
