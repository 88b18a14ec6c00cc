"""`lora.init`: LoftQ starts a 4-bit model closer to the full-precision base; PiSSA/OLoRA runs save an
adapter that is right on the untouched base; inits that cannot be done faithfully are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.models.load import ModelRef
from tunesmith.training.methods import trainable_model


@pytest.fixture()
def data(sums_jsonl):
    return sums_jsonl


def config_for(model, tmp_path, *extra, data="x.jsonl"):
    return load_config(
        None,
        [f"data.train={data}", f"model.name={model}", f"output_dir={tmp_path / 'runs'}", "name=i", "lora.r=4", *extra],
    )


def logits(model, ids, *, train_mode=False):
    """Inference logits; `train_mode` (dropout is 0 here) keeps bitsandbytes 0.50.2 off its CPU inference
    kernel, whose weight repacking fails for this tiny model's 32-wide layers."""
    model.train(train_mode)
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_loftq_starts_the_4bit_model_closer_to_the_full_precision_one(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    ref = ModelRef(str(tiny_model_dir), str(tiny_model_dir), "local")
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    full = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), ids)
    errors = {}
    for init in ("default", "loftq"):
        config = config_for(
            tiny_model_dir, tmp_path, "method=qlora", f"lora.init={init}", "lora.r=8", "lora.alpha=32"
        )  # alpha != r: the scaling must be divided out
        model = trainable_model(config, ref, device="cpu", precision="fp32").model
        errors[init] = float((logits(model, ids, train_mode=True) - full).abs().mean())
    print(f"mean |logit - full precision|: default {errors['default']:.3g}, loftq {errors['loftq']:.3g}")
    assert errors["loftq"] < 0.7 * errors["default"], errors


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_base_rewriting_init_saves_an_adapter_that_is_right_on_the_untouched_base(
    init, tiny_model_dir, tmp_path, data
):
    """The final checkpoint holds the trainable form (valid on the rewritten base that init makes);
    adapter/ is peft's conversion to rank 2r on the original base. Both must give the same model, and
    the checkpoint's form on the original base must not (or the conversion proves nothing)."""
    from peft import set_peft_model_state_dict

    from tunesmith.evaluate.runs import load_run

    config = config_for(
        tiny_model_dir,
        tmp_path,
        f"lora.init={init}",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.learning_rate=1e-2",
        "train.save_steps=3",
        data=str(data),
    )
    run = tunesmith.train(config).run_dir
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8  # 2r
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))
    saved = logits(load_run(run).model, ids)

    checkpoint = run / "checkpoints" / "step-3"
    trained = trainable_model(
        config, ModelRef(str(tiny_model_dir), str(tiny_model_dir), "local"), device="cpu", precision="fp32"
    ).model  # init rewrites the base exactly as in training
    set_peft_model_state_dict(trained, load_file(checkpoint / "adapter_model.safetensors"))
    assert (logits(trained, ids) - saved).abs().max() < 1e-4

    plain = config_for(tiny_model_dir, tmp_path, data=str(data))  # the same A, B on the untouched base
    naive = trainable_model(
        plain, ModelRef(str(tiny_model_dir), str(tiny_model_dir), "local"), device="cpu", precision="fp32"
    ).model
    set_peft_model_state_dict(naive, load_file(checkpoint / "adapter_model.safetensors"))
    assert (logits(naive, ids) - saved).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["lora.init=loftq"], "loftq starts the adapter from what 4-bit quantization lost, so it needs method: qlora"),
        (["lora.init=loftq", "model.load_in_8bit=true"], "needs method: qlora"),
        (["lora.init=pissa", "method=qlora"], "pissa rewrites the base weights"),
        (["lora.init=olora", "model.load_in_8bit=true"], "olora rewrites the base weights"),
    ],
)
def test_inits_that_cannot_be_faithful_are_refused_before_any_work(extra, message, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match=message) as caught:
        tunesmith.train(config_for(tiny_model_dir, tmp_path, *extra, data=str(tmp_path / "missing.jsonl")))
    assert "lora.init" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()
