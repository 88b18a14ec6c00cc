"""What a chat template expects and where its turns stop, found once per template by rendering probes.

- **arguments**: whether tool-call `arguments` must reach the template as an object (Qwen's
  `arguments | tojson`, `arguments | items`) or as the JSON string OpenAI sends (templates that
  concatenate it), found by rendering one probe call each way and reading what came out.
- **stops**: the strings that end an assistant turn at inference: the tokenizer's eos, the
  `eos_token_id` list of the model's `generation_config.json`, and what the template itself writes
  right after an answer when it is a single special token of the tokenizer (Command-R's
  `<|END_OF_TURN_TOKEN|>`), and the end-of-turn tokens of common families that the tokenizer has as
  special tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

# Strings that end an assistant turn in the templates people use: stops where the tokenizer has them as
# special tokens.
KNOWN_END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<|END_OF_TURN_TOKEN|>",
    "<|return|>",
    "<|call|>",
)

PROBE_VALUE = "probe value 7"
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "tunesmith_probe",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"probe_key": {"type": "string"}}, "required": ["probe_key"]},
    },
}
_ARGS = {"probe_key": PROBE_VALUE}
# Spellings of special tokens in template text: <|x|>, <｜x｜>, Gemma's <start_of_turn>/<end_of_turn>.
SPECIAL_SPELLING = re.compile(r"<\|[^<>|\s]{1,48}\|>|<｜[^<>\s]{1,48}｜>|<(?:start|end)_of_turn>")


def arguments_form(template: Any) -> str:
    """`object`, `string`, or `given` (either works) for tool-call arguments in this template."""
    cached = template.probes.get("arguments")
    if cached is None:
        cached = template.probes["arguments"] = _arguments_form(template)
    return cached


def _arguments_form(template: Any) -> str:
    text_json = json.dumps(_ARGS)
    as_object = _probe_call(template, dict(_ARGS))
    as_string = _probe_call(template, text_json)
    object_ok = (
        as_object is not None
        and PROBE_VALUE in as_object
        and "{'probe_key'" not in as_object
        and '\\"probe_key' not in as_object
    )
    string_ok = (
        as_string is not None
        and (text_json in as_string or PROBE_VALUE in as_string)
        and '\\"probe_key' not in as_string
        and "{'probe_key'" not in as_string
    )
    if object_ok and string_ok:
        return "given"
    if object_ok:
        return "object"
    return "string" if string_ok else "given"


def _probe_call(template: Any, arguments: Any) -> str | None:
    call = {"type": "function", "id": "call_1", "function": {"name": "tunesmith_probe", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "pong", "name": "tunesmith_probe", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "done"},
    ]
    try:
        return template.render(messages, tools=[PROBE_TOOL])
    except UserError:
        return None


def special_strings(tokenizer: Any) -> frozenset[str]:
    """The tokenizer's special and added tokens, as text."""
    getter = getattr(tokenizer, "get_added_vocab", None)
    added = getter() if callable(getter) else dict(getattr(tokenizer, "added_tokens_encoder", {}))
    return frozenset(getattr(tokenizer, "all_special_tokens", [])) | frozenset(added)


def generation_eos(tokenizer: Any) -> list[str] | None:
    """The stop tokens of the model's generation_config.json beside the tokenizer, or None without one."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    file = folder / "generation_config.json"
    if not str(folder) or not file.is_file():
        return None
    try:
        ids = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    ids = [ids] if isinstance(ids, int) else [i for i in ids or [] if isinstance(i, int)]
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    return [t for t in tokens if isinstance(t, str) and t]


def stop_markers(tokenizer: Any, template: Any | None = None) -> tuple[str, ...]:
    """The strings that end an assistant turn, eos first (see the module doc)."""
    specials = special_strings(tokenizer)
    eos = getattr(tokenizer, "eos_token", None)
    configured = generation_eos(tokenizer)
    found = [eos] if eos else []
    found += configured or []
    found += [m for m in KNOWN_END_OF_TURN if m in specials]
    if template is not None:
        written = template_stop(template, found, specials)
        if written:
            found.append(written)
    stops = tuple(dict.fromkeys(found))
    if template is not None:
        template.probes["stops"] = stops
    return stops


def template_stop(template: Any, stops: list[str], specials: frozenset[str]) -> str | None:
    """The special token the template writes right after an answer, when no known stop is there."""
    messages = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    try:
        prompt = template.render(messages[:1], add_generation_prompt=True)
        full = template.render(messages)
    except UserError:
        return None
    after = full[len(prompt) :] if full.startswith(prompt) else full
    at = after.find("pong")
    if at == -1:
        return None
    rest = after[at + len("pong") :].lstrip(" ")
    if any(rest.startswith(stop) for stop in stops):
        return None
    return next((token for token in sorted(specials, key=len, reverse=True) if token and rest.startswith(token)), None)


def unknown_special_tokens(source: str, tokenizer: Any) -> list[str]:
    """Special-token spellings in a template's text that the tokenizer would split into pieces."""
    specials = special_strings(tokenizer)
    missing = []
    for spelling in dict.fromkeys(SPECIAL_SPELLING.findall(source)):
        if spelling in specials:
            continue
        ids = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            missing.append(spelling)
    return missing
