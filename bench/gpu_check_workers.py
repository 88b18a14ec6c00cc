"""The processes `bench/gpu_check.py` starts, one job each, so that every run's peak memory is its own.

    python bench/gpu_check_workers.py build --device cpu SHAPE=FOLDER [SHAPE=FOLDER ...]
    python bench/gpu_check_workers.py trl --model FOLDER --data FILE --method lora|qlora --steps 20 ...

`build` writes random-weight model folders one after the other (each gets its READY marker when
complete). `trl` trains with TRL's SFTTrainer as the reference and prints one line `RESULT {json}`:
tokens/s after the warm-up steps, `torch.cuda.max_memory_allocated`, the settings it ran with.
(tunesmith runs are plain `tunesmith train CONFIG`; gpu_check.py reads their metrics.jsonl.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_data import read_jsonl, write_model_folder  # noqa: E402
from gpu_check_model import steady_rate  # noqa: E402

RESULT = "RESULT "


def build(specs: list[str], device: str) -> None:
    for spec in specs:
        shape, _, folder = spec.partition("=")
        started = time.perf_counter()
        write_model_folder(Path(folder), shape, device=device)
        print(f"built {shape} in {folder} ({time.perf_counter() - started:.1f} s)", flush=True)


def trl(args: argparse.Namespace) -> dict:
    """One TRL SFTTrainer run: the model loaded as tunesmith loads it (bf16 weights, sdpa; QLoRA: NF4 with
    double quantization computing in bf16), prompt-completion rows (the answer trains, as tunesmith's
    `train_on: assistant`), packing into rows of max_length (BFD) with padding-free batches, Liger kernels,
    LoRA r/alpha/dropout on all linear layers, AdamW (torch), one packed row per optimizer step."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = read_jsonl(args.data)
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    kwargs: dict = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if args.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    cuda = args.device == "cuda"  # `--device cpu`: a smoke run of this wiring on a machine without a GPU
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if args.method != "qlora":
        model = model.to(args.device)
    marks: list[tuple[float, int]] = []
    clock = {"start": time.perf_counter()}

    class Marks(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            clock["start"] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                if cuda:
                    torch.cuda.synchronize()
                marks.append((time.perf_counter() - clock["start"], int(state.num_input_tokens_seen)))

    settings = {
        "max_length": args.max_length,
        "packing": True,
        "padding_free": True,
        "use_liger_kernel": not args.no_liger,
        "bf16": cuda,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": args.steps,
        "optim": "adamw_torch",
    }
    if args.gradient_checkpointing != "default":
        settings["gradient_checkpointing"] = args.gradient_checkpointing == "on"
    config = SFTConfig(
        output_dir=str(Path(args.out) / "trl"),
        learning_rate=2e-4,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
        use_cpu=not cuda,
        **settings,
    )
    peft_config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
        bias="none",
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Marks()],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    return {
        "tokens_per_s": steady_rate(marks, args.warmup),
        "marks": marks,
        "steps": len(marks),
        "tokens": marks[-1][1] if marks else 0,
        "peak_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
        "trainable": trainable,
        "settings": settings,
        "gradient_checkpointing": bool(getattr(config, "gradient_checkpointing", False)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_subparsers(dest="job", required=True)
    b = jobs.add_parser("build")
    b.add_argument("specs", nargs="+", metavar="SHAPE=FOLDER")
    b.add_argument("--device", default="cpu")
    t = jobs.add_parser("trl")
    t.add_argument("--model", type=Path, required=True)
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--method", choices=("lora", "qlora"), required=True)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--max-length", type=int, default=4096)
    t.add_argument("--r", type=int, default=16)
    t.add_argument("--alpha", type=float, default=32)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--no-liger", action="store_true")
    t.add_argument("--gradient-checkpointing", choices=("default", "on", "off"), default="default")
    t.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job == "build":
        build(args.specs, args.device)
    else:
        print(RESULT + json.dumps(trl(args)), flush=True)


if __name__ == "__main__":
    main()
