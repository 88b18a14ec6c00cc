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
    train.add_argument("config", help="YAML config file")
    add_set_option(train)
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

    config = _named(load_config(args.config, args.overrides), Path(args.config).stem)
    quiet_libraries()
    from tunesmith.training.run import train

    console = make_console()
    result = train(config, console=console)
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
