"""Row formats: which one a row is in, and the row as one normalized `Sample`.

The message transform only: a row in, a `Conversation`, `TextSample` or `TokenSample` out; tokens
are `formatting/`'s business. `detect_format` guesses from a row's keys when `data.format` is
`auto`; naming the format is better (TRL guesses from one example, and a guess can be wrong).
The adapters themselves live in `data/adapters.py`. Rows supervised training must not read as
text are refused whatever the format: KTO rows (`kto_row`) and rows with images (`vision_row`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tunesmith.data.adapters import ADAPTERS, Fields
from tunesmith.data.chat_messages import VISION_HINT
from tunesmith.data.options import FORMATS, FormatOptions
from tunesmith.data.sources import iter_rows
from tunesmith.data.types import Conversation, Provenance, RowError, Sample
from tunesmith.data.values import decoded, fail
from tunesmith.errors import UserError

# First match wins, so a row with both `messages` and `text` is chat.
_DETECTION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("tokens", ("input_ids",)),
    ("alpaca", ("instruction", "output")),
    ("qa", ("question", "answer")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)
_SHOWN_KEYS = 20
MEDIA_KEYS: Mapping[str, str] = MappingProxyType(
    {"images": "image", "image": "image", "videos": "video", "audios": "audio"}
)
"""Row keys of LLaMA-Factory's (and others') multimodal rows; the text holds `<image>` placeholders."""
_KTO_LABELS = {"true", "false"}  # CSV cells


def detect_format(row: dict, where: Provenance, options: FormatOptions) -> tuple[str, str]:
    """The row's format and why, from its keys (`columns` applied); `data.format` skips the guess.

    >>> detect_format({"instruction": "a", "output": "b"}, Provenance("f.jsonl", 1), FormatOptions())
    ('alpaca', 'keys instruction and output')
    """
    refuse_unsupported(row, where, options)
    if options.format != "auto":
        return options.format, "set by data.format"
    f = Fields(row, where, options)
    if "chosen" in row and "rejected" in row:
        # Checked first: training on such a row's other keys would silently drop the preference.
        fail(
            where,
            "unknown_format",
            "",
            f"row fits no known format (its keys: {_keys(row)})",
            "chosen/rejected is preference data, which supervised fine-tuning (train.objective: sft) "
            "does not train; set train.objective: dpo (or orpo, simpo, kto)",
        )
    for fmt, keys in _DETECTION:
        if all(f.has(key) for key in keys):
            names = [f.key(key) for key in keys]
            return fmt, f"key {names[0]}" if len(names) == 1 else f"keys {' and '.join(names)}"
    if isinstance(row.get("content"), str):
        return "text", "key content (a string)"
    fail(
        where,
        "unknown_format",
        "",
        f"row fits no known format (its keys: {_keys(row)})",
        f"set data.format (one of {', '.join(FORMATS)}) and data.columns",
    )


def to_sample(row: dict, where: Provenance, fmt: str, options: FormatOptions) -> Sample:
    """The row in format `fmt` as a normalized sample; `RowError` when it cannot be read that way.

    >>> to_sample({"question": "2+2?", "answer": "4"}, Provenance("f.jsonl", 1), "qa", FormatOptions()).as_dicts()
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
    """
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    refuse_unsupported(row, where, options)
    return ADAPTERS[fmt](Fields(row, where, options))


def refuse_unsupported(row: dict, where: Provenance, options: FormatOptions) -> None:
    """`RowError` for a KTO row (TRL's unpaired preference: `completion` and a bool `label`) or a
    row with images, videos or audio: read as supervised text, both would train the wrong thing."""
    label = row.get("label")
    if isinstance(label, str):
        label = label.strip().lower() if label.strip().lower() in _KTO_LABELS else None
    if isinstance(label, (bool, str)) and Fields(row, where, options).has("completion"):
        fail(
            where,
            "kto_row",
            "label",
            "this is a KTO row (an answer marked good or bad); supervised training "
            "would train every answer as if it were good",
            "set train.objective: kto, or drop the rows with label false and the label column",
        )
    for key, medium in MEDIA_KEYS.items():
        value = decoded(row.get(key), list)  # a CSV cell "[]" is no images
        if value is not None and not (isinstance(value, (str, list, tuple, dict)) and not value):
            fail(where, "vision_row", key, f"{medium} content is not supported yet", VISION_HINT)


def load_conversations(reference: str, data_format: str = "auto") -> list[Conversation]:
    """Every row of a chat data file as a conversation; the first bad row stops with file:line: field.

    With `auto`, the first row's format is used for the whole file: one file, one format. Until
    training and eval read samples through the validator, this also keeps the two checks they rely
    on: some assistant turn, and weights only on assistant turns.
    """
    options = FormatOptions(format=data_format)
    fmt = None if data_format == "auto" else data_format
    conversations: list[Conversation] = []
    for raw in iter_rows(reference):
        if raw.data is None:
            raise UserError(str(raw.issue))
        try:
            fmt = fmt or detect_format(raw.data, raw.where, options)[0]
            sample = to_sample(raw.data, raw.where, fmt, options)
        except RowError as err:
            raise UserError(str(err.issue)) from None
        if not isinstance(sample, Conversation):
            raise UserError(
                f"{raw.where}: rows in the {fmt} format are not conversations "
                "(expected chat data: messages, sharegpt, alpaca, qa or prompt_completion)"
            )
        _check_trainable(sample)
        conversations.append(sample)
    if not conversations:
        raise UserError(f"{reference}: the file has no rows")
    return conversations


def _check_trainable(conversation: Conversation) -> None:
    where = conversation.source
    if not any(m.role == "assistant" for m in conversation.messages):
        raise UserError(f"{where}: no assistant message, so nothing would train")
    for i, message in enumerate(conversation.messages):
        if message.weight is not None and message.role != "assistant":
            raise UserError(f"{where}: message {i} ({message.role}): only assistant messages take a weight")


def _keys(row: dict) -> str:
    keys = [str(key) for key in row]
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (", …" if len(keys) > _SHOWN_KEYS else "")
    return shown or "none"
