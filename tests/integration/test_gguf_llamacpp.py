"""GGUF export checked by real llama.cpp (llama-cpp-python built from source: `make llamacpp`).

- the tuned embedded model (the quick start's run, exported as f16): greedy continuations equal
  transformers' for 16 tokens; llama.cpp's own chat completion, with the template carried in the GGUF,
  answers the bundled task; probe strings tokenize identically;
- tiny random llama / mistral / qwen2 / qwen3 models (f32): llama.cpp's logits equal transformers';
- other tokenizers (SentencePiece-style Phi-3, Llama-3 / Qwen2 / SmolLM pre-tokenizers): same token ids.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
)

from tunesmith.export.gguf import plan_export, write_gguf
from tunesmith.export.gguf_check import PROBE_STRINGS, llama_cpp_tokenization_check
from tunesmith.models.embedded import ensure_embedded_model

pytestmark = [pytest.mark.integration, pytest.mark.llamacpp]

BUNDLED_TEST = Path(__file__).parents[2] / "src" / "tunesmith" / "data" / "bundled" / "smart_home" / "test.jsonl"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tunesmith(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, timeout=1800)


def llama(path: Path, **kwargs):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, seed=0, verbose=False, **kwargs)


def llama_greedy(model, prompt: list[int], steps: int, stop: set[int]) -> list[int]:
    model.reset()
    model.eval(prompt)
    out: list[int] = []
    for _ in range(steps):
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
        out.append(token)
        if token in stop:
            break
        model.eval([token])
    return out


def hf_greedy(model, prompt: list[int], steps: int, stop: set[int]) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=sorted(stop),
            pad_token_id=sorted(stop)[0],
        )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def tuned_gguf(quickstart_run, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    run, _ = quickstart_run
    copy = tmp_path_factory.mktemp("export") / "qs"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    done = tunesmith("export", "gguf", str(copy), "--type", "f16")
    assert done.returncode == 0, done.stderr[-3000:]
    return copy, copy / "export" / "model-f16.gguf", done


def test_export_checks_its_own_tokenization_with_llama_cpp(tuned_gguf):
    run, gguf_path, done = tuned_gguf
    assert gguf_path.is_file() and (run / "merged" / "model.safetensors").is_file()
    assert "tokenize identically" in done.stdout, done.stdout
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    extra = ("<|im_start|>user\nhé<|im_end|>\n", "<|endoftext|><|im_start|>", "x<|im_end|>y 42")
    assert llama_cpp_tokenization_check(gguf_path, tokenizer, PROBE_STRINGS + extra) == []


NEAR_TIE = 0.25
"""Where an f16 GGUF may pick another token than float32 transformers: llama.cpp's token within this of
transformers' best logit. Rounding every weight to f16 moved the quick start's logits by at most 0.061
and the gap between any two tokens by at most 0.064 (measured 2026-12-06 over this test's 7 prompts,
16 tokens each); "def fibonacci(n):\n" has a 0.004 tie at its second token. A wider gap is a real
difference, not rounding."""


def hf_gaps(model, prompt: list[int], continuation: list[int]) -> list[float]:
    """For each token of `continuation`: how far below transformers' best logit it is, with transformers
    reading `continuation` itself (teacher-forced), so the path llama.cpp took is scored step by step."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + continuation])).logits[0, len(prompt) - 1 : -1].float()
    picked = logits.gather(1, torch.tensor(continuation)[:, None])[:, 0]
    return (logits.max(dim=1).values - picked).tolist()


def test_greedy_continuations_match_transformers_for_16_tokens(tuned_gguf):
    """The task's answers are the same tokens; free text is too, or parts from transformers only where
    transformers' two best tokens are a near-tie that f16 rounding can flip (`NEAR_TIE`), and every token
    llama.cpp picks is then transformers' best or within that tie on llama.cpp's own path."""
    run, gguf_path, _ = tuned_gguf
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    model = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    meta = json.loads((run / "merged" / "tunesmith.json").read_text())
    rows = [json.loads(line) for line in BUNDLED_TEST.read_text().splitlines()[:4]]
    task = [
        tokenizer.apply_chat_template(
            row["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for row in rows
    ]
    free = [
        tokenizer.encode(text)
        for text in ("The capital of France is", "def fibonacci(n):\n", "Écris une phrase sur la mer.")
    ]
    stop = {tokenizer.convert_tokens_to_ids(m) for m in meta["end_of_turn"]}
    cpp = llama(gguf_path, logits_all=True)  # keeps every position's logits in cpp.scores
    try:
        for prompt in task + free:
            assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            ours = hf_greedy(model, prompt, 16, stop)
            theirs = llama_greedy(cpp, prompt, 16, stop)
            if prompt in task or theirs == ours:
                assert theirs == ours, (tokenizer.decode(prompt), tokenizer.decode(ours), tokenizer.decode(theirs))
                continue
            gaps = hf_gaps(model, prompt, theirs)
            parted = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            assert max(gaps) < NEAR_TIE, (tokenizer.decode(prompt), parted, gaps, tokenizer.decode(theirs))
    finally:
        cpp.close()


def test_llama_cpp_chat_completion_with_the_embedded_template_answers_the_task(tuned_gguf):
    """llama-cpp-python formats the chat with the template read from the GGUF and stops at its end-of-turn."""
    _, gguf_path, _ = tuned_gguf
    rows = [json.loads(line) for line in BUNDLED_TEST.read_text().splitlines()[:20]]
    cpp = llama(gguf_path)
    try:
        correct = 0
        for row in rows:
            reply = cpp.create_chat_completion(messages=row["messages"][:-1], temperature=0.0, max_tokens=128)
            choice = reply["choices"][0]
            assert choice["finish_reason"] == "stop", choice  # ended at <|im_end|>, not at max_tokens
            correct += json.loads(choice["message"]["content"]) == json.loads(row["messages"][-1]["content"])
    finally:
        cpp.close()
    assert correct >= 18, f"{correct}/20 answers correct"


# ---------------------------------------------------------------- other architectures and tokenizers


def _embedded_tokenizer():
    return AutoTokenizer.from_pretrained(ensure_embedded_model("smollm2-135m-instruct"))


SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
"""The shape every tiny model shares; each entry below says what it changes."""


def small(config_class, vocab: int, **changes):
    return config_class(vocab_size=vocab, **{**SMALL, **changes})


ARCH_CONFIGS = {
    "llama": lambda v: small(LlamaConfig, v, rope_theta=100000.0, tie_word_embeddings=True),
    "llama3-rope": lambda v: small(
        LlamaConfig,
        v,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "mistral": lambda v: small(
        MistralConfig, v, num_key_value_heads=1, head_dim=32, sliding_window=None, tie_word_embeddings=False
    ),
    "qwen2": lambda v: small(Qwen2Config, v, tie_word_embeddings=True),
    "qwen3": lambda v: small(Qwen3Config, v, head_dim=16, tie_word_embeddings=False),
    # issue 21: each refused until verified here
    "phi3": lambda v: small(  # fused qkv_proj and gate_up_proj, NEOX RoPE
        Phi3Config, v, sliding_window=None, pad_token_id=0, tie_word_embeddings=False
    ),
    "granite": lambda v: small(  # Llama plus four multipliers
        GraniteConfig,
        v,
        embedding_multiplier=6.0,
        residual_multiplier=0.3,
        attention_multiplier=0.05,
        logits_scaling=4.0,
        tie_word_embeddings=True,
    ),
    # q/k norms over the whole projection, norms after attention and MLP
    "olmo2": lambda v: small(Olmo2Config, v, tie_word_embeddings=False),
    # llama.cpp needs output.weight: the embeddings written again
    "olmo2-tied": lambda v: small(Olmo2Config, v, num_key_value_heads=4, tie_word_embeddings=True),
    "smollm3": lambda v: small(  # no RoPE in every 4th layer
        SmolLM3Config, v, num_hidden_layers=4, pad_token_id=0, tie_word_embeddings=True
    ),
    "gemma2": lambda v: small(  # (1 + w) norms, soft-capping, sliding layers, embeddings * sqrt(hidden)
        Gemma2Config,
        v,
        num_hidden_layers=4,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=8,  # shorter than the prompt: the sliding layers must slide alike
        pad_token_id=0,
    ),
    "gemma3": lambda v: small(  # plus q/k norms and a local RoPE base for the sliding layers
        Gemma3TextConfig,
        v,
        num_hidden_layers=6,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=8,
        pad_token_id=0,
    ),
}


NEW_ARCHITECTURES = {"phi3", "granite", "olmo2", "olmo2-tied", "smollm3", "gemma2", "gemma3"}


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_llama_cpp_logits_equal_transformers_for_each_supported_architecture(tmp_path, arch):
    tokenizer = _embedded_tokenizer()
    config = ARCH_CONFIGS[arch](len(tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init leaves biases/norms at 0/1; perturb them so their mapping is tested
        for _name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
            else:
                param.mul_(4.0)  # larger weights: logits far from zero, so a wrong layout shows
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    plan = plan_export(
        tmp_path, tmp_path, tmp_path / "m.gguf", "f32", chat_template=CHATML, end_of_turn=["<|im_end|>"], name=arch
    )
    write_gguf(plan, tmp_path, log=lambda _: None)

    prompt = tokenizer.encode("<|im_start|>user\nTurn the lights to 40% in the kitchen, s'il vous plaît.<|im_end|>")
    with torch.inference_mode():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    cpp = llama(tmp_path / "m.gguf", logits_all=True)
    try:
        cpp.reset()
        cpp.eval(prompt)
        theirs = np.asarray(cpp.scores[: len(prompt)])
    finally:
        cpp.close()
    scale = np.abs(ours).max()
    assert scale > 1.0
    assert np.abs(theirs - ours).max() <= 2e-3 * scale, np.abs(theirs - ours).max() / scale
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    if arch in NEW_ARCHITECTURES:  # (llama.cpp's qwen2/qwen3 read this SmolLM2 vocabulary's whitespace otherwise)
        assert llama_cpp_tokenization_check(tmp_path / "m.gguf", tokenizer) == []


def _with_pre_tokenizer(folder: Path, pre_tokenizer: dict | None) -> PreTrainedTokenizerFast:
    source = ensure_embedded_model("smollm2-135m-instruct")
    data = json.loads((source / "tokenizer.json").read_text())
    if pre_tokenizer is not None:
        data["pre_tokenizer"] = pre_tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    shutil.copy(source / "tokenizer_config.json", folder / "tokenizer_config.json")
    return AutoTokenizer.from_pretrained(folder)


def _split(pattern: str) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def _tokenizer_cases() -> dict[str, dict | None]:
    from tunesmith.export.gguf_vocab import SPLIT_PRE_TOKENIZERS

    cases: dict[str, dict | None] = {"gpt-2 (embedded)": None}
    for pattern, name in SPLIT_PRE_TOKENIZERS.items():
        cases[name] = _split(pattern)
    cases["smollm"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    return cases


@pytest.mark.parametrize("case", sorted(_tokenizer_cases()))
def test_byte_level_pre_tokenizers_tokenize_identically(tmp_path, case):
    tokenizer = _with_pre_tokenizer(tmp_path / "tok", _tokenizer_cases()[case])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tok")
    plan = plan_export(
        tmp_path / "tok",
        tmp_path / "tok",
        tmp_path / "t.gguf",
        "f16",
        chat_template=CHATML,
        end_of_turn=["<|im_end|>"],
        name=case,
    )
    write_gguf(plan, tmp_path / "tok", log=lambda _: None)
    strings = PROBE_STRINGS + ("<|im_start|>assistant\n12345 '''s<|im_end|>", "  \n\n  x   1 22 333 4444")
    assert llama_cpp_tokenization_check(tmp_path / "t.gguf", tokenizer, strings) == []


def test_sentencepiece_style_tokenizer_tokenizes_identically(tmp_path, tiny_model_dir):
    """A Llama-2-style tokenizer ('▁' prefix, byte fallback; Phi-3's vocabulary with legacy=true) through GGUF's
    'llama' tokenizer model. Strings starting with whitespace are left out on purpose: transformers' Metaspace
    does not add the '▁' prefix to text that already starts with a space; SentencePiece and llama.cpp do."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    config = json.loads((legacy / "tokenizer_config.json").read_text())
    config["legacy"] = True
    for token in config.get("added_tokens_decoder", {}).values():
        token["rstrip"] = token["lstrip"] = False
    (legacy / "tokenizer_config.json").write_text(json.dumps(config))
    data = json.loads((legacy / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        token["rstrip"] = token["lstrip"] = False
    (legacy / "tokenizer.json").write_text(json.dumps(data))
    tokenizer = AutoTokenizer.from_pretrained(legacy)
    plan = plan_export(
        legacy, legacy, tmp_path / "p.gguf", "f32", chat_template=CHATML, end_of_turn=["<|end|>"], name="spm-tok"
    )
    assert (plan.vocab.model, plan.vocab.add_space_prefix, plan.vocab.warnings) == ("llama", True, [])
    write_gguf(plan, legacy, log=lambda _: None)
    strings = tuple(s for s in PROBE_STRINGS if not s[0].isspace()) + (
        "<|user|>\nBonjour à tous<|end|>\n<|assistant|>\nSalut !<|end|>",
        "x<|end|>\n<|endoftext|>",
    )
    assert llama_cpp_tokenization_check(tmp_path / "p.gguf", tokenizer, strings) == []


def test_what_gguf_cannot_say_about_phi3s_tokenizer_is_reported(tiny_model_dir, tmp_path):
    """Phi-3's own settings (legacy=false, special tokens that strip whitespace to their right) have no GGUF key:
    the export says so instead of shipping a silently different tokenizer."""
    plan = plan_export(
        tiny_model_dir,
        tiny_model_dir,
        tmp_path / "p.gguf",
        "f32",
        chat_template=CHATML,
        end_of_turn=["<|end|>"],
        name="phi3-tok",
    )
    warnings = " ".join(plan.vocab.warnings)
    assert "legacy=false" in warnings and "'<|assistant|>' strips whitespace to its right" in warnings
