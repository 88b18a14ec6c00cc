"""Content keys: the same content gives the same key, wherever and however often it appears.

`content_key` is equal for rows whose training content is identical (exact duplicates);
`near_key` also for rows that differ only in case, spacing or punctuation (near duplicates; `data
split` assigns splits by it, so such rows never straddle two splits).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

from tunesmith.data.preference import KtoSample, PreferencePair, PreferenceSample, preference_parts
from tunesmith.data.types import Conversation, Sample, TextSample


def canonical_content(sample: Sample | PreferenceSample) -> dict[str, Any]:
    """What a sample says, without where it came from or its id: the basis of `content_key`.

    >>> from tunesmith.data.types import Provenance
    >>> canonical_content(TextSample("hi", Provenance("a.jsonl", 1), id="x"))
    {'text': 'hi'}
    """
    if isinstance(sample, (PreferencePair, KtoSample)):
        parts = {
            name: canonical_content(Conversation(messages, sample.source))["messages"]
            for name, messages in preference_parts(sample)
        }
        return {**parts, "tools": list(sample.tools)}
    if isinstance(sample, Conversation):
        messages = []
        for m in sample.messages:
            item = m.as_dict()
            if m.tool_calls:  # arguments as JSON text: the same key whether given as text or object
                item["tool_calls"] = [[c.name, c.arguments_text, c.id] for c in m.tool_calls]
            if m.weight is not None:
                item["weight"] = m.weight
            messages.append(item)
        return {"messages": messages, "tools": list(sample.tools)}
    if isinstance(sample, TextSample):
        return {"text": sample.text}
    return {"input_ids": list(sample.input_ids), "labels": None if sample.labels is None else list(sample.labels)}


def content_key(sample: Sample | PreferenceSample) -> str:
    """sha256 of the canonical JSON of a sample's content: equal keys mean identical training content.

    >>> from tunesmith.data.types import Provenance
    >>> a = TextSample("hi", Provenance("a.jsonl", 1)); b = TextSample("hi", Provenance("b.jsonl", 9), id="7")
    >>> content_key(a) == content_key(b)
    True
    """
    return _sha256(canonical_content(sample))


_PUNCTUATION = re.compile(r"[^\w\s]|_", re.UNICODE)
_ASCII_PUNCTUATION = {i: " " for i in range(128) if _PUNCTUATION.match(chr(i))}  # the same, for ASCII text


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, punctuation removed, whitespace collapsed. Digits are kept on purpose:
    "What is 2+2?" and "What is 3+3?" are different questions, and templated datasets would
    otherwise be flagged wholesale.

    >>> normalize_text("  Hello,   WORLD!! 42 ")
    'hello world 42'
    """
    if text.isascii():  # most data; a translate table is ~3x faster than the regex
        return " ".join(text.lower().translate(_ASCII_PUNCTUATION).split())
    if not unicodedata.is_normalized("NFKC", text):  # the check is cheap; normalizing is not
        text = unicodedata.normalize("NFKC", text)
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def near_key(sample: Sample | PreferenceSample) -> str:
    """sha256 of the sample's text after `normalize_text`, roles kept, weights and ids ignored:
    rows that differ only in case, spacing or punctuation share it.

    >>> from tunesmith.data.types import Provenance
    >>> a = TextSample("Turn on the light.", Provenance("a", 1))
    >>> near_key(a) == near_key(TextSample("turn on  the light", Provenance("a", 2)))
    True
    """
    if isinstance(sample, (PreferencePair, KtoSample)):
        parts = preference_parts(sample)
        form = "\x1b".join(f"{name}\x1b{near_key(Conversation(turns, sample.source))}" for name, turns in parts)
        return hashlib.sha256(form.encode("utf-8")).hexdigest()
    if isinstance(sample, Conversation):
        # Normalized text holds no control characters, so \x1e and \x1f separate unambiguously.
        form = "\x1e".join(
            "\x1f".join(
                [
                    m.role,
                    normalize_text(m.content),
                    *(f"{c.name}\x1d{normalize_text(c.arguments_text)}" for c in m.tool_calls),
                    *([] if m.reasoning is None else [f"\x1c{normalize_text(m.reasoning)}"]),
                ]
            )
            for m in sample.messages
        )
    elif isinstance(sample, TextSample):
        form = normalize_text(sample.text)
    else:
        return content_key(sample)  # token ids have no spelling to normalize
    return hashlib.sha256(form.encode("utf-8", "surrogatepass")).hexdigest()


def _sha256(value: Any) -> str:
    # default=repr: Parquet and datasets rows can hold dates or bytes, which JSON cannot
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
