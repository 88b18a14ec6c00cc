"""GGUF export without llama.cpp: refusals before writing, what the file holds, read back with gguf's reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunesmith.errors import UserError
from tunesmith.export.gguf import plan_export, write_gguf
from tunesmith.export.gguf_rope import llama3_rope_factors as rope_factors
from tunesmith.export.gguf_rope import rope_settings
from tunesmith.export.gguf_tensors import _permute
from tunesmith.export.gguf_vocab import SPLIT_PRE_TOKENIZERS, read_vocabulary

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_tokenizer(folder: Path, pre: pre_tokenizers.PreTokenizer | None = None) -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 style) trained in-process, with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = __import__("tokenizers").decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["Turn the kitchen lights to 40% please.", "It's 12:45 and we've got items.", "naïve café"] * 50
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token=None,
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(folder)
    return fast


def tiny_llama(folder: Path, vocab: int, **overrides) -> Path:
    settings = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_unsupported_architecture_is_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    model = run / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    (model / "tunesmith.json").write_text(
        json.dumps(
            {
                "base_model": str(tiny_model_dir),
                "method": "full",
                "template_name": "chatml",
                "chat_template": CHATML,
                "special_tokens": {},
                "end_of_turn": ["<|end|>"],
                "system_prompt": None,
            }
        )
    )
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "export", "gguf", str(run)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "GPTNeoXForCausalLM is not supported" in done.stderr and "LlamaForCausalLM" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no export/, no merged/, no temp file


def test_a_type_that_is_not_a_gguf_type_is_refused(tmp_path, tiny_model_dir):
    # (k-quants without llama.cpp's quantizer: tests/unit/test_gguf_quantize.py)
    with pytest.raises(UserError, match="not a GGUF type"):
        plan_export(
            tiny_model_dir,
            tiny_model_dir,
            tmp_path / "x.gguf",
            "q7",
            chat_template=CHATML,
            end_of_turn=["<|end|>"],
            name="x",
        )
    assert not (tmp_path / "x.gguf").exists()


def test_end_of_turn_that_is_not_a_token_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="end-of-turn markers.*single token"):
        plan_export(
            tiny_model_dir,
            tiny_model_dir,
            tmp_path / "x.gguf",
            "f16",
            chat_template=CHATML,
            end_of_turn=["###END###"],
            name="x",
        )


def test_f32_round_trip_every_tensor_and_the_tokenizer(tmp_path):
    folder = tmp_path / "m"
    tokenizer = byte_level_tokenizer(folder)
    tiny_llama(folder, len(tokenizer), rope_theta=50000.0)
    plan = plan_export(
        folder, folder, tmp_path / "out.gguf", "f32", chat_template=CHATML, end_of_turn=["<|im_end|>"], name="tiny"
    )
    assert (plan.vocab.model, plan.vocab.pre) == ("gpt2", "gpt-2")
    write_gguf(plan, folder, log=lambda _: None)

    reader = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    fields = {
        name: reader.get_field(name).contents()
        for name in (
            "general.architecture",
            "llama.block_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.chat_template",
            "tokenizer.ggml.add_bos_token",
        )
    }
    assert fields == {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": pytest.approx(50000.0),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.eot_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "tokenizer.chat_template": CHATML,
        "tokenizer.ggml.add_bos_token": False,
    }
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = reader.get_field("tokenizer.ggml.token_type").contents()
    assert types[tokenizer.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tokenizer.convert_tokens_to_ids("a")] == gguf.TokenType.NORMAL

    from safetensors.torch import load_file

    source = load_file(str(folder / "model.safetensors"))
    written = {t.name: np.asarray(t.data).reshape([int(n) for n in t.shape[::-1]]) for t in reader.tensors}
    assert len(written) == len(source)
    np.testing.assert_array_equal(written["token_embd.weight"], source["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(written["output.weight"], source["lm_head.weight"].numpy())
    np.testing.assert_array_equal(
        written["blk.1.ffn_down.weight"], source["model.layers.1.mlp.down_proj.weight"].numpy()
    )
    q = source["model.layers.0.self_attn.q_proj.weight"].numpy()
    np.testing.assert_array_equal(written["blk.0.attn_q.weight"], _permute(q, 4))
    assert not np.array_equal(written["blk.0.attn_q.weight"], q)  # really permuted
    k = source["model.layers.0.self_attn.k_proj.weight"].numpy()
    np.testing.assert_array_equal(written["blk.0.attn_k.weight"], _permute(k, 2))


def test_permute_interleaves_each_heads_rotary_halves():
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)  # one head of 8 dims: halves [0..3] and [4..7]
    assert _permute(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("out_type,tolerance", [("f16", 2e-3), ("bf16", 1e-2), ("q8_0", 2e-2)])
def test_reduced_types_dequantize_close_to_the_source(tmp_path, out_type, tolerance):
    folder = tmp_path / "m"
    tokenizer = byte_level_tokenizer(folder)
    tiny_llama(folder, len(tokenizer))
    plan = plan_export(
        folder, folder, tmp_path / "out.gguf", out_type, chat_template=CHATML, end_of_turn=["<|im_end|>"], name="tiny"
    )
    write_gguf(plan, folder, log=lambda _: None)
    reader = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert tensor.tensor_type.name == out_type.upper()
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    assert norm.tensor_type.name == "F32"  # 1-D tensors stay float32
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(64, 32)
    from safetensors.torch import load_file

    source = load_file(str(folder / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"].numpy()
    assert np.abs(values - source).max() <= tolerance * np.abs(source).max()


def test_llama3_rope_factors_give_transformers_frequencies():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        rope_theta=500000.0,
        rope_scaling=scaling,
        max_position_embeddings=131072,
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64)
    legacy = {"hidden_size": 2048, "num_attention_heads": 32, "rope_theta": 500000.0, "rope_scaling": scaling}
    factors = rope_factors(legacy, Path("config.json"))  # a config.json written by transformers 4
    np.testing.assert_allclose(plain / factors, scaled.numpy(), rtol=1e-5)
    # transformers 5 writes rope_parameters instead; same factors
    np.testing.assert_array_equal(rope_factors(config.to_dict(), Path("config.json")), factors)
    assert "rope_theta" not in config.to_dict() and rope_settings(config.to_dict())[0] == 500000.0
    assert factors.min() == pytest.approx(1.0) and factors.max() == pytest.approx(32.0)


def test_unsupported_rope_scaling_is_refused():
    with pytest.raises(UserError, match="rope_scaling type 'yarn' is not supported"):
        rope_factors({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, Path("config.json"))


@pytest.mark.parametrize("pattern,name", sorted(SPLIT_PRE_TOKENIZERS.items()))
def test_split_pre_tokenizers_map_to_llama_cpp_names(tmp_path, pattern, name):
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(__import__("tokenizers").Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer = byte_level_tokenizer(tmp_path, pre)
    assert read_vocabulary(tmp_path, tokenizer, len(tokenizer)).pre == name


def test_smollm_digit_splitting_is_recognised_and_an_unknown_split_refused(tmp_path):
    tokenizers = __import__("tokenizers")
    smollm = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer = byte_level_tokenizer(tmp_path / "a", smollm)
    assert read_vocabulary(tmp_path / "a", tokenizer, len(tokenizer)).pre == "smollm"
    odd = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(r"\d+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer = byte_level_tokenizer(tmp_path / "b", odd)
    with pytest.raises(UserError, match=r"tokenizer.json: pre-tokenizer .* not one tunesmith can map"):
        read_vocabulary(tmp_path / "b", tokenizer, len(tokenizer))


def test_sentencepiece_style_vocab_scores_follow_merge_ranks(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = read_vocabulary(tiny_model_dir, tokenizer, len(tokenizer))
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", True)
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    first, second = ("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges[:2])
    ids = tokenizer.convert_tokens_to_ids([first, second])
    assert vocab.scores[ids[0]] == 0.0 and vocab.scores[ids[1]] == -1.0
    assert vocab.types[tokenizer.convert_tokens_to_ids("<0x0A>")] == gguf.TokenType.BYTE
    assert vocab.types[tokenizer.unk_token_id] == gguf.TokenType.UNKNOWN
    assert vocab.types[tokenizer.convert_tokens_to_ids("<|end|>")] == gguf.TokenType.CONTROL
    # Phi-3's <|assistant|> strips whitespace to its right; GGUF cannot say so, and the export warns
    assert any("<|assistant|>" in w and "right" in w for w in vocab.warnings)


def test_extra_embedding_rows_become_unused_tokens(tmp_path):
    folder = tmp_path / "m"
    tokenizer = byte_level_tokenizer(folder)
    tiny_llama(folder, len(tokenizer) + 6)
    vocab = read_vocabulary(folder, tokenizer, len(tokenizer) + 6)
    assert vocab.tokens[-1] == f"[PAD{len(tokenizer) + 5}]" and vocab.types[-1] == gguf.TokenType.UNUSED


@pytest.mark.parametrize(
    ("architectures", "settings", "message"),
    [
        ("SmolLM3ForCausalLM", {"no_rope_layers": [1, 0, 1, 1]}, r"no_rope_layers \[1, 0, 1, 1\] is not llama.cpp's"),
        ("Phi3ForCausalLM", {"sliding_window": 2047}, r"Phi-3 with sliding_window 2047 is not supported"),
        ("Olmo2ForCausalLM", {"sliding_window": 128}, r"OLMo 2 with sliding_window 128 is not supported"),
    ],
)
def test_settings_llama_cpp_would_read_differently_are_refused_before_writing(
    tmp_path, tiny_model_dir, architectures, settings, message
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(settings, architectures=[architectures], num_hidden_layers=4, max_position_embeddings=4096)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        plan_export(folder, folder, tmp_path / "x.gguf", "f16", chat_template=CHATML, end_of_turn=["<|end|>"], name="x")
    assert not (tmp_path / "x.gguf").exists()


def test_a_name_llama_cpp_would_take_for_phi3_is_written_so_the_file_still_loads():
    from tunesmith.export.gguf_tensors import general_name

    assert general_name("my-Phi3-run", ["<|im_end|>"]) == "my-phi 3-run"
    assert general_name("phi-3 sql", ["<|im_end|>"]) == "phi 3 sql"
    assert general_name("phi3-sql", ["</s>", "<unk>", "<s>", "<|endoftext|>", "x"]) == "phi3-sql"  # a real Phi-3 vocab
    assert general_name("qwen-sql", []) == "qwen-sql"


def test_gemma_settings_llama_cpp_scales_otherwise_are_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    base = dict(config, architectures=["Gemma2ForCausalLM"], head_dim=32, tie_word_embeddings=True)
    for settings, message in (
        ({"query_pre_attn_scalar": 144}, r"query_pre_attn_scalar 144 \(not 32\)"),
        ({"query_pre_attn_scalar": 32, "tie_word_embeddings": False}, "untied output head"),
        ({"query_pre_attn_scalar": 32, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "RoPE scaling"),
    ):
        (folder / "config.json").write_text(json.dumps({**base, **settings}))
        with pytest.raises(UserError, match=message):
            plan_export(
                folder, folder, tmp_path / "x.gguf", "f16", chat_template=CHATML, end_of_turn=["<|end|>"], name="x"
            )
    assert not (tmp_path / "x.gguf").exists()
