"""Merge a run's LoRA/QLoRA adapter into its base: RUN/merged/, a plain Hugging Face model folder.

The merge runs in float32 and is checked before anything is written: the merged model's logits
must equal the adapter model's on a few prompts rendered with the training template. The folder
appears whole or not at all (written beside it, then renamed) and records the sha256 of the adapter
it came from, so merging again is a no-op and a changed adapter is noticed, never silently mixed.

A QLoRA or 8-bit run merges into its base quantized exactly as in training and then de-quantized:
the weights the adapter's forward passes used, so the merged model is the model that was trained.
How far that is from the same adapter on the unquantized base is measured and stated.
"""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError
from tunesmith.evaluate.runs import trained_quantization
from tunesmith.machine import quantized_bits
from tunesmith.runfolder import RUN_META, RunFolder, RunRecord, atomic_folder, read_record, sha256_file, weights_folder

MERGED = "merged"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DTYPES = ("float32", "bfloat16", "float16")
LOGITS_TOLERANCE = 1e-4
"""Largest |merged - adapter| logit allowed, both in float32, per unit of the largest |logit| (absolute
below 1): (W + BA)x and Wx + B(Ax) differ by rounding only, which grows with the logits (SmolLM2-135M:
2e-4 at logits up to 47), while a wrong merge moves logits by whole units."""

PROBES: tuple[tuple[dict, ...], ...] = (
    ({"role": "user", "content": "Hello! What can you help me with today?"},),
    ({"role": "user", "content": "Name three colours."}, {"role": "assistant", "content": "Red, green and blue."}),
    (
        {"role": "user", "content": "What is 12 times 7?"},
        {"role": "assistant", "content": "84."},
        {"role": "user", "content": "And that divided by 4?"},
    ),
)
"""Conversations the merged and the adapter model must score alike (the run's system prompt goes first)."""

Log = Callable[[str], None]


def merge_run(run_dir: Path, *, dtype: str | None = None, log: Log = print) -> Path:
    """Merge adapter/ into the base and write RUN/merged/; return the folder holding the whole model.

    `dtype` (float32, bfloat16, float16) is what the weights are saved in; default the run's
    `model.dtype` when it names one, else float32. A full fine-tune has nothing to merge: RUN/model.
    """
    run_dir = Path(run_dir)
    _refuse_merged_folder(run_dir)
    weights = weights_folder(run_dir)
    if weights.name == "model":
        log(f"{run_dir.name} is a full fine-tune: nothing to merge, {weights} is the whole model")
        return weights
    adapter_file = weights / ADAPTER_WEIGHTS
    if not adapter_file.is_file():
        raise UserError(f"{weights} has no {ADAPTER_WEIGHTS}; is the run finished?")
    digest = sha256_file(adapter_file)
    target = RunFolder(run_dir).merged
    if target.exists():
        return _existing_merge(target, adapter_file, digest, dtype, log)

    config = _run_config(run_dir)
    save_dtype = _save_dtype(dtype, config)
    meta = read_record(run_dir)
    bits = quantized_bits(config)
    log(
        f"merging {weights} into {config.model.name} "
        + (f"de-quantized from the {bits}-bit base it trained on (float32)" if bits else "(float32)")
    )
    model, tokenizer = _adapter_model(run_dir, config, log)
    prompts = probe_prompts(meta)
    before = probe_logits(model, tokenizer, prompts)
    model = model.merge_and_unload()
    difference = max_difference(before, probe_logits(model, tokenizer, prompts))
    allowed = allowed_difference(before)
    if not difference <= allowed:  # also catches NaN
        raise TunesmithError(
            f"merge check failed: merged and adapter logits differ by up to {difference:.3g} "
            f"(allowed {allowed:.3g}) on {len(prompts)} prompts; nothing was written"
        )
    log(
        f"checked: merged logits equal the adapter model's within {difference:.2g} (allowed {allowed:.2g}) "
        f"on {len(prompts)} prompts"
    )
    record = meta.with_changes(
        method=meta.method or config.method,
        merged_from="adapter",
        adapter_sha256=digest,
        dtype=save_dtype,
        merge_max_logit_difference=difference,
    )
    if bits:
        record = record.with_changes(
            quantized_base_bits=bits,
            difference_from_unquantized_base_adapter=_unquantized_difference(
                run_dir, config, model, tokenizer, prompts, bits, log
            ),
        )
    _write_atomically(target, model, tokenizer, record, save_dtype)
    log(f"wrote {target} ({save_dtype} safetensors, tokenizer with the training template)")
    return target


def model_folder_for_export(run_dir: Path, *, log: Log = print) -> Path:
    """The folder with the whole model: RUN/model for a full fine-tune, else RUN/merged (merged first if absent)."""
    return merge_run(Path(run_dir), log=log)


def merged_logits_difference(run_dir: Path, merged_dir: Path | None = None) -> float:
    """Largest |logit| difference, in float32, between the run's adapter model and a merged folder
    (default RUN/merged) on the probe prompts: what `merge_run` checks, measured from disk."""
    from tunesmith.models.load import ModelRef, load_model

    run_dir = Path(run_dir)
    folder = Path(merged_dir) if merged_dir is not None else RunFolder(run_dir).merged
    meta = read_record(run_dir)
    model, tokenizer = _adapter_model(run_dir, _run_config(run_dir), lambda message: None)
    prompts = probe_prompts(meta)
    before = probe_logits(model, tokenizer, prompts)
    del model
    merged = load_model(ModelRef(str(folder), str(folder), "local"), dtype="float32", device=_device())
    return max_difference(before, probe_logits(merged, tokenizer, prompts))


def probe_prompts(record: RunRecord) -> list[str]:
    """The probe conversations rendered with the training template, after the run's system prompt."""
    from tunesmith.formatting.template import ChatTemplate

    template = ChatTemplate.from_record(record)
    system = [{"role": "system", "content": record.system_prompt}] if record.system_prompt else []
    prompts = []
    for probe in PROBES:
        messages = [*system, *probe]
        try:
            prompts.append(template.render(messages, add_generation_prompt=messages[-1]["role"] != "assistant"))
        except UserError:  # a template that refuses this shape (e.g. no system role): the others suffice
            continue
    if not prompts:
        raise UserError(
            f"chat template {record.template_name} refused every probe conversation; the merge cannot be checked"
        )
    return prompts


def probe_logits(model: Any, tokenizer: Any, prompts: list[str]) -> list[Any]:
    """Float32 logits (on the CPU) of each prompt, tokenized as in training (no added special tokens)."""
    import torch

    model.eval()
    logits = []
    with torch.inference_mode():
        for text in prompts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
            logits.append(model(input_ids=ids).logits.float().cpu())
    return logits


def max_difference(first: list[Any], second: list[Any]) -> float:
    """Largest absolute element difference between two lists of same-shaped tensors (NaN if any is NaN)."""
    return max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))


def allowed_difference(logits: list[Any]) -> float:
    """`LOGITS_TOLERANCE` scaled by the largest |logit| (float32 rounding is relative), at least absolute."""
    return LOGITS_TOLERANCE * max(1.0, max(float(x.abs().max()) for x in logits))


def _refuse_merged_folder(run_dir: Path) -> None:
    recorded = run_dir / RUN_META
    if run_dir.name == MERGED or (recorded.is_file() and "merged_from" in _read_json(recorded)):
        raise UserError(f"{run_dir} is already a merged model; give the run folder ({run_dir.parent}) instead")


def _existing_merge(target: Path, adapter_file: Path, digest: str, dtype: str | None, log: Log) -> Path:
    """RUN/merged is there: fine if it came from this very adapter (and dtype), an error otherwise."""
    recorded = _read_json(target / RUN_META)
    if recorded.get("adapter_sha256") != digest:
        raise UserError(
            f"{target} was not merged from the current {adapter_file} (the adapter changed, or the "
            f"folder is incomplete); delete {target} and merge again"
        )
    if dtype is not None and recorded.get("dtype") != dtype:
        raise UserError(
            f"{target} holds {recorded.get('dtype')} weights, not {dtype}; delete {target} to merge again as {dtype}"
        )
    log(f"already merged: {target} (adapter sha256 {digest[:12]}, {recorded.get('dtype')})")
    return target


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_config(run_dir: Path) -> Any:
    from tunesmith.config import load_config

    return load_config(RunFolder(run_dir).config)


def _save_dtype(dtype: str | None, config: Any) -> str:
    if dtype is None:
        return config.model.dtype if config.model.dtype in DTYPES else "float32"
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return dtype


def _unquantized_difference(
    run_dir: Path, config: Any, merged: Any, tokenizer: Any, prompts: list[str], bits: int, log: Log
) -> float:
    """How far the merged model (de-quantized base + update) is from the same adapter on the
    unquantized base: the quantization error the adapter was trained around, stated, never hidden."""
    from tunesmith.models.load import load_adapter, load_model, resolve_model

    ref = resolve_model(config.model.name, revision=config.model.revision)
    other = load_adapter(load_model(ref, dtype="float32", device=_device()), weights_folder(run_dir))
    reference = probe_logits(other, tokenizer, prompts)
    del other
    difference = max_difference(reference, probe_logits(merged, tokenizer, prompts))
    top = max(float(x.abs().max()) for x in reference)
    log(
        f"note: the adapter trained on a {bits}-bit base and the merge keeps that base de-quantized (what it "
        f"learned against); the same adapter on the unquantized base gives logits up to {difference:.3g} away "
        f"(largest |logit| {top:.3g}): the quantization error, recorded in {MERGED}/{RUN_META}"
    )
    return difference


def _device() -> str:
    from tunesmith.machine import pick_device

    return pick_device()


def _adapter_model(run_dir: Path, config: Any, log: Log) -> tuple[Any, Any]:
    """The base the adapter trained against, in float32 (a quantized base de-quantized: the very
    weights its forward pass used), + the run's adapter; and the run's tokenizer."""
    from transformers import AutoTokenizer

    from tunesmith.models.load import load_adapter, load_model, resolve_model
    from tunesmith.models.quant import dequantized

    weights = weights_folder(run_dir)
    ref = resolve_model(config.model.name, revision=config.model.revision, log=log)
    device = _device()
    quantization = trained_quantization(config, device)
    if quantization is None:
        base = load_model(ref, dtype="float32", device=device)
    else:  # quantized exactly as in training (same load dtype), then de-quantized before any forward pass
        base = dequantized(load_model(ref, dtype=config.model.dtype, device=device, quantization=quantization))
    return load_adapter(base, weights), AutoTokenizer.from_pretrained(weights)


def _generation_config(model: Any, tokenizer: Any, markers: list[str]) -> Any:
    """The base's generation settings, stopping at every end-of-turn token the run trained.

    A marker counts when it is one token of the vocabulary (SmolLM2's `<|endoftext|>` is also its
    unk token, so comparing with the unk id would drop it)."""
    settings = copy.deepcopy(model.generation_config)
    ids = [tokenizer.convert_tokens_to_ids(m) for m in markers]
    ids = [i for m, i in zip(markers, ids) if isinstance(i, int) and tokenizer.convert_ids_to_tokens(i) == m]
    existing = settings.eos_token_id
    existing = [] if existing is None else [existing] if isinstance(existing, int) else list(existing)
    settings.eos_token_id = list(dict.fromkeys([*ids, *existing]))
    if settings.pad_token_id is None and tokenizer.pad_token_id is not None:
        settings.pad_token_id = tokenizer.pad_token_id
    return settings


def _write_atomically(target: Path, model: Any, tokenizer: Any, record: RunRecord, dtype: str) -> None:
    """Save into a hidden sibling, then rename it into place; on any failure remove it again. The
    weights' size is known: it must be free first, and a disk that fills anyway is one line."""
    import torch

    what = f"the merged model {target}"
    then = f"; free some space, then run again: tunesmith merge {shlex.quote(str(target.parent))}"
    needed = sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    with atomic_folder(target, what, needed=needed, then=then) as staging:
        model.to(getattr(torch, dtype))
        model.generation_config = _generation_config(model, tokenizer, list(record.end_of_turn))
        model.save_pretrained(staging)  # transformers 5 writes safetensors only
        if not any(staging.glob("*.safetensors")):
            raise TunesmithError(f"saving the merged model wrote no .safetensors file into {staging}")
        tokenizer.chat_template = record.chat_template
        tokenizer.save_pretrained(staging)
        record.write(staging)
