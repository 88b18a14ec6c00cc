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

This module imports nothing heavy at import time: `check_tracking` runs before any data work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunesmith.config.redact import REDACTED, redact_config, redact_text, url_credentials
from tunesmith.config.redact import secret_values as _secret_values
from tunesmith.config.schema import Config
from tunesmith.errors import UserError

EXTRA = "tunesmith[tracking]"
INSTALL_HINT = f'pip install "{EXTRA}"'

# the modules each backend imports (mlflow's sqlite store needs sqlalchemy and alembic as well)
_MODULES: dict[str, tuple[str, ...]] = {"mlflow": ("mlflow",), "wandb": ("wandb",), "tensorboard": ("tensorboard",)}
_SQL_MODULES = ("sqlalchemy", "alembic")

_MLFLOW_KEY = re.compile(r"[^0-9A-Za-z_\-. :/]")
_TRUE = {"1", "true", "yes", "on"}


def report_to(config: Config) -> list[str]:
    """The `TrainingArguments.report_to` of a run: transformers' names of the chosen trackers.

    >>> report_to(Config.model_validate({"data": {"train": "a.jsonl"}, "tracking": {"backends": ["wandb"]}}))
    ['wandb']
    """
    return list(dict.fromkeys(config.tracking.backends))


def check_tracking(config: Config) -> None:
    """Refuse, before the run folder exists, a tracker whose package is missing or that cannot start.

    Raises a one-line UserError naming where `tracking.backends` was set and what to install.
    """
    where = config.origin("tracking.backends")
    for name in report_to(config):
        missing = [m for m in _MODULES[name] if not _importable(m)]
        if missing:
            raise UserError(
                f"{where}: tracking.backends: {name} needs the {EXTRA} extra ({', '.join(missing)} "
                f"is not installed): {INSTALL_HINT}"
            )
    if "mlflow" in config.tracking.backends:
        if os.environ.get("DISABLE_MLFLOW_INTEGRATION", "").upper() == "TRUE":
            raise UserError(
                f"{where}: tracking.backends: mlflow is chosen but DISABLE_MLFLOW_INTEGRATION=TRUE "
                "is set in the environment; unset it or drop mlflow"
            )
        uri = mlflow_tracking_uri(config)
        uri_where = (
            f"{config.origin('tracking.mlflow_uri')}: tracking.mlflow_uri"
            if config.tracking.mlflow_uri
            else "MLFLOW_TRACKING_URI"
            if os.environ.get("MLFLOW_TRACKING_URI")
            else "tracking.mlflow_uri"
        )
        if uri.startswith("sqlite:"):
            missing = [m for m in _SQL_MODULES if not _importable(m)]
            if missing:
                raise UserError(
                    f"{uri_where}: an MLflow sqlite store needs the {EXTRA} extra "
                    f"({', '.join(missing)} is not installed): {INSTALL_HINT}"
                )
        elif uri.startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in _TRUE:
            raise UserError(
                f"{uri_where}: MLflow no longer opens folder (file:) stores unless "
                "MLFLOW_ALLOW_FILE_STORE=true is set; give a .db path (sqlite) or a server URL instead"
            )


def mlflow_tracking_uri(config: Config) -> str:
    """Where MLflow logs: `tracking.mlflow_uri`, else MLFLOW_TRACKING_URI, else sqlite `./mlflow.db`.

    A URI with a scheme (http://, sqlite:///, databricks, file:) is used as it is; a local path
    ending in .db/.sqlite is a sqlite file, any other local path a folder holding `mlflow.db`.

    >>> c = Config.model_validate({"data": {"train": "a"}, "tracking": {"mlflow_uri": "http://127.0.0.1:5000"}})
    >>> mlflow_tracking_uri(c)
    'http://127.0.0.1:5000'
    """
    value = config.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlflow.db"
    if value == "databricks" or re.match(r"^[a-z][a-z0-9+.-]+:", value, re.IGNORECASE):
        return value
    path = Path(value).expanduser().resolve()
    if path.suffix.lower() not in (".db", ".sqlite", ".sqlite3"):
        path = path / "mlflow.db"
    return f"sqlite:///{path}"


def tracking_env(config: Config, run_dir: Path) -> dict[str, str]:
    """The environment the chosen integrations read, as the variables they document.

    Variables that only change how much is logged (HF_MLFLOW_LOG_ARTIFACTS, WANDB_LOG_MODEL,
    WANDB_WATCH) keep a value the user already set; the rest follow the config.
    """
    backends = set(config.tracking.backends)
    env: dict[str, str] = {}
    defaults: dict[str, str] = {}
    if "mlflow" in backends:
        tags = {"tunesmith.run_dir": str(run_dir)}
        try:
            tags = json.loads(os.environ.get("MLFLOW_TAGS") or "{}") | tags
        except (ValueError, TypeError):
            pass
        uri = mlflow_tracking_uri(config)
        bare, user, password = url_credentials(uri)
        if password is not None:  # MLflow's own basic-auth variables, instead of a URL with a password in it
            uri = bare
            if user is not None:
                env["MLFLOW_TRACKING_USERNAME"] = user
            if password != REDACTED:  # a redacted one (config.yaml on --resume): the environment's is used
                env["MLFLOW_TRACKING_PASSWORD"] = password
        elif user is not None:  # a token as the user (https://TOKEN@host): kept, but never printed
            env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        env |= {
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_EXPERIMENT_NAME": redact_text(config.tracking.project),
            "MLFLOW_FLATTEN_PARAMS": "TRUE",
            "MLFLOW_TAGS": json.dumps(tags),
        }
        defaults |= {"HF_MLFLOW_LOG_ARTIFACTS": "FALSE"}
    if "wandb" in backends:
        env |= {
            "WANDB_MODE": config.tracking.wandb_mode,
            "WANDB_DIR": str(run_dir),
            "WANDB_PROJECT": redact_text(config.tracking.project),
        }
        defaults |= {"WANDB_LOG_MODEL": "false", "WANDB_WATCH": "false"}
    if "tensorboard" in backends:
        env |= {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard")}
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
    backends = report_to(config)
    if not backends:
        yield []
        return
    env = tracking_env(config, run_dir)
    saved = {key: os.environ.get(key) for key in env}
    before = _open_runs()
    os.environ.update(env)
    argv = list(sys.argv)
    sys.argv[:] = [redact_text(arg) for arg in argv]
    failed = True
    try:
        yield [config_params_callback(config, run_dir)]
        failed = False
    finally:
        try:
            _close_runs(before, failed)
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
    >>> p["tunesmith.data.train"], p["tunesmith.train.learning_rate"], p["tunesmith.data.validation"]
    ('a.jsonl', 0.0002, None)
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


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


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
                _log_config(config, run_dir)

    return ConfigParams()


def _log_config(config: Config, run_dir: Path) -> None:
    params = config_params(config)
    backends = set(config.tracking.backends)
    if "mlflow" in backends:
        import mlflow
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        if mlflow.active_run() is not None:
            items = [(_MLFLOW_KEY.sub("_", k), _param_text(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
            for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                mlflow.log_params(dict(items[start : start + MAX_PARAMS_TAGS_PER_BATCH]))
    if "wandb" in backends:
        import wandb

        if wandb.run is not None:
            wandb.run.config.update(params, allow_val_change=True)
    if "tensorboard" in backends:
        from torch.utils.tensorboard import SummaryWriter

        text = "\n".join(f"    {k}: {_param_text(v)}" for k, v in params.items())  # indented: a code block in markdown
        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), filename_suffix=".tunesmith-config")
        try:
            writer.add_text("tunesmith/config", text, 0)
        finally:
            writer.close()


def _open_runs() -> tuple[Any, Any]:
    """The MLflow run id and W&B run open now, when those libraries are already imported."""
    mlflow, wandb = sys.modules.get("mlflow"), sys.modules.get("wandb")
    active = mlflow.active_run() if mlflow is not None and hasattr(mlflow, "active_run") else None
    return (active.info.run_id if active else None, getattr(wandb, "run", None) if wandb is not None else None)


def _close_runs(before: tuple[Any, Any], failed: bool) -> None:
    mlflow_before, wandb_before = before
    mlflow, wandb = sys.modules.get("mlflow"), sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None and wandb.run is not wandb_before:
        wandb.finish(exit_code=1 if failed else 0)
    if mlflow is not None and hasattr(mlflow, "active_run"):
        active = mlflow.active_run()
        if active is not None and active.info.run_id != mlflow_before:
            mlflow.end_run(status="FAILED" if failed else "FINISHED")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
