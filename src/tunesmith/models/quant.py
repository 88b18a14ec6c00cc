"""Quantized bases (bitsandbytes): whether this machine can run them, and their settings.

bitsandbytes 0.49+ has a CPU backend besides its CUDA kernels: NF4/FP4 4-bit (QLoRA), LLM.int8
8-bit and the 8-bit blockwise optimizers all run on CPU tensors. Whether they do on *this* machine
is not guessed from the version: `support(device)` quantizes and multiplies a small tensor with
each, once per process, and gives the reason when one fails. `doctor`, `train`, `plan` and every
loader of a quantized run ask here, so they all agree.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
from typing import Any

PINNED = "0.50.2"
INSTALL = f'pip install "tunesmith[quant]" (bitsandbytes=={PINNED})'


@functools.cache
def support(device: str) -> str | None:
    """None when 4-bit, 8-bit and the 8-bit optimizer run on `device` ("cpu" or "cuda"); else why not."""
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return f"bitsandbytes is not installed: {INSTALL}"
    try:
        _probe(device)
    except Exception as err:  # whatever the backend raises is the reason, in its own words
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        return f"bitsandbytes {version} cannot quantize on {device} here ({type(err).__name__}: {first})"
    return None


def _probe(device: str) -> None:
    """A 64 x 64 layer through NF4, int8 and one 8-bit AdamW step on `device`; raises if any fails."""
    import logging

    import torch

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional-kernel notices are not errors
    import bitsandbytes as bnb

    torch.manual_seed(0)
    weight = torch.randn(64, 64)
    x = torch.randn(2, 64)
    four = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    four.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4")
    eight = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
    eight.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
    exact = x @ weight.T
    for layer in (four.to(device), eight.to(device)):
        out = layer(x.to(device)).float().cpu()
        if not torch.isfinite(out).all() or (out - exact).abs().max() > 0.5 * exact.abs().max():
            raise RuntimeError(f"{type(layer).__name__} gave wrong results")
    param = torch.nn.Parameter(torch.randn(4096, device=device))
    param.grad = torch.ones_like(param)
    bnb.optim.AdamW8bit([param], lr=1e-3).step()


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None


def bitsandbytes_config(bits: int, precision: str) -> Any:
    """transformers' settings for a quantized base: NF4 with double quantization computing in the
    run's precision (QLoRA), or LLM.int8 (8-bit)."""
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def dequantized(model: Any) -> Any:
    """`model` (just loaded with a bitsandbytes config) with every quantized linear layer replaced by
    a float32 one holding exactly the de-quantized weights: what the adapter was trained against.

    Must run before the model's first forward pass: on CPUs with AVX-512 BF16, bitsandbytes 0.50.2
    repacks a 4-bit weight for its CPU kernel on the first inference-mode forward
    (`quant_state.packing_format_for_cpu`), and transformers' `dequantize()` then reads the
    repacked bytes as if they were not (garbage weights). Refused here rather than mis-merged."""
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError(
                f"{name}: its 4-bit weight was repacked for bitsandbytes' CPU kernel by a forward "
                "pass; de-quantize a freshly loaded model"
            )
    return model.dequantize().float()


def own_storage(model: Any) -> Any:
    """Copy the parameters and buffers bitsandbytes left unquantized (embeddings, norms, head) into
    memory of their own, in place; returns `model`.

    Loaded in the checkpoint's own dtype, those tensors are views into the safetensors file's memory
    map, and while one view lives the whole mapping stays resident: every page the loader read to
    quantize the linear weights too (SmolLM2-135M, float32 on CPU: 524 MiB resident for 4-bit weights
    and embeddings of 160 MiB). Copying them lets the mapping go; the quantized codes are already the
    process's own. Tied weights are one parameter and are copied once."""
    import torch

    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in tensors:
                if id(tensor) in seen or tensor is None or tensor.dtype in (torch.uint8, torch.int8):
                    continue
                seen.add(id(tensor))
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.data = tensor.data.clone()
                else:
                    module._buffers[name] = tensor.clone()
    gc.collect()  # the loader's file handle sits in reference cycles: unmap now, not at some later collection
    _return_free_heap()
    return model


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@contextlib.contextmanager
def unpooled_load():
    """Load a quantized base with glibc serving every block of 1 MiB or more from its own mapping.

    transformers loads the checkpoint on several threads and bitsandbytes quantizes a float copy
    of each weight; under glibc's dynamic mmap threshold those copies land in the heap and leave
    holes whose size depends on the threads' order, while the file's mapping is still resident:
    the peak resident set of a QLoRA run on CPU varied from 817 to 1,136 MiB between identical runs
    (SmolLM2-135M, glibc 2.36). Unpooled, each copy goes back to the system when freed. Afterwards
    the thresholds are left where glibc's dynamic rule stops (32 MiB, trim at twice that), so that
    training reuses its heap as before. No-op off glibc."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        if mallopt is not None:
            mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _libc_function(name: str) -> Any:
    import ctypes
    import ctypes.util

    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def _return_free_heap() -> None:
    """Hand back to the system what the load left free in glibc's heap (blocks under the 1 MiB
    threshold of `unpooled_load`; before that threshold, 0-240 MiB of the quantizer's float copies
    for SmolLM2-135M), so the run starts from the same resident memory every time. No-op off glibc."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def plannable(device_kind: str) -> bool:
    """Whether `plan` offers quantized bases for `device_kind`: on a GPU (planned from anywhere,
    `--gpu`) bitsandbytes' CUDA kernels are assumed; on this CPU only if its backend runs here."""
    return device_kind == "cuda" or support(device_kind) is None
