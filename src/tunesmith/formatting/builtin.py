"""Built-in chat templates for models that ship none: chatml, chatml_tools, llama3, mistral, gemma, phi3, alpaca.

`chatml_tools` is ChatML with Hermes/Qwen-style tool calls, for ChatML models whose own template has
no tool format (SmolLM2).

Each is written to the family's published format (special tokens, newlines, where BOS goes, the
end-of-turn token) and lives as a `.jinja` file in `formatting/templates/`. A built-in only makes
sense when the tokenizer knows its special tokens as single tokens: otherwise "<|im_start|>" would
be split into pieces and the model would learn to spell it, so a missing token is a `UserError`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from tunesmith.errors import UserError

# The literal special tokens each template writes; "bos"/"eos" mean the tokenizer's own.
BUILTIN_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "chatml_tools": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "mistral": ("bos", "eos"),
    "gemma": ("<bos>", "<start_of_turn>", "<end_of_turn>"),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "eos"),
    "alpaca": ("eos",),
}
BUILTIN_NAMES = tuple(BUILTIN_TOKENS)


def is_builtin(setting: str) -> bool:
    """Whether a `template.chat_template` value names a built-in template.

    >>> is_builtin("chatml"), is_builtin("chatml.jinja")
    (True, False)
    """
    return setting in BUILTIN_TOKENS


@cache
def builtin_source(name: str) -> str:
    """The Jinja text of a built-in template."""
    return resources.files("tunesmith.formatting").joinpath("templates", f"{name}.jinja").read_text(encoding="utf-8")


def missing_tokens(name: str, tokenizer: Any) -> list[str]:
    """The special tokens built-in `name` writes that `tokenizer` does not have as single tokens."""
    known = set(getattr(tokenizer, "all_special_tokens", [])) | set(_added_vocab(tokenizer))
    missing = []
    for token in BUILTIN_TOKENS[name]:
        if token in ("bos", "eos"):
            if not getattr(tokenizer, f"{token}_token", None):
                missing.append(f"a {token}_token")
        elif token not in known:
            missing.append(token)
    return missing


def check_builtin(name: str, tokenizer: Any) -> None:
    """Raise a `UserError` naming every special token the template needs and the tokenizer lacks."""
    missing = missing_tokens(name, tokenizer)
    if missing:
        raise UserError(
            f"built-in chat template {name} needs special tokens the tokenizer does not have: "
            f"{', '.join(missing)}; pick a template that matches the model "
            f"(one of {', '.join(BUILTIN_NAMES)}) or a .jinja file"
        )


def _added_vocab(tokenizer: Any) -> dict[str, int]:
    getter = getattr(tokenizer, "get_added_vocab", None)
    return getter() if callable(getter) else dict(getattr(tokenizer, "added_tokens_encoder", {}))
