"""Activation memory of one micro-batch, counted on the meta device (no weights allocated).

One forward pass of the decoder runs on meta with the real micro-batch shape, under a
`saved_tensors_hooks` that records every tensor autograd keeps for the backward pass (each storage
once, parameters left out). Mixed precision and 4-bit bases are emulated (`_Emulation`); attention
kernels do not run on meta, so what they save is recorded from their contract (`_attention`).
Besides the total, `activation_bytes` reports the part held in storages smaller than glibc's
largest mmap threshold (`HEAP_BLOCK_BYTES`): the part a CPU process serves from its heap, where
the allocator overhead of `estimate.cpu_allocator_bytes` arises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith.errors import UserError

if TYPE_CHECKING:
    from tunesmith.plan.shapes import MicroBatch


class _Tally:
    """Bytes of the distinct storages autograd saves for backward (parameters left out)."""

    def __init__(self, excluded: set[int]):
        self.excluded = excluded
        self.alive: list[Any] = []  # every tensor seen, so no storage is freed and its key reused meanwhile
        self.sizes: dict[int, int] = {}
        self.owner: dict[int, str] = {}
        self.where = "other"

    def add(self, tensor: Any, nbytes: int | None = None) -> None:
        self.alive.append(tensor)
        key = tensor.untyped_storage()._cdata
        if key in self.excluded:
            return
        size = nbytes if nbytes is not None else tensor.untyped_storage().nbytes()
        if size > self.sizes.get(key, -1):
            self.sizes[key] = size
            self.owner.setdefault(key, self.where)

    def extra(self, nbytes: int) -> None:
        self.sizes[-len(self.sizes) - 1] = nbytes
        self.owner[-len(self.sizes)] = self.where

    def by_owner(self, below: int | None = None) -> dict[str, int]:
        """Bytes by owner (a layer, or "other"); with `below`, only storages smaller than it."""
        out: dict[str, int] = {}
        for key, size in self.sizes.items():
            if below is not None and size >= below:
                continue
            out[self.owner.get(key, self.where)] = out.get(self.owner.get(key, self.where), 0) + size
        return out


HEAP_BLOCK_BYTES = 32 * 2**20
"""glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): a block at least
this large is always its own mmap, returned to the system when freed, so it never leaves a hole."""

_TALLY: _Tally | None = None
_KERNEL = "sdpa"


def _attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: Any = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Stand-in attention for the meta pass: records what the real kernel saves for backward."""
    import torch

    tally = _TALLY
    b, h, t, d = query.shape
    if _KERNEL == "eager":
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling or 1.0, dropout=dropout, **kwargs
        )
    kv_heads = key.shape[1]
    out = torch.empty(b, t, h, value.shape[-1], dtype=query.dtype, device=query.device)
    if tally is not None:
        # sdpa with a mask (packed bins, padding) repeats k/v to every head; flash attention and
        # `segments` (no mask: grouped-query sdpa) do not
        repeat = h // kv_heads if _KERNEL == "sdpa" else 1
        for x in (query,):
            tally.add(x)
        for x in (key, value):
            tally.extra(x.numel() * x.element_size() * repeat) if repeat > 1 else tally.add(x)
        tally.extra(out.numel() * out.element_size())
        tally.extra(b * h * t * 4)  # log-sum-exp, float32
    # keep the graph connected (q, k, v all get gradients) without saving anything else
    out = out + (query.sum() + key.sum() + value.sum()) * 0
    return out, None


class _Emulation:
    """What autocast and bitsandbytes do to matmul inputs, emulated on meta (which has neither):
    matmul inputs are cast to `dtype` (the copies are what autograd saves); a quantized base layer
    returns its output in its input's dtype, as bitsandbytes' Linear4bit does, and saves no float copy
    of its weight: bitsandbytes de-quantizes it again in the backward pass (`excluded` gets the cast
    weight's storage, so the tally leaves it out as it does the parameters)."""

    def __init__(self, dtype: Any, quantized: set[int], excluded: set[int]):
        import torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        emulation = self
        self.dtype, self.quantized = dtype, quantized
        matmuls = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm}

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in matmuls and emulation.dtype is not None:
                    weight = args[1] if len(args) > 1 else kwargs.get("weight")
                    first = args[0]
                    cast = [
                        a.to(emulation.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                        for a in args
                    ]
                    quantized = func is F.linear and id(weight) in emulation.quantized
                    if quantized and len(cast) > 1 and cast[1] is not weight:
                        excluded.add(cast[1].untyped_storage()._cdata)  # before autograd saves it
                    out = func(*cast, **kwargs)
                    return out.to(first.dtype) if quantized else out
                return func(*args, **kwargs)

        self.mode = Mode()


def activation_bytes(
    model: Any,
    batch: MicroBatch,
    *,
    checkpointing: bool,
    attention: str = "sdpa",
    compute_dtype: Any = None,
    quantized: set[int] | None = None,
) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass of one micro-batch, from a meta forward pass of
    the decoder (the output head is counted apart, see `logits_bytes`): "layers", "other" (the
    embedding output, the final norm), "mask", and "heap": the part of layers + other held in
    storages smaller than `HEAP_BLOCK_BYTES`."""
    import torch
    from transformers import AttentionInterface

    global _TALLY, _KERNEL
    AttentionInterface.register("tunesmith_plan", _attention)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder()
    layers = _decoder_layers(decoder)
    excluded = {p.untyped_storage()._cdata for p in model.parameters()}
    excluded |= {b.untyped_storage()._cdata for b in model.buffers()}
    tally = _Tally(excluded)
    hooks = []
    for index, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=index: setattr(tally, "where", f"layer{i}")))
        hooks.append(layer.register_forward_hook(lambda m, a, o: setattr(tally, "where", "other")))
    # The planner's own meta model runs the tally's kernel, set through transformers' public setter and put
    # back after. "tunesmith_plan" has no mask function, so no mask is built in the pass; `_mask_bytes` counts
    # what the training kernel's mask costs.
    saved_impl = inner.config._attn_implementation
    inner.set_attn_implementation("tunesmith_plan")
    _TALLY, _KERNEL = tally, attention
    per_row = batch.tokens // batch.rows
    ids = torch.zeros(batch.rows, per_row, dtype=torch.long, device="meta")
    emulation = _Emulation(compute_dtype, quantized or set(), excluded)

    def saved(tensor: Any) -> Any:  # what autograd saves for backward, tallied
        tally.add(tensor)
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(saved, lambda t: t), emulation.mode:
            embeds = inner.get_input_embeddings()(ids)
            if not embeds.requires_grad:  # LoRA without trained embeddings: the first layer's input
                embeds = embeds.detach().requires_grad_(checkpointing)
            hidden = decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state
    finally:
        _TALLY = None
        inner.set_attn_implementation(saved_impl)
        for hook in hooks:
            hook.remove()
    del hidden
    owners = tally.by_owner()
    per_layer = [owners.get(f"layer{i}", 0) for i in range(len(layers))]
    other = owners.get("other", 0)
    element = torch.empty((), dtype=compute_dtype or next(model.parameters()).dtype).element_size()
    layer_input = batch.tokens * inner.config.get_text_config().hidden_size * element
    small = tally.by_owner(below=HEAP_BLOCK_BYTES)
    small_layers = [small.get(f"layer{i}", 0) for i in range(len(layers))]
    if checkpointing:  # each layer keeps its input; one layer's activations exist again in backward
        layers_total = len(layers) * layer_input + max(per_layer, default=0)
        heap = len(layers) * layer_input * (layer_input < HEAP_BLOCK_BYTES) + max(small_layers, default=0)
    else:
        layers_total = sum(per_layer)
        heap = sum(small_layers)
    mask = _mask_bytes(batch, attention, element, len(layers))
    return {"layers": int(layers_total), "other": int(other), "mask": mask, "heap": int(heap + small.get("other", 0))}


def _decoder_layers(decoder: Any) -> list[Any]:
    for name in ("layers", "h", "blocks"):
        found = getattr(decoder, name, None)
        if found is not None:
            return list(found)
    raise UserError(f"plan: cannot find the decoder layers of {type(decoder).__name__}")


def _mask_bytes(batch: MicroBatch, attention: str, element: int, layers: int) -> int:
    """The attention mask of packed or padded batches: one bool mask, and the float copy sdpa makes
    of it in every layer (each kept for that layer's backward). Flash attention takes sequence
    boundaries instead."""
    if attention.startswith("flash"):
        return 0
    per_row = batch.tokens // batch.rows
    if attention == "segments":  # the bool mask is built once per forward and never kept
        return int(batch.rows * per_row * per_row)
    return int(batch.rows * per_row * per_row * (1 + layers * element))


def logits_bytes(batch: MicroBatch, vocab: int, compute_element: int) -> int:
    """At the start of the backward pass: the float32 log-softmax kept by cross-entropy, its
    gradient, and the gradient of the logits (float32), over the trained positions only."""
    live = 3 * 4 + (compute_element if compute_element != 4 else 0)
    return int(batch.trained * vocab * live)


def logits_heap_bytes(batch: MicroBatch, vocab: int, compute_element: int) -> int:
    """The part of `logits_bytes` in blocks smaller than `HEAP_BLOCK_BYTES` (each of its tensors is
    one block of trained positions x vocab)."""
    blocks = [4, 4, 4] + ([compute_element] if compute_element != 4 else [])
    return int(sum(batch.trained * vocab * e for e in blocks if batch.trained * vocab * e < HEAP_BLOCK_BYTES))
