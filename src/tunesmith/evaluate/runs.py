"""Open a finished run folder for inference: base model + adapter, tokenizer, the training template.

Everything comes from the run folder (config.yaml, adapter/), so the template at inference is
the one used in training, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

RUN_META = "tunesmith.json"  # inside adapter/: base model, template, end-of-turn markers, system prompt


@dataclass
class LoadedRun:
    run_dir: Path
    model: Any
    tokenizer: Any
    template: Any
    meta: dict
    config: Any


def weights_folder(run_dir: Path) -> Path:
    """adapter/ of a LoRA/QLoRA run, model/ of a full fine-tune."""
    for name in ("adapter", "model"):
        if (run_dir / name / RUN_META).is_file():
            return run_dir / name
    raise UserError(f"{run_dir} is not a finished tunesmith run (no adapter/{RUN_META} or model/{RUN_META})")


def read_run_meta(run_dir: Path) -> dict:
    return json.loads((weights_folder(run_dir) / RUN_META).read_text(encoding="utf-8"))


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load base + adapter on CPU (or the GPU when there is one)."""
    import torch
    from transformers import AutoTokenizer

    from tunesmith.config import load_config
    from tunesmith.formatting.template import ChatTemplate
    from tunesmith.models.load import ModelRef, load_adapter, load_model, resolve_model

    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    meta = read_run_meta(folder)
    config = load_config(folder / "config.yaml")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = weights_folder(folder)
    if weights.name == "model":  # a full fine-tune: the folder is the whole model
        model = load_model(ModelRef(str(weights), str(weights), "local"), dtype=config.model.dtype, device=device)
    else:
        ref = resolve_model(config.model.name, revision=config.model.revision)
        model = load_adapter(load_model(ref, dtype=config.model.dtype, device=device), weights)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    template = ChatTemplate(meta["chat_template"], name=meta["template_name"], special_tokens=meta["special_tokens"])
    return LoadedRun(folder, model, tokenizer, template, meta, config)
