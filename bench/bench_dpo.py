"""Benchmark: tunesmith DPO against TRL's DPOTrainer (its defaults, and its fastest configuration).

Same model (the embedded SmolLM2-135M), pairs (the bundled smart_home_pref: 160 train, 40 held out),
LoRA (r=16, alpha=32, all linear layers, a fresh adapter on the base, so the reference is the base),
DPO loss (sigmoid, beta 0.1, no SFT term), optimizer (AdamW, torch), learning rate, linear schedule,
4 pairs per optimizer step, one epoch. Each trainer runs in its own process, alternating round by
round. Reported per trainer (median over rounds):

- tokens per second over the optimizer steps after the first WARMUP: pairs trained times the mean
  tokens of a pair (prompt + chosen and prompt + rejected, as tunesmith's template renders them, the
  same count for every trainer, so padding does not count);
- the whole run's wall time, reference log-probabilities included (tunesmith and TRL's tuned mode
  score the reference once before training; TRL's defaults score it with the adapter disabled at
  every step);
- peak RSS of the training process;
- held-out reward accuracy and margin, computed the same way for all: the tuned model's summed
  log-probabilities of chosen and rejected against the base's (the adapter disabled).

Modes: `tunesmith`; `tunesmith-checkpointed` (train.gradient_checkpointing: true, to compare with TRL's
defaults at the same memory trade); `trl` (DPOConfig defaults, bf16 only where native); `trl-tuned`
(precompute_ref_log_probs=True, gradient_checkpointing=False; TRL 1.16 disables padding_free for DPO).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_dpo.py [--rounds 1] [--no-write]

Needs TRL (`make test` installs it). Writes its section of docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import benchdoc

SECTION = "## DPO against TRL (CPU)"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_dpo.py"
MODES = ("tunesmith", "tunesmith-checkpointed", "trl", "trl-tuned")
MODEL = "smollm2-135m-instruct"
WARMUP = 2
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LEARNING_RATE = 1e-4
BETA = 0.1
PAIRS_PER_STEP = 4
MAX_LENGTH = 256


def data_files() -> tuple[Path, Path]:
    from tunesmith.data.sources import resolve_data_path

    return tuple(resolve_data_path(f"bundled:smart_home_pref/{name}.jsonl") for name in ("train", "val"))


def encoded_rows(path: Path) -> list[dict]:
    """The pairs of `path` as tunesmith's template encodes them (the rows its collator reads)."""
    from transformers import AutoTokenizer

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.load import load_split, source_specs
    from tunesmith.formatting.encode import build_template, end_of_turn_markers
    from tunesmith.formatting.pairs import encode_preference_split
    from tunesmith.models.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model(MODEL))
    template = build_template(tokenizer, "model")
    specs = source_specs(DataConfig(train=str(path), test=str(path)), "test")
    samples = load_split(specs, split="test", policy="fail", seed=0, preference=True).samples
    scored, _ = encode_preference_split(
        samples,
        template,
        tokenizer,
        objective="dpo",
        max_length=MAX_LENGTH,
        markers=end_of_turn_markers(tokenizer, template),
        split="test",
        seed=0,
    )
    return [s.row(i) for i, s in enumerate(scored)]


def tokens_per_pair(path: Path) -> float:
    return statistics.mean(sum(len(ids) for ids, _ in row["sequences"]) for row in encoded_rows(path))


# ---------------------------------------------------------------- workers (one process each)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pairs_per_second(marks: list[float]) -> float:
    """Pairs per second between the end of step WARMUP and the last step (`marks`: seconds at each step's end)."""
    if len(marks) <= WARMUP:
        raise SystemExit(f"only {len(marks)} optimizer steps: need more than {WARMUP}")
    return (len(marks) - WARMUP) * PAIRS_PER_STEP / (marks[-1] - marks[WARMUP - 1])


def run_tunesmith(train: Path, out: Path, checkpointing: bool) -> tuple[dict, object]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_config
    from tunesmith.models.embedded import ensure_embedded_model
    from tunesmith.training.run import train as tunesmith_train

    config_path = out / "config.yaml"
    config_path.write_text(
        json.dumps(
            {
                "name": "bench",
                "output_dir": str(out / "runs"),
                "model": {"name": MODEL},
                "data": {"train": str(train)},  # held-out pairs are scored below, as for TRL
                "template": {"max_length": MAX_LENGTH},
                "lora": {**LORA, "target_modules": "all-linear"},
                "train": {
                    "objective": "dpo",
                    "beta": BETA,
                    "sft_weight": 0.0,
                    "epochs": 1,
                    "batch_size": PAIRS_PER_STEP,
                    "gradient_accumulation": 1,
                    "learning_rate": LEARNING_RATE,
                    "lr_scheduler": "linear",
                    "warmup_ratio": 0.0,
                    "weight_decay": 0.0,
                    "optimizer": "adamw",
                    "logging_steps": 1,
                    "seed": 0,
                    "gradient_checkpointing": checkpointing,
                },
                "eval": {"metrics": [], "compare_base": False},
            }
        )
    )
    started = time.perf_counter()
    result = tunesmith_train(load_config(config_path))
    wall = time.perf_counter() - started
    steps = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    marks = [s["elapsed_s"] for s in steps if "loss" in s]
    base = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(MODEL))
    model = PeftModel.from_pretrained(base, Path(result.run_dir) / "adapter")
    return {"steps": len(marks), "pairs_per_s": pairs_per_second(marks), "wall_s": wall}, model


def run_trl(train: Path, out: Path, tuned: bool) -> tuple[dict, object]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tunesmith.machine import cpu_has_native_bf16
    from tunesmith.models.embedded import ensure_embedded_model

    path = ensure_embedded_model(MODEL)
    dataset = Dataset.from_list([json.loads(line) for line in train.read_text().splitlines()])
    tokenizer = AutoTokenizer.from_pretrained(path)
    marks: list[float] = []
    start = time.perf_counter()

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter() - start)

    args = DPOConfig(
        output_dir=str(out / "trl"),
        use_cpu=True,
        max_length=MAX_LENGTH,
        beta=BETA,
        loss_type=["sigmoid"],
        per_device_train_batch_size=PAIRS_PER_STEP,
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
        # TRL's default bf16=True is emulated on a CPU without AVX-512 BF16/AMX: compare at fp32 there
        bf16=cpu_has_native_bf16(),
        gradient_checkpointing=not tuned,
        precompute_ref_log_probs=tuned,
    )
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    start = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Marks()],
    )
    trainer.train()
    wall = time.perf_counter() - start
    return {"steps": len(marks), "pairs_per_s": pairs_per_second(marks), "wall_s": wall}, trainer.model


def held_out(model: object, held: Path) -> dict:
    """Reward accuracy and margin of the tuned model against the base (its adapter disabled)."""
    from tunesmith.training.reference import reference_logps

    rows = encoded_rows(held)
    policy = reference_logps(model, rows)
    with model.disable_adapter():
        base = reference_logps(model, rows)
    rewards = BETA * (policy - base)
    return {
        "reward_accuracy": float((rewards[:, 0] > rewards[:, 1]).float().mean()),
        "margin": float((rewards[:, 0] - rewards[:, 1]).mean()),
    }


def worker(mode: str, out: Path) -> None:
    train, held = data_files()
    if mode.startswith("tunesmith"):
        result, model = run_tunesmith(train, out, checkpointing=mode == "tunesmith-checkpointed")
    else:
        result, model = run_trl(train, out, tuned=mode == "trl-tuned")
    result["peak_rss_mb"] = peak_rss_mb()  # training's peak: the scoring below loads nothing big
    result |= held_out(model, held)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver


def table(results: dict[str, list[dict]], pair_tokens: float) -> str:
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    ours = median("tunesmith", "pairs_per_s")
    lines = [
        "| trainer | tokens/s | tunesmith's tokens/s over this | run wall time | peak RSS | held-out reward accuracy "
        "| margin | steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        if mode not in results:
            continue
        rate = median(mode, "pairs_per_s")
        versus = f"{ours / rate:.2f}x"
        lines.append(
            f"| {mode} | {rate * pair_tokens:,.0f} | {versus} | {median(mode, 'wall_s'):,.0f} s | "
            f"{median(mode, 'peak_rss_mb'):,.0f} MiB | {median(mode, 'reward_accuracy'):.3f} | "
            f"{median(mode, 'margin'):.3f} | {int(median(mode, 'steps'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out)
        return

    modes = [m for m in args.modes.split(",") if m]
    pair_tokens = tokens_per_pair(data_files()[0])
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        results = benchdoc.run_alternating(__file__, modes, args.rounds, [], Path(tmp))
    text = (
        f"Embedded SmolLM2-135M, a fresh LoRA r=16/alpha 32 on all linear layers (the reference is the base), "
        f"DPO sigmoid loss with beta {BETA} and no SFT term, max length {MAX_LENGTH}, AdamW (torch), lr "
        f"{LEARNING_RATE}, linear schedule, {PAIRS_PER_STEP} pairs per optimizer step, one epoch of the bundled "
        f"smart_home_pref pairs (160; {pair_tokens:.0f} tokens per pair, prompt counted with each answer); reward "
        f"accuracy and margin on its 40 held-out pairs against the base, computed the same way for all. "
        f"{benchdoc.machine()}; median of {args.rounds} round(s), trainers alternating in separate processes. "
        f"Tokens/s: pairs trained per second after {WARMUP} warm-up steps times tokens per pair (padding does "
        f"not count). Run wall time includes scoring the reference. tunesmith packs a step's 4 pairs into one "
        f"row, each prompt once with both answers after it (`segments` attention, a mask per pair), and scores "
        f"the reference once; `tunesmith-checkpointed` is the same with gradient checkpointing; `trl` is "
        f"DPOConfig's defaults (gradient checkpointing, the reference scored with the adapter disabled at "
        f"every step); `trl-tuned` "
        f"precomputes the reference log-probs and turns gradient checkpointing off (TRL 1.16 disables "
        f"padding_free for DPO). bf16 only where the CPU has it natively, else fp32 for all. Peak RSS is the "
        f"whole training process's (`ru_maxrss`).\n\n"
        f"{table(results, pair_tokens)}\n\n```bash\n{COMMAND} --rounds {args.rounds}\n```\n"
    )
    print(text)
    if not args.no_write:
        benchdoc.write_machine_section(SECTION, text)


if __name__ == "__main__":
    main()
