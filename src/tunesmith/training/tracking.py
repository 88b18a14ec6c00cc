"""Experiment trackers besides metrics.jsonl (always written): MLflow, Weights & Biases, TensorBoard.

transformers' own integrations do the logging (`TrainingArguments.report_to`, which instantiates
its MLflowCallback, WandbCallback and TensorBoardCallback); they are configured only through the
environment variables they document, set for the length of the run by `setup_tracking` and put
back afterwards:

| backend     | where it writes                                    | set here                                   |
|-------------|----------------------------------------------------|--------------------------------------------|
| mlflow      | `tracking.mlflow_uri`, else MLFLOW_TRACKING_URI,   | MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME,|
|             | else sqlite `./mlflow.db` (MLflow's own default)   | MLFLOW_FLATTEN_PARAMS, MLFLOW_TAGS          |
| wandb       | `<run_dir>/wandb/` (offline unless `wandb_mode`)   | WANDB_MODE, WANDB_DIR, WANDB_PROJECT        |
| tensorboard | `<run_dir>/tensorboard/`                           | TENSORBOARD_LOGGING_DIR                     |

What each logs: the integration's own params (TrainingArguments, whose `to_dict` masks every
`*_token` field, and the model config), every log event of the Trainer (loss, learning_rate,
grad_norm, eval_loss, ...) at its global step, and the run name (`TrainingArguments.run_name`).
`ConfigParams`, our one callback, adds the resolved tunesmith config, flattened to dotted keys
under `tunesmith.` (MLflow params, W&B config, a TensorBoard text), with secrets redacted.

Secrets (HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...) stay in the environment where the
libraries read them; nothing here copies one into a param, a tag or a file, and our config params
are redacted by the same function as the run folder's config.yaml and the model card
(`tunesmith.config.redact`: secret-named keys, URL passwords and secret query values, known token
shapes, any value of a secret environment variable). A `tracking.mlflow_uri` with credentials
(`https://user:password@host`) reaches MLflow without them: the user and password go to
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for the run (MLflow's own basic-auth variables),
so MLflow never holds, prints ("View run at ...") or stores a URL with a password; a password
already redacted (a config.yaml from a run folder, on --resume) is dropped, and the environment's
MLFLOW_TRACKING_PASSWORD is used. A user without a password (a token as the user) stays in the URL,
with MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT set so that MLflow does not print it. Both MLflow and
W&B strip credentials from the git remote URL they record, and no tracker uploads checkpoints
unless its own variable asks for it (HF_MLFLOW_LOG_ARTIFACTS, WANDB_LOG_MODEL).

This module imports nothing heavy at import time: `check_tracking` runs before any data work. Each
backend is one class in `training/trackers.py`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunesmith.config.redact import redact_config, redact_text
from tunesmith.config.redact import secret_values as _secret_values
from tunesmith.config.schema import Config
from tunesmith.training.trackers import TRACKERS, Tracker


def report_to(config: Config) -> list[str]:
    """The `TrainingArguments.report_to` of a run: transformers' names of the chosen trackers.

    >>> report_to(Config.model_validate({"data": {"train": "a.jsonl"}, "tracking": {"backends": ["wandb"]}}))
    ['wandb']
    """
    return list(dict.fromkeys(config.tracking.backends))


def _chosen(config: Config) -> list[Tracker]:
    return [TRACKERS[name] for name in report_to(config)]


def check_tracking(config: Config) -> None:
    """Refuse, before the run folder exists, a tracker whose package is missing or that cannot start.

    Raises a one-line UserError naming where `tracking.backends` was set and what to install.
    """
    where = config.origin("tracking.backends")
    for tracker in _chosen(config):
        tracker.check(config, where, _importable)


def tracking_env(config: Config, run_dir: Path) -> dict[str, str]:
    """The environment the chosen integrations read, as the variables they document.

    Variables that only change how much is logged (HF_MLFLOW_LOG_ARTIFACTS, WANDB_LOG_MODEL,
    WANDB_WATCH) keep a value the user already set; the rest follow the config.
    """
    env: dict[str, str] = {}
    defaults: dict[str, str] = {}
    for tracker in _chosen(config):
        own, fallback = tracker.env(config, run_dir)
        env |= own
        defaults |= fallback
    return {k: v for k, v in defaults.items() if k not in os.environ} | env


@contextmanager
def setup_tracking(config: Config, run_dir: Path) -> Iterator[list[Any]]:
    """Set the trackers' environment for a run; yields the extra callbacks to give the Trainer.

    Build the Trainer and train inside the block (TensorBoardCallback reads its folder when the
    Trainer is made, MLflow and W&B theirs at train begin). On leaving, the environment is put back,
    and a W&B or MLflow run that was started inside the block and is still open is closed (failed
    if the block raised), so a second run in the same process starts a new one.

    Inside the block sys.argv is redacted too: W&B records the command line (`--set
    tracking.mlflow_uri=https://user:password@...` would be stored as typed).
    """
    trackers = _chosen(config)
    if not trackers:
        yield []
        return
    env = tracking_env(config, run_dir)
    saved = {key: os.environ.get(key) for key in env}
    before = [(tracker, tracker.open_run()) for tracker in trackers]
    os.environ.update(env)
    argv = list(sys.argv)
    sys.argv[:] = [redact_text(arg) for arg in argv]
    failed = True
    try:
        yield [config_params_callback(config, run_dir)]
        failed = False
    finally:
        try:
            for tracker, run in reversed(before):  # the last one opened first
                tracker.close(run, failed)
        finally:
            sys.argv[:] = argv
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def config_params(config: Config, secrets: list[str] | None = None) -> dict[str, Any]:
    """The resolved config as flat `tunesmith.a.b` keys with plain values, secrets redacted.

    >>> p = config_params(Config.model_validate({"data": {"train": "a.jsonl"}}))
    >>> p["tunesmith.data.train"], p["tunesmith.train.warmup_ratio"], p["tunesmith.data.validation"]
    ('a.jsonl', 0.05, None)
    """
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        else:
            flat[key] = value

    walk(redact_config(config, secrets), "tunesmith")
    return flat


def secret_values(environ: dict[str, str] | os._Environ | None = None) -> list[str]:
    """Values of the environment variables that hold secrets (HF_TOKEN, WANDB_API_KEY, ...)."""
    return _secret_values(environ)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret redacted (`tunesmith.config.redact.redact_text`).

    >>> redact("https://me:pw@host/x?k=hf_abcdef", ["hf_abcdef"])
    'https://me:<redacted>@host/x?k=<redacted>'
    """
    return redact_text(text, secrets)


def config_params_callback(config: Config, run_dir: Path) -> Any:
    """A TrainerCallback that adds the resolved config to the trackers the integrations opened."""
    from transformers import TrainerCallback

    class ConfigParams(TrainerCallback):
        """Runs after the integrations' on_train_begin (the Trainer puts report_to callbacks first)."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                params = config_params(config)
                for tracker in _chosen(config):
                    tracker.log_config(params, run_dir)

    return ConfigParams()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
