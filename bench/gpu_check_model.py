"""The two model shapes `bench/gpu_check.py` trains, their parameter counts, and the FLOPs behind its MFU.

Shapes: Llama-3.2-1B and Llama-3.1-8B as published (sizes, GQA, head_dim, Llama-3 RoPE, tied or untied
head), with random weights; the vocabulary keeps the real 128,256 rows (at least the tokenizer's size).

FLOPs per token (`flops_per_token`), the same for every trainer so that the MFU ratio of two runs
is their tokens/s ratio:

    N         = weights of every matmul: per layer q, k, v, o, gate, up, down, plus the output head
                (V x d, counted once also when it is tied to the embedding; the embedding lookup is no matmul)
    N_adapter = LoRA weights: r x (in + out) per adapted layer (`all-linear`: the seven above, per layer)
    linear    = 4 N + 6 N_adapter   LoRA / QLoRA: forward 2N, backward activation gradients 2N, no weight
                                    gradients for the frozen base; the adapter trains (2 + 2 + 2 per weight)
              = 6 N                 full fine-tuning (weight gradients too)
    attention = 6 L d_attn S,  S = sum_i s_i (s_i + 1) / sum_i s_i
                d_attn = heads x head_dim; s_i the tokens of each packed conversation. Per layer a causal
                sequence of s tokens has s (s + 1) / 2 query-key pairs; QK^T and PV cost 2 d_attn FLOPs per
                pair each (forward 2 s (s + 1) d_attn), the backward twice that (dQ, dK, dV, dP: needed for
                LoRA too). Attention stays inside each conversation (block-diagonal), so S is the
                token-weighted mean conversation length, not the 4096-token bin; one sequence filling the bin
                gives the usual 6 L d T. With `causal=False` pairs are s^2 (what an eager kernel computes).
    MFU       = tokens/s x (linear + attention) / peak, peak = the GPU's dense bf16 figure (H100/H200 SXM:
                989 TFLOP/s); norms, RoPE, the loss, the optimizer and QLoRA's dequantization are not counted.

This is the model's FLOPs (the head at every position, as in the standard MFU), not what a trainer runs:
tunesmith runs the head only where the next token trains, so its saving shows as a higher MFU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FORMULA = __doc__[__doc__.index("FLOPs per token") :]
H100_BF16_DENSE = 989e12

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {**LLAMA3_ROPE, "factor": 32.0},
    },
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {**LLAMA3_ROPE, "factor": 8.0},
    },
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_config(
    shape: str | dict[str, Any],
    *,
    tokenizer_size: int = 0,
    bos: int | None = None,
    eos: int | None = None,
    pad: int | None = None,
) -> Any:
    """A transformers LlamaConfig of `shape` (a SHAPES name or its dict); the vocabulary is at least
    `tokenizer_size` rows."""
    from transformers import LlamaConfig

    spec = dict(SHAPES[shape] if isinstance(shape, str) else shape)
    spec["vocab_size"] = max(spec["vocab_size"], tokenizer_size)
    return LlamaConfig(
        **spec,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )


def _dims(shape: Any) -> dict[str, int]:
    """Sizes of a SHAPES dict, a SHAPES name or a transformers config."""
    source = SHAPES[shape] if isinstance(shape, str) else shape

    def get(key: str) -> Any:
        return source.get(key) if isinstance(source, dict) else getattr(source, key, None)

    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // heads
    return {
        "d": get("hidden_size"),
        "ff": get("intermediate_size"),
        "layers": get("num_hidden_layers"),
        "q": heads * head_dim,
        "kv": get("num_key_value_heads") * head_dim,
        "vocab": get("vocab_size"),
        "tied": bool(get("tie_word_embeddings")),
    }


def _layer_linears(s: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer."""
    d = s["d"]
    return {
        "q_proj": (d, s["q"]),
        "k_proj": (d, s["kv"]),
        "v_proj": (d, s["kv"]),
        "o_proj": (s["q"], d),
        "gate_proj": (d, s["ff"]),
        "up_proj": (d, s["ff"]),
        "down_proj": (s["ff"], d),
    }


def matmul_parameters(shape: Any) -> int:
    """N: the weights of every matmul (the decoder layers' linears and the output head)."""
    s = _dims(shape)
    per_layer = sum(i * o for i, o in _layer_linears(s).values())
    return s["layers"] * per_layer + s["vocab"] * s["d"]


def total_parameters(shape: Any) -> int:
    """Every parameter of the model, as transformers builds it (tied weights once)."""
    s = _dims(shape)
    per_layer = sum(i * o for i, o in _layer_linears(s).values()) + 2 * s["d"]  # + two RMSNorms
    embedding = s["vocab"] * s["d"]
    return s["layers"] * per_layer + s["d"] + embedding * (1 if s["tied"] else 2)


def lora_parameters(shape: Any, r: int, targets: Sequence[str] = LORA_TARGETS) -> int:
    """N_adapter: r x (in + out) for each adapted linear of every layer (`all-linear` leaves out the head)."""
    s = _dims(shape)
    return s["layers"] * sum(r * (i + o) for name, (i, o) in _layer_linears(s).items() if name in targets)


def attention_pairs(lengths: Sequence[int], *, causal: bool = True) -> int:
    """Query-key pairs of packed conversations of `lengths` tokens (attention kept inside each)."""
    return sum(n * (n + 1) // 2 if causal else n * n for n in lengths)


def flops_per_token(
    shape: Any, *, method: str, lengths: Sequence[int], r: int = 16, causal: bool = True
) -> dict[str, float]:
    """Training FLOPs per token (see the module docstring): the parts and their `total`."""
    if method not in ("lora", "qlora", "full"):
        raise ValueError(f"unknown method {method!r}")
    tokens = sum(lengths)
    if tokens <= 0:
        raise ValueError("no tokens")
    s = _dims(shape)
    n = matmul_parameters(shape)
    if method == "full":
        linear, adapter = 6.0 * n, 0.0
    else:
        linear, adapter = 4.0 * n, 6.0 * lora_parameters(shape, r)
    # forward: QK^T and PV, 2 d_attn FLOPs per pair each; backward twice the forward
    attention = 3 * 2 * 2 * s["layers"] * s["q"] * attention_pairs(lengths, causal=causal) / tokens
    return {
        "linear": linear,
        "adapter": adapter,
        "attention": attention,
        "total": linear + adapter + attention,
        "matmul_parameters": float(n),
        "effective_sequence": 2 * attention_pairs(lengths) / tokens,
    }


def mfu(tokens_per_s: float | None, flops: float, peak: float) -> float | None:
    """Model FLOPs utilization: achieved model FLOP/s over the peak."""
    if tokens_per_s is None or peak <= 0:
        return None
    return tokens_per_s * flops / peak


def peak_flops(device_name: str | None) -> tuple[float, str]:
    """(dense bf16 FLOP/s, where it came from) for a CUDA device name: tunesmith's table of known GPUs,
    else the H100/H200 figure, said so."""
    if device_name:
        try:
            from tunesmith.plan.gpus import match_device_name

            gpu = match_device_name(device_name)
        except Exception:  # noqa: BLE001 - a lookup problem must not stop the check
            gpu = None
        if gpu is not None:
            return gpu.tflops * 1e12, f"{gpu.name} dense bf16 (tunesmith.plan.gpus)"
    return H100_BF16_DENSE, f"assumed H100/H200 SXM dense bf16 ({device_name or 'unknown GPU'})"


def steady_rate(marks: Sequence[tuple[float, int]], warmup: int) -> float | None:
    """Tokens per second between the end of optimizer step `warmup` and the last step; `marks` holds
    (seconds, tokens seen) at the end of each step, in order. None when there is no step after warm-up."""
    if warmup < 1 or len(marks) <= warmup:
        return None
    (t0, n0), (t1, n1) = marks[warmup - 1], marks[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None
