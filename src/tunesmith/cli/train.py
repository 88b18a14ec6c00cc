"""`tunesmith train CONFIG` and `tunesmith quickstart`: the same code path, one with a shipped config."""

from __future__ import annotations

import argparse
import json
import re
import time
from importlib import resources
from pathlib import Path

from tunesmith.cli.common import add_set_option

DEFAULT_MODEL = "smollm2-135m-instruct"  # ModelConfig.name's default, named here so --help imports no pydantic

# A request that is in no split of the bundled data: the quick start's closing demonstration.
DEMO_REQUEST = "Please set the garage lights to 65% brightness"


def register(verbs: argparse._SubParsersAction) -> None:
    train = verbs.add_parser(
        "train",
        help="fine-tune as a config file says (or on a data file: --data)",
        description="Fine-tune as CONFIG says, or on --data FILE with every other setting "
        "at its default (--model NAME, --set KEY=VALUE change them); results go "
        "to output_dir/name/. --help-config lists every config key.",
    )
    train.add_argument(
        "config", nargs="?", help="YAML config file (with --resume: or a run folder); optional with --data"
    )
    train.add_argument(
        "--data",
        metavar="FILE",
        help="training data (sets data.train): a file in any supported format, a datasets folder, "
        "hf:NAME[:SPLIT] or bundled:NAME/FILE; no config file needed",
    )
    train.add_argument(
        "--model",
        metavar="NAME",
        help="the model to fine-tune (sets model.name): a built-in name, a local Hugging Face model "
        f"folder or a hub id; default {DEFAULT_MODEL}",
    )
    train.add_argument(
        "--help-config", action="store_true", help="list every config key with its type, default and meaning, and exit"
    )
    add_set_option(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run (output_dir/name, or the run folder given) from its newest complete "
        "checkpoint; refuses changed data or template",
    )
    train.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N processes on this machine (one per GPU) through torchrun; "
        "distributed.strategy picks DDP, FSDP2 or DeepSpeed ZeRO",
    )
    train.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines in the run (default 1)")
    train.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="R",
        help="this machine's place among them, 0 to M-1; node 0 writes the run folder",
    )
    train.add_argument(
        "--rdzv", metavar="HOST:PORT", help="address of node 0, which every node can reach (needed with --nnodes > 1)"
    )
    train.set_defaults(handler="tunesmith.cli.train:run_train")

    quick = verbs.add_parser(
        "quickstart",
        help="the embedded default model, end to end, on this machine",
        description="Teach the embedded 135M model the bundled smart-home JSON task "
        "with LoRA, compare it with the base model, and show it answering.",
    )
    add_set_option(quick)
    quick.set_defaults(handler="tunesmith.cli.train:run_quickstart")


def quickstart_config_path() -> Path:
    return Path(str(resources.files("tunesmith") / "examples" / "quickstart.yaml"))


def run_train(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console, quiet_libraries

    if args.help_config:
        from tunesmith.config.help import config_help

        print(config_help())
        return 0
    from tunesmith.training.launch import launch_options

    launch = launch_options(args.nproc, args.nnodes, args.node_rank, args.rdzv)  # checked before anything is read
    config = _resolve_config(args)
    quiet_libraries()
    from tunesmith.pipeline import train
    from tunesmith.training.fit import INTERRUPTED_EXIT_CODE

    console = make_console()
    result = train(config, console=console, resume=args.resume, launch=launch)
    if result.status == "interrupted":
        return INTERRUPTED_EXIT_CODE
    console.print(f"[green]Done.[/] Run folder: {result.run_dir}")
    return 0


def _resolve_config(args: argparse.Namespace):
    """The run's config from CONFIG (or a run folder with --resume), --data, --model and --set."""
    from tunesmith.cli.common import refuse_data_file_as_config
    from tunesmith.config import load_config
    from tunesmith.console import quiet_libraries
    from tunesmith.errors import UserError

    if args.config is None and args.data is None:
        raise UserError(
            "give a CONFIG file, or --data FILE to train on a data file with the default settings "
            "(--model NAME, --set KEY=VALUE change them; tunesmith train --help-config lists them)"
        )
    if args.resume:
        if args.data is not None or args.model is not None:
            raise UserError(
                "--resume continues a run with the data and model it started with; --data and --model start a new run"
            )
        quiet_libraries()  # the resume module imports transformers
        from tunesmith.training.resume import load_run_config

        return load_run_config(args.config, args.overrides)
    given = {"data.train": ("--data", args.data), "model.name": ("--model", args.model)}
    given = {key: flag for key, flag in given.items() if flag[1] is not None}
    overrides = [*(f"{key}={json.dumps(value)}" for key, (_, value) in given.items()), *args.overrides]
    if args.config is None:
        config, stem = load_config(None, overrides), _folder_name(args.data)
    else:
        refuse_data_file_as_config(args.config)
        if Path(args.config).is_dir():
            raise UserError(f"{args.config} is a folder; to continue a run: tunesmith train {args.config} --resume")
        config, stem = load_config(args.config, overrides), Path(args.config).stem
    # Errors found later name the flag, not the --set it became (unless a --set of the user's replaced it).
    replaced = {item.partition("=")[0].strip() for item in args.overrides}
    config.with_origins(
        {key: f"{flag} {value}" for key, (flag, value) in given.items() if not replaced & {key, key.partition(".")[0]}}
    )
    return _named(config, stem)


def _folder_name(reference: str) -> str:
    """A run-name stem from a data reference: `data/chat.jsonl` -> chat, `hf:org/set:train` -> set-train."""
    stem = Path(reference.removeprefix("hf:").removeprefix("bundled:")).stem
    return re.sub(r"[^\w.-]+", "-", stem).strip(".-") or "run"


def run_quickstart(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.console import make_console, quiet_libraries

    config = _named(load_config(quickstart_config_path(), args.overrides), "quickstart")
    quiet_libraries()
    from tunesmith.evaluate.chat import answer_once
    from tunesmith.pipeline import train

    console = make_console()
    started = time.perf_counter()
    result = train(config, console=console)
    console.print(f"\n[bold]The tuned model answers a request it has never seen:[/]\n  {DEMO_REQUEST}")
    console.print(f"  -> {answer_once(result.run_dir, DEMO_REQUEST)}")
    console.print(f"\nRun folder: {result.run_dir}  ({time.perf_counter() - started:.0f} s)")
    console.print(f"Try it: tunesmith chat {result.run_dir}")
    return 0


def _named(config, stem: str):
    """The config with a run name: the user's, or `<stem>-<time>` (config.with_run_name)."""
    from tunesmith.config import with_run_name

    return with_run_name(config, stem)
