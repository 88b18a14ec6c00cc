"""Benchmark: tunesmith LoRA training against TRL's SFTTrainer (its defaults, and packing=True).

Same model (the embedded SmolLM2-135M), data, LoRA (r=16, alpha=32, all linear layers), max length,
optimizer (AdamW, torch), learning rate, schedule and epochs. Each trainer runs in its own process,
the three alternating round by round. Reported per trainer (median over rounds):

- non-padding tokens per second after the first WARMUP optimizer steps,
- peak RSS of the training process,
- eval loss after one epoch (every trainer has then trained on the same answers), computed the same way
  for all three: tunesmith's masked loss (answer tokens and their end-of-turn) on the held-out rows.

The data: a real variable-length instruction set built offline from the Python standard library's
own docstrings ("What does `json.dumps` do?" -> its documentation), 20 to 500 tokens per answer.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_trl.py [--rows 160] [--rounds 1] [--no-write]

Needs TRL: `.venv/bin/pip install trl==1.16.0` (the `bench` extra). Writes its section of
docs/benchmarks.md (replaced on each run) unless --no-write.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path

import benchdoc

SECTION = "## LoRA training against TRL (CPU)"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_trl.py"
MODES = ("tunesmith", "trl", "trl-packing", "trl-tuned")
MODULES = (
    "json",
    "os",
    "os.path",
    "collections",
    "itertools",
    "functools",
    "re",
    "textwrap",
    "string",
    "datetime",
    "pathlib",
    "statistics",
    "math",
    "shutil",
    "subprocess",
    "tempfile",
    "random",
    "heapq",
    "bisect",
    "csv",
    "argparse",
    "logging",
    "inspect",
    "typing",
    "dataclasses",
    "enum",
    "hashlib",
    "base64",
    "zipfile",
    "tarfile",
    "gzip",
    "urllib.parse",
    "html",
    "difflib",
    "fractions",
    "decimal",
    "operator",
    "copy",
    "pickle",
    "struct",
    "threading",
    "queue",
    "socket",
    "sqlite3",
    "uuid",
    "time",
    "calendar",
    "glob",
    "fnmatch",
    "shlex",
    "traceback",
    "warnings",
    "contextlib",
    "abc",
    "io",
    "codecs",
    "unicodedata",
)
WARMUP = 2
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LEARNING_RATE = 2e-4
TOKENS_PER_STEP = (
    1024  # tunesmith: 2 micro-batches of one 512 bin; TRL packing: 2 rows of 512; TRL padded: rows to match
)


# ---------------------------------------------------------------- data


def docstring_rows(limit: int, seed: int = 0) -> list[dict]:
    """Chat rows from the standard library's documented functions and classes."""
    rows = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            if getattr(obj, "__module__", name) not in (name, module.__name__):
                continue
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 60:
                continue
            answer = re.sub(r"\n{3,}", "\n\n", doc.strip())[:1800]
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"What does `{name}.{attr}` do in Python?"},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def write_data(folder: Path, rows: int, eval_rows: int) -> tuple[Path, Path]:
    data = docstring_rows(rows + eval_rows)
    if len(data) < rows + eval_rows:
        raise SystemExit(f"only {len(data)} documented objects found; ask for fewer --rows")
    train, held = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in data[:rows]), encoding="utf-8")
    held.write_text("".join(json.dumps(r) + "\n" for r in data[rows:]), encoding="utf-8")
    return train, held


# ---------------------------------------------------------------- workers (one process each)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(marks: list[tuple[float, int]]) -> float:
    """Tokens per second between the end of step WARMUP and the last step."""
    if len(marks) <= WARMUP:
        raise SystemExit(f"only {len(marks)} optimizer steps: use more --rows to measure after {WARMUP} warm-up steps")
    (t0, n0), (t1, n1) = marks[WARMUP - 1], marks[-1]
    return (n1 - n0) / (t1 - t0)


def run_tunesmith(train: Path, out: Path, max_length: int) -> tuple[dict, object]:
    from tunesmith.config import load_config
    from tunesmith.training.run import train as tunesmith_train

    config_path = out / "config.yaml"
    config_path.write_text(
        json.dumps(
            {
                "name": "bench",
                "output_dir": str(out / "runs"),
                "model": {"name": "smollm2-135m-instruct"},
                "data": {"train": str(train)},
                "template": {"train_on": "assistant", "max_length": max_length},
                "lora": {**LORA, "target_modules": "all-linear"},
                # the same tokens per optimizer step as TRL, in micro-batches of one bin: activations of 512 tokens
                # at a time, so no gradient checkpointing is needed to stay under TRL's memory (TRL's default is on)
                "train": {
                    "epochs": 1,
                    "packing": "bins",
                    "batch_size": 1,
                    "gradient_accumulation": TOKENS_PER_STEP // max_length,
                    "learning_rate": LEARNING_RATE,
                    "lr_scheduler": "linear",
                    "warmup_ratio": 0.0,
                    "weight_decay": 0.0,
                    "optimizer": "adamw",
                    "logging_steps": 1,
                    "seed": 0,
                },
            }
        )
    )
    result = tunesmith_train(load_config(config_path))
    steps = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    marks = [(s["elapsed_s"], s["tokens_seen"]) for s in steps if "tokens_seen" in s]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.models.embedded import ensure_embedded_model

    base = AutoModelForCausalLM.from_pretrained(ensure_embedded_model("smollm2-135m-instruct"))
    model = PeftModel.from_pretrained(base, Path(result.run_dir) / "adapter")
    return {"steps": len(marks), "tokens": marks[-1][1], "tokens_per_s": throughput(marks)}, model


def run_trl(train: Path, out: Path, max_length: int, mode: str) -> tuple[dict, object]:
    """`trl`: SFTConfig's defaults; `trl-packing`: packing=True; `trl-tuned`: TRL's fastest CPU
    configuration, packing with padding-free batches and no gradient checkpointing."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.machine import cpu_has_native_bf16
    from tunesmith.models.embedded import ensure_embedded_model

    packing = mode in ("trl-packing", "trl-tuned")
    tuned = mode == "trl-tuned"
    path = ensure_embedded_model("smollm2-135m-instruct")
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    # prompt-completion rows: TRL trains on the completion only (as tunesmith trains on the answer only)
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(path)
    mean_len = statistics.mean(
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows
    )
    batch = TOKENS_PER_STEP // max_length if packing else max(1, round(TOKENS_PER_STEP / mean_len))
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter() - start, int(state.num_input_tokens_seen)))

    args = SFTConfig(
        output_dir=str(out / "trl"),
        use_cpu=True,
        max_length=max_length,
        packing=packing,
        padding_free=tuned,
        gradient_checkpointing=not tuned,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        # TRL's default bf16=True is emulated on a CPU without AVX-512 BF16/AMX (about 190 s per
        # 128-token step here): compare at tunesmith's precision on such a CPU instead
        bf16=cpu_has_native_bf16(),
        include_num_input_tokens_seen="non_padding",
    )
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Marks()],
    )
    start = time.perf_counter()
    trainer.train()
    return {
        "steps": len(marks),
        "tokens": marks[-1][1],
        "tokens_per_s": throughput(marks),
        "batch": batch,
    }, trainer.model


def eval_loss(model: object, held: Path, max_length: int) -> tuple[float, int]:
    """tunesmith's masked loss on the held-out rows: the same function for every trainer."""
    from transformers import AutoTokenizer

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.load import load_split, source_specs
    from tunesmith.evaluate.loss import encode_for_loss, split_loss
    from tunesmith.formatting.encode import build_template, end_of_turn_markers
    from tunesmith.models.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model("smollm2-135m-instruct"))
    samples = load_split(
        source_specs(DataConfig(train=str(held), test=str(held)), "test"), split="test", policy="fail", seed=0
    ).samples
    examples = encode_for_loss(
        samples,
        build_template(tokenizer, "model"),
        tokenizer,
        train_on="assistant",
        max_length=max_length,
        markers=end_of_turn_markers(tokenizer),
    )
    result = split_loss(model, examples)
    return result["loss"], result["tokens"]


def worker(mode: str, train: Path, held: Path, out: Path, max_length: int) -> None:
    if mode == "tunesmith":
        result, model = run_tunesmith(train, out, max_length)
    else:
        result, model = run_trl(train, out, max_length, mode)
    result["peak_rss_mb"] = peak_rss_mb()  # training's peak: eval below loads nothing big
    result["eval_loss"], result["eval_tokens"] = eval_loss(model, held, max_length)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver


def table(results: dict[str, list[dict]]) -> str:
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    ours = median("tunesmith", "tokens_per_s")
    lines = ["| trainer | tokens/s | vs tunesmith | peak RSS | eval loss | steps |", "|---|---:|---:|---:|---:|---:|"]
    for mode in MODES:
        if mode not in results:
            continue
        rate = median(mode, "tokens_per_s")
        lines.append(
            f"| {mode} | {rate:,.0f} | {ours / rate:.2f}x slower than tunesmith | "
            f"{median(mode, 'peak_rss_mb'):,.0f} MiB | {median(mode, 'eval_loss'):.4f} | "
            f"{int(median(mode, 'steps'))} |"
            if mode != "tunesmith"
            else f"| tunesmith | {rate:,.0f} | 1.00x | {median(mode, 'peak_rss_mb'):,.0f} MiB | "
            f"{median(mode, 'eval_loss'):.4f} | {int(median(mode, 'steps'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--eval-rows", type=int, default=48)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data / "train.jsonl", args.data / "eval.jsonl", args.out, args.max_length)
        return

    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        folder = Path(tmp)
        write_data(folder, args.rows, args.eval_rows)
        extra = ["--data", str(folder), "--max-length", str(args.max_length)]
        results = benchdoc.run_alternating(__file__, modes, args.rounds, extra, folder)
    text = (
        f"Embedded SmolLM2-135M, LoRA r=16/alpha 32 on all linear layers, max length "
        f"{args.max_length}, AdamW (torch), lr {LEARNING_RATE}, linear schedule, one epoch of {args.rows} "
        f"stdlib-docstring instruction rows; eval loss on {args.eval_rows} held-out rows, computed the same "
        f"way for all. {benchdoc.machine()}; median of {args.rounds} round(s), trainers alternating in separate "
        f"processes. Tokens/s counts non-padding tokens after {WARMUP} warm-up steps. Each optimizer step "
        f"is {TOKENS_PER_STEP} tokens: tunesmith as 2 accumulated micro-batches of one packed bin (its `segments` "
        f"attention, no gradient checkpointing); TRL packing as 2 rows of {args.max_length}; TRL's defaults as "
        f"padded rows, as many as make {TOKENS_PER_STEP} tokens on average; those two with TRL's default "
        f"gradient checkpointing; `trl-tuned` (TRL's fastest CPU configuration) packs with padding-free batches "
        f"and no gradient checkpointing. bf16 for TRL only where the CPU has it natively. Peak RSS is the whole "
        f"training process's (`ru_maxrss`).\n\n"
        f"{table(results)}\n\n```bash\n{COMMAND} --rows {args.rows} --rounds {args.rounds}\n```\n"
    )
    print(text)
    if not args.no_write:
        benchdoc.write_machine_section(SECTION, text)


if __name__ == "__main__":
    main()
