"""Held-out loss and perplexity: masked and normalized exactly as training, packing changes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.data.load import SourceSpec, load_split
from tunesmith.data.options import FormatOptions
from tunesmith.evaluate.loss import encode_for_loss, split_loss
from tunesmith.formatting.encode import build_template, end_of_turn_markers


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model, tokenizer, build_template(tokenizer, "model"), end_of_turn_markers(tokenizer)


def _examples(tiny, path, train_on="assistant"):
    _, tokenizer, template, markers = tiny
    rows = load_split(
        [SourceSpec(str(path), 1.0, FormatOptions())], split="test", policy="fail", seed=0
    ).conversations()
    return encode_for_loss(rows, template, tokenizer, train_on=train_on, max_length=512, markers=markers)


def _reference_loss(model, examples) -> tuple[float, int]:
    """Token-weighted mean of transformers' own per-sequence loss, one unpadded sequence at a time."""
    total, count = 0.0, 0
    for e in examples:
        ids = torch.tensor([e.input_ids])
        labels = torch.tensor([e.labels])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    return total / count, count


def test_loss_matches_transformers_and_counts_only_trained_tokens(tiny, chat_jsonl):
    model = tiny[0]
    examples = _examples(tiny, chat_jsonl)
    assert len(examples) == 12
    expected, count = _reference_loss(model, examples)
    result = split_loss(model, examples)
    assert result["tokens"] == count == sum(e.n_trainable for e in examples)
    assert count < sum(len(e.input_ids) for e in examples) / 2  # prompts are masked out
    assert result["loss"] == pytest.approx(expected, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)


def test_packing_many_conversations_in_one_row_gives_the_same_loss(tiny, chat_jsonl):
    model = tiny[0]
    examples = _examples(tiny, chat_jsonl)
    one_by_one = split_loss(model, examples, tokens_per_batch=1)
    all_packed = split_loss(model, examples, tokens_per_batch=10**6)
    assert one_by_one["tokens"] == all_packed["tokens"]
    assert all_packed["loss"] == pytest.approx(one_by_one["loss"], rel=1e-4)


def test_train_on_all_trains_more_tokens_than_assistant(tiny, chat_jsonl):
    model = tiny[0]
    assistant = split_loss(model, _examples(tiny, chat_jsonl))
    everything = split_loss(model, _examples(tiny, chat_jsonl, train_on="all"))
    assert everything["tokens"] > assistant["tokens"]
    assert everything["loss"] != pytest.approx(assistant["loss"], rel=1e-3)
