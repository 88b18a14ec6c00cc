"""What `bench/gpu_check.py` trains on: random-weight model folders, synthetic chat data, tunesmith configs.

Nothing is downloaded: the tokenizer (and its chat template) is the embedded SmolLM2's, from the test
fixtures; the models are built from configs (`gpu_check_model.SHAPES`) with random weights; the data is
seeded synthetic chat rows of 100 to 2,000 tokens.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_check_model import SHAPES, llama_config

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizers" / "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
READY = ".ready"
"""Written last into a model folder: its weights are complete."""

WORDS = (
    "the of and to in is that for it as with was on be by this are or from at which an have not but all "
    "they were one their has more will can there when what about so some if out time up into only other "
    "new like then these two also any may first way could well because each people system data model "
    "train value number part small large order group point result change report table step memory fast "
    "slow check record line file split token batch weight error price river garden window morning letter "
    "city market music paper story water energy light sound signal measure engine planet winter summer "
    "answer question reason method plan field image color shape motion level"
).split()


def synthetic_rows(n: int, *, seed: int = 0, min_words: int = 60, max_words: int = 1300) -> list[dict]:
    """`n` chat rows (user asks, assistant answers) of seeded random words; lengths spread from short to
    long so that packing has real work to do."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    rows = []
    for i in range(n):
        total = rng.randint(min_words, max_words)
        question = max(8, total // rng.randint(3, 6))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Note {i}: rewrite this as a short report. {text(question)}"},
                    {"role": "assistant", "content": text(max(8, total - question))},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def sequence_lengths(rows: Sequence[dict], tokenizer_dir: Path) -> list[int]:
    """Tokens of each conversation as the chat template renders it (what each packed sequence is)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows]


def write_tokenizer(folder: Path, source: Path = TOKENIZER_DIR) -> Any:
    """Copy the tokenizer files into `folder`; returns the tokenizer loaded from there."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return AutoTokenizer.from_pretrained(str(folder))


def write_model_folder(
    folder: Path, shape: str | dict[str, Any], *, weights: bool = True, device: str = "cpu", seed: int = 0
) -> Path:
    """A model folder of `shape`: tokenizer and config.json; with `weights`, random bf16 weights too (normal,
    std 0.02; norms 1) and then the READY marker (a folder without it has no complete weights)."""
    tokenizer = write_tokenizer(folder)
    config = llama_config(
        shape,
        tokenizer_size=len(tokenizer),
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    if not weights:
        config.save_pretrained(str(folder))
        return folder
    (folder / READY).unlink(missing_ok=True)
    random_model(config, device=device, seed=seed).save_pretrained(str(folder))
    (folder / READY).write_text(json.dumps(shape) + "\n", encoding="utf-8")
    return folder


def random_model(config: Any, *, device: str = "cpu", seed: int = 0) -> Any:
    """A LlamaForCausalLM of `config` in bf16 on `device`, initialized directly (the model is made on the
    meta device first, so no default initialization runs twice)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty makes a tied head its own tensor again
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        seen: set[int] = set()
        for _name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm weights
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return model


def tunesmith_config(
    *,
    name: str,
    output_dir: Path,
    model: Path,
    data: Path,
    method: str,
    steps: int,
    max_length: int,
    lora: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """The tunesmith config of one check run: one packed bin of `max_length` tokens per optimizer step,
    `steps` steps, no eval, AdamW (torch) as TRL's run uses, bf16 where the GPU runs it (`auto`)."""
    return {
        "name": name,
        "output_dir": str(output_dir),
        "method": method,
        "model": {"name": str(model)},
        "data": {"train": str(data)},
        "template": {"max_length": max_length, "train_on": "assistant"},
        "lora": {"r": lora["r"], "alpha": lora["alpha"], "dropout": lora["dropout"], "target_modules": "all-linear"},
        "train": {
            "max_steps": steps,
            "batch_size": 1,
            "gradient_accumulation": 1,
            "packing": "bins",
            "learning_rate": 2e-4,
            "lr_scheduler": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "optimizer": "adamw",
            "logging_steps": 1,
            "seed": seed,
            "precision": "auto",
        },
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def tunesmith_marks(metrics_file: Path) -> list[tuple[float, int]]:
    """(elapsed seconds, tokens seen) at each logged training step of a tunesmith run's metrics.jsonl."""
    marks = []
    for line in Path(metrics_file).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "tokens_seen" in record and "elapsed_s" in record:
            marks.append((float(record["elapsed_s"]), int(record["tokens_seen"])))
    return marks


def tunesmith_peak_bytes(metrics_file: Path) -> int | None:
    """The largest `memory_mb` a tunesmith run logged (on CUDA: `torch.cuda.max_memory_allocated`, MiB)."""
    values = [json.loads(line).get("memory_mb") for line in Path(metrics_file).read_text().splitlines()]
    values = [v for v in values if v is not None]
    return int(max(values) * 2**20) if values else None


def shape_names() -> list[str]:
    return list(SHAPES)
