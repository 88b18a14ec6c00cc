"""An Ollama Modelfile for a run's GGUF: FROM (and ADAPTER), the training template as Ollama's Go
TEMPLATE (export/ollama_template.py), stop markers, and the training system prompt."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.export.ollama_template import ollama_template, trims_contents
from tunesmith.runfolder import RunFolder, RunRecord, read_record, write_text

MODELFILE = "Modelfile"
EXPORT = "export"
_NAME_PART = r"[a-z0-9_][a-z0-9_.-]{0,79}"
_VALID_NAME = re.compile(rf"^(?:{_NAME_PART}/)?{_NAME_PART}(?::{_NAME_PART})?$", re.IGNORECASE)


def write_modelfile(
    run_dir: Path,
    gguf_path: Path,
    *,
    adapter: Path | None = None,
    name: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write RUN/export/Modelfile for `gguf_path` (with `adapter`: the base GGUF, and the adapter GGUF
    as ADAPTER) and print the `ollama create` command; return its path.

    `name` (default: the run folder's name, made a valid Ollama name) goes into the printed command.
    """
    run_dir, gguf_path = Path(run_dir), Path(gguf_path)
    meta = read_record(run_dir)
    if not gguf_path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    model_name = ollama_name(name) if name is not None else default_ollama_name(run_dir.name)
    template = ollama_template(meta, header=not _gguf_adds_bos(gguf_path))
    target = RunFolder(run_dir).export / MODELFILE
    text = modelfile_text(
        meta,
        template,
        from_path=_relative_from(gguf_path, target.parent),
        adapter_path=_relative_from(adapter, target.parent) if adapter is not None else None,
        name=model_name,
    )
    write_text(target, text)
    from tunesmith.formatting.template import ChatTemplate

    if trims_contents(ChatTemplate.from_record(meta)):
        log(
            "warning: the training template strips spaces and newlines around each message; Ollama's TEMPLATE "
            "cannot, so a message that starts or ends with whitespace reaches the model unstripped"
        )
    log(f"wrote {target}")
    log(f"create the Ollama model with: {shlex.join(create_command(target, model_name))}")
    return target


def create_command(modelfile: Path, name: str) -> list[str]:
    """`ollama create NAME -f Modelfile` as an argv list (Ollama reads FROM relative to the Modelfile)."""
    return ["ollama", "create", name, "-f", str(modelfile)]


def ollama_name(name: str) -> str:
    """`name` if Ollama accepts it as a model name ([namespace/]model[:tag]), else a UserError."""
    if not _VALID_NAME.match(name):
        raise UserError(
            f"{name!r} is not a valid Ollama model name: use letters, digits, '_', '-' and '.', "
            "starting with a letter, digit or '_' (optionally namespace/ before and :tag after)"
        )
    return name


def default_ollama_name(folder_name: str) -> str:
    """A run folder's name made a valid Ollama model name.

    >>> default_ollama_name("My Run (v2)!")
    'my-run-v2'
    """
    name = re.sub(r"[^a-z0-9_.-]+", "-", folder_name.lower())
    name = re.sub(r"^[^a-z0-9_]+", "", name)[:80].rstrip("-.")
    return name or "tunesmith-model"


def modelfile_text(
    meta: RunRecord, template: str, *, from_path: str, name: str, adapter_path: str | None = None
) -> str:
    """The Modelfile: FROM (and ADAPTER), TEMPLATE, one `PARAMETER stop` per end-of-turn marker, SYSTEM
    if trained with one."""
    lines = [
        f"# Ollama Modelfile written by tunesmith; training template: {_one_line(meta.template_name)}",
        f"# ollama create {name} -f {MODELFILE}",
        f"FROM {from_path}",
        *([f"ADAPTER {adapter_path}"] if adapter_path else []),
        f'TEMPLATE """{template}"""',
    ]
    for marker in meta.end_of_turn:
        if '"' in marker or not marker.isprintable():
            raise UserError(f"end-of-turn marker {marker!r} cannot be written as an Ollama stop parameter")
        lines.append(f'PARAMETER stop "{marker}"')
    system = meta.system_prompt
    if system:
        _check_modelfile_value("the training system prompt", system)
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _gguf_adds_bos(path: Path) -> bool:
    """Whether the GGUF's tokenizer adds BOS itself (then the TEMPLATE must not write it again)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
        return bool(field is not None and field.parts[field.data[0]][0])
    except Exception:  # not readable as GGUF (or no gguf package): assume it does not
        return False


def _relative_from(gguf_path: Path, folder: Path) -> str:
    """FROM value: the GGUF relative to the Modelfile's folder, './' first when it lies inside it."""
    relative = Path(os.path.relpath(gguf_path.resolve(), folder.resolve())).as_posix()
    _check_modelfile_value("the GGUF path", relative)
    return relative if relative.startswith("../") else f"./{relative}"


def _check_modelfile_value(what: str, value: str) -> None:
    """Ollama's Modelfile parser ends a value at `\"\"\"` and drops characters that are not printable."""
    if '"""' in value or any(not (ch.isprintable() or ch in "\n\t") for ch in value):
        raise UserError(f'{what} holds \'"""\' or unprintable characters, which an Ollama Modelfile cannot carry')


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
