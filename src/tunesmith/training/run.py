"""One run, start to finish: check everything, then train, save, evaluate, seal the folder.

Every check that can fail on the user's input (config, data, model name, template, masks) runs
before the run folder exists; a failure later removes the folder again if it was the user's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Config, config_to_yaml, load_config
from tunesmith.errors import UserError
from tunesmith.data.formats import load_conversations
from tunesmith.data.types import Conversation
from tunesmith.formatting.encode import Example, build_template, end_of_turn_markers
from tunesmith.formatting.prepare import SplitReport, encode_split, shared_system_prompt, warnings_for
from tunesmith.runfolder import create_run_dir, run_folder_guard, write_json, write_manifest


@dataclass
class RunResult:
    """What `tunesmith.train()` returns."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """Everything checked before the run folder exists."""

    config: Config
    ref: Any
    tokenizer: Any
    template: Any
    markers: tuple[str, ...]
    train: list[Example]
    validation: list[Example]
    test: list[Conversation]
    reports: dict[str, SplitReport]
    system_prompt: str | None


def train(config: Config | str | Path, *, console: Any = None) -> RunResult:
    """Fine-tune as `config` says and return where the results are."""
    console = console or _default_console()
    if not isinstance(config, Config):
        config = load_config(config)
    prepared = prepare(config, console)
    config = prepared.config = _finalize(config)
    run_dir = create_run_dir(config.run_dir())
    with run_folder_guard(run_dir):
        return _execute(prepared, run_dir, console)


def prepare(config: Config, console: Any) -> Prepared:
    """Load and check data, model reference, template and masks; no weights are loaded."""
    from tunesmith.models.load import load_tokenizer, resolve_model

    splits = {name: _load_split(config, name) for name in ("train", "validation", "test")}
    try:
        ref = resolve_model(config.model.name, revision=config.model.revision, log=console.print)
    except UserError as err:
        raise UserError(f"{config.origin('model.name')}: model.name: {err}") from None
    tokenizer = load_tokenizer(ref)
    template = build_template(tokenizer, config.template.chat_template)
    markers = end_of_turn_markers(tokenizer)
    options = dict(train_on=config.template.train_on, max_length=config.template.max_length, markers=markers)
    train_rows, train_report = encode_split(splits["train"], template, tokenizer, split="train", **options)
    reports = {"train": train_report}
    validation_rows: list[Example] = []
    if splits["validation"]:
        validation_rows, reports["validation"] = encode_split(splits["validation"], template, tokenizer,
                                                              split="validation", **options)
    for split, report in reports.items():
        for note in warnings_for(report, split):
            console.print(f"[yellow]warning:[/] {note}")
    return Prepared(config, ref, tokenizer, template, markers, train_rows, validation_rows, splits["test"],
                    reports, shared_system_prompt(splits["train"]))


def _load_split(config: Config, split: str) -> list[Conversation]:
    """A split's conversations; a missing file is reported where the config named it."""
    reference = getattr(config.data, split)
    if not reference:
        return []
    try:
        return load_conversations(reference)
    except UserError as err:
        if str(err).startswith(("data file not found", "bundled data not found")):
            raise UserError(f"{config.origin(f'data.{split}')}: data.{split}: {err}") from None
        raise


def _execute(p: Prepared, run_dir: Path, console: Any) -> RunResult:
    from tunesmith.training.callbacks import MetricsWriter, ProgressBar
    from tunesmith.training.hardware import pick_device, pick_precision
    from tunesmith.training.trainer import build_trainer

    started = time.time()
    (run_dir / "config.yaml").write_text(config_to_yaml(p.config), encoding="utf-8")
    write_json(run_dir / "data_report.json", _data_report(p))
    device = pick_device()
    precision = pick_precision(p.config.train.precision, device)
    model = _load_trainable_model(p, device, console)
    metrics_writer = MetricsWriter(run_dir / "metrics.jsonl")
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in p.train]
    eval_rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in p.validation]
    console.print(f"Training on {device} ({precision}): {len(rows)} rows, "
                  f"{p.reports['train'].trainable_tokens:,} trained tokens per epoch")
    trainer = build_trainer(model, p.config, run_dir / "checkpoints", rows, eval_rows, device=device,
                            precision=precision, callbacks=[metrics_writer, ProgressBar(console)])
    trainer.train()
    _remove_if_empty(run_dir / "checkpoints")  # Trainer makes its output folder even when it saves nothing
    _save_adapter(p, model, run_dir)
    metrics: dict[str, Any] = {"train_loss_first": _first(metrics_writer.losses),
                               "train_loss_last": _last(metrics_writer.losses),
                               "train_seconds": round(time.time() - started, 1), "device": device,
                               "precision": precision}
    if p.test:
        metrics["eval"] = _evaluate(p, model, run_dir, console)
    write_manifest(run_dir, "completed", {"metrics": metrics})
    artifacts = {"adapter": str(run_dir / "adapter"), "metrics": str(run_dir / "metrics.jsonl")}
    return RunResult(run_dir=run_dir, status="completed", metrics=metrics, artifacts=artifacts)


def _load_trainable_model(p: Prepared, device: str, console: Any) -> Any:
    from tunesmith.models.load import add_lora, count_parameters, load_model

    model = load_model(p.ref, dtype=p.config.model.dtype, device=device)
    lora = p.config.lora
    model = add_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules,
                     seed=p.config.train.seed)
    trainable, total = count_parameters(model)
    console.print(f"LoRA r={lora.r}: {trainable:,} trainable of {total:,} parameters "
                  f"({100 * trainable / total:.2f}%)")
    return model


def _save_adapter(p: Prepared, model: Any, run_dir: Path) -> None:
    """adapter/: PEFT files, the tokenizer, the exact template, and what inference needs to know."""
    adapter = run_dir / "adapter"
    model.save_pretrained(str(adapter))
    p.tokenizer.chat_template = p.template.source
    p.tokenizer.save_pretrained(str(adapter))
    write_json(adapter / "tunesmith.json", {
        "base_model": p.config.model.name,
        "template_name": p.template.name,
        "chat_template": p.template.source,
        "special_tokens": p.template.special_tokens,
        "end_of_turn": list(p.markers),
        "system_prompt": p.system_prompt,
        "train_on": p.config.template.train_on,
    })


def _evaluate(p: Prepared, model: Any, run_dir: Path, console: Any) -> dict:
    from tunesmith.evaluate.run_eval import evaluate_and_record

    results = evaluate_and_record(model, p.tokenizer, p.template, p.test, settings=p.config.eval,
                                  end_of_turn=list(p.markers), run_dir=run_dir, console=console)
    return {k: v for k, v in results.items() if k in ("n", "base", "tuned")}


def _data_report(p: Prepared) -> dict:
    return {"template": p.template.name, "system_prompt": p.system_prompt, "end_of_turn": list(p.markers),
            "splits": {name: asdict(r) | {"trainable_share": round(r.trainable_share, 4)}
                       for name, r in p.reports.items()} | {"test": {"rows": len(p.test)}}}


def _finalize(config: Config) -> Config:
    """Fill the run name and make local paths absolute, so the saved config works from anywhere."""
    data = config.model_dump()
    data["name"] = config.name or time.strftime("run-%Y%m%d-%H%M%S")
    for key in ("train", "validation", "test"):
        value = data["data"][key]
        if value and not value.startswith("bundled:"):
            data["data"][key] = str(Path(value).expanduser().resolve())
    if Path(config.model.name).expanduser().is_dir():
        data["model"]["name"] = str(Path(config.model.name).expanduser().resolve())
    data["output_dir"] = str(Path(config.output_dir).expanduser().resolve())
    return Config.model_validate(data).with_origins(config._origins)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _first(values: list[float]) -> float | None:
    return values[0] if values else None


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def _default_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
