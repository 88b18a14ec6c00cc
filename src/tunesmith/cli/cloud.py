"""`tunesmith cloud train|status|logs|cancel`: hosted fine-tuning (Together)."""

from __future__ import annotations

import argparse
import json

from tunesmith.cli.common import add_set_option


def register(verbs: argparse._SubParsersAction) -> None:
    cloud = verbs.add_parser(
        "cloud",
        help="train on a hosted fine-tuning API (Together)",
        description="The config and every row are checked as for a local run, the data is uploaded "
        "pre-tokenized (tunesmith's template and masks), and the job runs on the provider. The API key "
        "comes from TOGETHER_API_KEY only.",
    )
    sub = cloud.add_subparsers(dest="cloud_verb", metavar="ACTION", required=True)
    train = sub.add_parser(
        "train",
        help="check, upload and start a job; the run folder is created at once",
        description="Settings the provider cannot honour are listed (exit 2) before anything is uploaded. "
        "Run it again after an interruption: it continues without a second upload or job.",
    )
    train.add_argument("config", help="YAML config file")
    train.add_argument("--provider", default="together", choices=("together",), help="the hosted API (together)")
    add_set_option(train)
    train.set_defaults(handler="tunesmith.cli.cloud:run_train")
    for name, text in (
        ("status", "the job's status; its progress goes into RUN/metrics.jsonl"),
        ("logs", "the job's events, one line each"),
        ("cancel", "cancel the job"),
        ("fetch", "download, check and install the adapter of a completed job (resumes a broken download)"),
    ):
        verb = sub.add_parser(name, help=text)
        verb.add_argument("run_dir", help="the run folder `cloud train` made")
        if name == "status":
            verb.add_argument("--json", action="store_true", help="print the job record as JSON")
        if name == "fetch":
            verb.add_argument(
                "--merged",
                action="store_true",
                help="also the provider's merged weights into RUN/merged, checked against base + adapter",
            )
        verb.set_defaults(handler=f"tunesmith.cli.cloud:run_{name}")


def _console():
    from tunesmith.console import make_console, quiet_libraries

    quiet_libraries()
    return make_console()


def run_train(args: argparse.Namespace) -> int:
    from tunesmith import cloud
    from tunesmith.config import load_config

    console = _console()
    cloud.train(load_config(args.config, args.overrides), provider=args.provider, console=console)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from tunesmith import cloud

    job = cloud.status(args.run_dir)
    if args.json:
        print(
            json.dumps({"job_id": job.job_id, "status": job.status, "model": job.output_model, "metrics": job.metrics})
        )
        return 0
    last = job.metrics[-1] if job.metrics else None
    progress = f", step {last['step']} loss {last['loss']:.4f}" if last else ""
    _console().print(f"{job.provider} job {job.job_id}: {job.status}{progress}")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from tunesmith import cloud
    from tunesmith.cloud import together

    job = cloud.started(args.run_dir)
    for event in together.events(together.client(), str(job.job_id)):
        print(f"{getattr(event, 'created_at', '') or ''} {getattr(event, 'message', '') or ''}".strip())
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from tunesmith import cloud

    job = cloud.cancel(args.run_dir)
    _console().print(f"{job.provider} job {job.job_id}: {job.status}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from tunesmith.cloud.fetch import fetch

    console = _console()
    job = fetch(args.run_dir, merged=args.merged, console=console)
    console.print(
        f"fetched {job.provider} job {job.job_id}: {args.run_dir}/adapter; "
        f"next: tunesmith eval {args.run_dir}, tunesmith export gguf {args.run_dir}"
    )
    return 0
