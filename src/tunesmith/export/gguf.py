"""Write a GGUF file from a Hugging Face model folder with the `gguf` package, and check it.

No llama.cpp checkout is needed: the `gguf` package ships the writer, the tensor-name maps and the
metadata keys, and it is pinned. What llama.cpp needs beyond the weights (the vocabulary with
token types, merges or scores, the pre-tokenizer, special ids, add-BOS, the chat template and the
end-of-turn id) is read from tokenizer.json and the run's own record, never guessed from a hash.

Everything that can be refused is refused before the first byte is written (unsupported
architecture, RoPE scaling or tokenizer, a k-quant without llama.cpp's quantizer, an importance matrix
that cannot be read); the file is written under a temporary name and renamed only after it has been
read back and checked (a quantized file too: llama.cpp quantizes a checked f16 file, export/quantize.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.export.gguf_arch import Architecture, architecture
from tunesmith.export.gguf_check import check_gguf
from tunesmith.export.gguf_rope import llama3_rope_factors
from tunesmith.export.gguf_tensors import _write
from tunesmith.export.gguf_vocab import Vocabulary, read_vocabulary
from tunesmith.export.quantize import QUANTIZE_TYPES, Quantizer, find_quantizer, quantize
from tunesmith.runfolder import RUN_META, RunFolder, read_record, weights_folder

Log = Callable[[str], None]

WRITTEN_TYPES = ("f32", "f16", "bf16", "q8_0")  # written here, in numpy
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
    quantizer: Quantizer | None = None
    spec: Architecture | None = None
    """The architecture's own keys and needs (export/gguf_arch.py)."""
    base_folder: Path | None = None
    """The untuned base model: a quantized export is checked to keep what fine-tuning changed (gguf_fidelity)."""


# ---------------------------------------------------------------- planning (nothing written)


def export_run(
    run_dir: str | Path, out_type: str = "f16", *, imatrix: str | Path | None = None, log: Log = print
) -> Path:
    """`tunesmith export gguf RUN`: RUN/export/model-<type>.gguf from the merged (or fully tuned) model.

    Everything is checked on the base model's config and the run's tokenizer before merging or writing.
    """
    from tunesmith.models.load import resolve_model

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    meta = read_record(run)
    weights = weights_folder(run)
    if weights.name == "model":
        config_folder = weights
    elif meta.base_model:
        config_folder = Path(resolve_model(meta.base_model).path)
    else:
        raise UserError(f"{weights}/{RUN_META}: field 'base_model' missing; the run did not finish writing it")
    out = RunFolder(run).export / f"model-{out_type.lower()}.gguf"
    plan = plan_export(
        config_folder,
        weights,
        out,
        out_type,
        chat_template=meta.chat_template,
        end_of_turn=list(meta.end_of_turn),
        name=run.name,
        imatrix=Path(imatrix) if imatrix is not None else None,
    )
    if plan.quantizer is not None:
        plan.base_folder = _untuned_base(run, meta, log)
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
    imatrix: Path | None = None,
) -> ExportPlan:
    """Check that the model (its config.json) and tokenizer can be written as GGUF `out_type`; UserError if not."""
    out_type = out_type.lower()
    if out_type not in OUTPUT_TYPES:
        raise UserError(
            f"--type {out_type}: not a GGUF type tunesmith writes; choose one of "
            f"{', '.join(WRITTEN_TYPES)} (or, with llama.cpp's quantizer, {', '.join(QUANTIZE_TYPES)})"
        )
    if imatrix is not None and out_type not in QUANTIZE_TYPES:
        raise UserError(f"--imatrix is for llama.cpp's quantized types ({', '.join(QUANTIZE_TYPES)}), not {out_type}")
    quantizer = find_quantizer(out_type, imatrix) if out_type in QUANTIZE_TYPES else None
    config_path = config_folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{config_folder}: no config.json, not a model folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    spec = architecture(config, config_path)
    arch, permute = spec.gguf, spec.permute_qk
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
        spec=spec,
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


def _untuned_base(run: Path, meta: Any, log: Log) -> Path | None:
    """The base model folder a quantized export is measured against; None (said) where there is none
    to compare with: a base that is not on disk, or a run trained on a quantized base."""
    from tunesmith.config import load_config
    from tunesmith.machine import quantized_bits
    from tunesmith.models.load import resolve_model

    if quantized_bits(load_config(RunFolder(run).config)):
        log("note: not checking that quantization keeps the fine-tuning: the run trained on a quantized base")
        return None
    try:
        folder = Path(resolve_model(meta.base_model).path) if meta.base_model else None
    except UserError:
        folder = None
    if folder is None or not any(folder.glob("*.safetensors")):
        log("note: not checking that quantization keeps the fine-tuning: the base model's weights are not on disk")
        return None
    return folder


def model_arch(config: dict[str, Any], config_path: Path) -> tuple[str, bool]:
    """(GGUF architecture, whether q/k rows are permuted) of a model's config.json; UserError if unsupported."""
    found = architecture(config, config_path)
    return found.gguf, found.permute_qk


def export_base(run: Path, base_folder: Path, out: Path, out_type: str, *, log: Log = print) -> Path:
    """The run's base model (untuned) as GGUF `out`, with the run's tokenizer, template and end-of-turn
    ids: what an adapter GGUF applies to."""
    meta = read_record(run)
    plan = plan_export(
        base_folder,
        weights_folder(run),
        out,
        out_type,
        chat_template=meta.chat_template,
        end_of_turn=list(meta.end_of_turn),
        name=f"{base_folder.name} (base of {run.name})",
    )
    write_gguf(plan, base_folder, log=log)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, the untuned base, {plan.arch})")
    return out


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
                _quantize_faithfully(plan, source, base, temp, log)
                check_gguf(temp, plan, count)
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


def _quantize_faithfully(plan: ExportPlan, source: Path, f16: Path, target: Path, log: Log) -> None:
    """llama.cpp quantizes `f16` into `target`; with the base at hand, every tuned tensor must keep what
    fine-tuning changed (export/gguf_fidelity.py), tensors that do not are quantized again as a fallback type."""
    from tunesmith.export import gguf_fidelity

    quantizer = plan.quantizer
    assert quantizer is not None

    def quantize_with(overrides: list[tuple[str, str]]) -> None:
        quantize(quantizer, f16, target, plan.out_type, log, overrides)

    if plan.base_folder is None:
        quantize_with([])
        return
    base = plan.base_folder
    gguf_fidelity.faithful_quantization(
        quantize_with,
        lambda: gguf_fidelity.measure(target, plan, source, base),
        lambda: gguf_fidelity.stored_types(target),
        log,
    )


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


# ---------------------------------------------------------------- checking what was written
