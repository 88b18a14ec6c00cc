"""Write a GGUF file from a Hugging Face model folder with the `gguf` package, and check it.

No llama.cpp checkout is needed: the `gguf` package ships the writer, the tensor-name maps and the
metadata keys, and it is pinned. What llama.cpp needs beyond the weights (the vocabulary with
token types, merges or scores, the pre-tokenizer, special ids, add-BOS, the chat template and the
end-of-turn id) is read from tokenizer.json and the run's own record, never guessed from a hash.

Everything that can be refused is refused before the first byte is written (unsupported
architecture, RoPE scaling or tokenizer, a quantization that needs a missing `llama-quantize`); the
file is written under a temporary name and renamed only after it has been read back and checked.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError
from tunesmith.export.gguf_check import check_gguf
from tunesmith.export.gguf_rope import llama3_rope_factors
from tunesmith.export.gguf_tensors import _write
from tunesmith.export.gguf_vocab import Vocabulary, read_vocabulary
from tunesmith.runfolder import RUN_META, RunFolder, read_record, weights_folder

Log = Callable[[str], None]

# HF architecture -> (gguf architecture name, whether q/k rows are permuted for llama.cpp's
# interleaved ("normal") RoPE; qwen2/qwen3 use NEOX RoPE, the layout HF already has).
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}

WRITTEN_TYPES = ("f32", "f16", "bf16", "q8_0")  # written here, in numpy
QUANTIZE_TYPES = (
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_0",
    "q4_1",
    "q4_k_s",
    "q4_k_m",
    "q5_0",
    "q5_1",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
)  # through llama-quantize, from an f16 file
OUTPUT_TYPES = WRITTEN_TYPES + QUANTIZE_TYPES


@dataclass
class ExportPlan:
    """Everything checked before writing: where from, where to, and what llama.cpp will be told."""

    out: Path
    out_type: str
    arch: str
    permute_qk: bool
    config: dict
    vocab: Vocabulary
    chat_template: str
    end_of_turn_ids: list[int]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    name: str
    rope_factors: Any = None  # numpy array for Llama-3 style RoPE scaling
    quantizer: str | None = None


# ---------------------------------------------------------------- planning (nothing written)


def export_run(run_dir: str | Path, out_type: str = "f16", *, log: Log = print) -> Path:
    """`tunesmith export gguf RUN`: RUN/export/model-<type>.gguf from the merged (or fully tuned) model.

    Everything is checked on the base model's config and the run's tokenizer before merging or writing.
    """
    from tunesmith.models.load import resolve_model

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    meta = read_record(run)
    weights = weights_folder(run)
    if weights.name != "model" and not meta.base_model:
        raise UserError(f"{weights}/{RUN_META}: field 'base_model' missing; the run did not finish writing it")
    config_folder = weights if weights.name == "model" else Path(resolve_model(meta.base_model).path)
    out = RunFolder(run).export / f"model-{out_type.lower()}.gguf"
    plan = plan_export(
        config_folder,
        weights,
        out,
        out_type,
        chat_template=meta.chat_template,
        end_of_turn=list(meta.end_of_turn),
        name=run.name,
    )
    for warning in plan.vocab.warnings:
        log(f"warning: {warning}")
    from tunesmith.export.merge import model_folder_for_export

    source = model_folder_for_export(run, log=log)
    write_gguf(plan, source, log=log)
    log(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {plan.arch}, tokenizer {plan.vocab.model}/"
        f"{plan.vocab.pre}, end-of-turn ids {plan.end_of_turn_ids})"
    )
    return out


def plan_export(
    config_folder: Path,
    tokenizer_folder: Path,
    out: Path,
    out_type: str,
    *,
    chat_template: str,
    end_of_turn: list[str],
    name: str,
) -> ExportPlan:
    """Check that the model (its config.json) and tokenizer can be written as GGUF `out_type`; UserError if not."""
    out_type = out_type.lower()
    if out_type not in OUTPUT_TYPES:
        raise UserError(
            f"--type {out_type}: not a GGUF type tunesmith writes; choose one of "
            f"{', '.join(WRITTEN_TYPES)} (or, with llama-quantize, {', '.join(QUANTIZE_TYPES)})"
        )
    quantizer = None
    if out_type in QUANTIZE_TYPES:
        quantizer = shutil.which("llama-quantize")
        if quantizer is None:
            raise UserError(
                f"--type {out_type} needs llama.cpp's `llama-quantize` on PATH, and it is not there. "
                "Get it with `brew install llama.cpp`, a release from "
                "https://github.com/ggml-org/llama.cpp/releases, or by building llama.cpp "
                "(`cmake -B build && cmake --build build --target llama-quantize`); "
                f"or export --type f16, bf16 or q8_0, which need nothing else"
            )
    config_path = config_folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{config_folder}: no config.json, not a model folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or ["(none)"]
    hf_arch = architectures[0]
    if hf_arch not in ARCHITECTURES:
        raise UserError(
            f"{config_path}: architecture {hf_arch} is not supported by `tunesmith export gguf`; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    arch, permute = ARCHITECTURES[hf_arch]
    rope_factors = llama3_rope_factors(config, config_path)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    n_vocab = int(config["vocab_size"])
    vocab = read_vocabulary(tokenizer_folder, tokenizer, n_vocab)
    end_ids = []
    for marker in end_of_turn:
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id < n_vocab:
            end_ids.append(token_id)
    if not end_ids:
        raise UserError(
            f"{tokenizer_folder}: none of the end-of-turn markers {end_of_turn} is a single token, "
            "so llama.cpp and Ollama could not stop generating; train with a template whose turns "
            "end in a special token"
        )
    return ExportPlan(
        out=out,
        out_type=out_type,
        arch=arch,
        permute_qk=permute,
        config=config,
        vocab=vocab,
        chat_template=chat_template,
        end_of_turn_ids=end_ids,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        add_bos=_adds_bos(tokenizer),
        name=name,
        rope_factors=rope_factors,
        quantizer=quantizer,
    )


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (what llama.cpp must do too)."""
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]


# ---------------------------------------------------------------- writing


def write_gguf(plan: ExportPlan, source: Path, *, log: Log = print) -> Path:
    """Write plan.out from the safetensors model folder `source`, through a temporary file that is read
    back and checked before the rename."""
    from tunesmith.runfolder import atomic_file, discard, disk_full, ensure_space, is_disk_full

    written_type = "f16" if plan.quantizer else plan.out_type
    if not any(source.glob("*.safetensors")):
        raise UserError(f"{source}: no .safetensors weights to export")
    then = "; free some space, then export again"
    needed = _written_size(plan, source, written_type)
    ensure_space(plan.out.parent, needed, str(plan.out), then=then)
    scratch = None
    try:
        with atomic_file(plan.out) as temp:
            scratch = temp.with_name(temp.name + ".f16")  # the f16 GGUF llama.cpp quantizes from
            base = scratch if plan.quantizer else temp
            count = _write(plan, source, base, written_type, log)
            check_gguf(base, plan, count)
            if plan.quantizer:
                _quantize(plan, base, temp, log)
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise disk_full(
            str(plan.out), plan.out.parent, needed=needed, then=f"; no partial file was kept{then}"
        ) from None
    finally:
        if scratch is not None:
            discard(scratch)
    return plan.out


def _written_size(plan: ExportPlan, source: Path, out_type: str) -> int:
    """Bytes the GGUF of `out_type` takes at least: its tensors (read from the safetensors headers) and vocabulary."""
    from safetensors import safe_open

    per_element = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}[out_type]
    total = sum(len(t.encode()) + 16 for t in plan.vocab.tokens) + sum(len(m) + 8 for m in plan.vocab.merges)
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name == "lm_head.weight" and plan.config.get("tie_word_embeddings", False):
                    continue  # not written (see _write)
                shape = handle.get_slice(name).get_shape()
                total += int(math.prod(shape) * (4 if len(shape) <= 1 else per_element))
    return total


def _quantize(plan: ExportPlan, source: Path, target: Path, log: Log) -> None:
    argv = [plan.quantizer, str(source), str(target), plan.out_type.upper()]
    log(f"quantizing with {plan.quantizer} to {plan.out_type.upper()}")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise TunesmithError(f"llama-quantize failed ({done.returncode}): {done.stderr.strip()[-800:]}")


# ---------------------------------------------------------------- checking what was written
