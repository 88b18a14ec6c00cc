"""Hosted fine-tuning: the same config and data checks as a local run, trained on a provider's GPUs.

`train(config)` checks the config and every row exactly as `tunesmith train` does (nothing reaches
the network before that), lists every setting the provider cannot honour (nothing is uploaded
then), creates the run folder at once (config.yaml, data_report.json, cloud.json), uploads the
pre-tokenized data and creates the job. `cloud.json` records each step as it completes, so a
killed `train` run again continues where it stopped: no second upload, no second job.
`status` follows the job (its progress into metrics.jsonl), `cancel` stops it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.runfolder import RunFolder, append_jsonl, create_run_dir, run_folder_guard, write_json

PROVIDERS = ("together",)


@dataclass
class CloudJob:
    """A hosted run, as recorded in RUN/cloud.json."""

    run_dir: Path
    provider: str
    model: str
    job_id: str | None = None
    status: str = "created"
    output_model: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    """split -> the provider's file id."""
    arguments: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def save(self) -> None:
        data = asdict(self)
        data.pop("run_dir")
        data.pop("metrics")
        write_json(RunFolder(self.run_dir).cloud, data)

    @classmethod
    def load(cls, run_dir: str | Path) -> CloudJob:
        import json

        path = RunFolder(Path(run_dir)).cloud
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(
                f"{run_dir} is not a hosted run (no cloud.json); start one with tunesmith cloud train"
            ) from None
        return cls(run_dir=Path(run_dir), **{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = {"provider", "model", "job_id", "status", "output_model", "files", "arguments"}


def train(config: Any, *, provider: str = "together", console: Any = None) -> CloudJob:
    """Check, upload and start a hosted fine-tuning job; return its record. Running it again for the
    same run folder continues an interrupted start."""
    from tunesmith.cloud import settings, together
    from tunesmith.config import Config, load_config
    from tunesmith.training.defaults import with_chosen
    from tunesmith.training.outputs import write_inputs
    from tunesmith.training.prepare import prepare
    from tunesmith.training.run import finalize

    if provider not in PROVIDERS:
        raise UserError(f"--provider {provider}: not one tunesmith trains on (one of {', '.join(PROVIDERS)})")
    console = console or _quiet_console()
    config = finalize(config if isinstance(config, Config) else load_config(config))
    if config.train.objective != "sft":
        raise UserError(
            f"{config.origin('train.objective')}: train.objective {config.train.objective}: tunesmith cloud "
            "uploads supervised rows pre-tokenized, and Together's preference training applies its own template "
            "to its own format, so the masks could not be tunesmith's; train it with tunesmith train, or on a "
            "GPU host with tunesmith remote train"
        )
    run_dir = config.run_dir()
    started = RunFolder(run_dir).cloud.is_file()
    if run_dir.exists() and not started:
        raise UserError(f"run folder {run_dir} already exists; choose another name (--set name=...)")
    prepared = prepare(config, console)  # every row checked, templated and masked: no network yet
    prepared.config = with_chosen(config, prepared.config)
    api = together.client()
    limits = together.model_limits(api, settings.provider_model(config))
    job_settings = settings.together_settings(prepared.config, limits)
    if job_settings.problems:
        raise UserError(
            f"Together cannot run this config as written ({len(job_settings.problems)}): "
            + "; ".join(job_settings.problems)
        )
    if not started:
        create_run_dir(run_dir)
    with run_folder_guard(run_dir, keep=started):
        if not started:
            write_inputs(prepared, run_dir)
            job = CloudJob(run_dir, provider, job_settings.arguments["model"], arguments=job_settings.arguments)
            job.save()
        job = CloudJob.load(run_dir)
        for split in ("train", "validation"):
            if split in prepared.splits and split not in job.files:
                path = RunFolder(run_dir).upload / f"{split}.parquet"
                rows = together.write_parquet(prepared.splits[split].examples, path)
                job.files[split] = together.upload(api, path)
                job.save()
                console.print(f"uploaded {split}: {rows:,} pre-tokenized rows as {job.files[split]}")
        if job.job_id is None:
            arguments = dict(job.arguments, training_file=job.files["train"])
            if "validation" in job.files:
                arguments.update(validation_file=job.files["validation"], n_evals=max(1, int(arguments["n_epochs"])))
            price = together.estimate(api, arguments)
            if price:
                console.print(f"Together's estimate: {price}")
            created = together.create_job(api, arguments, limits)
            job.job_id, job.status = str(created.id), str(created.status or "pending")
            job.output_model = getattr(created, "output_name", None)
            job.save()
    console.print(f"Together job {job.job_id} ({job.status}) for {job.model}; run folder {run_dir}")
    return job


def status(run_dir: str | Path, *, console: Any = None) -> CloudJob:
    """The job's status from the provider; its progress (step, loss) appended to metrics.jsonl."""
    from tunesmith.cloud import together

    job = started(run_dir)
    api = together.client()
    found = together.retrieve(api, str(job.job_id))
    job.status = str(found.status or job.status)
    job.output_model = getattr(found, "output_name", None) or job.output_model
    job.metrics = _record_progress(job, together.events(api, str(job.job_id)))
    job.save()
    return job


def cancel(run_dir: str | Path) -> CloudJob:
    from tunesmith.cloud import together

    job = started(run_dir)
    if job.status in together.FINAL:
        raise UserError(f"job {job.job_id} is already {job.status}; nothing to cancel")
    found = together.cancel(together.client(), str(job.job_id))
    job.status = str(getattr(found, "status", None) or "cancel_requested")
    job.save()
    return job


def started(run_dir: str | Path) -> CloudJob:
    job = CloudJob.load(run_dir)
    if job.job_id is None:
        raise UserError(f"{run_dir}: the job was never created; run tunesmith cloud train again to finish starting it")
    return job


_LOSS = re.compile(r"\bloss\W+([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)", re.IGNORECASE)
_STEP = re.compile(r"\bstep\W+([0-9]+)", re.IGNORECASE)


def _record_progress(job: CloudJob, events: list[Any]) -> list[dict[str, Any]]:
    """Steps with a loss, from the events' messages, appended to metrics.jsonl once each."""
    import json

    path = RunFolder(job.run_dir).metrics
    seen = set()
    if path.is_file():
        seen = {json.loads(line).get("step") for line in path.read_text(encoding="utf-8").splitlines() if line}
    found = []
    for event in events:
        message = str(getattr(event, "message", "") or "")
        loss, step = _LOSS.search(message), getattr(event, "step", None) or _STEP.search(message)
        if loss is None or step is None:
            continue
        number = int(step if isinstance(step, int) else step.group(1))
        record = {"step": number, "loss": float(loss.group(1)), "source": job.provider}
        found.append(record)
        if number not in seen:
            append_jsonl(path, record)
            seen.add(number)
    return found


def _quiet_console() -> Any:
    from tunesmith.console import make_console

    return make_console()
