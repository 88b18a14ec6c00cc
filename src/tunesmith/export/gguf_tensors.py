"""The GGUF file itself: metadata and tensors written with gguf's writer, in f32/f16/bf16 or q8_0
(numpy), with Llama-style q/k permuted back to llama.cpp's layout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_rope import rope_settings

if TYPE_CHECKING:  # annotations only: gguf.py imports this module
    from tunesmith.export.gguf import ExportPlan, Log


def _write(plan: ExportPlan, source: Path, path: Path, out_type: str, log: Log) -> int:
    import gguf

    config = plan.config
    writer = gguf.GGUFWriter(str(path), plan.arch)
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)

    writer.add_name(general_name(plan.name, plan.vocab.tokens))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(rope_settings(config)[0])
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(int(head_dim * float(config.get("partial_rotary_factor") or 1.0)))
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if isinstance(plan.rope_factors, tuple):  # linear
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(plan.rope_factors[1])
    writer.add_vocab_size(len(plan.vocab.tokens))
    writer.add_file_type(_file_type(out_type))

    vocab = plan.vocab
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if plan.bos_id is not None:
        writer.add_bos_token_id(plan.bos_id)
    writer.add_eos_token_id(plan.eos_id if plan.eos_id is not None else plan.end_of_turn_ids[0])
    writer.add_eot_token_id(plan.end_of_turn_ids[0])
    writer.add_add_bos_token(plan.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(plan.chat_template)
    if plan.spec is not None and plan.spec.metadata is not None:
        plan.spec.metadata(writer, config)

    count = 0
    if plan.rope_factors is not None and not isinstance(plan.rope_factors, tuple):
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", plan.rope_factors)
        count += 1
    for gguf_name, array in gguf_layout(plan, source):
        data, raw = _encode(array, out_type, gguf_name)
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
        count += 1
    log(f"writing {count} tensors ({out_type}) to {plan.out.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


_PHI3_NAMES = re.compile(r"phi-?3", re.IGNORECASE)
_PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def general_name(name: str, tokens: list[str]) -> str:
    """`general.name` as written. llama.cpp (0.3.36's) sets Phi-3's token attributes for any model whose
    name contains "phi3" or "phi-3", and fails to load one whose vocabulary lacks Phi-3's tokens; such a
    name is written with "phi 3" instead."""
    if _PHI3_NAMES.search(name) and not set(_PHI3_TOKENS) <= set(tokens):
        return _PHI3_NAMES.sub("phi 3", name)
    return name


def gguf_layout(plan: ExportPlan, source: Path) -> Iterator[tuple[str, Any]]:
    """Each weight of the model folder `source` as llama.cpp holds it: its GGUF name and float32 array
    (Llama-style q/k rows permuted; a tied head and rotary buffers left out)."""
    import gguf

    config = plan.config
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[plan.arch.upper()], int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", False))
    for hf_name, array in _tensors(source):
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd when output is absent
        if hf_name.endswith(("rotary_emb.inv_freq",)):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TunesmithError(f"{source}: no GGUF name for tensor {hf_name} ({plan.arch})")
        if gguf_name == "token_embd.weight" and tied and plan.spec is not None and plan.spec.needs_output:
            yield "output.weight", array  # this architecture reads the head from output.weight only
        if plan.spec is not None and plan.spec.norm_shift and hf_name.endswith("norm.weight"):
            array = array + plan.spec.norm_shift
        if plan.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _permute(array, n_head)
        elif plan.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _permute(array, n_kv)
        yield gguf_name, array


def _file_type(out_type: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[out_type]


def _tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """Each tensor of the folder's safetensors files as float32 numpy, one at a time."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


def _permute(weights: Any, heads: int) -> Any:
    """HF keeps each head's rotary pairs as two halves; llama.cpp's llama RoPE wants them interleaved."""
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _encode(array: Any, out_type: str, gguf_name: str) -> tuple[Any, Any]:
    """Cast or quantize one tensor; 1-D tensors (norms, biases) stay float32, as llama.cpp expects."""
    import gguf
    import numpy as np

    if array.ndim <= 1 or out_type == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[out_type]
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:  # rows not a multiple of the block size: keep this one in f16
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16
