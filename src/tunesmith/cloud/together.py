"""Together's fine-tuning API through its official client (`pip install 'tunesmith[cloud]'`).

The key comes from `TOGETHER_API_KEY` only (the client reads it; `TOGETHER_BASE_URL` points it at
another server, as the tests do): never an argument, never written anywhere. The training data goes
up pre-tokenized (Parquet: `input_ids`, `attention_mask`, `labels` with -100 where the loss is
masked, `position_ids`), so the template and the masks are tunesmith's own, one example per row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError

KEY_VARIABLE = "TOGETHER_API_KEY"
FINAL = ("completed", "cancelled", "error", "failed")


def client() -> Any:
    """The official client; a UserError saying how when the key or the client is missing."""
    if not os.environ.get(KEY_VARIABLE):
        raise UserError(
            f"no Together API key: set {KEY_VARIABLE} in the environment (tunesmith never takes a key on the "
            "command line or writes one to a file)"
        )
    try:
        import together
    except ImportError:
        raise UserError("tunesmith cloud needs Together's client: pip install 'tunesmith[cloud]'") from None
    return together.Together(max_retries=2)


def model_limits(api: Any, model: str) -> Any:
    try:
        return api.fine_tuning.model_limits(model_name=model)
    except Exception as err:  # noqa: BLE001 - the client's errors name the HTTP status
        raise _refused(err, f"Together does not fine-tune {model}") from None


def write_parquet(examples: list[Any], path: Path) -> int:
    """One row per Example; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunesmith.runfolder import atomic_file

    table = pa.table(
        {
            "input_ids": [list(e.input_ids) for e in examples],
            "attention_mask": [[1] * len(e.input_ids) for e in examples],
            "labels": [list(e.labels) for e in examples],
            "position_ids": [list(range(len(e.input_ids))) for e in examples],
        }
    )
    with atomic_file(path) as temp:
        pq.write_table(table, str(temp))
    return len(examples)


def upload(api: Any, path: Path) -> str:
    """The file id of `path` uploaded for fine-tuning."""
    try:
        return str(api.files.upload(file=path, purpose="fine-tune", check=True).id)
    except Exception as err:  # noqa: BLE001
        raise _refused(err, f"upload of {path.name} failed") from None


def estimate(api: Any, arguments: dict[str, Any]) -> str | None:
    """Together's price estimate for the job, said before it is created; a UserError when Together
    says the account cannot pay for it. None when it gives none."""
    keys = ("training_file", "validation_file", "model", "n_epochs")
    try:
        found = api.fine_tuning.estimate_price(**{k: arguments[k] for k in keys if k in arguments})
    except Exception:  # noqa: BLE001 - an estimate is a courtesy; creating the job says what is wrong
        return None
    if not getattr(found, "estimation_available", False):
        return None
    price = getattr(found, "estimated_total_price", None)
    if getattr(found, "allowed_to_proceed", True) is False:
        raise UserError(
            f"Together estimates ${price} for this job, more than the account may spend; nothing was started"
        )
    tokens = getattr(found, "estimated_train_token_count", None)
    return f"${price:.2f}" + (f" for {int(tokens):,} trained tokens" if tokens else "") if price is not None else None


def create_job(api: Any, arguments: dict[str, Any], limits: Any) -> Any:
    try:
        return api.fine_tuning.create(**arguments, model_limits=limits)
    except Exception as err:  # noqa: BLE001
        raise _refused(err, "Together did not create the job") from None


def retrieve(api: Any, job_id: str) -> Any:
    try:
        return api.fine_tuning.retrieve(job_id)
    except Exception as err:  # noqa: BLE001
        raise _refused(err, f"job {job_id}") from None


def events(api: Any, job_id: str) -> list[Any]:
    try:
        return list(api.fine_tuning.list_events(job_id).data or [])
    except Exception as err:  # noqa: BLE001
        raise _refused(err, f"events of job {job_id}") from None


def cancel(api: Any, job_id: str) -> Any:
    try:
        return api.fine_tuning.cancel(job_id)
    except Exception as err:  # noqa: BLE001
        raise _refused(err, f"cancel of job {job_id}") from None


def _refused(err: Exception, what: str) -> Exception:
    status = getattr(err, "status_code", None)
    if status in (401, 403):
        return UserError(f"Together refused the API key in {KEY_VARIABLE} ({status}): {what}")
    if status is not None and 400 <= status < 500:
        return UserError(f"{what}: Together answered {status}: {_message(err)}")
    return TunesmithError(f"{what}: {type(err).__name__}: {_message(err)}")


def _message(err: Exception) -> str:
    return " ".join(str(getattr(err, "message", err)).split())[:300]
