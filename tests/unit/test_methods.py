"""One code path, three methods: LoRA variants, full fine-tuning, and what CPU refuses; the NaN guard."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.models.load import ModelRef
from tunesmith.training.guards import NonFiniteError
from tunesmith.training.methods import expected_lora_parameters, trainable_model


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i + i}"}]} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config_for(data, model, tmp_path, *extra):
    return load_config(None, [f"data.train={data}", f"model.name={model}", f"output_dir={tmp_path / 'runs'}",
                              "name=m", "train.max_steps=3", "train.batch_size=4", "lora.r=4", *extra])


@pytest.mark.parametrize(("extra", "key"), [
    (["method=qlora"], "method: qlora"),
    (["model.load_in_8bit=true"], "model.load_in_8bit"),
    (["train.optimizer=paged_adamw_8bit"], "train.optimizer: paged_adamw_8bit"),
    (["train.precision=fp16"], "train.precision"),
])
def test_cuda_only_settings_are_refused_on_cpu_before_any_work(extra, key, tmp_path, tiny_model_dir):
    missing = tmp_path / "not-there.jsonl"  # the refusal comes before the data is even opened
    config = config_for(missing, tiny_model_dir, tmp_path, *extra)
    with pytest.raises(UserError, match=key) as caught:
        tunesmith.train(config)
    assert "CUDA" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_8bit_base_goes_with_lora_only(tmp_path, tiny_model_dir):
    config = config_for(tmp_path / "x.jsonl", tiny_model_dir, tmp_path, "method=full", "model.load_in_8bit=true")
    with pytest.raises(UserError, match="model.load_in_8bit goes with method: lora, not method: full"):
        tunesmith.train(config)


def lora_count_from_config(model_dir, config) -> int:
    """r * (in + out) per adapted linear layer (+ out with DoRA), from the model's config.json alone:
    a wrong choice of adapted modules (one too few, the head too) cannot match it."""
    c = json.loads((model_dir / "config.json").read_text())
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head, c["num_key_value_heads"] * head
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    targets = shapes if config.lora.target_modules == "all-linear" else config.lora.target_modules
    r, dora = config.lora.r, config.lora.dora
    return layers * sum(r * (shapes[t][0] + shapes[t][1]) + (shapes[t][1] if dora else 0) for t in targets)


@pytest.mark.parametrize("extra", [[], ["lora.rslora=true"], ["lora.dora=true"], ["lora.target_modules=[q_proj,v_proj]"]])
def test_trainable_count_is_exact_for_every_lora_variant(extra, tmp_path, tiny_model_dir, data):
    config = config_for(data, tiny_model_dir, tmp_path, *extra)
    loaded = trainable_model(config, ModelRef(str(tiny_model_dir), str(tiny_model_dir), "local"), device="cpu",
                             precision="fp32")
    assert loaded.trainable == lora_count_from_config(tiny_model_dir, config) > 0
    assert loaded.trainable == expected_lora_parameters(loaded.model, config)
    assert loaded.trainable == sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    assert f"{loaded.trainable:,} trainable" in loaded.summary
    from peft.tuners.lora import LoraLayer

    scaling = {s for m in loaded.model.modules() if isinstance(m, LoraLayer) for s in m.scaling.values()}
    assert scaling == {config.lora.alpha / (config.lora.r ** 0.5 if config.lora.rslora else config.lora.r)}
    if config.lora.dora:
        assert "DoRA" in loaded.summary
        assert any("lora_magnitude_vector" in n for n, p in loaded.model.named_parameters() if p.requires_grad)


def test_full_fine_tuning_trains_every_weight_and_saves_a_whole_model(tmp_path, tiny_model_dir, data):
    from tunesmith.evaluate.runs import load_run

    result = tunesmith.train(config_for(data, tiny_model_dir, tmp_path, "method=full", "train.learning_rate=1e-3",
                                        "train.gradient_checkpointing=true"))
    folder = result.run_dir / "model"
    assert (folder / "model.safetensors").is_file() and not (result.run_dir / "adapter").exists()
    tuned = load_file(folder / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    changed = {name for name, tensor in tuned.items() if not torch.equal(tensor, base[name])}
    assert {n for n in tuned if "layers.0." in n} <= changed  # every weight of a block moved, not only some
    assert json.loads((folder / "tunesmith.json").read_text())["method"] == "full"
    loaded = load_run(result.run_dir)  # what eval and chat open
    assert not hasattr(loaded.model, "disable_adapter")
    assert torch.equal(loaded.model.state_dict()["model.layers.0.mlp.up_proj.weight"],
                       tuned["model.layers.0.mlp.up_proj.weight"])


def test_a_diverging_run_stops_before_the_bad_step_and_saves_nothing(tmp_path, tiny_model_dir, data):
    """A learning rate of 1e30 blows the weights up in one step; the next forward pass gives a
    non-finite loss, and the run stops naming that step and its rows."""
    config = config_for(data, tiny_model_dir, tmp_path, "method=full", "train.learning_rate=1e30",
                        "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.max_steps=5")
    with pytest.raises(NonFiniteError, match=r"training stopped at step 2: the (loss|gradient norm) is (nan|inf)") as e:
        tunesmith.train(config)
    assert "chat.jsonl:" in str(e.value)
    assert not (tmp_path / "runs" / "m" / "model").exists()


def test_step_sources_name_the_rows_of_the_failing_step():
    from tunesmith.training.guards import describe_sources, non_finite_loss

    error = non_finite_loss(7, float("nan"), ["d.jsonl:4", "d.jsonl:9"])
    assert str(error).startswith("training stopped at step 7: the loss is nan (rows d.jsonl:4, d.jsonl:9)")
    assert describe_sources([]) == "rows unknown"
