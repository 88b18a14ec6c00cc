"""One run end to end, above the stages: prepare and train (`training`), then evaluate the test split
(`evaluate`), write the report (`report`) and seal the folder's manifest.

`training.run.train` owns the checks, the run folder and its guard (a failure after training still
marks the folder failed, or removes it on a user error); this module hands it `finish`, the part
after training, so training never imports evaluation or the report. After `--nproc` the weights
were trained in other processes: `finish` loads them back from the folder to evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.runfolder import RunFolder, write_manifest


@dataclass
class RunResult:
    """What `tunesmith.train()` returns."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def train(config: Any, *, console: Any = None, resume: bool = False, launch: Any = None) -> RunResult:
    """Fine-tune as `config` says (a `Config`, a YAML path, or with `resume=True` a run folder), then
    evaluate, report and seal; return where the results are."""
    from tunesmith.training.run import train as train_only

    return train_only(config, console=console, resume=resume, launch=launch, finish=finish)


def finish(trained: Any, console: Any) -> RunResult:
    """After training (a `training.run.Trained`): an interrupted run is sealed resumable; a trained one
    is evaluated on the test split (if any), reported, and sealed completed."""
    run_dir = trained.run_dir
    p = trained.prepared
    if p is None:  # another node of a multi-node run: node 0 seals the folder
        return RunResult(run_dir=run_dir, status=trained.status, metrics=trained.metrics)
    if trained.status == "interrupted":
        write_manifest(
            run_dir, "interrupted", {"metrics": trained.metrics, "resume": f"tunesmith train {run_dir} --resume"}
        )
        return RunResult(
            run_dir=run_dir,
            status="interrupted",
            metrics=trained.metrics,
            artifacts={"checkpoints": str(RunFolder(run_dir).checkpoints)},
        )
    metrics = dict(trained.metrics)
    if p.test:
        model = trained.model if trained.model is not None else _saved_model(run_dir)
        metrics["eval"] = _evaluate(p, model, run_dir, console)
    _write_report(run_dir, console)  # before the manifest, so it lists report.html and loss.png
    write_manifest(run_dir, "completed", {"metrics": metrics})
    weights = "model" if p.config.method == "full" else "adapter"
    artifacts = {weights: str(run_dir / weights), "metrics": str(RunFolder(run_dir).metrics)}
    return RunResult(run_dir=run_dir, status="completed", metrics=metrics, artifacts=artifacts)


def _saved_model(run_dir: Path) -> Any:
    """The saved weights loaded back on one device, for the evaluation of a distributed run."""
    from tunesmith.evaluate.runs import load_run

    return load_run(run_dir).model


def _evaluate(p: Any, model: Any, run_dir: Path, console: Any) -> dict:
    from tunesmith.evaluate.run_eval import evaluate_and_record

    results = evaluate_and_record(
        model,
        p.tokenizer,
        p.template,
        p.test,
        settings=p.config.eval,
        end_of_turn=list(p.markers),
        run_dir=run_dir,
        console=console,
    )
    return {k: v for k, v in results.items() if k in ("n", "base", "tuned")}


def _write_report(run_dir: Path, console: Any) -> None:
    """report.html and loss.png (tunesmith.report). A failure here is printed, never fatal: the
    trained weights are already saved and the report can be written again from the folder."""
    from tunesmith.report import write_report

    try:
        path = write_report(run_dir, status="completed")
    except Exception as err:  # noqa: BLE001 - a report bug must not lose a finished run
        console.print(f"[yellow]warning:[/] report.html not written: {type(err).__name__}: {err}", soft_wrap=True)
        return
    console.print(f"Report: {path}", soft_wrap=True)
