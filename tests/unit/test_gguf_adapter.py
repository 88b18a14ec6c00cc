"""The LoRA adapter as a GGUF adapter file: names, layout and scale as llama.cpp reads them, checked
against PEFT's own merge; the base it applies to; refusals before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from test_merge import write_run

from tunesmith.errors import UserError
from tunesmith.export.gguf_adapter import adapter_tensors, export_adapter
from tunesmith.export.gguf_tensors import _permute
from tunesmith.export.merge import merge_run
from tunesmith.export.ollama import write_modelfile


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "tiny-adapter", tiny_model_dir, seed=3)


@pytest.fixture()
def run(adapter_run, tmp_path) -> Path:
    return Path(shutil.copytree(adapter_run, tmp_path / adapter_run.name))


def _settings(run: Path) -> dict:
    return json.loads((run / "adapter" / "adapter_config.json").read_text())


def test_each_pair_times_alpha_over_r_is_what_peft_merges_in_llama_cpps_layout(run, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tensors, alpha = adapter_tensors(run / "adapter", _settings(run), config, permute=True)
    assert alpha == 8.0  # lora_alpha 8 at r 4: llama.cpp scales by 8 / 4
    merged = load_file(str(merge_run(run, log=lambda _: None) / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    by_name = {t.gguf_name: t for t in tensors}
    assert len(tensors) == 2 * 7  # every linear of both layers
    for layer in range(2):
        for hf, ours, heads in (
            ("self_attn.q_proj", "attn_q", config["num_attention_heads"]),
            ("self_attn.k_proj", "attn_k", config["num_key_value_heads"]),
            ("self_attn.v_proj", "attn_v", None),
            ("mlp.down_proj", "ffn_down", None),
        ):
            key = f"model.layers.{layer}.{hf}.weight"
            delta = merged[key].astype(np.float64) - base[key]
            if heads:
                delta = _permute(delta, heads)  # the base GGUF holds q/k permuted, so must the change
            pair = by_name[f"blk.{layer}.{ours}.weight"]
            r = pair.a.shape[0]
            np.testing.assert_allclose(alpha / r * pair.b.astype(np.float64) @ pair.a, delta, atol=1e-5)


def test_modules_with_different_scales_fold_each_scale_into_b(run, tiny_model_dir):
    settings = {**_settings(run), "alpha_pattern": {"v_proj": 16}}
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tensors, alpha = adapter_tensors(run / "adapter", settings, config, permute=True)
    plain, _ = adapter_tensors(run / "adapter", _settings(run), config, permute=True)
    assert alpha == 0.0  # llama.cpp then scales by 1: B carries it
    for folded, unfolded in zip(tensors, plain):
        scale = 16 / 4 if ".attn_v." in folded.gguf_name else 8 / 4
        np.testing.assert_allclose(folded.b, unfolded.b * scale, rtol=1e-6)


def test_export_writes_a_small_adapter_its_base_and_a_modelfile_with_both(run):
    lines: list[str] = []
    adapter, base = export_adapter(run, log=lines.append)
    assert adapter == run / "export" / "adapter-f16.gguf" and base == run / "export" / "base-f16.gguf"
    reader = gguf.GGUFReader(str(adapter))
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == 8.0
    assert reader.get_field("general.architecture").contents() == "llama"
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_up.weight.lora_b" in names and len(names) == 28
    base_names = {t.name for t in gguf.GGUFReader(str(base)).tensors}
    assert {n.rsplit(".", 1)[0] for n in names} <= base_names
    assert any("checked with llama.cpp" in line for line in lines) or not _has_llama_cpp()
    modelfile = write_modelfile(run, base, adapter=adapter, log=lambda _: None).read_text()
    assert "FROM ./base-f16.gguf\nADAPTER ./adapter-f16.gguf\n" in modelfile


def test_a_given_base_is_checked_not_written(run, tmp_path, tiny_model_dir):
    _, base = export_adapter(run, log=lambda _: None)
    kept = tmp_path / "shared-base.gguf"
    shutil.move(base, kept)
    adapter, used = export_adapter(run, base=kept, log=lambda _: None)
    assert used == kept and not (run / "export" / "base-f16.gguf").exists() and adapter.is_file()
    other = tmp_path / "other"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        shutil.copy(tiny_model_dir / name, other / name)
    from test_gguf_export import tiny_llama

    tiny_llama(
        other, vocab=json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"], intermediate_size=96
    )
    from tunesmith.export.gguf import plan_export, write_gguf

    wrong = tmp_path / "wrong.gguf"
    plan = plan_export(other, other, wrong, "f16", chat_template="{{ 'x' }}", end_of_turn=["<|end|>"], name="o")
    write_gguf(plan, other, log=lambda _: None)
    with pytest.raises(UserError, match=r"--base .*wrong.gguf: not the adapter's base: blk\.0\.\w+\.weight is"):
        export_adapter(run, base=wrong, log=lambda _: None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA adapter"),
        ({"modules_to_save": ["lm_head"]}, "also trained whole modules"),
        ({"bias": "lora_only"}, "LoRA biases"),
    ],
)
def test_adapters_a_gguf_adapter_cannot_express_are_refused_before_writing(run, change, message):
    path = run / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError, match=rf"{message}.*export the merged model instead"):
        export_adapter(run, log=lambda _: None)
    assert not (run / "export").exists()


def test_full_fine_tunes_and_quantized_bases_are_refused_with_the_way_out(run, tiny_model_dir, tmp_path):
    shutil.move(run / "adapter", run / "model")
    with pytest.raises(UserError, match=r"full fine-tune: there is no adapter; export the whole model"):
        export_adapter(run, log=lambda _: None)
    quantized = write_run(tmp_path / "q", tiny_model_dir, extra=("model.load_in_8bit=true",))
    with pytest.raises(UserError, match=r"8-bit base; .* export the merged model instead: tunesmith export gguf"):
        export_adapter(quantized, log=lambda _: None)
    assert not (quantized / "export").exists()


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None
