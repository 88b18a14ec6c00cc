"""What a run shows and records while it trains: a live progress bar and metrics.jsonl."""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunesmith.runfolder import append_jsonl


def memory_mb() -> float:
    """Peak memory of this process so far: CUDA allocations on a GPU, else resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PREFERENCE_KEYS = ("rewards/", "logps/", "kl", "eval_rewards/", "eval_logps/", "eval_kl")
"""What a preference run logs beside its loss (training/preference.py)."""


class MetricsWriter(TrainerCallback):
    """Appends one JSON object per log event to metrics.jsonl (train steps and evaluations)."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.perf_counter()
        self.last_time = self.started
        self.last_tokens = 0
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens = time.perf_counter(), int(state.num_input_tokens_seen)  # resumed: not 0

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:  # under --nproc, rank 0 alone writes (the logged loss is all ranks')
            return
        logs = dict(logs or {})
        now = time.perf_counter()
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            tokens = int(state.num_input_tokens_seen)
            rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
            record |= {
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_seen": tokens,
                "tokens_per_s": round(rate, 1),
            }
            self.last_time, self.last_tokens = now, tokens
            self.losses.append(float(logs["loss"]))
        elif "eval_loss" in logs:
            record |= {"eval_loss": logs["eval_loss"]}
        else:
            return
        record |= {key: value for key, value in logs.items() if key.startswith(PREFERENCE_KEYS)}
        record |= {"elapsed_s": round(now - self.started, 2), "memory_mb": round(memory_mb(), 1)}
        append_jsonl(self.path, record)


class ProgressBar(TrainerCallback):
    """A rich progress bar: step, loss, tokens/s, ETA.

    The Trainer calls `on_step_end` for step N before it logs step N's loss (`on_log`), so the step
    count is set in the one and the loss in the other: setting both at step end would show step N
    with step N-1's loss.
    """

    def __init__(self, console: Any):
        self.console = console
        self.progress = None
        self.task = None
        self.loss = math.nan
        self.started = 0.0
        self.first_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-", rate="-")
        self.started = time.perf_counter()
        self.first_tokens = state.num_input_tokens_seen  # a resumed run starts with the tokens seen before

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and self.progress is not None:
            self.loss = float(logs["loss"])
            self.progress.update(self.task, loss=f"{self.loss:.3f}")  # a diverged run shows nan, not "-"

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{(state.num_input_tokens_seen - self.first_tokens) / elapsed:,.0f}"
        self.progress.update(self.task, completed=state.global_step, rate=rate)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
