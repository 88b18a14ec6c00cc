"""Open a finished run folder for inference: base model + adapter, tokenizer, the training template.

Everything comes from the run folder (config.yaml, adapter/), so the template at inference is
the one used in training, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.machine import pick_device
from tunesmith.runfolder import RUN_META, RunFolder, RunRecord, is_finished_run, read_record, weights_folder


@dataclass
class LoadedRun:
    run_dir: Path
    model: Any
    tokenizer: Any
    template: Any
    record: RunRecord
    config: Any


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load base + adapter on CPU (or the GPU when there is one)."""
    from transformers import AutoTokenizer

    from tunesmith.config import load_config
    from tunesmith.formatting.template import ChatTemplate
    from tunesmith.models.load import ModelRef, load_adapter, load_model, resolve_model

    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    record = read_record(folder)
    config = load_config(RunFolder(folder).config)
    device = pick_device()
    weights = weights_folder(folder)
    if weights.name == "model":  # a full fine-tune: the folder is the whole model
        model = load_model(ModelRef(str(weights), str(weights), "local"), dtype=config.model.dtype, device=device)
    else:
        ref = resolve_model(config.model.name, revision=config.model.revision)
        quantization = trained_quantization(config, device)
        base = load_model(ref, dtype=config.model.dtype, device=device, quantization=quantization)
        model = load_adapter(base, weights)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    template = ChatTemplate.from_record(record)
    return LoadedRun(folder, model, tokenizer, template, record, config)


def trained_quantization(config: Any, device: str) -> Any:
    """The bitsandbytes settings the run's base was trained with (None: unquantized), so eval and chat
    run the adapter on the very base it learned against; refused where they cannot load."""
    from tunesmith.machine import pick_precision, quantized_bits
    from tunesmith.models.quant import bitsandbytes_config, support

    bits = quantized_bits(config)
    if not bits:
        return None
    reason = support(device)
    if reason:
        raise UserError(
            f"this run's adapter was trained on a {bits}-bit base, which cannot load here: {reason}; "
            "or merge it on a machine where it can (tunesmith merge) and use the merged model"
        )
    return bitsandbytes_config(bits, pick_precision(config.train.precision, device))


def open_model(target: str | Path) -> LoadedRun:
    """What `generate` and `chat` accept: a finished run folder (adapter/ or model/), a merged or any
    Hugging Face model folder, or a built-in model name (`smollm2-135m-instruct`).

    A run uses its training template and end-of-turn markers; a model folder with a tunesmith.json
    (a merged export) uses the ones recorded there; any other model its own chat template.
    """
    folder = Path(target).expanduser()
    if folder.is_dir() and is_finished_run(folder):
        return load_run(folder)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise UserError(
            f"{target} is neither a finished tunesmith run (adapter/ or model/) nor a model folder (config.json)"
        )
    return _load_plain_model(str(target))


def _load_plain_model(name: str) -> LoadedRun:
    from tunesmith.formatting.encode import build_template, end_of_turn_markers
    from tunesmith.formatting.template import ChatTemplate
    from tunesmith.models.load import load_model, load_tokenizer, resolve_model

    ref = resolve_model(name)
    device = pick_device()
    tokenizer = load_tokenizer(ref)
    recorded = Path(ref.path) / RUN_META
    if recorded.is_file():  # a merged run: keep its training template
        record = RunRecord.read(Path(ref.path))
        template = ChatTemplate.from_record(record)
    else:
        template = build_template(tokenizer, "model")
        record = RunRecord(
            template_name=template.name,
            chat_template=template.source,
            special_tokens=template.special_tokens,
            end_of_turn=tuple(end_of_turn_markers(tokenizer, template)),
            base_model=name,
        )
    model = load_model(ref, device=device)
    return LoadedRun(Path(ref.path), model, tokenizer, template, record, None)
