"""Read a config: YAML file, then `--set a.b=c` overrides, validated once into `Config`.

Errors name the file and line of the offending key (or the `--set` that caused it), so the user
never has to guess which of two `epochs:` was read.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tunesmith.config.checks import check_combinations
from tunesmith.config.redact import redact_config
from tunesmith.config.schema import Config
from tunesmith.errors import UserError

Loc = tuple[str | int, ...]


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a config from a YAML file (or `base`), with `--set` overrides applied on top.

    >>> load_config(None, ["data.train=a.jsonl", "train.epochs=3"]).train.epochs
    3.0
    """
    raw, lines, where = ({}, {}, "<config>") if path is None else _read_yaml(Path(path))
    set_by: dict[Loc, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_path(raw, key, value, item)
        set_by[tuple(key)] = item
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(_describe(err, where, lines, set_by)) from None
    origins = {".".join(map(str, loc)): f"{where}:{line}" for loc, line in lines.items()}
    origins |= {".".join(map(str, loc)): f"--set {item}" for loc, item in set_by.items()}
    config.with_origins(origins)
    check_combinations(config)
    return config


def with_run_name(config: Config, stem: str = "run") -> Config:
    """The config with a run name: the user's, or `<stem>-<YYYYmmdd-HHMMSS>` (the one place a name defaults).

    >>> with_run_name(load_config(None, ["data.train=a.jsonl", "name=mine"])).name
    'mine'
    """
    if config.name is not None:
        return config
    return config.model_copy(update={"name": f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"})


def config_to_yaml(config: Config, *, redact: bool = True) -> str:
    """The resolved config as YAML, every default written out, secrets shown as <redacted>
    (config/redact.py): the run folder's config.yaml. `redact=False` only for a config handed to
    another process of the same run that needs the real values (and is not kept)."""
    data = redact_config(config) if redact else config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> tuple[dict, dict[Loc, int], str]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{at}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}:1: the config must be a mapping of sections, got {type(raw).__name__}")
    lines: dict[Loc, int] = {}
    _collect_lines(node, (), lines)
    return raw, lines, str(path)


def _collect_lines(node: yaml.Node | None, loc: Loc, out: dict[Loc, int]) -> None:
    """Record the 1-based line of every key in the YAML node tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, key_node.value)
            out[child] = key_node.start_mark.line + 1
            _collect_lines(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*loc, index)] = item.start_mark.line + 1
            _collect_lines(item, (*loc, index), out)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    path = key.strip().split(".")
    _check_path(path, item)
    return path, value


def _check_path(path: list[str], item: str) -> None:
    """Reject an override whose key does not exist, suggesting the nearest one."""
    model: type[BaseModel] | None = Config
    for depth, part in enumerate(path):
        if model is None:
            raise UserError(f"--set {item}: {'.'.join(path[:depth])} has no sub-keys")
        fields = model.model_fields
        if part not in fields:
            near = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean {'.'.join([*path[:depth], near[0]])}?)" if near else ""
            raise UserError(f"--set {item}: unknown key {'.'.join(path[: depth + 1])}{hint}")
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _set_path(raw: dict, path: list[str], value: Any, item: str) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _describe(err: ValidationError, where: str, lines: dict[Loc, int], set_by: dict[Loc, str]) -> str:
    """One line for the first error, with file:line or the --set that caused it."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc: Loc = tuple(part for part in first["loc"] if part != "[key]")  # a bad dict key: point at the key
    field = ".".join(str(p) for p in loc) or "(top level)"
    message = _message(first, loc)
    origin = _origin(loc, where, lines, set_by)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{origin}: {field}: {message}{more}"


def _message(error: ErrorDetails, loc: Loc) -> str:
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f" (did you mean {near[0]}?)" if near else f"; known keys: {', '.join(known)}")
    if error["type"] == "missing":
        return "required key is missing"
    return f"{error['msg']} (got {error.get('input')!r})"


def _origin(loc: Loc, where: str, lines: dict[Loc, int], set_by: dict[Loc, str]) -> str:
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in set_by:
            return f"--set {set_by[loc[:depth]]}"
        if loc[:depth] in lines:
            return f"{where}:{lines[loc[:depth]]}"
    return where


def _model_at(loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def with_settings(config: Config, overrides: dict[str, Any]) -> Config:
    """`config` with dotted keys replaced (a new validated Config)."""
    if not overrides:
        return config
    data = config.model_dump()
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    new = Config.model_validate(data)
    return new.with_origins(dict(config._origins))
