"""Training a run: check everything, prepare the data, make the run folder, train, save the weights.

Every check that can fail on the user's input (config, data, model name, template, masks) runs
before the run folder exists; a failure later removes the folder again if it was the user's. What
comes after training (evaluation, the report, sealing the manifest) is `tunesmith.pipeline`'s,
handed in as `finish` and run inside the same folder guard, so this package never imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import Config, load_config
from tunesmith.errors import UserError
from tunesmith.runfolder import RunFolder, create_run_dir, discard, run_folder_guard
from tunesmith.training.defaults import with_chosen
from tunesmith.training.outputs import save_weights, write_inputs
from tunesmith.training.prepare import Prepared, prepare
from tunesmith.training.tracking import check_tracking, setup_tracking


@dataclass
class Trained:
    """A run's training, done: "trained" (weights saved), or "interrupted" by a signal at `metrics`'
    step (a checkpoint written). `prepared` is None on a node that does not own the run folder;
    `model` is None where the weights were trained in other processes (`--nproc`)."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    prepared: Prepared | None = None
    model: Any = None


Finish = Callable[[Trained, Any], Any]


def train(
    config: Config | str | Path,
    *,
    console: Any = None,
    resume: bool = False,
    launch: Any = None,
    finish: Finish | None = None,
) -> Any:
    """Fine-tune as `config` says; then `finish(trained, console)` inside the run folder's guard, and
    return what it returns (the Trained itself without one). `resume=True` continues the run that
    `config` names (or the run folder `config` is) from its newest complete checkpoint. `launch`
    (training/launch.py, `--nproc`): torchrun workers train; this process checks, creates the run
    folder and waits for them."""
    console = console or _default_console()
    finish = finish or (lambda trained, console: trained)
    if resume and launch is not None:
        raise UserError("--resume continues a run in one process; leave out --nproc")
    if resume:
        return _resume(config, console, finish)
    if not isinstance(config, Config):
        config = load_config(config)
    final = finalize(config)
    main_node = launch is None or launch.main_node  # other nodes of a multi-node run make no folder
    if main_node and final.run_dir().exists():  # say so now, not after the data has been processed
        raise UserError(f"run folder {final.run_dir()} already exists; choose another name (--set name=...)")
    _check_attention(config)
    check_tracking(config)
    if launch is not None:
        launch.check(final)  # the distributed settings against this machine
    prepared = prepare(config, console)
    prepared.config = with_chosen(final, prepared.config)
    if not main_node:  # rank 0, on node 0, writes the run folder
        return finish(launch.run(prepared, None, console), console)
    run_dir = create_run_dir(final.run_dir())
    with run_folder_guard(run_dir):
        if launch is not None:
            return finish(launch.run(prepared, run_dir, console), console)
        return finish(_execute(prepared, run_dir, console), console)


def execute_worker(config_path: Path, run_dir: Path, console: Any) -> Trained:
    """One torchrun worker's share of a run whose folder the launching process made and will seal
    (training/launch.py): prepare again (from the processed-data cache) and train; rank 0 saves."""
    prepared = prepare(load_config(config_path), console, print_warnings=False)
    return _execute(prepared, run_dir, console, worker=True)


def _resume(reference: Config | str | Path, console: Any, finish: Finish) -> Any:
    """Continue a run from its newest complete checkpoint (training/resume.py); its folder is kept
    whatever happens."""
    from tunesmith.training import resume as rs

    config = rs.load_run_config(reference)
    final = finalize(config)
    checkpoint = rs.find_checkpoint(final.run_dir())
    _check_attention(config)
    check_tracking(config)
    changed = rs.changed_settings(checkpoint, final)
    prepared = prepare(config, console)
    prepared.config = with_chosen(final, prepared.config)
    rs.check_same_inputs(checkpoint, rs.fingerprints(prepared), changed)
    for line in rs.describe_resume(checkpoint, changed, rs.discard_after(checkpoint)):
        console.print(line, soft_wrap=True)
    with run_folder_guard(final.run_dir(), keep=True), rs.config_kept_on_error(final.run_dir()):
        return finish(_execute(prepared, final.run_dir(), console, resume_from=checkpoint), console)


def _execute(
    p: Prepared, run_dir: Path, console: Any, resume_from: Path | None = None, *, worker: bool = False
) -> Trained:
    with _disk_full_reported(run_dir):
        return _execute_inner(p, run_dir, console, resume_from, worker=worker)


@contextmanager
def _disk_full_reported(run_dir: Path) -> Iterator[None]:
    """A full disk anywhere in a run (metrics.jsonl, a tracker's files, the manifest) is one line that
    says where and how to go on; checkpoints and the adapter say it themselves, more precisely."""
    from tunesmith.errors import DiskFullError
    from tunesmith.runfolder import disk_full, is_disk_full
    from tunesmith.training.verify import resume_advice

    try:
        yield
    except Exception as err:
        if isinstance(err, DiskFullError) or not is_disk_full(err):
            raise
        name = getattr(err, "filename", None)
        what = str(name) if name else f"into {run_dir} (training)"
        raise disk_full(what, run_dir, then=resume_advice(RunFolder(run_dir).checkpoints)) from None


def _execute_inner(p: Prepared, run_dir: Path, console: Any, resume_from: Path | None, *, worker: bool) -> Trained:
    from tunesmith.machine import attention_implementation, pick_device, pick_precision
    from tunesmith.training.callbacks import MetricsWriter, ProgressBar
    from tunesmith.training.fit import fit
    from tunesmith.training.resume import fingerprints, trim_metrics
    from tunesmith.training.strategies import gathered_state_dict
    from tunesmith.training.trainer import build_trainer, dataset_rows

    started = time.time()
    if not worker:  # a torchrun worker's launcher wrote them (training/launch.py)
        write_inputs(p, run_dir)
    device = pick_device()
    precision = pick_precision(p.config.train.precision, device)
    model = _load_trainable_model(p, device, precision, console)
    metrics_writer = MetricsWriter(RunFolder(run_dir).metrics)
    if resume_from is not None:  # records after the checkpoint were logged by the run that died
        metrics_writer.losses = trim_metrics(RunFolder(run_dir).metrics, int(resume_from.name.split("-")[1]))
    rows = _rows(p, "train")
    train_rows, eval_rows = dataset_rows(rows, p.config), dataset_rows(_rows(p, "validation"), p.config)
    if p.config.train.objective != "sft":  # the reference's log-probabilities: training/reference.py
        from tunesmith.training.reference import attach_reference

        splits = {"train": rows} if p.config.train.objective in ("dpo", "kto") else {}  # dpo, kto train on them
        splits["validation"] = list(eval_rows)  # the same row dicts: the rows Trainer reads get them
        attach_reference(model, splits, RunFolder(run_dir).reference_logps, console.print, precision=precision)
    attention = attention_implementation(p.config.model.attention, device)
    console.print(
        f"Training on {device} ({precision}, {attention}): {_batching(p.config, rows, train_rows)}, "
        f"{p.splits['train'].report.trainable_tokens:,} trained tokens per epoch"
    )
    with setup_tracking(p.config, run_dir) as tracking_callbacks:  # MLflow, W&B, TensorBoard if chosen
        trainer = build_trainer(
            model,
            p.config,
            RunFolder(run_dir).checkpoints,
            train_rows,
            eval_rows,
            pad_id=p.tokenizer.pad_token_id or 0,
            device=device,
            precision=precision,
            callbacks=[metrics_writer, ProgressBar(console), *tracking_callbacks],
        )
        stopped = fit(trainer, meta=fingerprints(p), resume_from=resume_from, console=console)
    # accelerate ran forward under bf16/fp16 autocast for training; evaluate as `tunesmith eval` does
    model = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    state = gathered_state_dict(trainer) if worker and not stopped else None  # every rank: FSDP/ZeRO gather
    if worker and not trainer.is_world_process_zero():  # rank 0 alone writes into the run folder
        return Trained(run_dir=run_dir, status="interrupted" if stopped else "trained")
    if stopped:
        interrupted = {"stopped_by": stopped, "step": trainer.state.global_step}
        return Trained(run_dir=run_dir, status="interrupted", metrics=interrupted, prepared=p)
    _remove_if_empty(RunFolder(run_dir).checkpoints)  # Trainer makes its output folder even when it saves nothing
    save_weights(p, model, run_dir, state)
    metrics: dict[str, Any] = {
        "train_loss_first": _first(metrics_writer.losses),
        "train_loss_last": _last(metrics_writer.losses),
        "train_seconds": round(time.time() - started, 1),
        "device": device,
        "precision": precision,
    }
    if p.config.train.objective != "sft" and not worker:
        from tunesmith.training.preference import record_held_out

        metrics |= record_held_out(model, list(eval_rows), p.config, run_dir, console, precision)
    if worker:  # the launching process evaluates and seals the folder
        return Trained(run_dir=run_dir, status="trained", metrics=metrics)
    return Trained(run_dir=run_dir, status="trained", metrics=metrics, prepared=p, model=model)


def _check_attention(config: Config) -> None:
    """Refuse what this machine cannot train with (attention kernel, method, quantization,
    optimizer, precision) before any data or model work."""
    from tunesmith.machine import attention_implementation, pick_device, pick_precision
    from tunesmith.training.methods import check_method

    device = pick_device()
    try:
        attention_implementation(config.model.attention, device)
    except UserError as err:
        raise UserError(f"{config.origin('model.attention')}: {err}") from None
    try:
        pick_precision(config.train.precision, device)
    except UserError as err:
        raise UserError(f"{config.origin('train.precision')}: {err}") from None
    check_method(config, device)


def _rows(p: Prepared, split: str) -> list[dict]:
    from tunesmith.bulk import paused_gc
    from tunesmith.formatting.pairs import Scored

    examples: list[Any] = p.splits[split].examples if split in p.splits else []
    with paused_gc():  # see tunesmith/bulk.py
        return [
            e.row(i)
            if isinstance(e, Scored)
            else {"input_ids": e.input_ids, "labels": e.labels, "sources": [e.source_id]}
            for i, e in enumerate(examples)
        ]


def _batching(config: Config, rows: list[dict], train_rows: Sequence[dict]) -> str:
    """How sequences become micro-batches, e.g. '420 sequences in 98 bins of <=256 tokens (93% full), ...'."""
    from tunesmith.formatting.packing import summarize
    from tunesmith.training.defaults import settled

    chosen = settled(config)
    if config.train.objective != "sft":
        what = "rows (each an answer and a mismatched one)" if config.train.objective == "kto" else "pairs"
        return f"{len(rows)} {what}, {chosen.batch_size} per micro-batch packed in one row"
    if chosen.packing == "none":
        return f"{len(rows)} sequences, {chosen.batch_size} padded rows per micro-batch"
    summary = summarize(rows, train_rows, config.template.max_length)
    return (
        f"{summary.rows} sequences in {summary.bins} bins of <={summary.capacity} tokens "
        f"({summary.fill:.0%} full), {chosen.batch_size} bins per micro-batch"
    )


def _load_trainable_model(p: Prepared, device: str, precision: str, console: Any) -> Any:
    from tunesmith.training.methods import trainable_model

    loaded = trainable_model(p.config, p.ref, device=device, precision=precision)
    console.print(loaded.summary)
    return loaded.model


def finalize(config: Config) -> Config:
    """Fill the run name and make local paths absolute, so the saved config works from anywhere."""
    from tunesmith.config import with_run_name

    data = with_run_name(config).model_dump()
    for key in ("train", "validation", "test"):
        value = data["data"][key]
        if isinstance(value, str):
            data["data"][key] = _absolute(value)
        elif isinstance(value, list):
            data["data"][key] = [
                _absolute(v) if isinstance(v, str) else v | {"path": _absolute(v["path"])} for v in value
            ]
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
        discard(folder)


def _first(values: list[float]) -> float | None:
    return values[0] if values else None


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def _default_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
