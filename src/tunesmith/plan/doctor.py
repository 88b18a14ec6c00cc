"""`tunesmith doctor`: what this machine can run, and what that means for a config."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.paths import cache_root


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"flash_attn": "flash-attn"}.get(module, module))
    except PackageNotFoundError:
        return "installed"


def _free_gib(path: Path) -> float | None:
    """Free disk space where `path` is (or would be created), GiB (2^30 bytes)."""
    path = path.expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return round(shutil.disk_usage(path).free / 2**30, 1)
    except OSError:
        return None


def diagnose(config: Config | None = None) -> dict[str, Any]:
    """Facts about this environment and, for `config`, what they mean (`advice`)."""
    import torch

    from tunesmith.machine import cpu_has_native_bf16

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        facts["gpus"].append(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    facts["bf16"] = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_has_native_bf16()
    facts["fp16"] = torch.cuda.is_available()
    facts["bitsandbytes"] = _version("bitsandbytes")
    from tunesmith.models.quant import support

    facts["quantization"] = support("cuda" if torch.cuda.is_available() else "cpu") or "runs"
    facts["flash_attn"] = _version("flash_attn")
    facts["flex_attention"] = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    facts["transformers"] = _version("transformers")
    facts["peft"] = _version("peft")
    facts["cpu_cores"] = len(__import__("os").sched_getaffinity(0))
    cache = cache_root()
    facts["cache_dir"] = str(cache)
    facts["free_disk_gib"] = {
        "cache": _free_gib(cache),
        "runs": _free_gib(Path(config.output_dir if config else "runs")),
    }
    facts["advice"] = advice(facts, config)
    return facts


def advice(facts: dict[str, Any], config: Config | None) -> list[str]:
    """What the facts mean for the user's config (or in general)."""
    notes: list[str] = []
    gpu = facts["cuda_available"]
    if not gpu:
        notes.append("no CUDA GPU: training runs on CPU (fine for the embedded 135M model; slow beyond ~1B)")
    if not facts["bf16"]:
        notes.append(
            "no native bf16: precision auto trains in fp32" + (" (fp16 with loss scaling on this GPU)" if gpu else "")
        )
    where = "this GPU" if gpu else "this CPU (bitsandbytes' CPU backend)"
    quantization = facts.get("quantization", "runs")
    if quantization == "runs":
        notes.append(
            f"bitsandbytes {facts['bitsandbytes']} quantizes on {where}: qlora, load_in_8bit and adamw_8bit "
            "run here" + ("" if gpu else "; paged_adamw_8bit needs a GPU")
        )
    else:
        notes.append(f"qlora, load_in_8bit and 8-bit optimizers cannot run here: {quantization}")
    if gpu and not facts["flash_attn"]:
        notes.append(
            "flash-attn is not installed: attention auto uses sdpa (packed batches build a T x T mask; "
            "flash_attention_2 avoids it for long packed micro-batches, and model.attention: segments "
            "runs sdpa once per packed conversation at one host sync per layer)"
        )
    for where, free in facts["free_disk_gib"].items():
        if free is not None and free < 5:
            notes.append(f"only {free} GiB free for the {where} folder; checkpoints and merged models need more")
    if config is not None:
        if (config.method == "qlora" or config.model.load_in_8bit) and quantization != "runs":
            notes.append("your config's quantized base cannot load here (see above)")
        if config.model.attention == "flash_attention_2" and not facts["flash_attn"]:
            notes.append("your config asks for flash_attention_2, which is not installed here")
        if config.train.optimizer == "paged_adamw_8bit" and not gpu:
            notes.append("your config's optimizer paged_adamw_8bit needs a CUDA GPU; on CPU use adamw_8bit")
        elif config.train.optimizer == "adamw_8bit" and quantization != "runs":
            notes.append("your config's optimizer adamw_8bit cannot run here (see above)")
        if config.train.precision == "fp16" and not gpu:
            notes.append("your config's precision fp16 needs a CUDA GPU")
    if not notes:
        notes.append("everything tunesmith uses is available")
    return notes
