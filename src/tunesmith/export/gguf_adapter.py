"""A run's LoRA adapter as a GGUF adapter file (a few MB) for llama.cpp and Ollama, beside the base
GGUF it applies to: for people who keep one base and many adapters.

The file is what llama.cpp's `llama_adapter_lora_init` reads: `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, and for each adapted weight `<gguf name>.lora_a` (r x in)
and `.lora_b` (out x r), named and laid out as the base tensor they change (Llama-style q/k rows
permuted like the base's). llama.cpp scales B·A by alpha / r, r read from each B; a run whose modules
do not share one scale (rank or alpha patterns) has each module's own scale folded into its B and
alpha written as 0, which llama.cpp reads as a scale of 1. rsLoRA's alpha / sqrt(r) is written as
the alpha that gives it.

Refused before anything is written, each with the way out: a full fine-tune (no adapter), a run
trained on a quantized base (its adapter learned against 4- or 8-bit weights, not the f16 base the
GGUF would hold), DoRA, trained embeddings or head (`modules_to_save`), LoRA biases, or a target that
is not one of the base's linear weights. A given `--base` GGUF must be of the same architecture and
hold every adapted weight in the adapter's shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UserError
from tunesmith.export.gguf import WRITTEN_TYPES, export_base, model_arch
from tunesmith.export.gguf_tensors import _encode, _permute
from tunesmith.runfolder import RunFolder, atomic_file, read_record, weights_folder

Log = Callable[[str], None]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterTensor:
    gguf_name: str  # the base weight's GGUF name, e.g. blk.0.attn_q.weight
    a: Any  # numpy float32, (r, in)
    b: Any  # numpy float32, (out, r), scale folded in when modules differ


def export_adapter(
    run_dir: str | Path, out_type: str = "f16", *, base: str | Path | None = None, log: Log = print
) -> tuple[Path, Path]:
    """`tunesmith export gguf RUN --adapter`: RUN/export/adapter-<type>.gguf, and the base GGUF it
    applies to (`base`, checked, or RUN/export/base-<type>.gguf, written when absent). Returns both."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    out_type = out_type.lower()
    if out_type not in WRITTEN_TYPES:
        raise UserError(f"--adapter --type {out_type}: an adapter GGUF is written as one of {', '.join(WRITTEN_TYPES)}")
    weights = weights_folder(run)
    record = read_record(run)
    if weights.name == "model":
        raise UserError(
            f"{run.name} is a full fine-tune: there is no adapter; export the whole model with "
            f"tunesmith export gguf {run}"
        )
    _refuse_quantized_base(run)
    settings = _adapter_settings(weights)
    from tunesmith.models.load import resolve_model

    if not record.base_model:
        raise UserError(f"{weights}/tunesmith.json: field 'base_model' missing; the run did not finish writing it")
    base_folder = Path(resolve_model(record.base_model).path)
    config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    arch, permute = model_arch(config, base_folder / "config.json")
    tensors, alpha = adapter_tensors(weights, settings, config, permute)
    export = RunFolder(run).export
    base_path = Path(base) if base is not None else export / f"base-{out_type}.gguf"
    if base is not None or base_path.is_file():
        check_base(base_path, arch, tensors)
        log(f"base GGUF {base_path} checked: {arch}, holds the {len(tensors)} weights the adapter changes")
    else:
        export_base(run, base_folder, base_path, out_type, log=log)
        check_base(base_path, arch, tensors)
    out = export / f"adapter-{out_type}.gguf"
    write_adapter(out, arch, tensors, alpha, out_type, name=f"{run.name} (LoRA)")
    log(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, LoRA on {len(tensors)} weights, "
        f"alpha {alpha:g}) for the base {base_path.name}"
    )
    _check_with_llama_cpp(base_path, out, log)
    return out, base_path


def _refuse_quantized_base(run: Path) -> None:
    from tunesmith.config import load_config
    from tunesmith.machine import quantized_bits

    bits = quantized_bits(load_config(RunFolder(run).config))
    if bits:
        raise UserError(
            f"{run.name} trained its adapter on a {bits}-bit base; as a GGUF adapter it would run on the "
            f"unquantized base, which it was not trained on; export the merged model instead: "
            f"tunesmith export gguf {run}"
        )


def _adapter_settings(weights: Path) -> dict[str, Any]:
    path = weights / ADAPTER_CONFIG
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    way_out = "export the merged model instead (tunesmith export gguf RUN)"
    if settings.get("peft_type") != "LORA":
        raise UserError(f"{path}: a {settings.get('peft_type')} adapter, not LoRA; {way_out}")
    if settings.get("use_dora"):
        raise UserError(f"{path}: a DoRA adapter, which llama.cpp's LoRA adapters cannot express; {way_out}")
    if settings.get("modules_to_save") or settings.get("trainable_token_indices"):
        raise UserError(
            f"{path}: the run also trained whole modules ({settings.get('modules_to_save')}), which a GGUF "
            f"LoRA adapter cannot carry; {way_out}"
        )
    if settings.get("bias", "none") != "none":
        raise UserError(f"{path}: LoRA biases (bias: {settings['bias']}) cannot go in a GGUF adapter; {way_out}")
    return settings


def _scale(settings: dict[str, Any], module: str) -> tuple[int, float]:
    """(r, the factor PEFT multiplies B·A by) for `module`, rank and alpha patterns applied."""
    import re

    def pattern(key: str, default: Any) -> Any:
        for name, value in (settings.get(key) or {}).items():
            if re.fullmatch(rf"(.*\.)?{re.escape(name)}", module) or re.fullmatch(name, module):
                return value
        return default

    r = int(pattern("rank_pattern", settings["r"]))
    alpha = float(pattern("alpha_pattern", settings["lora_alpha"]))
    return r, alpha / (math.sqrt(r) if settings.get("use_rslora") else r)


def adapter_tensors(
    weights: Path, settings: dict[str, Any], config: dict[str, Any], permute: bool
) -> tuple[list[AdapterTensor], float]:
    """The adapter's A/B pairs under their GGUF names, and the alpha to write."""
    import gguf
    from safetensors.numpy import load_file

    state = load_file(str(weights / ADAPTER_WEIGHTS))
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH[model_arch(config, Path("config.json"))[0].upper()], int(config["num_hidden_layers"])
    )
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0].removeprefix("base_model.model.")
                pairs.setdefault(module, {})[part] = value.astype("float32")
                break
        else:
            raise UserError(
                f"{weights / ADAPTER_WEIGHTS}: tensor {key} is not a LoRA A or B; export the merged model instead"
            )
    scales = {module: _scale(settings, module) for module in pairs}
    ranks = {r for r, _ in scales.values()}
    uniform = len({s for _, s in scales.values()}) == 1 and len(ranks) == 1
    alpha = next(iter(scales.values()))[1] * next(iter(ranks)) if uniform else 0.0
    tensors = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise UserError(
                f"{weights / ADAPTER_WEIGHTS}: {module} lacks its LoRA {'A' if 'lora_A' not in pair else 'B'}"
            )
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if (
            gguf_name is None
            or not gguf_name.endswith(".weight")
            or gguf_name in ("token_embd.weight", "output.weight")
        ):
            raise UserError(
                f"{weights / ADAPTER_WEIGHTS}: LoRA on {module}, which a GGUF adapter cannot address; "
                "train with lora.target_modules on the attention and MLP projections, or export the merged model"
            )
        a, b = pair["lora_A"], pair["lora_B"]
        _, scale = scales[module]
        if not uniform:
            b = b * scale  # alpha 0: llama.cpp scales by 1, so B carries the whole scale
        if permute and module.endswith("q_proj"):
            b = _permute(b, n_head)
        elif permute and module.endswith("k_proj"):
            b = _permute(b, n_kv)
        tensors.append(AdapterTensor(gguf_name, a, b))
    if not tensors:
        raise UserError(f"{weights / ADAPTER_WEIGHTS}: no LoRA weights")
    return tensors, alpha


def write_adapter(
    out: Path, arch: str, tensors: list[AdapterTensor], alpha: float, out_type: str, *, name: str
) -> None:
    """Write the adapter GGUF through a temporary file, read back before the rename."""
    import gguf

    with atomic_file(out) as temp:
        writer = gguf.GGUFWriter(str(temp), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for tensor in tensors:
            for suffix, array in ((".lora_a", tensor.a), (".lora_b", tensor.b)):
                data, raw = _encode(array, out_type, tensor.gguf_name + suffix)
                writer.add_tensor(tensor.gguf_name + suffix, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        reader = gguf.GGUFReader(str(temp))
        kind = reader.get_field("adapter.type")
        if len(reader.tensors) != 2 * len(tensors) or kind is None or kind.contents() != "lora":
            raise TunesmithError(f"the adapter GGUF written to {out} failed its own check")


def check_base(path: Path, arch: str, tensors: list[AdapterTensor]) -> None:
    """The base GGUF is of `arch` and holds every adapted weight as (in, out); UserError if not."""
    import gguf

    if not path.is_file():
        raise UserError(f"--base {path}: file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
        raise UserError(f"--base {path}: not a readable GGUF ({err})") from None
    found = reader.get_field("general.architecture")
    if found is None or found.contents() != arch:
        raise UserError(f"--base {path}: a {found.contents() if found else 'unknown'} model, the adapter is for {arch}")
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    for tensor in tensors:
        want = (tensor.a.shape[1], tensor.b.shape[0])
        if shapes.get(tensor.gguf_name, want)[:2] != want or tensor.gguf_name not in shapes:
            raise UserError(
                f"--base {path}: not the adapter's base: {tensor.gguf_name} is "
                f"{shapes.get(tensor.gguf_name, 'missing')}, the adapter needs {want}"
            )


def _check_with_llama_cpp(base: Path, adapter: Path, log: Log) -> None:
    """llama.cpp loads the adapter onto the base (`llama_adapter_lora_init` checks every shape)."""
    try:
        import llama_cpp
    except ImportError:
        log("not checked with llama.cpp (pip install 'tunesmith[gguf]' to have llama.cpp load the adapter)")
        return
    try:
        model = llama_cpp.Llama(model_path=str(base), lora_path=str(adapter), n_ctx=64, verbose=False)
    except (ValueError, RuntimeError) as err:
        raise TunesmithError(f"llama.cpp could not apply {adapter.name} to {base.name}: {err}") from None
    model.close()
    log(f"checked with llama.cpp: {adapter.name} loads onto {base.name}")
