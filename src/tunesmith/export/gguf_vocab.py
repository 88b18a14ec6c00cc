"""A model's vocabulary as GGUF's tokenizer.ggml.* keys say it, read from tokenizer.json: byte-level BPE
(gpt2) or SentencePiece-style BPE with byte fallback (llama), llama.cpp's pre-tokenizer name, scores."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

# The pre-tokenizer regexes as they appear in tokenizer.json, and llama.cpp's names for them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


SPLIT_PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


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
    texts: list[str | None] = [None] * n_vocab
    for text, token_id in tokenizer.get_vocab().items():
        if token_id < n_vocab:
            texts[token_id] = text
    tokens: list[str] = []
    types: list[int] = []
    for token_id, text in enumerate(texts):
        tokens.append(f"[PAD{token_id}]" if text is None else text)
        if text is None:  # embedding rows the tokenizer never produces
            types.append(gguf.TokenType.UNUSED)
        elif token_id == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif token_id in added:
            item = added[token_id]
            types.append(gguf.TokenType.CONTROL if item.get("special") else gguf.TokenType.USER_DEFINED)
            if item.get("lstrip") or item.get("rstrip"):
                side = "left" if item.get("lstrip") else "right"
                warnings.append(
                    f"{text!r} strips whitespace to its {side} in transformers; GGUF cannot record "
                    "that, so llama.cpp may tokenize whitespace next to it differently"
                )
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
        return Vocabulary(
            model="llama",
            pre="default",
            tokens=tokens,
            types=[int(t) for t in types],
            scores=_scores_from_merges(tokens, merges),
            merges=[],
            add_space_prefix=_adds_space_prefix(data, warnings),
            warnings=warnings,
        )
    decoder = (data.get("decoder") or {}).get("type")
    if decoder != "ByteLevel":
        raise UserError(f"{path}: BPE without byte fallback needs a ByteLevel decoder, found {decoder!r}")
    return Vocabulary(
        model="gpt2",
        pre=_pre_tokenizer_name(data.get("pre_tokenizer"), path),
        tokens=tokens,
        types=[int(t) for t in types],
        scores=None,
        merges=merges,
        warnings=warnings,
    )


def _pre_tokenizer_name(pre: dict | None, path: Path) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer, recognised by its structure in tokenizer.json."""

    def is_byte_level(step: dict, use_regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex

    # a Sequence without its list of steps is refused below like any pre-tokenizer not recognised
    steps: list[dict] = (
        ((pre or {}).get("pretokenizers") or []) if (pre or {}).get("type") == "Sequence" else [pre or {}]
    )
    if len(steps) == 1 and is_byte_level(steps[0], True):
        return "gpt-2"
    if (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and is_byte_level(steps[1], True)
    ):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and is_byte_level(steps[1], False):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PRE_TOKENIZERS and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
            return SPLIT_PRE_TOKENIZERS[pattern]
    raise UserError(
        f"{path}: pre-tokenizer {json.dumps(pre)[:200]} is not one tunesmith can map to llama.cpp "
        "(supported: GPT-2 byte level, SmolLM digits + byte level, Llama-3 and Qwen2 splits)"
    )


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
                warnings.append(
                    "this tokenizer (legacy=false) puts '▁' only before the first word of the input; "
                    "llama.cpp also puts it after each special token, so text right after a special "
                    "token may tokenize differently"
                )
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
