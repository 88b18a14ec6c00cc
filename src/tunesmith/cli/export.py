"""`tunesmith merge RUN`, `tunesmith export gguf|ollama RUN`, `tunesmith push RUN user/repo`."""

from __future__ import annotations

import argparse

from tunesmith.errors import UserError


def register(verbs: argparse._SubParsersAction) -> None:
    from tunesmith.export.gguf import OUTPUT_TYPES

    merge = verbs.add_parser(
        "merge",
        help="merge a LoRA/QLoRA adapter into its base (RUN/merged/)",
        description="Write RUN/merged/: the base model with the adapter merged in, as "
        "safetensors, with the tokenizer and the training template. The merged "
        "logits are checked against the adapter's before anything is kept.",
    )
    merge.add_argument("run_dir", help="a finished run folder")
    merge.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the saved weights (default: the run's model.dtype, else float32)",
    )
    merge.set_defaults(handler="tunesmith.cli.export:run_merge")

    export = verbs.add_parser("export", help="export a finished run as GGUF or an Ollama Modelfile")
    kinds = export.add_subparsers(dest="kind", metavar="KIND", required=True)
    gguf = kinds.add_parser(
        "gguf",
        help="RUN/export/model-<type>.gguf (llama.cpp, Ollama, LM Studio)",
        description="Write the tuned model (merged first if it is an adapter) as GGUF with the "
        "tokenizer, the training chat template and the end-of-turn ids. "
        "f32/f16/bf16/q8_0 are written directly; the k-quants (q4_k_m, q5_k_m...) go through "
        "llama.cpp's own quantizer: llama-cpp-python (tunesmith[gguf]) or llama-quantize on PATH.",
    )
    gguf.add_argument("run_dir", help="a finished run folder")
    gguf.add_argument(
        "--type",
        default="f16",
        choices=OUTPUT_TYPES,
        metavar="TYPE",
        help=f"one of {', '.join(OUTPUT_TYPES)} (default f16)",
    )
    gguf.add_argument(
        "--imatrix",
        metavar="FILE",
        help="an importance matrix made by llama.cpp's llama-imatrix (GGUF; the legacy .dat needs llama-quantize) "
        "for the quantized types: llama.cpp weighs each weight column's rounding error by it",
    )
    gguf.add_argument(
        "--adapter",
        action="store_true",
        help="write only the LoRA adapter as a GGUF adapter (RUN/export/adapter-<type>.gguf, a few MB) and the "
        "base it applies to (RUN/export/base-<type>.gguf, unless --base names one)",
    )
    gguf.add_argument(
        "--base",
        metavar="FILE",
        help="with --adapter: an existing GGUF of the run's base model to apply the adapter to (checked, not written)",
    )
    gguf.set_defaults(handler="tunesmith.cli.export:run_export_gguf")
    ollama = kinds.add_parser(
        "ollama",
        help="RUN/export/Modelfile (and the GGUF it needs)",
        description="Write an Ollama Modelfile next to the GGUF: FROM, the training template "
        "as TEMPLATE, stop parameters for the end-of-turn tokens, SYSTEM if one "
        "was used in training. Exports the GGUF first if there is none.",
    )
    ollama.add_argument("run_dir", help="a finished run folder")
    ollama.add_argument(
        "--type",
        default=None,
        choices=OUTPUT_TYPES,
        metavar="TYPE",
        help="GGUF type to use or export (default: the newest GGUF in RUN/export, else f16)",
    )
    ollama.add_argument("--name", help="the Ollama model name to suggest (default: the run folder's name)")
    ollama.add_argument(
        "--adapter",
        action="store_true",
        help="FROM the base GGUF and ADAPTER the adapter GGUF (exported with `export gguf --adapter` if absent)",
    )
    ollama.add_argument(
        "--base", metavar="FILE", help="with --adapter: the base GGUF (default RUN/export/base-<type>.gguf)"
    )
    ollama.set_defaults(handler="tunesmith.cli.export:run_export_ollama")

    push = verbs.add_parser(
        "push",
        help="upload an adapter, merged model or GGUF to the Hugging Face Hub",
        description="Upload with huggingface_hub, with a generated model card. The token comes "
        "from HF_TOKEN or your `hf auth login`, never the command line.",
    )
    push.add_argument("run_dir", help="a finished run folder")
    push.add_argument("repo_id", help="user/repo on the Hub")
    what = push.add_mutually_exclusive_group()
    what.add_argument(
        "--adapter",
        dest="what",
        action="store_const",
        const="adapter",
        help="the adapter (or the whole model of a full fine-tune); the default",
    )
    what.add_argument("--merged", dest="what", action="store_const", const="merged", help="RUN/merged/")
    what.add_argument("--gguf", dest="what", action="store_const", const="gguf", help="RUN/export/*.gguf + Modelfile")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    push.set_defaults(handler="tunesmith.cli.export:run_push", what="adapter")


def _console():
    from tunesmith.console import make_console, quiet_libraries

    quiet_libraries()
    return make_console()


def run_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    console = _console()
    from tunesmith.export.merge import merge_run

    folder = merge_run(Path(args.run_dir), dtype=args.dtype, log=console.print)
    console.print(f"Merged model: {folder}")
    return 0


def run_export_gguf(args: argparse.Namespace) -> int:
    console = _console()
    from tunesmith.export.gguf import export_run
    from tunesmith.export.gguf_check import check_with_llama_cpp

    if args.base and not args.adapter:
        raise UserError("--base is for --adapter (the base GGUF an adapter applies to)")
    if args.adapter:
        if args.imatrix:
            raise UserError("--imatrix is for a quantized whole model, not --adapter")
        from tunesmith.export.gguf_adapter import export_adapter

        _, base = export_adapter(args.run_dir, args.type, base=args.base, log=console.print)
        check_with_llama_cpp(base, args.run_dir, log=console.print)
        return 0
    path = export_run(args.run_dir, args.type, imatrix=args.imatrix, log=console.print)
    check_with_llama_cpp(path, args.run_dir, log=console.print)
    return 0


def run_export_ollama(args: argparse.Namespace) -> int:
    from pathlib import Path

    console = _console()
    from tunesmith.export.gguf import export_run
    from tunesmith.export.ollama import write_modelfile

    run = Path(args.run_dir)
    if args.base and not args.adapter:
        raise UserError("--base is for --adapter (the base GGUF an adapter applies to)")
    if args.adapter:
        from tunesmith.export.gguf_adapter import export_adapter

        adapter = run / "export" / f"adapter-{args.type or 'f16'}.gguf"
        base = Path(args.base) if args.base else run / "export" / f"base-{args.type or 'f16'}.gguf"
        if not (adapter.is_file() and base.is_file()):
            adapter, base = export_adapter(run, args.type or "f16", base=args.base, log=console.print)
        write_modelfile(run, base, adapter=adapter, name=args.name, log=console.print)
        return 0
    wanted = f"model-{args.type}.gguf" if args.type else None
    existing = (
        sorted((run / "export").glob("*.gguf"), key=lambda p: p.stat().st_mtime) if (run / "export").is_dir() else []
    )
    chosen = next((p for p in existing if p.name == wanted), None) if wanted else (existing[-1] if existing else None)
    if chosen is None:
        chosen = export_run(run, args.type or "f16", log=console.print)
    write_modelfile(run, chosen, name=args.name, log=console.print)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    console = _console()
    from tunesmith.export.hub import push_run

    push_run(
        Path(args.run_dir), args.repo_id, what=args.what, private=args.private, dry_run=args.dry_run, log=console.print
    )
    return 0
