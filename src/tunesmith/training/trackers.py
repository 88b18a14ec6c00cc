"""One small class per experiment tracker: what it needs installed, the environment transformers'
integration for it reads, how our resolved config is added to its run, and how a run it left open
is closed. `training/tracking.py` runs them; see its docstring for what each writes where.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

from tunesmith.config.redact import REDACTED, redact_text, url_credentials
from tunesmith.config.schema import Config
from tunesmith.errors import UserError

EXTRA = "tunesmith[tracking]"
INSTALL_HINT = f'pip install "{EXTRA}"'
_MLFLOW_KEY = re.compile(r"[^0-9A-Za-z_\-. :/]")
_TRUE = {"1", "true", "yes", "on"}


class Tracker:
    """A backend of `tracking.backends`. `env` returns (variables set for the run, defaults that a
    user's own value of the same variable overrides)."""

    name: ClassVar[str]
    modules: ClassVar[tuple[str, ...]]

    def check(self, config: Config, where: str, importable: Any) -> None:
        missing = [m for m in self.modules if not importable(m)]
        if missing:
            raise UserError(
                f"{where}: tracking.backends: {self.name} needs the {EXTRA} extra ({', '.join(missing)} "
                f"is not installed): {INSTALL_HINT}"
            )

    def env(self, config: Config, run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
        return {}, {}

    def log_config(self, params: dict[str, Any], run_dir: Path) -> None:
        """Add the flattened, redacted config to the run the integration opened."""

    def open_run(self) -> Any:
        """The run open now, if the library is imported (to tell it from one the run opens)."""
        return None

    def close(self, before: Any, failed: bool) -> None:
        """Close a run opened since `before` (failed if the block raised)."""


def param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class MLflow(Tracker):
    name, modules = "mlflow", ("mlflow",)
    sql_modules = ("sqlalchemy", "alembic")  # MLflow's sqlite store

    def check(self, config: Config, where: str, importable: Any) -> None:
        super().check(config, where, importable)
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
            missing = [m for m in self.sql_modules if not importable(m)]
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

    def env(self, config: Config, run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
        env: dict[str, str] = {}
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
        return env, {"HF_MLFLOW_LOG_ARTIFACTS": "FALSE"}

    def log_config(self, params: dict[str, Any], run_dir: Path) -> None:
        import mlflow
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        if mlflow.active_run() is not None:
            items = [(_MLFLOW_KEY.sub("_", k), param_text(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
            for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                mlflow.log_params(dict(items[start : start + MAX_PARAMS_TAGS_PER_BATCH]))

    def open_run(self) -> Any:
        mlflow = sys.modules.get("mlflow")
        active = mlflow.active_run() if mlflow is not None and hasattr(mlflow, "active_run") else None
        return active.info.run_id if active else None

    def close(self, before: Any, failed: bool) -> None:
        mlflow = sys.modules.get("mlflow")
        if mlflow is not None and hasattr(mlflow, "active_run"):
            active = mlflow.active_run()
            if active is not None and active.info.run_id != before:
                mlflow.end_run(status="FAILED" if failed else "FINISHED")


class WandB(Tracker):
    name, modules = "wandb", ("wandb",)

    def env(self, config: Config, run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
        env = {
            "WANDB_MODE": config.tracking.wandb_mode,
            "WANDB_DIR": str(run_dir),
            "WANDB_PROJECT": redact_text(config.tracking.project),
        }
        return env, {"WANDB_LOG_MODEL": "false", "WANDB_WATCH": "false"}

    def log_config(self, params: dict[str, Any], run_dir: Path) -> None:
        import wandb

        if wandb.run is not None:
            wandb.run.config.update(params, allow_val_change=True)

    def open_run(self) -> Any:
        wandb = sys.modules.get("wandb")
        return getattr(wandb, "run", None) if wandb is not None else None

    def close(self, before: Any, failed: bool) -> None:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None and wandb.run is not before:
            wandb.finish(exit_code=1 if failed else 0)


class TensorBoard(Tracker):
    name, modules = "tensorboard", ("tensorboard",)

    def env(self, config: Config, run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
        return {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard")}, {}

    def log_config(self, params: dict[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        text = "\n".join(f"    {k}: {param_text(v)}" for k, v in params.items())  # indented: a code block in markdown
        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), filename_suffix=".tunesmith-config")
        try:
            writer.add_text("tunesmith/config", text, 0)
        finally:
            writer.close()


TRACKERS: dict[str, Tracker] = {t.name: t for t in (MLflow(), WandB(), TensorBoard())}


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
