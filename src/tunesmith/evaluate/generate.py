"""Greedy batched generation that stops at the end-of-turn token(s)."""

from __future__ import annotations

from typing import Any


def stop_token_ids(tokenizer: Any, markers: list[str]) -> list[int]:
    """Token ids that end an assistant turn (from the run's recorded end-of-turn markers)."""
    ids = [tokenizer.convert_tokens_to_ids(m) for m in markers]
    ids = [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]
    return list(dict.fromkeys(ids or [tokenizer.eos_token_id]))


def generate(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, stop_ids: list[int],
             batch_size: int = 16) -> list[str]:
    """Complete each rendered prompt greedily; returns the new text without special tokens."""
    import torch

    tokenizer.padding_side = "left"  # generation continues from the right edge
    outputs: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs
