"""`tunesmith train --help-config`: every config key, its type, default and meaning, from the schema.

Nothing here is written by hand: the keys and types come from the `Config` models, the defaults from
their fields, the meanings from the first sentence of each field's docstring (pydantic keeps it as the
field's description: `Section` sets `use_attribute_docstrings`). A field added to the schema appears
here without anyone remembering to document it twice.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunesmith.config.schema import Config, DataSource

REQUIRED = "required"
_INDENT = "    "
# A sentence ends at . ! or ? followed by a space, except after these abbreviations.
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bvs\.)(?<=[.!?])\s")


def config_help() -> str:
    """The whole listing: one block per key, `key: type = default` and its meaning indented below."""
    lines = ["Every key of a tunesmith config (YAML sections, or --set section.key=value):", ""]
    section = None
    for key, field in config_fields():
        top = key.partition(".")[0] if "." in key else None
        if top != section:
            section = top
            lines.append("")
        lines += _block(key, field)
    lines += ["", "Each item of a data.train, data.validation or data.test list is a path, or a mapping with:", ""]
    for key, field in leaf_fields(DataSource):
        lines += _block(key, field)
    return "\n".join(lines) + "\n"


def config_fields() -> list[tuple[str, FieldInfo]]:
    """Every leaf key of `Config`, dotted (`train.epochs`), with its field, in schema order."""
    return list(leaf_fields(Config))


def leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """The fields of `model` that hold values, sections walked into, keys dotted under `prefix`."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def default_text(field: FieldInfo) -> str:
    """The field's default as one would write it in JSON (valid YAML too), or `required`."""
    if field.is_required():
        return REQUIRED
    return json.dumps(field.get_default(call_default_factory=True), ensure_ascii=False)


def type_text(annotation: Any) -> str:
    """A type as a reader wants it: `int`, `int | null`, `auto|bf16|fp16`, `list[str]`, `dict[str, str]`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Literal:
        return "|".join(str(value) for value in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin in (list, tuple, set, frozenset):
        return f"list[{', '.join(type_text(arg) for arg in args if arg is not Ellipsis)}]"
    if origin is dict:
        key, value = args
        keys = "str" if typing.get_origin(key) is Literal else type_text(key)  # the reason names the keys
        return f"dict[{keys}, {type_text(value)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping" if annotation is not DataSource else "{path, weight, ...}"
    return getattr(annotation, "__name__", str(annotation))


def reason_text(field: FieldInfo) -> str:
    """The first sentence of the field's docstring, on one line, and any later one that says what its
    default means (`None: ...`, `Default: ...`, `` `auto`: ... ``): a sentinel default needs saying."""
    sentences = _SENTENCE_END.split(" ".join((field.description or "").split()))
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    says_default = (
        "Default:",
        "Default ",
        *(("None:",) if default is None else ()),
        *((f"`{default}`:", f"`{default}` ") if isinstance(default, str) else ()),
    )
    return " ".join([sentences[0], *(s for s in sentences[1:] if s.startswith(says_default))])


def _block(key: str, field: FieldInfo) -> list[str]:
    head = f"{key}: {type_text(field.annotation)} = {default_text(field)}"
    reason = reason_text(field)
    return [head, f"{_INDENT}{reason}"] if reason else [head]
