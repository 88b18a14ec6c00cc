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
from tunesmith.models.quant import plannable
from tunesmith.plan.activations import HEAP_BLOCK_BYTES, activation_bytes, logits_bytes, logits_heap_bytes

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
CUDA_CONTEXT_BYTES = 600 * 2**20
"""CUDA context and kernels: memory a GPU process uses outside `torch.cuda.memory_allocated`."""
CUDA_HEADROOM = 0.08
"""Share of a GPU kept free for the caching allocator's fragmentation when recommending settings."""
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
"""4-bit NF4 with double quantization: half a byte, an 8-bit absmax per 64 values, an fp32 absmax
per 256 of those."""


@dataclass(frozen=True)
class MicroBatch:
    """The largest micro-batch the data gives, and what one epoch holds."""

    rows: int  # tensor rows of the micro-batch (1 when packed: bins are concatenated)
    tokens: int  # positions in the micro-batch, padding included
    trained: int  # positions whose next token trains (where the output head runs)
    longest: int  # the longest attention span (a bin, or the padded width)
    sequences: int  # training sequences per epoch (bins when packed, else rows)
    epoch_tokens: int
    epoch_trained: int
    max_length: int
    mean_sequence: float  # mean conversation length (for attention FLOPs)
    mean_micro_tokens: float = 0.0


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


def hf_config_for(config: Config) -> Any:
    """The model's transformers config, read from its folder or the hub (no weights)."""
    from transformers import AutoConfig

    from tunesmith.models.load import resolve_model

    try:
        ref = resolve_model(config.model.name, revision=config.model.revision)
    except UserError as err:
        raise UserError(f"{config.origin('model.name')}: model.name: {err}") from None
    return AutoConfig.from_pretrained(ref.path, revision=ref.revision)


def meta_model(hf_config: Any, *, method: str = "lora", r: int = 16, alpha: float = 32,
               target_modules: list[str] | str = "all-linear", dora: bool = False, dtype: Any = None,
               attention: str = "sdpa") -> Any:
    """The model of `hf_config` on the meta device, with the real PEFT adapter for lora/qlora."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype or torch.float32,
                                                 attn_implementation=attention)
    if method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, use_dora=dora,
                             task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, peft_config)


def parameter_counts(hf_config: Any, *, method: str = "lora", r: int = 16, target_modules: list[str] | str = "all-linear",
                     dora: bool = False) -> tuple[int, int]:
    """(trainable, total) parameters, counted on a meta-device model with the real adapter."""
    model = meta_model(hf_config, method=method, r=r, target_modules=target_modules, dora=dora)
    return _counts(model)


def _counts(model: Any) -> tuple[int, int]:
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():  # tied weights are one parameter; .parameters() yields it once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


# ----------------------------------------------------------------------------------------------
# data


def micro_batch(config: Config, *, console: Any = None, max_length: int | None = None,
                batch_size: int | None = None) -> MicroBatch:
    """The largest micro-batch of the training split as tunesmith will build it (templated,
    tokenized, cut to max_length and packed by the real pipeline; no model weights loaded)."""
    from tunesmith.training.prepare import prepare

    config = _with(config, {"template.max_length": max_length} if max_length else {})
    prepared = prepare(config, console or _QuietConsole(), print_warnings=False)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.splits["train"].examples]
    return shape_of(rows, config, batch_size=batch_size)


def shape_of(rows: list[dict], config: Config, *, batch_size: int | None = None) -> MicroBatch:
    """A `MicroBatch` from encoded rows (`input_ids`, `labels`) under the config's packing."""
    from tunesmith.formatting.packing import pack

    b = batch_size or config.train.batch_size
    length = config.template.max_length
    sequences = pack(rows, length) if config.train.packing == "bins" else rows
    sizes = [len(s["input_ids"]) for s in sequences]
    # trained positions: labels that are not -100 after each sequence's first (the collator masks it)
    trained = [sum(1 for x in s["labels"][1:] if x != -100) for s in sequences]
    top = sorted(range(len(sequences)), key=lambda i: -sizes[i])[:b]
    top_trained = sum(sorted(trained, reverse=True)[:b])
    if config.train.packing == "bins":
        tokens, n_rows, longest = sum(sizes[i] for i in top), 1, max(sizes, default=0)
    else:
        longest = max(sizes, default=0)
        tokens, n_rows = longest * min(b, len(sizes)), min(b, len(sizes))
    n = max(len(rows), 1)
    return MicroBatch(rows=n_rows, tokens=max(tokens, 1), trained=max(top_trained, 1), longest=longest,
                      sequences=len(sequences), epoch_tokens=sum(sizes), epoch_trained=sum(trained),
                      max_length=length, mean_sequence=sum(len(r["input_ids"]) for r in rows) / n,
                      mean_micro_tokens=sum(sizes) / max(math.ceil(len(sizes) / b), 1))


def scaled_batch(batch: MicroBatch, *, batch_size_from: int, batch_size_to: int,
                 max_length: int | None = None) -> MicroBatch:
    """`batch` with another micro-batch size (and max_length): tokens scale with the bins per
    micro-batch; a shorter max_length caps every bin (rows are cut)."""
    scale = batch_size_to / batch_size_from
    tokens, trained, longest = batch.tokens * scale, batch.trained * scale, batch.longest
    if max_length and max_length < batch.max_length:
        cut = max_length / batch.max_length
        tokens, trained, longest = tokens * cut, trained * cut, min(longest, max_length)
    return MicroBatch(rows=batch.rows if batch.rows == 1 else batch_size_to, tokens=max(int(tokens), 1),
                      trained=max(int(trained), 1), longest=longest, sequences=batch.sequences,
                      epoch_tokens=batch.epoch_tokens, epoch_trained=batch.epoch_trained,
                      max_length=max_length or batch.max_length, mean_sequence=batch.mean_sequence,
                      mean_micro_tokens=batch.mean_micro_tokens * scale)


# ----------------------------------------------------------------------------------------------
# the estimate


def _dtypes(config: Config, method: str, device_kind: str, bf16: bool | None) -> tuple[Any, Any, str]:
    """(weight dtype, compute dtype, precision) as the trainer would pick them."""
    import torch

    if device_kind == "cuda":
        if bf16 is None:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        auto = torch.bfloat16 if bf16 else torch.float32
        precision = {"auto": "bf16" if bf16 else "fp16"}.get(config.train.precision, config.train.precision)
    else:
        from tunesmith.training.hardware import cpu_has_native_bf16

        auto = torch.float32
        precision = {"auto": "bf16" if cpu_has_native_bf16() else "fp32"}.get(config.train.precision,
                                                                              config.train.precision)
    weight = auto if config.model.dtype == "auto" else getattr(torch, config.model.dtype)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if weight != torch.float32 and compute == torch.float32:
        compute = weight
    return weight, compute, precision


def estimate_memory(config: Config, *, method: str | None = None, device_kind: str = "cpu",
                    batch: MicroBatch | None = None, hf_config: Any = None, bf16: bool | None = None,
                    console: Any = None) -> MemoryEstimate:
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
    model = meta_model(hf_config, method="full" if method == "full" else "lora", r=lora.r, alpha=lora.alpha,
                       target_modules=lora.target_modules, dora=lora.dora, dtype=weight_dtype,
                       attention="sdpa")
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
    act = activation_bytes(model, batch, checkpointing=config.train.gradient_checkpointing, attention=attention,
                           compute_dtype=emulate, quantized=quantized)
    vocab = hf_config.get_text_config().vocab_size
    element = torch.empty((), dtype=compute_dtype).element_size()
    logits = logits_bytes(batch, vocab, element)
    head = model.get_output_embeddings() if not hasattr(model, "get_base_model") else \
        model.get_base_model().get_output_embeddings()
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
        holes = int(heap * CPU_HEAP_HOLES.get(precision, CPU_HEAP_HOLES["fp32"]))
        reusable = _heap_gradient_bytes(model)
        peak = weights + adapter + state_bytes + max(forward_phase + max(holes - reusable, 0), step_phase + holes)
        parts["allocator"] = int(peak - live)
    total_bytes = live + parts.get("allocator", 0)
    loading = total * stored + weights if device_kind == "cpu" and quantized else 0  # see _stored_element_size
    total_bytes = max(total_bytes, loading)
    settings = {"micro_batch": config.train.batch_size, "gradient_accumulation": config.train.gradient_accumulation,
                "max_length": config.template.max_length, "gradient_checkpointing": config.train.gradient_checkpointing,
                "precision": precision, "attention": attention, "optimizer": config.train.optimizer,
                "weight_dtype": str(weight_dtype).removeprefix("torch."), "tokens_per_micro_batch": batch.tokens,
                "trained_positions_per_micro_batch": batch.trained, "optimizer_step_temporaries": step_temp,
                "head_gradient": head_grad, "heap_activation_bytes": heap, "load_peak_bytes": loading}
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
    setting = config.model.attention
    if setting == "auto":
        return "segments" if device_kind == "cpu" else "sdpa"
    return setting if setting != "flex_attention" else "flash_attention_2"  # flex keeps O(T) too


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
        state = sum(2 * (p.numel() + 4 * math.ceil(p.numel() / 2048)) if p.numel() >= 4096 else 8 * p.numel()
                    for p in params)
        return state, 0
    if optimizer == "adafactor":
        state = sum((p.shape[0] + p.shape[-1]) * 4 if p.dim() >= 2 else p.numel() * 4 for p in params)
        return state, max(sizes, default=0)
    return 0, 0  # sgd without momentum


def peak_memory_for_config(config: Config) -> int:
    """Predicted peak GPU memory (bytes, as `torch.cuda.max_memory_allocated` reports) of `config`
    with its own method; for `tunesmith remote check` and other scripts."""
    return estimate_memory(config, device_kind="cuda").total_bytes


def _with(config: Config, overrides: dict[str, Any]) -> Config:
    """`config` with dotted keys replaced (a new validated Config)."""
    if not overrides:
        return config
    data = config.model_dump()
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    new = Config.model_validate(data)
    return new.with_origins(dict(config._origins))


class _QuietConsole:
    def print(self, *args: Any, **kwargs: Any) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# recommended settings and time


def recommend(config: Config, *, target_bytes: int, device_kind: str, methods: tuple[str, ...] | None = None,
              batch: MicroBatch | None = None, hf_config: Any = None, bf16: bool | None = None) -> dict[str, Any]:
    """Settings that fit `target_bytes`: the config's method first (QLoRA where bitsandbytes runs), without
    gradient checkpointing if possible (faster), the largest micro-batch up to the config's, the
    config's max_length if anything fits with it; gradient accumulation keeps the effective batch
    (micro-batch x accumulation) of the config."""
    hf_config = hf_config or hf_config_for(config)
    batch = batch or micro_batch(config)
    usable = target_bytes * (1 - CUDA_HEADROOM) - CUDA_CONTEXT_BYTES if device_kind == "cuda" else target_bytes
    order = [config.method, *[m for m in ("lora", "qlora", "full") if m != config.method]]
    quantizes = plannable(device_kind)
    order = [m for m in order if (methods is None or m in methods) and (m != "qlora" or quantizes)]
    effective = config.train.batch_size * config.train.gradient_accumulation
    lengths = [config.template.max_length]
    while lengths[-1] // 2 >= 256:
        lengths.append(lengths[-1] // 2)
    for length in lengths:
        for method in order:
            for checkpointing in (False, True):
                micro = config.train.batch_size
                while micro >= 1:
                    trial = _with(config, {"train.batch_size": micro, "template.max_length": length,
                                           "train.gradient_checkpointing": checkpointing})
                    shaped = scaled_batch(batch, batch_size_from=config.train.batch_size, batch_size_to=micro,
                                          max_length=length)
                    found = estimate_memory(trial, method=method, device_kind=device_kind, batch=shaped,
                                            hf_config=hf_config, bf16=bf16)
                    if found.total_bytes <= usable:
                        return {"fits": True, "method": method, "micro_batch": micro,
                                "gradient_accumulation": max(1, math.ceil(effective / micro)), "max_length": length,
                                "gradient_checkpointing": checkpointing, "peak_bytes": found.total_bytes,
                                "target_bytes": int(target_bytes),
                                "note": "" if length == config.template.max_length else
                                f"rows longer than {length} tokens are cut"}
                    micro //= 2
    return {"fits": False, "target_bytes": int(target_bytes), "method": None,
            "note": "nothing fits: try a smaller model, QLoRA on a GPU, or more memory"}


CPU_EFFICIENCY = 0.5
"""Share of the measured matmul rate a CPU training step reaches (attention, norms, the optimizer)."""


def cpu_flops_per_second(seconds: float = 1.0) -> float:
    """float32 matmul rate of this machine, measured for about `seconds`."""
    import time

    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        done += 1
    return done * 2 * 1024 ** 3 / (time.perf_counter() - started)


def time_estimate(config: Config, estimate: MemoryEstimate, hf_config: Any, *, flops_per_second: float,
                  step_seconds: float | None = None) -> dict[str, Any]:
    """Optimizer steps and seconds per epoch: from a measured step time if given, else from the
    model's FLOPs (6N per token for full fine-tuning, 4N for adapters, +2N with checkpointing,
    attention, and the head at trained positions only) at `flops_per_second`."""
    text = hf_config.get_text_config()
    batch = estimate.batch
    micro_steps = math.ceil(batch.sequences / config.train.batch_size)
    steps = math.ceil(micro_steps / config.train.gradient_accumulation)
    head = text.hidden_size * text.vocab_size
    body = estimate.total_parameters - estimate.trainable * (estimate.method != "full") - head * 2
    passes = (6 if estimate.method == "full" else 4) + (2 if config.train.gradient_checkpointing else 0)
    heads = getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    attention = 6 * text.num_hidden_layers * heads * head_dim * batch.mean_sequence
    flops = batch.epoch_tokens * (passes * max(body, 0) + attention) + batch.epoch_trained * 6 * head
    if step_seconds is not None:
        seconds, source = step_seconds * steps, "measured warm-up"
    else:
        seconds, source = flops / flops_per_second, f"{flops_per_second / 1e12:.2f} TFLOP/s effective"
    return {"steps_per_epoch": steps, "seconds_per_epoch": round(seconds, 1), "epoch_tflops": round(flops / 1e12, 2),
            "source": source}
