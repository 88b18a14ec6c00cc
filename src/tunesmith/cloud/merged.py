"""`tunesmith cloud fetch RUN --merged`: the provider's merged weights into RUN/merged, checked before
they are kept.

Every weight of the download must equal what tunesmith computes itself from the base and the fetched
adapter, W_base + scale · B·A in float32 (the base alone where the adapter does not reach), within
the rounding of the dtype the provider stored (a few steps of its precision, relative to the
weight's size), and nothing may be missing or extra. RUN/merged then carries the run record with
`merged_from: together` and the sha256 of the adapter it matches, so `merge`, `export` and `push`
take it as the run's merge.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.runfolder import RunFolder, RunRecord, atomic_folder, discard, sha256_file, write_bytes

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STEPS = 4
"""Allowed difference, in units of the stored dtype's precision times the weight's largest value."""


def fetch_merged(api: Any, job: Any, run: Path, config: Any) -> Path:
    from tunesmith.cloud.fetch import download, unpack

    part = RunFolder(run).download / f"{job.job_id}-merged.part"
    download(api, str(job.job_id), part, "merged")
    try:
        files = unpack(part, _model_file, ("config.json",))
        if not any(name.endswith(".safetensors") for name in files):
            raise TunesmithError("the downloaded merged model holds no .safetensors weights")
        check_merged(files, run, config)
    except TunesmithError:
        discard(part)
        raise
    adapter = RunFolder(run).weights(config.method) / "adapter_model.safetensors"
    target = RunFolder(run).merged
    record = RunRecord.read(adapter.parent)
    with atomic_folder(target, f"the merged model {target}") as staging:
        for name, data in files.items():
            write_bytes(staging / name, data)
        for name in (
            p.name
            for p in adapter.parent.iterdir()
            if p.name.startswith(("tokenizer", "special_tokens", "added_tokens", "chat_template"))
        ):
            write_bytes(staging / name, (adapter.parent / name).read_bytes())
        record.with_changes(
            merged_from=f"{job.provider}:{job.job_id}",
            adapter_sha256=sha256_file(adapter),
            dtype=_dtype_name(json.loads(files["config.json"])),
            merge_max_logit_difference=None,
        ).write(staging)
    discard(part)
    return target


def _model_file(name: str) -> bool:
    return name not in ADAPTER_FILES and name.endswith((".safetensors", ".json")) and not name.startswith("tokenizer")


def check_merged(files: dict[str, bytes], run: Path, config: Any) -> float:
    """The largest difference found, relative to each weight's size; TunesmithError beyond `STEPS` steps."""
    import torch
    from safetensors.torch import load as load_safetensors

    from tunesmith.models.load import resolve_model

    merged: dict[str, Any] = {}
    for name, data in files.items():
        if name.endswith(".safetensors"):
            merged.update(load_safetensors(data))
    base: dict[str, Any] = {}
    for path in sorted(Path(resolve_model(config.model.name).path).glob("*.safetensors")):
        base.update(load_safetensors(path.read_bytes()))
    tied = json.loads(files["config.json"]).get("tie_word_embeddings", False)
    expected_names = {n for n in base if not (tied and n == "lm_head.weight")}
    if set(merged) - {"lm_head.weight"} != expected_names - {"lm_head.weight"}:
        differ = sorted(set(merged) ^ expected_names)[:3]
        raise TunesmithError(f"the downloaded merged model's weights are not the base model's: {differ}")
    deltas = _adapter_deltas(RunFolder(run).weights(config.method))
    worst = 0.0
    for name, value in merged.items():
        if name not in base:
            continue
        want = base[name].float() + deltas.get(name, 0)
        got = value.float()
        if got.shape != want.shape:
            raise TunesmithError(f"the downloaded merged model's {name} is {tuple(got.shape)}, not {tuple(want.shape)}")
        step = torch.finfo(value.dtype).eps if value.dtype.is_floating_point else 1.0
        size = float(want.abs().max()) or 1.0
        off = float((got - want).abs().max()) / size
        worst = max(worst, off / step)
        if not math.isfinite(off) or off > STEPS * step:
            raise TunesmithError(
                f"the downloaded merged model's {name} differs from base + adapter by {off:.3g} of its size "
                f"(allowed {STEPS * step:.3g} for {str(value.dtype).removeprefix('torch.')}); nothing was kept"
            )
    return worst


def _adapter_deltas(adapter: Path) -> dict[str, Any]:
    """scale · B·A per base weight name, in float32, from the fetched PEFT adapter."""
    from safetensors.torch import load_file

    settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = int(settings["r"]), float(settings["lora_alpha"])
    scale = alpha / (math.sqrt(r) if settings.get("use_rslora") else r)
    if settings.get("rank_pattern") or settings.get("alpha_pattern"):
        raise TunesmithError("checking a merge of an adapter with rank or alpha patterns is not supported yet")
    state = load_file(str(adapter / "adapter_model.safetensors"))
    deltas = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        name = key.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
        deltas[name] = scale * (b.float() @ a.float())
    return deltas


def _dtype_name(config: dict[str, Any]) -> str:
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
