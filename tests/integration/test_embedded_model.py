"""The embedded default end to end: fetched, converted once, loaded as a plain folder, answering.

Uses the real cache (`tunesmith.paths.cache_root()`), so the first run on a machine downloads and converts
(about a minute on two cores) and every later run is a cache hit.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from tunesmith.models import embedded  # noqa: E402

pytestmark = pytest.mark.integration

NAME = "smollm2-135m-instruct"


def must_not_download(spec: embedded.EmbeddedSpec, dest: pathlib.Path, log) -> pathlib.Path:
    raise AssertionError("the downloader was called for a cached model")


@pytest.fixture(scope="module")
def model_dir() -> pathlib.Path:
    return embedded.ensure_embedded_model(NAME, log=lambda msg: print(f"[embedded] {msg}"))


@pytest.fixture(scope="module")
def loaded(model_dir: pathlib.Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model.eval(), tokenizer


def test_folder_is_a_plain_safetensors_model(model_dir: pathlib.Path) -> None:
    assert model_dir == embedded.models_dir() / NAME
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.gguf"))
    assert "gguf" not in (model_dir / "config.json").read_text().lower()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    source = json.loads((model_dir / embedded.SOURCE_FILE).read_text())
    spec = embedded.EMBEDDED_MODELS[NAME]
    assert (source["package"], source["version"]) == (spec.package, spec.version)
    assert source["wheel_sha256"] == spec.wheel_sha256
    assert source["gguf_member"] == spec.gguf_member
    assert source["transformers_version"] == transformers.__version__


def test_tokenizer_keeps_chatml_and_generation_stops_at_im_end(loaded) -> None:
    model, tokenizer = loaded
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == 2 and tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>" in tokenizer.chat_template
    assert model.generation_config.eos_token_id == im_end
    assert model.generation_config.pad_token_id == im_end
    assert model.generation_config.bos_token_id == 1
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as trained


def test_greedy_chat_answer_names_paris(loaded) -> None:
    model, tokenizer = loaded
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    answer = tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert "Paris" in answer
    assert new_tokens[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_second_call_is_a_cache_hit(model_dir: pathlib.Path) -> None:
    start = time.perf_counter()
    again = embedded.ensure_embedded_model(NAME, download=must_not_download)
    elapsed = time.perf_counter() - start
    assert again == model_dir
    print(f"[embedded] cache hit in {elapsed * 1000:.1f} ms")
