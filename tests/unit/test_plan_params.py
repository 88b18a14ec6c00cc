"""Exact trainable-parameter counts from models built on the meta device from their configs (no hub,
no weights), checked against counts computed here independently from the architectures' shapes."""

from __future__ import annotations

import pytest

from tunesmith.plan.shapes import parameter_counts


def llama2_7b():
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        tie_word_embeddings=False,
    )


def test_llama2_7b_lora_r8_q_v_is_the_known_4194304():
    trainable, total = parameter_counts(llama2_7b(), method="lora", r=8, target_modules=["q_proj", "v_proj"])
    assert trainable == 4_194_304
    assert total == 6_738_415_616 + 4_194_304


def test_llama2_7b_full_fine_tuning_trains_the_known_6738415616():
    trainable, total = parameter_counts(llama2_7b(), method="full")
    assert trainable == total == 6_738_415_616


def test_mistral_7b_gqa_lora_on_attention():
    from transformers import MistralConfig

    config = MistralConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=32000,
    )
    r, h, kv = 16, 4096, 8 * 128  # k_proj and v_proj map 4096 -> 1024 (8 KV heads of 128)
    per_layer = r * (h + h) + r * (h + kv) + r * (h + kv) + r * (h + h)
    trainable, _ = parameter_counts(config, method="lora", r=r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    assert trainable == 32 * per_layer == 13_631_488


def test_qwen2_all_linear_leaves_out_the_head():
    from transformers import Qwen2Config

    h, i, heads, kv_heads, layers, r = 896, 4864, 14, 2, 24, 8  # Qwen2-0.5B's shapes
    config = Qwen2Config(
        hidden_size=h,
        intermediate_size=i,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=layers,
        vocab_size=151936,
        tie_word_embeddings=True,
    )
    kv = kv_heads * (h // heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    expected = layers * sum(r * (a + b) for a, b in shapes)
    trainable, total = parameter_counts(config, method="lora", r=r, target_modules="all-linear")
    assert trainable == expected
    full, _ = parameter_counts(config, method="full")
    assert total == full + expected


@pytest.mark.parametrize("r", [4, 64])
def test_dora_adds_one_magnitude_per_output_feature(r):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    kv = 2 * 64
    lora, _ = parameter_counts(config, method="lora", r=r, target_modules=["q_proj", "v_proj"])
    dora, _ = parameter_counts(config, method="lora", r=r, target_modules=["q_proj", "v_proj"], dora=True)
    assert lora == 2 * (r * (256 + 256) + r * (256 + kv))
    assert dora == lora + 2 * (256 + kv)
