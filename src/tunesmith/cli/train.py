"""`tunesmith train CONFIG` and `tunesmith quickstart`: the same code path, one with a shipped config."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from tunesmith.cli.common import add_set_option

# A request that is in no split of the bundled data: the quick start's closing demonstration.
DEMO_REQUEST = "Please set the garage lights to 65% brightness"


def register(verbs: argparse._SubParsersAction) -> None:
    train = verbs.add_parser("train", help="fine-tune as a config file says",
                             description="Fine-tune as CONFIG says; results go to output_dir/name/.")
    train.add_argument("config", help="YAML config file (with --resume: or a run folder)")
    add_set_option(train)
    train.add_argument("--resume", action="store_true",
                       help="continue the run (output_dir/name, or the run folder given) from its newest complete "
                            "checkpoint; refuses changed data or template")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="train in N processes on this machine (one per GPU) through torchrun; "
                            "distributed.strategy picks DDP, FSDP2 or DeepSpeed ZeRO")
    train.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines in the run (default 1)")
    train.add_argument("--node-rank", type=int, default=0, metavar="R",
                       help="this machine's place among them, 0 to M-1; node 0 writes the run folder")
    train.add_argument("--rdzv", metavar="HOST:PORT", help="address of node 0, which every node can reach "
                                                           "(needed with --nnodes > 1)")
    train.set_defaults(handler="tunesmith.cli.train:run_train")

    quick = verbs.add_parser("quickstart", help="the embedded default model, end to end, on this machine",
                             description="Teach the embedded 135M model the bundled smart-home JSON task "
                                         "with LoRA, compare it with the base model, and show it answering.")
    add_set_option(quick)
    quick.set_defaults(handler="tunesmith.cli.train:run_quickstart")


def quickstart_config_path() -> Path:
    return Path(str(resources.files("tunesmith") / "examples" / "quickstart.yaml"))


def run_train(args: argparse.Namespace) -> int:
    from tunesmith.cli.common import make_console, quiet_libraries
    from tunesmith.config import load_config
    from tunesmith.errors import UserError
    from tunesmith.training.launch import launch_options

    launch = launch_options(args.nproc, args.nnodes, args.node_rank, args.rdzv)
    if args.resume:
        quiet_libraries()  # the resume module imports transformers
        from tunesmith.training.resume import load_run_config

        config = load_run_config(args.config, args.overrides)
    elif Path(args.config).is_dir():
        raise UserError(f"{args.config} is a folder; to continue a run: tunesmith train {args.config} --resume")
    else:
        config = _named(load_config(args.config, args.overrides), Path(args.config).stem)
    quiet_libraries()
    from tunesmith.training.resume import INTERRUPTED_EXIT_CODE
    from tunesmith.training.run import train

    console = make_console()
    result = train(config, console=console, resume=args.resume, launch=launch)
    if result.status == "interrupted":
        return INTERRUPTED_EXIT_CODE
    console.print(f"[green]Done.[/] Run folder: {result.run_dir}")
    return 0


def run_quickstart(args: argparse.Namespace) -> int:
    from tunesmith.cli.common import make_console, quiet_libraries
    from tunesmith.config import load_config

    config = _named(load_config(quickstart_config_path(), args.overrides), "quickstart")
    quiet_libraries()
    from tunesmith.evaluate.chat import answer_once
    from tunesmith.training.run import train

    console = make_console()
    started = time.perf_counter()
    result = train(config, console=console)
    console.print(f"\n[bold]The tuned model answers a request it has never seen:[/]\n  {DEMO_REQUEST}")
    console.print(f"  -> {answer_once(result.run_dir, DEMO_REQUEST)}")
    console.print(f"\nRun folder: {result.run_dir}  ({time.perf_counter() - started:.0f} s)")
    console.print(f"Try it: tunesmith chat {result.run_dir}")
    return 0


def _named(config, stem: str):
    """The config with a run name: the user's, or `<stem>-<time>`."""
    if config.name is not None:
        return config
    return config.model_copy(update={"name": f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"})
