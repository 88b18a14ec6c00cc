"""Shared test setup: offline always, fixtures' real tokenizers, tiny models built in-process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is, llama.cpp tests only where llama-cpp-python is installed
    (`make llamacpp` builds it once); elsewhere they are reported as skipped, with the reason."""
    import importlib.util

    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    no_llama_cpp = pytest.mark.skip(reason="needs llama-cpp-python: `make llamacpp` builds it from source once "
                                           "(about 6 minutes, cached); CI does")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(no_gpu)
        if "llamacpp" in item.keywords and not has_llama_cpp:
            item.add_marker(no_llama_cpp)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and Phi-3's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    source = FIXTURES / "phi-3-mini-128k-instruct"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        shutil.copy(source / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture()
def chat_jsonl(tmp_path) -> Path:
    """A small valid chat dataset (JSONL) in a temporary folder."""
    import json

    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i + i}"}]} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
