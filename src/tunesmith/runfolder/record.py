"""tunesmith.json, the run record: what inference needs to reproduce training exactly, written beside
the weights (RUN/adapter/ or RUN/model/) and copied, with what the merge adds, into RUN/merged/.

One schema for all three: the base model, the method, the chat template's source and variables, the
fields it drops, the end-of-turn markers the run trained, the system prompt, and for a merged model
what it was merged from and how closely it was checked."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.runfolder.atomic import write_json

RUN_META = "tunesmith.json"
WEIGHT_FOLDERS = ("adapter", "model")  # LoRA/QLoRA: PEFT files; full: the whole model
_REQUIRED = ("template_name", "chat_template")
MERGE_FIELDS = frozenset(
    {
        "merged_from",
        "adapter_sha256",
        "dtype",
        "merge_max_logit_difference",
        "quantized_base_bits",
        "difference_from_unquantized_base_adapter",
    }
)
"""Written only into RUN/merged/tunesmith.json."""


@dataclass(frozen=True)
class RunRecord:
    template_name: str
    chat_template: str
    special_tokens: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    end_of_turn: tuple[str, ...] = ()
    system_prompt: str | None = None
    base_model: str | None = None
    method: str | None = None
    train_on: str | None = None
    # RUN/merged only
    merged_from: str | None = None
    adapter_sha256: str | None = None
    dtype: str | None = None
    merge_max_logit_difference: float | None = None
    quantized_base_bits: int | None = None
    difference_from_unquantized_base_adapter: float | None = None

    @property
    def merged(self) -> bool:
        return self.merged_from is not None

    def with_changes(self, **changes: Any) -> RunRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["drop"], data["end_of_turn"] = sorted(self.drop), list(self.end_of_turn)
        return {k: v for k, v in data.items() if not (k in MERGE_FIELDS and v is None)}

    @classmethod
    def from_json(cls, data: Any, where: str = RUN_META, *, strict: bool = True) -> RunRecord:
        """`strict=False` (the model card, which shows what there is): a missing or wrong field is left empty."""
        if not isinstance(data, dict):
            if strict:
                raise UserError(f"{where}: not a JSON object")
            data = {}
        missing = [key for key in _REQUIRED if not isinstance(data.get(key), str)]
        if missing and strict:
            raise UserError(f"{where}: field {missing[0]!r} missing; the run did not finish writing it")
        data = {**data, **{key: "" for key in missing}}
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["drop"] = tuple(values.get("drop") or ())
        values["end_of_turn"] = tuple(values.get("end_of_turn") or ())
        values["special_tokens"] = dict(values.get("special_tokens") or {})
        return cls(**values)

    @classmethod
    def read(cls, folder: Path, *, strict: bool = True) -> RunRecord:
        """The record in a weights folder (adapter/, model/, merged/)."""
        path = Path(folder) / RUN_META
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not strict:
                return cls.from_json({}, str(path), strict=False)
            raise UserError(f"{path} not found") from None
        except (OSError, ValueError) as err:
            if not strict:
                return cls.from_json({}, str(path), strict=False)
            raise UserError(f"{path}: unreadable ({err})") from None
        return cls.from_json(data, str(path), strict=strict)

    def write(self, folder: Path) -> Path:
        return write_json(Path(folder) / RUN_META, self.to_json())


def is_finished_run(folder: Path) -> bool:
    return any((Path(folder) / name / RUN_META).is_file() for name in WEIGHT_FOLDERS)


def weights_folder(run_dir: Path) -> Path:
    """adapter/ of a LoRA/QLoRA run, model/ of a full fine-tune."""
    for name in WEIGHT_FOLDERS:
        if (Path(run_dir) / name / RUN_META).is_file():
            return Path(run_dir) / name
    raise UserError(f"{run_dir} is not a finished tunesmith run (no adapter/{RUN_META} or model/{RUN_META})")


def read_record(run_dir: Path) -> RunRecord:
    """The record of a finished run folder."""
    return RunRecord.read(weights_folder(run_dir))
