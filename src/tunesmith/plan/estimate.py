"""Peak-memory estimates for a run, from the model's config and the data's real token counts.

Nothing is estimated by rule of thumb where it can be counted:

- Parameters: the model is built from its config on the meta device (no memory), the real PEFT
  adapter is attached there, and parameters are counted.
- Activations: one forward pass runs on the meta device with the real micro-batch shape, under a
  `saved_tensors_hooks` that records every tensor autograd keeps for the backward pass (each
  storage once, parameters left out). Mixed precision and 4-bit bases are emulated on meta
  (`_Emulation`): matmul inputs are cast as autocast / bitsandbytes would, so the copies they save
  are counted. Attention kernels do not run on meta, so what they save is recorded from their
  contract (q, k, v, output, log-sum-exp; the T x T weights for `eager`), and the packed
  block-diagonal mask is added.
- Logits: tunesmith runs the output head only at positions whose next token trains
  (training/trainer.py), so the loss term scales with trained tokens: the float32 log-softmax, its
  gradient and the gradient of the logits live together at the start of the backward pass.
- Weights, gradients, optimizer states: bytes per trained parameter by dtype and optimizer.

Peak = weights + optimizer states + max(activations + logits + the head's gradient at the start of
the backward pass, all gradients + the optimizer step's temporaries at its end): gradients grow
while activations are freed, so the two never peak together. On CPU the process also pays for
glibc's allocator (freed heap blocks it keeps): `CPU_HEAP_HOLES`, measured, see below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.config import Config
from tunesmith.errors import UserError
from tunesmith.plan.activations import HEAP_BLOCK_BYTES, activation_bytes, logits_bytes, logits_heap_bytes
from tunesmith.plan.shapes import (
    MicroBatch,
    _counts,
    hf_config_for,
    meta_model,
    micro_batch,
)

METHODS = ("full", "lora", "qlora")
CPU_HEAP_HOLES = {"bf16": 0.65, "fp32": 1.0}
"""Resident memory glibc keeps on CPU beyond the live tensors, as a share of the heap-served part
of the activation phase, by precision (fp16 has no CPU path; anything else counts as fp32).

What drives it: a block of at least `activations.HEAP_BLOCK_BYTES` (32 MiB, glibc's largest
dynamic mmap threshold) is its own mmap and goes back to the system when freed; smaller blocks
(most activations, the forward pass's temporaries, and the weight copies bf16 autocast makes)
come from the heap, and the holes they leave when freed stay resident. So the overhead is a share
of `heap` (the saved tensors and logits blocks below 32 MiB, counted per storage on meta), not of
all activations: long micro-batches whose logits or attention tensors are large blocks pay little.
It enters the peak twice (`estimate_memory`): at the end of the backward pass the holes are still
resident beside the gradients and the optimizer step (step phase + holes); in the next forward
pass, holes left by the gradients `zero_grad` freed take new activations first, so full
fine-tuning, whose gradients are weight-sized heap blocks, pays max(holes - those gradients, 0)
there and LoRA (tiny gradients) pays the holes in full.

How it was derived: bench/fit_plan_memory.py (3 optimizer steps per run in a fresh process, peak
RSS above the idle process, the quick start's packed data) on an "Intel(R) Xeon(R) Processor" with
AVX-512 BF16 (so `auto` is bf16 autocast), 2 cores, 24 GiB, torch 2.13 CPU, transformers 5.23;
random-weight Qwen2 (512 x 8, q/k/v biases), Llama (2048 x 4) and Mistral (1024 x 4, head_dim 128)
from `measure.RANDOM_MODELS`, and the embedded SmolLM2-135M, 256-2048 tokens per micro-batch. The
share each LoRA run implies, (measured - live tensors) / heap: bf16 0.33 (embedded, 256 tokens),
0.57 and 0.63 (Qwen2, 256 and 2048), 0.72 (Mistral, 1024), 0.82 (Llama, 512); fp32 0.60 (embedded,
256), 0.86 (Qwen2, 2048), 1.09 (Mistral, 2048), 1.40 (Llama, 512). The shares are the middle of
each range. Full fine-tuning was not fitted: with the same shares, its 8 runs (peaking in the
step phase at 256 tokens, in the forward phase at 2048) come within -8.5%..+5.4%, and all 16 runs
of the grid within 12% (worst: embedded LoRA +11.7%, bf16, and +11.0%, fp32). The old single
share, 0.65 x (activations + logits): 14 of 16 within 20%, worst +32% (Qwen2 full, 2048 tokens,
whose 700 MiB of logits are mmapped blocks that leave no holes).
With MALLOC_MMAP_THRESHOLD_=131072 the overhead all but vanishes (live tensors within 5%)."""
FP32_HOLES_AT = (2**17, 0.55, 0.16, 0.5, 1.4)
"""float32 runs: the share grows with the size of one hidden-state block (hidden size x tokens per
micro-batch): share = 0.55 + 0.16 x log2(block / 2**17 elements), kept within 0.5..1.4.

Refitted in session 9 on an AVX2-only "AMD EPYC" (no AVX-512 BF16, so every run of
bench/fit_plan_memory.py's grid was float32), 2 cores: the shares the runs implied were 0.54-0.60
(embedded LoRA, 576 x 256 = 147k elements), 0.68 (embedded full), 0.54 and 0.77 (Qwen2 512 x 256,
LoRA and full), 0.81-0.90 (Qwen2 512 x 2048, LoRA), 0.98 (Mistral 1024 x 1024), 1.05-1.11 (Llama
2048 x 512); the AVX-512 fit's float32 runs (embedded 0.60, Qwen2 2048 tokens 0.86, Mistral 1.09,
Llama 1.40) lie on the same rising line. Larger blocks leave holes the next, differently sized
blocks cannot fill. The single share 1.0 this replaces over-predicted the embedded model by 12-14%
(LoRA) and 20% (an int8 base, where the same bytes are a larger part of a smaller whole).
QLoRA follows the same line once its load no longer leaves holes (`models.quant.unpooled_load`):
811 MiB predicted for the quick start in float32, 809-831 measured in five runs on the AVX2 EPYC
(before, the load's holes made it 817-1,136 from run to run)."""


def cpu_heap_share(precision: str, block_elements: int) -> float:
    """The share of `heap` glibc keeps resident as holes, for `precision` and the size of one hidden
    state of a micro-batch (`CPU_HEAP_HOLES`, `FP32_HOLES_AT`)."""
    if precision == "bf16":
        return CPU_HEAP_HOLES["bf16"]
    at, share, per_doubling, low, high = FP32_HOLES_AT
    return min(max(share + per_doubling * math.log2(max(block_elements, 1) / at), low), high)


CUDA_CONTEXT_BYTES = 600 * 2**20
"""CUDA context and kernels: memory a GPU process uses outside `torch.cuda.memory_allocated`."""
CUDA_HEADROOM = 0.08
"""Share of a GPU kept free for the caching allocator's fragmentation when recommending settings."""
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
"""4-bit NF4 with double quantization: half a byte, an 8-bit absmax per 64 values, an fp32 absmax
per 256 of those."""


@dataclass
class MemoryEstimate:
    """Predicted peak memory of a run, by part (bytes)."""

    method: str
    device_kind: str
    parts: dict[str, int]
    total_bytes: int
    trainable: int
    total_parameters: int
    batch: MicroBatch
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_gib"] = round(self.total_bytes / 2**30, 3)  # GiB (2^30 bytes), the unit plan prints
        return out


# ----------------------------------------------------------------------------------------------
# models on the meta device


# ----------------------------------------------------------------------------------------------
# data


# ----------------------------------------------------------------------------------------------
# the estimate


def _dtypes(config: Config, method: str, device_kind: str, bf16: bool | None) -> tuple[Any, Any, str]:
    """(weight dtype, compute dtype, precision) as the trainer would pick them (`tunesmith.machine`),
    for this machine or, with `bf16`, a GPU that does (not) run bf16."""
    import torch

    from tunesmith.machine import pick_precision, torch_dtype

    try:
        precision = pick_precision(config.train.precision, device_kind, bf16=bf16)
    except UserError:  # fp16 planned for a CPU: train refuses it; the estimate still says what it would take
        precision = config.train.precision
    weight = torch_dtype(config.model.dtype, device_kind, bf16=bf16)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if weight != torch.float32 and compute == torch.float32:
        compute = weight
    return weight, compute, precision


def estimate_memory(
    config: Config,
    *,
    method: str | None = None,
    device_kind: str = "cpu",
    batch: MicroBatch | None = None,
    hf_config: Any = None,
    bf16: bool | None = None,
    console: Any = None,
) -> MemoryEstimate:
    """Predicted peak memory of training `config` (with `method` instead of its own, if given) on
    `device_kind` ("cpu": resident memory above the idle process; "cuda": what
    `torch.cuda.max_memory_allocated` reports). No weights are allocated."""
    import torch

    method = method or config.method
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    hf_config = hf_config or hf_config_for(config)
    stored = _stored_element_size(hf_config)  # read first: building the meta model sets hf_config.dtype
    batch = batch or micro_batch(config, console=console)
    weight_dtype, compute_dtype, precision = _dtypes(config, method, device_kind, bf16)
    if method == "qlora":
        weight_dtype = compute_dtype if compute_dtype != torch.float32 else torch.bfloat16
    attention = _attention_kernel(config, device_kind)
    lora = config.lora
    model = meta_model(
        hf_config,
        method="full" if method == "full" else "lora",
        r=lora.r,
        alpha=lora.alpha,
        target_modules=lora.target_modules,
        dora=lora.dora,
        dtype=weight_dtype,
        attention="sdpa",
    )
    trainable, total = _counts(model)
    quantized = _quantized_weights(model) if (method == "qlora" or config.model.load_in_8bit) else set()
    if method == "qlora":  # peft's prepare_model_for_kbit_training: every parameter not 4-bit in float32
        upcast: dict[int, Any] = {}
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if id(p) not in quantized and p.dtype != torch.float32:
                    if id(p) not in upcast:  # tied weights stay one parameter
                        upcast[id(p)] = torch.nn.Parameter(p.to(torch.float32), requires_grad=p.requires_grad)
                    setattr(module, name, upcast[id(p)])
    weights, adapter, trained_bytes = _weight_bytes(model, quantized, bits=4 if method == "qlora" else 8)
    state_bytes, step_temp = _optimizer_bytes(model, config.train.optimizer, device_kind)
    emulate = compute_dtype if compute_dtype != torch.float32 else None  # autocast is on in bf16/fp16 runs
    act = activation_bytes(
        model,
        batch,
        checkpointing=config.train.gradient_checkpointing,
        attention=attention,
        compute_dtype=emulate,
        quantized=quantized,
    )
    vocab = hf_config.get_text_config().vocab_size
    element = torch.empty((), dtype=compute_dtype).element_size()
    logits = logits_bytes(batch, vocab, element)
    head = (
        model.get_output_embeddings()
        if not hasattr(model, "get_base_model")
        else model.get_base_model().get_output_embeddings()
    )
    head_grad = sum(p.numel() * p.element_size() for p in head.parameters() if p.requires_grad)
    parts = {
        "weights": weights,
        "adapter": adapter,
        "gradients": trained_bytes,
        "optimizer": state_bytes,
        "activations": act["layers"] + act["other"] + act["mask"],
        "logits": logits,
    }
    forward_phase = parts["activations"] + logits + head_grad
    step_phase = trained_bytes + step_temp
    live = weights + adapter + state_bytes + max(forward_phase, step_phase)
    heap = act["heap"] + logits_heap_bytes(batch, vocab, element)
    if device_kind == "cpu":
        width = hf_config.get_text_config().hidden_size
        share = cpu_heap_share(precision, width * batch.tokens)
        holes = int(heap * share)
        reusable = _heap_gradient_bytes(model)
        peak = weights + adapter + state_bytes + max(forward_phase + max(holes - reusable, 0), step_phase + holes)
        parts["allocator"] = int(peak - live)
    total_bytes = live + parts.get("allocator", 0)
    loading = total * stored + weights if device_kind == "cpu" and quantized else 0  # see _stored_element_size
    total_bytes = max(total_bytes, loading)
    settings = {
        "micro_batch": config.train.batch_size,
        "gradient_accumulation": config.train.gradient_accumulation,
        "max_length": config.template.max_length,
        "gradient_checkpointing": config.train.gradient_checkpointing,
        "precision": precision,
        "attention": attention,
        "optimizer": config.train.optimizer,
        "weight_dtype": str(weight_dtype).removeprefix("torch."),
        "tokens_per_micro_batch": batch.tokens,
        "trained_positions_per_micro_batch": batch.trained,
        "optimizer_step_temporaries": step_temp,
        "head_gradient": head_grad,
        "heap_activation_bytes": heap,
        "load_peak_bytes": loading,
    }
    return MemoryEstimate(method, device_kind, parts, int(total_bytes), trainable, total, batch, settings)


def _stored_element_size(hf_config: Any) -> int:
    """Bytes per parameter in the checkpoint file (its config's dtype, float32 if unsaid).

    It sizes the peak while a quantized base loads on CPU: the file's pages (memory-mapped, every
    one read to quantize) plus the loaded weights, until `models.quant.own_storage` copies the
    unquantized tensors out of the mapping and it is released. Measured on SmolLM2-135M (a float32
    file): 700-740 MiB for 4-bit, predicted 698; above the training peak for big models on short rows."""
    import torch

    stored = getattr(hf_config, "dtype", None) or torch.float32
    if isinstance(stored, str):
        stored = getattr(torch, stored.removeprefix("torch."), torch.float32)
    return torch.empty((), dtype=stored).element_size()


def _heap_gradient_bytes(model: Any) -> int:
    """Gradient bytes of the trained parameters whose gradient is a heap block (smaller than
    `HEAP_BLOCK_BYTES`): freed by `zero_grad` after each step, their holes take the next forward's
    activations."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            size = p.numel() * p.element_size()
            total += size if size < HEAP_BLOCK_BYTES else 0
    return total


def _attention_kernel(config: Config, device_kind: str) -> str:
    from tunesmith.machine import attention_for

    kernel = attention_for(config.model.attention, device_kind)
    return "flash_attention_2" if kernel == "flex_attention" else kernel  # for memory: flex keeps O(T) too


def _quantized_weights(model: Any) -> set[int]:
    """ids of the base linear weights bitsandbytes would quantize (every nn.Linear but the head)."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings()
    out: set[int] = set()
    for name, module in inner.named_modules():
        if type(module) is torch.nn.Linear and module is not head and "lora_" not in name:
            out.add(id(module.weight))
    return out


def _weight_bytes(model: Any, quantized: set[int], bits: int) -> tuple[int, int, int]:
    """(frozen or full weights, adapter weights, gradient bytes)."""
    seen: set[int] = set()
    weights = adapter = grads = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in quantized:
            size = int(p.numel() * (NF4_BYTES_PER_PARAM if bits == 4 else 1 + 4 / 4096))
        else:
            size = p.numel() * p.element_size()
        if p.requires_grad:
            grads += p.numel() * p.element_size()
        if p.requires_grad and hasattr(model, "get_base_model"):
            adapter += size
        else:
            weights += size
    return weights, adapter, grads


def _optimizer_bytes(model: Any, optimizer: str, device_kind: str) -> tuple[int, int]:
    """(optimizer state bytes, temporaries of one optimizer step) for the trained parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() * p.element_size() for p in params]
    total = sum(sizes)
    if optimizer in ("adamw", "adamw_fused"):
        # torch AdamW: exp_avg and exp_avg_sq like each parameter. The step's temporaries: foreach
        # (the CUDA default) makes a sqrt of every exp_avg_sq at once; the per-tensor loop (CPU)
        # two of the largest parameter; fused none
        if optimizer == "adamw_fused":
            temp = 0
        elif device_kind == "cuda":
            temp = total
        else:
            temp = 2 * max(sizes, default=0)
        return 2 * total, temp
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        # bitsandbytes: 8-bit states (+ an fp32 absmax per 2048) for tensors of >= 4096 values,
        # float32 states for smaller ones
        state = sum(
            2 * (p.numel() + 4 * math.ceil(p.numel() / 2048)) if p.numel() >= 4096 else 8 * p.numel() for p in params
        )
        return state, 0
    if optimizer == "adafactor":
        state = sum((p.shape[0] + p.shape[-1]) * 4 if p.dim() >= 2 else p.numel() * 4 for p in params)
        return state, max(sizes, default=0)
    return 0, 0  # sgd without momentum


def peak_memory_for_config(config: Config) -> int:
    """Predicted peak GPU memory (bytes, as `torch.cuda.max_memory_allocated` reports) of `config`
    with its own method; for `tunesmith remote check` and other scripts."""
    return estimate_memory(config, device_kind="cuda").total_bytes


# ----------------------------------------------------------------------------------------------
# recommended settings and time
