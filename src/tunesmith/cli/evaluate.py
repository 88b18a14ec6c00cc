"""`tunesmith eval RUN_DIR` and `tunesmith chat RUN_DIR`."""

from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    ev = verbs.add_parser("eval", help="compare the tuned model with its base on held-out data",
                          description="Generate answers for the test split with the tuned and the base model, "
                                      "score them, and write eval/results.json and eval/samples.jsonl.")
    ev.add_argument("run_dir", help="a finished run folder")
    ev.add_argument("--data", help="evaluate on this file instead of the run's data.test")
    ev.add_argument("--limit", type=int, help="only the first N rows")
    ev.add_argument("--no-base", dest="compare_base", action="store_false", default=None,
                    help="skip the base model")
    ev.set_defaults(handler="tunesmith.cli.evaluate:run_eval")

    ch = verbs.add_parser("chat", help="talk to a tuned model (streams; stops at end-of-turn)",
                          description="Multi-turn chat with a finished run, using its training template. "
                                      "Reads one message per line; /reset clears the history, /exit or EOF quits.")
    ch.add_argument("run_dir", help="a finished run folder")
    ch.add_argument("--system", help="system prompt (default: the one every training row shared, if any)")
    ch.add_argument("--max-new-tokens", type=int, default=512)
    ch.set_defaults(handler="tunesmith.cli.evaluate:run_chat")


def run_eval(args: argparse.Namespace) -> int:
    from tunesmith.cli.common import make_console, quiet_libraries

    quiet_libraries()
    from tunesmith.evaluate.run_eval import evaluate_run

    evaluate_run(args.run_dir, console=make_console(), data=args.data, limit=args.limit,
                 compare_base=args.compare_base)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from tunesmith.cli.common import make_console, quiet_libraries

    quiet_libraries()
    from tunesmith.evaluate.chat import chat

    chat(args.run_dir, console=make_console(), system=args.system, max_new_tokens=args.max_new_tokens)
    return 0
