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
from tunesmith.runfolder import create_run_dir, run_folder_guard, write_json, write_manifest
from tunesmith.training.prepare import Prepared, prepare


@dataclass
class RunResult:
    """What `tunesmith.train()` returns."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def train(config: Config | str | Path, *, console: Any = None) -> RunResult:
    """Fine-tune as `config` says and return where the results are."""
    console = console or _default_console()
    if not isinstance(config, Config):
        config = load_config(config)
    final = _finalize(config)
    if final.run_dir().exists():  # say so now, not after the data has been processed
        raise UserError(f"run folder {final.run_dir()} already exists; choose another name (--set name=...)")
    _check_attention(config)
    prepared = prepare(config, console)
    prepared.config = final
    run_dir = create_run_dir(final.run_dir())
    with run_folder_guard(run_dir):
        return _execute(prepared, run_dir, console)


def _execute(p: Prepared, run_dir: Path, console: Any) -> RunResult:
    from tunesmith.models.load import attention_implementation
    from tunesmith.training.callbacks import MetricsWriter, ProgressBar
    from tunesmith.training.hardware import pick_device, pick_precision
    from tunesmith.training.trainer import build_trainer, dataset_rows

    started = time.time()
    (run_dir / "config.yaml").write_text(config_to_yaml(p.config), encoding="utf-8")
    write_json(run_dir / "data_report.json", _data_report(p))
    _write_quarantine(p, run_dir)
    device = pick_device()
    precision = pick_precision(p.config.train.precision, device)
    model = _load_trainable_model(p, device, console)
    metrics_writer = MetricsWriter(run_dir / "metrics.jsonl")
    rows = _rows(p, "train")
    train_rows, eval_rows = dataset_rows(rows, p.config), dataset_rows(_rows(p, "validation"), p.config)
    attention = attention_implementation(p.config.model.attention, device)
    console.print(f"Training on {device} ({precision}, {attention}): {_batching(p.config, rows, train_rows)}, "
                  f"{p.splits['train'].report.trainable_tokens:,} trained tokens per epoch")
    trainer = build_trainer(model, p.config, run_dir / "checkpoints", train_rows, eval_rows,
                            pad_id=p.tokenizer.pad_token_id or 0, device=device, precision=precision,
                            callbacks=[metrics_writer, ProgressBar(console)])
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


def _check_attention(config: Config) -> None:
    """Refuse an attention kernel this machine cannot train with before any data or model work."""
    from tunesmith.models.load import attention_implementation
    from tunesmith.training.hardware import pick_device

    try:
        attention_implementation(config.model.attention, pick_device())
    except UserError as err:
        raise UserError(f"{config.origin('model.attention')}: {err}") from None


def _rows(p: Prepared, split: str) -> list[dict]:
    examples = p.splits[split].examples if split in p.splits else []
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def _batching(config: Config, rows: list[dict], train_rows: list[dict]) -> str:
    """How sequences become micro-batches, e.g. '420 sequences in 98 bins of <=256 tokens (93% full), ...'."""
    from tunesmith.formatting.packing import summarize

    if config.train.packing == "none":
        return f"{len(rows)} sequences, {config.train.batch_size} padded rows per micro-batch"
    summary = summarize(rows, train_rows, config.template.max_length)
    return (f"{summary.rows} sequences in {summary.bins} bins of <={summary.capacity} tokens "
            f"({summary.fill:.0%} full), {config.train.batch_size} bins per micro-batch")


def _load_trainable_model(p: Prepared, device: str, console: Any) -> Any:
    from tunesmith.models.load import add_lora, count_parameters, load_model

    model = load_model(p.ref, dtype=p.config.model.dtype, device=device, attention=p.config.model.attention)
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
    splits: dict[str, Any] = {}
    for name, data in p.splits.items():
        report = asdict(data.report) | {"trainable_share": round(data.report.trainable_share, 4)}
        splits[name] = report | {"files": data.summary["files"], "warnings": data.summary["warnings"],
                                 "quarantined": len(data.summary["quarantined"]), "from_cache": data.cached}
    if p.test:
        splits["test"] = {"rows": len(p.test)}
    return {"template": p.template.name, "system_prompt": p.system_prompt, "end_of_turn": list(p.markers),
            "splits": splits}


def _write_quarantine(p: Prepared, run_dir: Path) -> None:
    """Rows left out under `on_bad_row: skip`, each with its issues, so nothing is lost silently."""
    import json

    records = [dict(record, split=split) for split, data in p.splits.items() for record in data.summary["quarantined"]]
    if records:
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        (run_dir / "quarantine.jsonl").write_text(lines, encoding="utf-8")


def _finalize(config: Config) -> Config:
    """Fill the run name and make local paths absolute, so the saved config works from anywhere."""
    data = config.model_dump()
    data["name"] = config.name or time.strftime("run-%Y%m%d-%H%M%S")
    for key in ("train", "validation", "test"):
        value = data["data"][key]
        if isinstance(value, str):
            data["data"][key] = _absolute(value)
        elif isinstance(value, list):
            data["data"][key] = [_absolute(v) if isinstance(v, str) else v | {"path": _absolute(v["path"])}
                                 for v in value]
    if Path(config.model.name).expanduser().is_dir():
        data["model"]["name"] = str(Path(config.model.name).expanduser().resolve())
    data["output_dir"] = str(Path(config.output_dir).expanduser().resolve())
    return Config.model_validate(data).with_origins(config._origins)


def _absolute(reference: str) -> str:
    """A local data path made absolute; `bundled:` and `hf:` references are left as they are."""
    if reference.startswith(("bundled:", "hf:")):
        return reference
    return str(Path(reference).expanduser().resolve())


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
