"""The architectures `tunesmith export gguf` writes, and what each needs beyond a Llama's keys.

Each entry is verified in the tests against real llama.cpp (tiny random models, logits equal to
transformers', tokenization identical); an architecture that is not here is refused before any
file is written, and so is a setting of a listed one that llama.cpp would read differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError


@dataclass(frozen=True)
class Architecture:
    gguf: str
    """llama.cpp's architecture name."""
    permute_qk: bool
    """q/k rows permuted for llama.cpp's interleaved ("normal") RoPE; NEOX-RoPE architectures keep HF's layout."""
    check: Callable[[dict, Path], None] | None = None
    """Refuses (UserError) settings llama.cpp would not read as transformers does."""
    metadata: Callable[[Any, dict], None] | None = None
    """Writes the architecture's own keys with the GGUFWriter."""
    needs_output: bool = False
    """llama.cpp requires output.weight even when the head is tied to the embeddings."""
    norm_shift: float = 0.0
    """Added to every RMSNorm weight: Gemma's norms multiply by (1 + w), llama.cpp's by w."""


def _granite_keys(writer: Any, config: dict) -> None:
    # logits / logits_scaling, embeddings * embedding_multiplier, residual branches * residual_multiplier,
    # attention scores * attention_multiplier (instead of 1/sqrt(head_dim))
    writer.add_logit_scale(float(config.get("logits_scaling", 1.0)))
    writer.add_embedding_scale(float(config.get("embedding_multiplier", 1.0)))
    writer.add_residual_scale(float(config.get("residual_multiplier", 1.0)))
    writer.add_attention_scale(float(config.get("attention_multiplier", 1.0)))


def _smollm3_check(config: dict, where: Path) -> None:
    """llama.cpp's smollm3 leaves RoPE out of every fourth layer, fixed; the config must say the same."""
    layers = int(config["num_hidden_layers"])
    expected = [int((i + 1) % 4 != 0) for i in range(layers)]
    given = config.get("no_rope_layers") or expected
    if list(given) != expected:
        raise UserError(
            f"{where}: no_rope_layers {given} is not llama.cpp's SmolLM3 pattern (RoPE off in every 4th layer), "
            "so llama.cpp would compute another model; export it with transformers-based runtimes instead"
        )


def _no_sliding_window(name: str) -> Callable[[dict, Path], None]:
    def check(config: dict, where: Path) -> None:
        window = config.get("sliding_window")
        if window and config.get("use_sliding_window", True) and window < int(config.get("max_position_embeddings", 0)):
            raise UserError(
                f"{where}: {name} with sliding_window {window} is not supported by `tunesmith export gguf` yet "
                "(llama.cpp would attend differently past the window)"
            )

    return check


def _olmo2_check(config: dict, where: Path) -> None:
    _no_sliding_window("OLMo 2")(config, where)


def _gemma_check(name: str, big_layers: int, *, rope_scaling: bool) -> Callable[[dict, Path], None]:
    def check(config: dict, where: Path) -> None:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        # llama.cpp scales attention by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B (known by its depth)
        expected = hidden // heads if int(config["num_hidden_layers"]) == big_layers else head_dim
        scalar = config.get("query_pre_attn_scalar")
        if scalar is not None and float(scalar) != float(expected):
            raise UserError(
                f"{where}: {name} with query_pre_attn_scalar {scalar} (not {expected}) is scaled otherwise by "
                "llama.cpp; `tunesmith export gguf` refuses it"
            )
        if name == "Gemma 2" and not config.get("tie_word_embeddings", True):
            raise UserError(
                f"{where}: Gemma 2 with an untied output head: llama.cpp reads the head from the embeddings"
            )
        parameters = config.get("rope_parameters") or {}
        kinds = {p.get("rope_type", "default") for p in parameters.values() if isinstance(p, dict)}
        kinds.add((config.get("rope_scaling") or {}).get("rope_type", "default"))
        if not rope_scaling and kinds - {"default"}:
            raise UserError(f"{where}: {name} with RoPE scaling {sorted(kinds - {'default'})} is not supported yet")

    return check


def _gemma_keys(writer: Any, config: dict) -> None:
    if config.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    if config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
        if config.get("layer_types"):  # which layers slide (without it: llama.cpp's default, Gemma's own)
            writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config["layer_types"]])
    sliding = (config.get("rope_parameters") or {}).get("sliding_attention")
    if isinstance(sliding, dict) and "rope_theta" in sliding:
        writer.add_rope_freq_base_swa(float(sliding["rope_theta"]))
    elif config.get("rope_local_base_freq"):
        writer.add_rope_freq_base_swa(float(config["rope_local_base_freq"]))


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("llama", True),
    "MistralForCausalLM": Architecture("llama", True),
    "Qwen2ForCausalLM": Architecture("qwen2", False),
    "Qwen3ForCausalLM": Architecture("qwen3", False),
    "Phi3ForCausalLM": Architecture("phi3", False, check=_no_sliding_window("Phi-3")),
    "GraniteForCausalLM": Architecture("granite", True, metadata=_granite_keys),
    "Olmo2ForCausalLM": Architecture("olmo2", False, check=_olmo2_check, needs_output=True),
    "SmolLM3ForCausalLM": Architecture("smollm3", True, check=_smollm3_check),
    "Gemma2ForCausalLM": Architecture(
        "gemma2", False, check=_gemma_check("Gemma 2", 46, rope_scaling=False), metadata=_gemma_keys, norm_shift=1.0
    ),
    "Gemma3ForCausalLM": Architecture(
        "gemma3", False, check=_gemma_check("Gemma 3", 62, rope_scaling=False), metadata=_gemma_keys, norm_shift=1.0
    ),
}
"""Hugging Face architecture -> how llama.cpp holds it."""


def architecture(config: dict, config_path: Path) -> Architecture:
    """The entry for a model's config.json, its settings checked; UserError if unsupported."""
    hf_arch = (config.get("architectures") or ["(none)"])[0]
    found = ARCHITECTURES.get(hf_arch)
    if found is None:
        raise UserError(
            f"{config_path}: architecture {hf_arch} is not supported by `tunesmith export gguf`; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    if found.check is not None:
        found.check(config, config_path)
    return found
