"""Write a GGUF file from a Hugging Face model folder with the `gguf` package, and check it.

No llama.cpp checkout is needed: the `gguf` package ships the writer, the tensor-name maps and the
metadata keys, and it is pinned. What llama.cpp needs beyond the weights (the vocabulary with
token types, merges or scores, the pre-tokenizer, special ids, add-BOS, the chat template and the
end-of-turn id) is read from tokenizer.json and the run's own record, never guessed from a hash.

Everything that can be refused is refused before the first byte is written (unsupported
architecture, RoPE scaling or tokenizer, a quantization that needs a missing `llama-quantize`); the
file is written under a temporary name and renamed only after it has been read back and checked.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError

Log = Callable[[str], None]

# HF architecture -> (gguf architecture name, whether q/k rows are permuted for llama.cpp's
# interleaved ("normal") RoPE; qwen2/qwen3 use NEOX RoPE, the layout HF already has).
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}

WRITTEN_TYPES = ("f32", "f16", "bf16", "q8_0")  # written here, in numpy
QUANTIZE_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1",
                  "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")  # through llama-quantize, from an f16 file
OUTPUT_TYPES = WRITTEN_TYPES + QUANTIZE_TYPES

# The pre-tokenizer regexes as they appear in tokenizer.json, and llama.cpp's names for them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}

# Strings whose tokenization must agree between transformers and llama.cpp: special tokens, digits,
# whitespace runs, contractions, non-ASCII (accents, CJK, emoji, RTL).
PROBE_STRINGS = (
    "Hello world",
    " leading space and  double  spaces",
    "Turn the kitchen lights to 40% brightness, please.",
    "It's 12:45 and we've got 1234567 items; they'll ship 3.14 days later!",
    "line one\nline two\n\n\ttabbed\r\nwindows",
    "naïve café déjà vu — Größe Ærø",
    "日本語のテキストと中文混合",
    "emoji 🤖🚀 and symbols ∑∫√ ©®",
    "עברית ومرحبا",
    '{"intent": "set_brightness", "room": "kitchen", "value": 40}',
    "    def f(x):\n        return x ** 2  # comment",
)


@dataclass
class Vocabulary:
    """What GGUF's tokenizer.ggml.* keys hold, read from tokenizer.json."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE with byte fallback)
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str]
    add_space_prefix: bool | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExportPlan:
    """Everything checked before writing: where from, where to, and what llama.cpp will be told."""

    out: Path
    out_type: str
    arch: str
    permute_qk: bool
    config: dict
    vocab: Vocabulary
    chat_template: str
    end_of_turn_ids: list[int]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    name: str
    rope_factors: Any = None  # numpy array for Llama-3 style RoPE scaling
    quantizer: str | None = None


# ---------------------------------------------------------------- planning (nothing written)


def export_run(run_dir: str | Path, out_type: str = "f16", *, log: Log = print) -> Path:
    """`tunesmith export gguf RUN`: RUN/export/model-<type>.gguf from the merged (or fully tuned) model.

    Everything is checked on the base model's config and the run's tokenizer before merging or writing.
    """
    from tunesmith.evaluate.runs import read_run_meta, weights_folder
    from tunesmith.models.load import resolve_model

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    meta = read_run_meta(run)
    weights = weights_folder(run)
    config_folder = weights if weights.name == "model" else Path(resolve_model(meta["base_model"]).path)
    out = run / "export" / f"model-{out_type.lower()}.gguf"
    plan = plan_export(config_folder, weights, out, out_type, chat_template=meta["chat_template"],
                       end_of_turn=list(meta.get("end_of_turn") or []), name=run.name)
    for warning in plan.vocab.warnings:
        log(f"warning: {warning}")
    from tunesmith.export.merge import model_folder_for_export

    source = model_folder_for_export(run, log=log)
    write_gguf(plan, source, log=log)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {plan.arch}, tokenizer {plan.vocab.model}/"
        f"{plan.vocab.pre}, end-of-turn ids {plan.end_of_turn_ids})")
    return out


def plan_export(config_folder: Path, tokenizer_folder: Path, out: Path, out_type: str, *, chat_template: str,
                end_of_turn: list[str], name: str) -> ExportPlan:
    """Check that the model (its config.json) and tokenizer can be written as GGUF `out_type`; UserError if not."""
    out_type = out_type.lower()
    if out_type not in OUTPUT_TYPES:
        raise UserError(f"--type {out_type}: not a GGUF type tunesmith writes; choose one of "
                        f"{', '.join(WRITTEN_TYPES)} (or, with llama-quantize, {', '.join(QUANTIZE_TYPES)})")
    quantizer = None
    if out_type in QUANTIZE_TYPES:
        quantizer = shutil.which("llama-quantize")
        if quantizer is None:
            raise UserError(f"--type {out_type} needs llama.cpp's `llama-quantize` on PATH, and it is not there. "
                            "Get it with `brew install llama.cpp`, a release from "
                            "https://github.com/ggml-org/llama.cpp/releases, or by building llama.cpp "
                            "(`cmake -B build && cmake --build build --target llama-quantize`); "
                            f"or export --type f16, bf16 or q8_0, which need nothing else")
    config_path = config_folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{config_folder}: no config.json, not a model folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or ["(none)"]
    hf_arch = architectures[0]
    if hf_arch not in ARCHITECTURES:
        raise UserError(f"{config_path}: architecture {hf_arch} is not supported by `tunesmith export gguf`; "
                        f"supported: {', '.join(sorted(ARCHITECTURES))}")
    arch, permute = ARCHITECTURES[hf_arch]
    rope_factors = _rope_factors(config, config_path)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    n_vocab = int(config["vocab_size"])
    vocab = read_vocabulary(tokenizer_folder, tokenizer, n_vocab)
    end_ids = []
    for marker in end_of_turn:
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id < n_vocab:
            end_ids.append(token_id)
    if not end_ids:
        raise UserError(f"{tokenizer_folder}: none of the end-of-turn markers {end_of_turn} is a single token, "
                        "so llama.cpp and Ollama could not stop generating; train with a template whose turns "
                        "end in a special token")
    return ExportPlan(out=out, out_type=out_type, arch=arch, permute_qk=permute, config=config,
                      vocab=vocab, chat_template=chat_template, end_of_turn_ids=end_ids,
                      bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                      add_bos=_adds_bos(tokenizer), name=name, rope_factors=rope_factors, quantizer=quantizer)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (what llama.cpp must do too)."""
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]


def rope_settings(config: dict) -> tuple[float, dict | None]:
    """(rope theta, scaling) from config.json: transformers 5 writes `rope_parameters`, older ones
    `rope_theta` and `rope_scaling` at the top level."""
    parameters = config.get("rope_parameters") or {}
    theta = float(parameters.get("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or (parameters if parameters.get("rope_type", "default") != "default"
                                             else None)
    return theta, scaling


def _rope_factors(config: dict, where: Path) -> Any:
    """Per-frequency divisors for Llama-3-style RoPE scaling (GGUF's rope_freqs tensor); None if unscaled."""
    import numpy as np

    base, scaling = rope_settings(config)
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return ("linear", float(scaling["factor"]))
    if kind != "llama3":
        raise UserError(f"{where}: rope_scaling type {kind!r} is not supported by `tunesmith export gguf` "
                        "(supported: none, linear, llama3)")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / inv_freq
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    # scaled inv_freq = inv_freq / divisor: long wavelengths by `factor`, short ones untouched, between blended
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    return divisor.astype(np.float32)


def read_vocabulary(folder: Path, tokenizer: Any, n_vocab: int) -> Vocabulary:
    """The vocabulary in GGUF terms, or UserError naming what in tokenizer.json is not supported."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder}: no tokenizer.json (a fast tokenizer is needed for GGUF export)")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{folder}: transformers loads a slow tokenizer here; GGUF export needs the fast one")
    # the pipeline transformers really runs (it may rebuild the normalizer/pre-tokenizer from
    # tokenizer_config.json, e.g. Llama's `legacy` flag), not only what the file says
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{path}: tokenizer model {model.get('type')!r} is not supported (BPE only)")
    byte_fallback = bool(model.get("byte_fallback"))
    warnings: list[str] = []

    added = {item["id"]: item for item in data.get("added_tokens", [])}
    special_ids = set(tokenizer.all_special_ids)
    tokens: list[str | None] = [None] * n_vocab
    for text, token_id in tokenizer.get_vocab().items():
        if token_id < n_vocab:
            tokens[token_id] = text
    types: list[int] = []
    for token_id, text in enumerate(tokens):
        if text is None:  # embedding rows the tokenizer never produces
            tokens[token_id] = f"[PAD{token_id}]"
            types.append(gguf.TokenType.UNUSED)
        elif token_id == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif token_id in added:
            item = added[token_id]
            types.append(gguf.TokenType.CONTROL if item.get("special") else gguf.TokenType.USER_DEFINED)
            if item.get("lstrip") or item.get("rstrip"):
                side = "left" if item.get("lstrip") else "right"
                warnings.append(f"{text!r} strips whitespace to its {side} in transformers; GGUF cannot record "
                                "that, so llama.cpp may tokenize whitespace next to it differently")
        elif byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types.append(gguf.TokenType.BYTE)
        elif token_id in special_ids:
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.NORMAL)
    if len(tokenizer) > n_vocab:
        raise UserError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only {n_vocab} rows")

    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if byte_fallback:
        return Vocabulary(model="llama", pre="default", tokens=tokens, types=[int(t) for t in types],
                          scores=_scores_from_merges(tokens, merges), merges=[],
                          add_space_prefix=_adds_space_prefix(data, warnings), warnings=warnings)
    decoder = (data.get("decoder") or {}).get("type")
    if decoder != "ByteLevel":
        raise UserError(f"{path}: BPE without byte fallback needs a ByteLevel decoder, found {decoder!r}")
    return Vocabulary(model="gpt2", pre=_pre_tokenizer_name(data.get("pre_tokenizer"), path), tokens=tokens,
                      types=[int(t) for t in types], scores=None, merges=merges, warnings=warnings)


def _pre_tokenizer_name(pre: dict | None, path: Path) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer, recognised by its structure in tokenizer.json."""
    def is_byte_level(step: dict, use_regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex

    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre or {}]
    if len(steps) == 1 and is_byte_level(steps[0], True):
        return "gpt-2"
    if (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
            and is_byte_level(steps[1], True)):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and is_byte_level(steps[1], False):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PRE_TOKENIZERS and steps[0].get("behavior") == "Isolated" \
                and not steps[0].get("invert"):
            return SPLIT_PRE_TOKENIZERS[pattern]
    raise UserError(f"{path}: pre-tokenizer {json.dumps(pre)[:200]} is not one tunesmith can map to llama.cpp "
                    "(supported: GPT-2 byte level, SmolLM digits + byte level, Llama-3 and Qwen2 splits)")


def _adds_space_prefix(data: dict, warnings: list[str]) -> bool:
    """SentencePiece-style tokenizers put '▁' in front of the text: by a Prepend normalizer or Metaspace."""
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    if any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in steps):
        return True
    pre = data.get("pre_tokenizer") or {}
    pre_steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in pre_steps:
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme", "always")
            if scheme == "first":
                warnings.append("this tokenizer (legacy=false) puts '▁' only before the first word of the input; "
                                "llama.cpp also puts it after each special token, so text right after a special "
                                "token may tokenize differently")
            return scheme != "never"
    return False


def _scores_from_merges(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores for llama.cpp: a token made by an earlier merge scores higher, so merging by
    score (llama.cpp) follows the merge ranks (transformers)."""
    rank: dict[str, int] = {}
    for index, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, index)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


# ---------------------------------------------------------------- writing


def write_gguf(plan: ExportPlan, source: Path, *, log: Log = print) -> Path:
    """Write plan.out from the safetensors model folder `source`; through a temporary file that is read back and checked before the rename."""
    from tunesmith.runfolder import disk_full, ensure_space, is_disk_full

    plan.out.parent.mkdir(parents=True, exist_ok=True)
    written_type = "f16" if plan.quantizer else plan.out_type
    if not any(source.glob("*.safetensors")):
        raise UserError(f"{source}: no .safetensors weights to export")
    then = "; free some space, then export again"
    needed = _written_size(plan, source, written_type)
    ensure_space(plan.out.parent, needed, str(plan.out), then=then)
    handle, temp_name = tempfile.mkstemp(prefix=f".{plan.out.name}.", suffix=".tmp", dir=plan.out.parent)
    os.close(handle)
    temp = Path(temp_name)
    base = temp.with_suffix(".f16.tmp") if plan.quantizer else temp
    try:
        count = _write(plan, source, base, written_type, log)
        check_gguf(base, plan, count)
        if plan.quantizer:
            _quantize(plan, base, temp, log)
            base.unlink()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp, 0o666 & ~mask)  # mkstemp made it private; the export is an ordinary file
        os.replace(temp, plan.out)
    except Exception as err:
        if not is_disk_full(err):
            raise
        for leftover in (temp, base):
            leftover.unlink(missing_ok=True)
        raise disk_full(str(plan.out), plan.out.parent, needed=needed, then=f"; no partial file was kept{then}") \
            from None
    finally:
        for leftover in (temp, base):
            leftover.unlink(missing_ok=True)
    return plan.out


def _written_size(plan: ExportPlan, source: Path, out_type: str) -> int:
    """Bytes the GGUF of `out_type` takes at least: its tensors (read from the safetensors headers) and vocabulary."""
    from safetensors import safe_open

    per_element = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}[out_type]
    total = sum(len(t.encode()) + 16 for t in plan.vocab.tokens) + sum(len(m) + 8 for m in plan.vocab.merges)
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name == "lm_head.weight" and plan.config.get("tie_word_embeddings", False):
                    continue  # not written (see _write)
                shape = handle.get_slice(name).get_shape()
                total += int(math.prod(shape) * (4 if len(shape) <= 1 else per_element))
    return total


def _write(plan: ExportPlan, source: Path, path: Path, out_type: str, log: Log) -> int:
    import gguf

    config = plan.config
    writer = gguf.GGUFWriter(str(path), plan.arch)
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)

    writer.add_name(plan.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(rope_settings(config)[0])
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if isinstance(plan.rope_factors, tuple):  # linear
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(plan.rope_factors[1])
    writer.add_vocab_size(len(plan.vocab.tokens))
    writer.add_file_type(_file_type(out_type))

    vocab = plan.vocab
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if plan.bos_id is not None:
        writer.add_bos_token_id(plan.bos_id)
    writer.add_eos_token_id(plan.eos_id if plan.eos_id is not None else plan.end_of_turn_ids[0])
    writer.add_eot_token_id(plan.end_of_turn_ids[0])
    writer.add_add_bos_token(plan.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(plan.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[plan.arch.upper()], n_layers)
    count = 0
    if plan.rope_factors is not None and not isinstance(plan.rope_factors, tuple):
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", plan.rope_factors)
        count += 1
    tied = bool(config.get("tie_word_embeddings", False))
    for hf_name, array in _tensors(source):
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd when output is absent
        if hf_name.endswith(("rotary_emb.inv_freq",)):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TunesmithError(f"{source}: no GGUF name for tensor {hf_name} ({plan.arch})")
        if plan.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _permute(array, n_head)
        elif plan.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _permute(array, n_kv)
        data, raw = _encode(array, out_type, gguf_name)
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
        count += 1
    log(f"writing {count} tensors ({out_type}) to {plan.out.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def _file_type(out_type: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type]


def _tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """Each tensor of the folder's safetensors files as float32 numpy, one at a time."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


def _permute(weights: Any, heads: int) -> Any:
    """HF keeps each head's rotary pairs as two halves; llama.cpp's llama RoPE wants them interleaved."""
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _encode(array: Any, out_type: str, gguf_name: str) -> tuple[Any, Any]:
    """Cast or quantize one tensor; 1-D tensors (norms, biases) stay float32, as llama.cpp expects."""
    import gguf
    import numpy as np

    if array.ndim <= 1 or out_type == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[out_type]
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:  # rows not a multiple of the block size: keep this one in f16
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def _quantize(plan: ExportPlan, source: Path, target: Path, log: Log) -> None:
    argv = [plan.quantizer, str(source), str(target), plan.out_type.upper()]
    log(f"quantizing with {plan.quantizer} to {plan.out_type.upper()}")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise TunesmithError(f"llama-quantize failed ({done.returncode}): {done.stderr.strip()[-800:]}")


# ---------------------------------------------------------------- checking what was written


def check_gguf(path: Path, plan: ExportPlan, tensors: int) -> None:
    """Read the file back: every tensor there, the vocabulary and special ids as planned."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    problems = []
    if len(reader.tensors) != tensors:
        problems.append(f"{len(reader.tensors)} tensors, expected {tensors}")

    def field_value(key: str) -> Any:
        found = reader.get_field(key)
        return None if found is None else found.contents()

    if field_value("general.architecture") != plan.arch:
        problems.append("general.architecture")
    if len(field_value("tokenizer.ggml.tokens") or []) != len(plan.vocab.tokens):
        problems.append("token list length")
    if field_value("tokenizer.ggml.eot_token_id") != plan.end_of_turn_ids[0]:
        problems.append("end-of-turn id")
    if field_value("tokenizer.chat_template") != plan.chat_template:
        problems.append("chat template")
    expected_embd = int(plan.config["vocab_size"]), int(plan.config["hidden_size"])
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None or tuple(int(n) for n in embd.shape[::-1]) != expected_embd:
        problems.append("token_embd shape")
    if problems:
        raise TunesmithError(f"the GGUF written to {path} failed its own check: {', '.join(problems)}")


def llama_cpp_tokenization_check(path: Path, tokenizer: Any, strings: tuple[str, ...] = PROBE_STRINGS
                                 ) -> list[tuple[str, list[int], list[int]]] | None:
    """Tokenize `strings` with llama.cpp (llama-cpp-python, when installed) and transformers.

    Returns the strings that differ as (text, transformers ids, llama.cpp ids); None without llama.cpp.
    """
    try:
        import llama_cpp
    except ImportError:
        return None
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        differ = []
        for text in strings:
            ours = tokenizer.encode(text, add_special_tokens=False)
            theirs = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if list(ours) != list(theirs):
                differ.append((text, list(ours), list(theirs)))
        return differ
    finally:
        model.close()


def probe_strings(template: Any, markers: list[str]) -> tuple[str, ...]:
    """PROBE_STRINGS plus a chat rendered with the training template and text around each end-of-turn marker."""
    chat = [{"role": "system", "content": "Réponds en JSON."},
            {"role": "user", "content": "Allume la lumière du salon à 30% 🌙"},
            {"role": "assistant", "content": '{"intent": "set_brightness", "room": "salon", "value": 30}'},
            {"role": "user", "content": "und jetzt die Küche?"}]
    rendered = template.render(chat, add_generation_prompt=True)
    return PROBE_STRINGS + (rendered,) + tuple(f"done{m}\nnext" for m in markers)


def check_with_llama_cpp(path: Path, run_dir: str | Path, *, log: Log = print) -> list | None:
    """Tokenize probe strings with llama.cpp and transformers and say whether they agree."""
    from transformers import AutoTokenizer

    from tunesmith.evaluate.runs import read_run_meta, weights_folder
    from tunesmith.formatting.template import ChatTemplate

    run = Path(run_dir)
    meta = read_run_meta(run)
    tokenizer = AutoTokenizer.from_pretrained(weights_folder(run))
    template = ChatTemplate(meta["chat_template"], name=meta["template_name"], special_tokens=meta["special_tokens"])
    strings = probe_strings(template, list(meta.get("end_of_turn") or []))
    differ = llama_cpp_tokenization_check(path, tokenizer, strings)
    if differ is None:
        log("not checked with llama.cpp (pip install llama-cpp-python to have every export checked: "
            "tokenization of probe strings in llama.cpp vs transformers)")
    elif differ:
        for text, ours, theirs in differ[:3]:
            log(f"warning: llama.cpp tokenizes {text[:60]!r} as {theirs[:12]}..., transformers as {ours[:12]}...")
        log(f"warning: {len(differ)} of {len(strings)} probe strings tokenize differently in llama.cpp")
    else:
        log(f"checked with llama.cpp: {len(strings)} probe strings (special tokens, digits, whitespace, "
            "non-ASCII, a rendered chat) tokenize identically")
    return differ
