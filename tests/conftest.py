"""Shared test setup: offline always, fixtures' real tokenizers, tiny models built in-process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
# The embedded SmolLM2's tokenizer, template and configs, without its weights (fixtures/README.md).
SMOL_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizers" / "smollm2-135m-instruct"


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
    no_llama_cpp = pytest.mark.skip(
        reason="needs llama-cpp-python: `make llamacpp` builds it from source once (about 6 minutes, cached); CI does"
    )
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(no_gpu)
        if "llamacpp" in item.keywords and not has_llama_cpp:
            item.add_marker(no_llama_cpp)


@pytest.fixture(scope="session")
def smol_tokenizer_dir() -> Path:
    """A model folder with the embedded SmolLM2-135M-Instruct's tokenizer and configs but no weights: for
    tests that tokenize or render its template, so that `make test-fast` needs no embedded model."""
    return SMOL_TOKENIZER


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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture()
def sums_jsonl(tmp_path) -> Path:
    """12 one-turn chats, "What is i plus i?" -> "2i": short rows whose line numbers tests can name."""
    import json

    path = tmp_path / "sums.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def chat_jsonl(tmp_path) -> Path:
    """A small valid chat dataset (JSONL) in a temporary folder."""
    import json

    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# Tokens of the template-only fixtures (trl-*: only chat_template.jinja): the special tokens the
# model's tokenizer has, its bos and eos, as published with each model.
TEMPLATE_ONLY_TOKENS = {
    "trl-cohere": (
        [
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<BOS_TOKEN>",
        ],
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
    ),
    "trl-lfm2": (
        [
            "<|startoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|tool_list_start|>",
            "<|tool_list_end|>",
            "<|tool_response_start|>",
            "<|tool_response_end|>",
            "<|tool_call_start|>",
            "<|tool_call_end|>",
        ],
        "<|startoftext|>",
        "<|im_end|>",
    ),
    "trl-llama3": (
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "trl-nemotron_3_super": (
        ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"],
        None,
        "<|im_end|>",
    ),
    "trl-qwen3_5_nothink": (
        [
            "<|im_start|>",
            "<|im_end|>",
            "<think>",
            "</think>",
            "<tool_call>",
            "</tool_call>",
            "<tool_response>",
            "</tool_response>",
        ],
        None,
        "<|im_end|>",
    ),
    "trl-qwen3_vl": (
        [
            "<|im_start|>",
            "<|im_end|>",
            "<tool_call>",
            "</tool_call>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],
        None,
        "<|im_end|>",
    ),
}


@pytest.fixture(scope="session")
def template_models(tmp_path_factory, smol_tokenizer_dir) -> dict[str, Path]:
    """Each chat-template fixture as a model folder with a tokenizer: its own where it ships one, else
    the embedded SmolLM2 tokenizer (`smol_tokenizer_dir`, no weights) given the model's special tokens, bos
    and eos (from its tokenizer_config.json, or `TEMPLATE_ONLY_TOKENS`), with the folder's generation_config.json."""
    import json

    from transformers import AutoTokenizer

    def content(token):
        return token.get("content") if isinstance(token, dict) else token

    out = {}
    for source in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        name = source.name
        if (source / "tokenizer.json").is_file():
            out[name] = source
            continue
        tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
        config_file = source / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        specials, bos, eos = TEMPLATE_ONLY_TOKENS.get(name, ([], None, None))
        specials = specials or [
            t["content"] for t in config.get("added_tokens_decoder", {}).values() if t.get("special")
        ]
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
        tokenizer.bos_token = bos or content(config.get("bos_token")) or tokenizer.bos_token
        tokenizer.eos_token = eos or content(config.get("eos_token")) or "<|im_end|>"
        template = source / "chat_template.jinja"
        tokenizer.chat_template = (
            template.read_text(encoding="utf-8") if template.is_file() else config["chat_template"]
        )
        out[name] = tmp_path_factory.mktemp("models") / name
        tokenizer.save_pretrained(out[name])
        _translate_generation_config(source, out[name], config, tokenizer)
    return out


def _translate_generation_config(source: Path, folder: Path, config: dict, tokenizer) -> None:
    """The folder's generation_config.json with its eos ids (the real model's) mapped to this tokenizer's."""
    import json

    file = source / "generation_config.json"
    if not file.is_file():
        return
    generation = json.loads(file.read_text(encoding="utf-8"))
    ids = generation.get("eos_token_id")
    names = {int(i): t["content"] for i, t in config.get("added_tokens_decoder", {}).items()}
    mapped = [
        tokenizer.convert_tokens_to_ids(names[i]) for i in ([ids] if isinstance(ids, int) else ids or []) if i in names
    ]
    generation = {"eos_token_id": mapped}
    (folder / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")


@pytest.fixture(scope="session")
def template_loader(template_models):
    """name -> (tokenizer, the model's own template, its stop markers), built once per fixture folder."""
    from transformers import AutoTokenizer

    from tunesmith.formatting.encode import build_template, end_of_turn_markers

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            tokenizer = AutoTokenizer.from_pretrained(template_models[name])
            template = build_template(tokenizer, "model")
            cache[name] = (tokenizer, template, end_of_turn_markers(tokenizer, template))
        return cache[name]

    return get
