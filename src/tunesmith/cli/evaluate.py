"""`tunesmith eval RUN_DIR`, `tunesmith generate RUN_DIR IN OUT` and `tunesmith chat RUN_DIR`."""

from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    ev = verbs.add_parser(
        "eval",
        help="compare the tuned model with its base on held-out data",
        description="Generate answers for the test split with the tuned and the base model, "
        "score them, and write eval/results.json and eval/samples.jsonl.",
    )
    ev.add_argument("run_dir", help="a finished run folder")
    ev.add_argument(
        "--data",
        metavar="FILE",
        help="evaluate on this file (any supported data format) instead of the run's data.test",
    )
    ev.add_argument("--limit", type=int, help="generate for the first N rows only (loss covers every row)")
    ev.add_argument(
        "--base",
        dest="compare_base",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also evaluate the base model (adapter disabled); default: eval.compare_base",
    )
    ev.set_defaults(handler="tunesmith.cli.evaluate:run_eval")

    gen = verbs.add_parser(
        "generate",
        help="answer every row of a chat file with a tuned (or base) model",
        description="Greedy batched generation with the run's training template. Each row's "
        "prompt is its conversation without the last assistant turn (or all of it "
        "when it ends with a user turn). Writes one JSON line per row: "
        "{id, line, answer}.",
    )
    gen.add_argument("run_dir", help="a finished run folder, a model folder, or a built-in model name")
    gen.add_argument("input", help="chat rows in any supported format")
    gen.add_argument("output", help="JSONL file to write (replaced atomically)")
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        metavar="N",
        help="longest answer per row, in tokens; generation stops earlier at the end-of-turn token "
        "(default %(default)s)",
    )
    gen.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="rows generated together (left-padded); larger is faster until memory runs out (default %(default)s)",
    )
    gen.set_defaults(handler="tunesmith.cli.evaluate:run_generate")

    ch = verbs.add_parser(
        "chat",
        help="talk to a tuned model (streams; stops at end-of-turn)",
        description="Multi-turn chat with a finished run, using its training template. "
        "Reads one message per line; /reset clears the history, /exit or EOF quits.",
    )
    ch.add_argument("run_dir", help="a finished run folder, a model folder, or a built-in model name")
    ch.add_argument("--system", help="system prompt (default: the one every training row shared, if any)")
    ch.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        metavar="N",
        help="longest reply, in tokens; a reply stops earlier at the end-of-turn token (default %(default)s)",
    )
    ch.set_defaults(handler="tunesmith.cli.evaluate:run_chat")


def run_eval(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console, quiet_libraries

    quiet_libraries()
    from tunesmith.evaluate.run_eval import evaluate_run

    evaluate_run(args.run_dir, console=make_console(), data=args.data, limit=args.limit, compare_base=args.compare_base)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console, quiet_libraries

    quiet_libraries()
    from tunesmith.evaluate.chat import chat

    chat(args.run_dir, console=make_console(), system=args.system, max_new_tokens=args.max_new_tokens)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console, quiet_libraries
    from tunesmith.errors import UserError

    if args.max_new_tokens <= 0 or args.batch_size <= 0:
        raise UserError("--max-new-tokens and --batch-size must be positive")
    quiet_libraries()
    from tunesmith.evaluate.generate import generate_file

    console = make_console()
    n = generate_file(
        args.run_dir,
        args.input,
        args.output,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        console=console,
    )
    console.print(f"Wrote {n} answers to {args.output}")
    return 0
