"""The training call: `trainer.train()`, resumed from a checkpoint if given, and the ways a run stops.

SIGTERM (a scheduler's preemption, `kill`) makes a running `train` finish its optimizer step, write
a checkpoint there and return with status "interrupted" (the CLI exits with 143). Early stopping
carries its patience counter across a resume, and an evaluation at a step that already has a
checkpoint saves again so that the checkpoint holds the state after it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

INTERRUPTED_EXIT_CODE = 143  # 128 + SIGTERM, what shells and schedulers expect of a terminated job


def checkpoint_callbacks(*, early_stopping_patience: int | None, save_on_best: bool) -> list[TrainerCallback]:
    """Early stopping (if asked) and the callback that keeps checkpoints in step with evaluations."""
    callbacks: list[TrainerCallback] = [SaveAfterEval(save_on_best=save_on_best)]
    if early_stopping_patience:
        callbacks.insert(0, EarlyStopping(early_stopping_patience=early_stopping_patience))
    return callbacks


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping with the patience of this run's config and, on a resume, the
    count of evaluations without improvement the checkpoint recorded. (No warning about
    `load_best_model_at_end`: CheckpointMixin restores the best weights when asked.)"""

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, dict):
            self.early_stopping_patience_counter = saved.get("attributes", {}).get("early_stopping_patience_counter", 0)
        return control


class SaveAfterEval(TrainerCallback):
    """Save again after an evaluation when its step already has a checkpoint (an epoch-end eval runs
    after the step's save, and a resume must see the state after it); with `save_on_best`, also
    save whenever eval loss reaches a new best, so the best weights always have a checkpoint."""

    def __init__(self, save_on_best: bool = False):
        self.save_on_best = save_on_best

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if (Path(args.output_dir) / f"step-{state.global_step}").is_dir():
            control.should_save = True
        elif self.save_on_best and loss is not None and (state.best_metric is None or loss < state.best_metric):
            control.should_save = True
        return control


class StopOnSignal(TrainerCallback):
    """After a stop signal, end the current optimizer step with a checkpoint and stop training."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


@contextmanager
def _catch_sigterm(stop: StopOnSignal) -> Iterator[None]:
    def handler(signum, frame):
        stop.signal = signum
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fit(trainer: Any, *, meta: dict[str, Any], resume_from: Path | None, console: Any) -> str | None:
    """`trainer.train()`, resumed from a checkpoint if given, stoppable by SIGTERM. Returns the
    signal's name when one stopped it (a checkpoint of the last step is then on disk), else None."""
    from rich.markup import escape

    stop = StopOnSignal()
    trainer.checkpoint_meta, trainer.stopper = meta, stop
    trainer.add_callback(stop)
    with _catch_sigterm(stop):
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            trainer.remove_callback(stop)
    if trainer.checkpoints_skipped and trainer.is_world_process_zero():
        console.print("[yellow]note:[/] no checkpoints were written: FSDP and DeepSpeed runs cannot be resumed yet")
    if trainer.best_loaded is not None:
        best, loss = trainer.best_loaded
        console.print(f"Kept the weights of the best checkpoint, {best.name} (eval loss {loss:.4f})")
    if stop.signal is None:
        return None
    name = signal.Signals(stop.signal).name
    run_dir = Path(trainer.args.output_dir).parent
    if trainer.checkpoints_skipped:
        console.print(f"[yellow]Stopped by {name}[/] after step {trainer.state.global_step}, without a checkpoint")
    elif trainer.is_world_process_zero():
        console.print(
            f"[yellow]Stopped by {name}[/] after step {trainer.state.global_step}; checkpoint written. "
            f"Continue with: tunesmith train {escape(str(run_dir))} --resume",
            soft_wrap=True,
        )
    return name
