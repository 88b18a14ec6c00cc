"""`merge_run` on a tiny Llama with a random LoRA adapter: merged logits equal the adapter's, the
folder is complete and appears atomically, merging twice is a no-op, a changed adapter is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.config.load import config_to_yaml
from tunesmith.errors import TunesmithError, UserError
from tunesmith.export import merge
from tunesmith.export.merge import merge_run, merged_logits_difference, model_folder_for_export
from tunesmith.runfolder import RunRecord, sha256_file

SYSTEM = "Answer briefly."


def write_run(
    folder: Path,
    base: Path,
    *,
    method: str = "lora",
    dtype: str = "float32",
    seed: int = 0,
    extra: tuple[str, ...] = (),
) -> Path:
    """A finished-looking LoRA run of `base`: adapter/ (random non-zero B, so merging changes the
    weights), its tokenizer with the training template, tunesmith.json and config.yaml."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    adapter = folder / "adapter"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    meta = {
        "base_model": str(base),
        "method": method,
        "template_name": "phi-3 (the model's own)",
        "chat_template": tokenizer.chat_template,
        "special_tokens": {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token},
        "end_of_turn": ["<|endoftext|>", "<|end|>"],
        "system_prompt": SYSTEM,
        "train_on": "assistant",
    }
    (adapter / "tunesmith.json").write_text(json.dumps(meta), encoding="utf-8")
    config = load_config(
        None,
        [
            "data.train=chat.jsonl",
            f"model.name={base}",
            f"model.dtype={dtype}",
            f"name={folder.name}",
            f"method={method}",
            *extra,
        ],
    )
    (folder / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "tiny-lora", tiny_model_dir)


@pytest.fixture()
def run(lora_run, tmp_path) -> Path:
    """A private copy of the LoRA run (without any merged/), so tests cannot disturb each other."""
    return Path(shutil.copytree(lora_run, tmp_path / lora_run.name, ignore=shutil.ignore_patterns("merged")))


@pytest.fixture(scope="module")
def merged_run(lora_run) -> tuple[Path, list[str]]:
    lines: list[str] = []
    return merge_run(lora_run, log=lines.append), lines


def test_merged_logits_equal_the_adapter_models(merged_run, lora_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.merge import max_difference, probe_logits, probe_prompts
    from tunesmith.models.load import ModelRef, load_adapter, load_model

    merged, lines = merged_run
    assert merged == lora_run / "merged"
    assert merged_logits_difference(lora_run) <= 1e-4
    # ...and the adapter does change the model, so the equality above means something
    prompts = probe_prompts(RunRecord.read(lora_run / "adapter"))
    assert len(prompts) == 3 and all(p.startswith(f"<|system|>\n{SYSTEM}<|end|>") for p in prompts)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = load_adapter(load_model(ModelRef("b", str(tiny_model_dir), "local"), dtype="float32"), lora_run / "adapter")
    assert max_difference(probe_logits(base, tokenizer, prompts), probe_logits(tuned, tokenizer, prompts)) > 1e-3
    assert any(line.startswith("checked: merged logits") for line in lines)


def test_merged_folder_is_a_complete_plain_model(merged_run, lora_run):
    from safetensors import safe_open
    from transformers import AutoTokenizer, GenerationConfig

    merged, _ = merged_run
    names = {p.name for p in merged.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tunesmith.json",
    } <= names
    assert not any("adapter" in n for n in names)
    with safe_open(str(merged / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
        assert not any("lora" in k for k in keys) and weights.get_tensor(keys[0]).dtype == torch.float32
    adapter_meta = json.loads((lora_run / "adapter" / "tunesmith.json").read_text())
    recorded = json.loads((merged / "tunesmith.json").read_text())
    assert recorded == {
        "drop": [],  # the one record schema writes every field (this fixture's adapter record left it out)
        **adapter_meta,
        "merged_from": "adapter",
        "dtype": "float32",
        "adapter_sha256": sha256_file(lora_run / "adapter" / "adapter_model.safetensors"),
        "merge_max_logit_difference": recorded["merge_max_logit_difference"],
    }
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == adapter_meta["chat_template"]
    end_ids = {tokenizer.convert_tokens_to_ids(m) for m in adapter_meta["end_of_turn"]}
    assert end_ids <= set(GenerationConfig.from_pretrained(merged).eos_token_id)
    assert [p.name for p in lora_run.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_merging_again_is_a_no_op(merged_run, lora_run):
    merged, _ = merged_run
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    assert merge_run(lora_run, log=lines.append) == merged
    assert any("already merged" in line for line in lines)
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp
    assert model_folder_for_export(lora_run, log=lines.append) == merged
    with pytest.raises(UserError, match="delete .* to merge again as bfloat16"):
        merge_run(lora_run, dtype="bfloat16", log=lines.append)


def test_a_merged_folder_is_never_merged_again(merged_run):
    merged, _ = merged_run
    with pytest.raises(UserError, match="already a merged model"):
        merge_run(merged, log=lambda m: None)


def test_a_changed_adapter_is_refused(run, tiny_model_dir, tmp_path):
    merge_run(run, log=lambda m: None)
    retrained = write_run(tmp_path / "retrained", tiny_model_dir, seed=1)
    shutil.copy(retrained / "adapter" / "adapter_model.safetensors", run / "adapter" / "adapter_model.safetensors")
    with pytest.raises(UserError, match=r"delete .*merged and merge again"):
        merge_run(run, log=lambda m: None)


def test_a_failed_check_leaves_no_merged_folder(run, monkeypatch):
    monkeypatch.setattr(merge, "LOGITS_TOLERANCE", -1.0)  # any difference, even 0, now fails
    with pytest.raises(TunesmithError, match="merge check failed") as caught:
        merge_run(run, log=lambda m: None)
    assert not isinstance(caught.value, UserError)
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "config.yaml"]


def test_a_failed_save_leaves_no_merged_folder(run, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(RunRecord, "write", broken)  # the last file of the folder
    with pytest.raises(OSError, match="disk full"):
        merge_run(run, log=lambda m: None)
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "config.yaml"]


def _dequantized_weight(layer) -> torch.Tensor:
    """The float weight a bitsandbytes layer's training forward multiplies by, from its stored codes."""
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    return layer.weight.CB.float() * layer.weight.SCB.float()[:, None] / 127


@pytest.mark.parametrize(("method", "extra", "bits"), [("qlora", (), 4), ("lora", ("model.load_in_8bit=true",), 8)])
def test_a_quantized_run_merges_into_its_dequantized_base_and_states_the_quantization_error(
    method, extra, bits, tiny_model_dir, tmp_path
):
    """A real 4-bit NF4 (or int8) base: the merged weight is exactly de-quantized W + scale * B A (the
    weights the adapter trained against), not the original W + scale * B A; the note gives the
    measured distance to the adapter on the unquantized base, and tunesmith.json records it."""
    from safetensors.torch import load_file as load_weights
    from transformers import AutoModelForCausalLM

    from tunesmith.models.quant import bitsandbytes_config

    run = write_run(tmp_path / f"tiny-{bits}bit", tiny_model_dir, method=method, extra=extra)
    lines: list[str] = []
    merged = merge_run(run, log=lines.append)
    note = [line for line in lines if line.startswith("note:")]
    recorded = json.loads((merged / "tunesmith.json").read_text())
    assert recorded["quantized_base_bits"] == bits and recorded["method"] == method
    distance = recorded["difference_from_unquantized_base_adapter"]
    assert len(note) == 1 and f"{bits}-bit" in note[0] and f"{distance:.3g}" in note[0]

    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir,
        dtype=torch.float32,
        device_map={"": "cpu"},
        quantization_config=bitsandbytes_config(bits, "fp32"),
    )
    original = load_weights(tiny_model_dir / "model.safetensors")
    adapter = load_weights(run / "adapter" / "adapter_model.safetensors")
    result = load_weights(merged / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    a, b = (adapter[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
    update = (b @ a) * (8 / 4)  # alpha / r of write_run's adapter
    expected = _dequantized_weight(quantized.get_submodule(name)) + update
    assert (result[f"{name}.weight"] - expected).abs().max() < 1e-6
    assert (result[f"{name}.weight"] - (original[f"{name}.weight"] + update)).abs().max() > 5e-5  # init std 0.02
    assert 1e-3 < distance < float("inf")
    assert merged_logits_difference(run) <= merge.allowed_difference([torch.tensor([1.0])])


def test_lora_merge_has_no_quantization_note(merged_run):
    assert not any(line.startswith(("note:", "warning:")) for line in merged_run[1])
    assert "quantized_base_bits" not in json.loads((merged_run[0] / "tunesmith.json").read_text())


def test_full_fine_tune_has_nothing_to_merge(tmp_path):
    model = tmp_path / "full-run" / "model"
    model.mkdir(parents=True)
    (model / "tunesmith.json").write_text(json.dumps({"method": "full"}), encoding="utf-8")
    lines: list[str] = []
    assert merge_run(tmp_path / "full-run", log=lines.append) == model
    assert "nothing to merge" in lines[0]
    assert model_folder_for_export(tmp_path / "full-run", log=lines.append) == model
    assert not (tmp_path / "full-run" / "merged").exists()


def test_bad_dtype_and_non_runs_are_user_errors(run, tmp_path):
    with pytest.raises(UserError, match="choose one of float32, bfloat16, float16"):
        merge_run(run, dtype="int8", log=lambda m: None)
    with pytest.raises(UserError, match="not a finished tunesmith run"):
        merge_run(tmp_path, log=lambda m: None)
    assert not (run / "merged").exists()
