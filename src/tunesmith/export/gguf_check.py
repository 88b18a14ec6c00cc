"""A written GGUF checked before it is kept: read back with gguf's reader (metadata, tensor count), and
tokenized by real llama.cpp (llama-cpp-python, when installed) against transformers on probe strings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError

if TYPE_CHECKING:  # annotations only: gguf.py imports this module
    from tunesmith.export.gguf import ExportPlan, Log

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


def llama_cpp_tokenization_check(
    path: Path, tokenizer: Any, strings: tuple[str, ...] = PROBE_STRINGS
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
    chat = [
        {"role": "system", "content": "Réponds en JSON."},
        {"role": "user", "content": "Allume la lumière du salon à 30% 🌙"},
        {"role": "assistant", "content": '{"intent": "set_brightness", "room": "salon", "value": 30}'},
        {"role": "user", "content": "und jetzt die Küche?"},
    ]
    rendered = template.render(chat, add_generation_prompt=True)
    return PROBE_STRINGS + (rendered,) + tuple(f"done{m}\nnext" for m in markers)


def check_with_llama_cpp(path: Path, run_dir: str | Path, *, log: Log = print) -> list | None:
    """Tokenize probe strings with llama.cpp and transformers and say whether they agree."""
    from transformers import AutoTokenizer

    from tunesmith.formatting.template import ChatTemplate
    from tunesmith.runfolder import read_record, weights_folder

    run = Path(run_dir)
    record = read_record(run)
    tokenizer = AutoTokenizer.from_pretrained(weights_folder(run))
    strings = probe_strings(ChatTemplate.from_record(record), list(record.end_of_turn))
    differ = llama_cpp_tokenization_check(path, tokenizer, strings)
    if differ is None:
        log(
            "not checked with llama.cpp (pip install llama-cpp-python to have every export checked: "
            "tokenization of probe strings in llama.cpp vs transformers)"
        )
    elif differ:
        for text, ours, theirs in differ[:3]:
            log(f"warning: llama.cpp tokenizes {text[:60]!r} as {theirs[:12]}..., transformers as {ours[:12]}...")
        log(f"warning: {len(differ)} of {len(strings)} probe strings tokenize differently in llama.cpp")
    else:
        log(
            f"checked with llama.cpp: {len(strings)} probe strings (special tokens, digits, whitespace, "
            "non-ASCII, a rendered chat) tokenize identically"
        )
    return differ
