"""One code path, three methods: LoRA variants, full fine-tuning, and what CPU refuses; the NaN guard."""

from __future__ import annotations

import json
from pathlib import Path

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
def data(sums_jsonl):
    return sums_jsonl


def config_for(data, model, tmp_path, *extra):
    return load_config(
        None,
        [
            f"data.train={data}",
            f"model.name={model}",
            f"output_dir={tmp_path / 'runs'}",
            "name=m",
            "train.max_steps=3",
            "train.batch_size=4",
            "lora.r=4",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        (["train.optimizer=paged_adamw_8bit"], "train.optimizer: paged_adamw_8bit", "on CPU use adamw_8bit"),
        (["train.precision=fp16"], "train.precision", "CUDA"),
    ],
)
def test_gpu_only_settings_are_refused_on_cpu_before_any_work(extra, key, why, tmp_path, tiny_model_dir):
    missing = tmp_path / "not-there.jsonl"  # the refusal comes before the data is even opened
    config = config_for(missing, tiny_model_dir, tmp_path, *extra)
    with pytest.raises(UserError, match=key) as caught:
        tunesmith.train(config)
    assert why in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["method=qlora"], "method: qlora"),
        (["model.load_in_8bit=true"], "model.load_in_8bit"),
        (["train.optimizer=adamw_8bit"], "train.optimizer: adamw_8bit"),
    ],
)
def test_quantized_settings_are_refused_with_the_backends_reason_where_it_cannot_run(
    extra, key, tmp_path, tiny_model_dir, monkeypatch
):
    from tunesmith.models import quant

    monkeypatch.setattr(quant, "support", lambda device: "bitsandbytes 0.50.2 cannot quantize on cpu here (X)")
    config = config_for(tmp_path / "not-there.jsonl", tiny_model_dir, tmp_path, *extra)
    with pytest.raises(UserError, match=key) as caught:
        tunesmith.train(config)
    message = str(caught.value)
    assert "cannot quantize on cpu here (X)" in message and "or train with" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()


def test_bitsandbytes_cpu_backend_runs_here():
    """The pinned bitsandbytes quantizes, multiplies and steps an 8-bit AdamW on this CPU (what
    `doctor` reports and `train` relies on); a machine where it cannot fails here, loudly."""
    from tunesmith.models.quant import support

    assert support("cpu") is None


def test_8bit_base_goes_with_lora_only(tmp_path, tiny_model_dir):
    with pytest.raises(
        UserError, match="--set model.load_in_8bit=true: model.load_in_8bit goes with method: lora, not method: full"
    ):
        tunesmith.train(
            config_for(tmp_path / "x.jsonl", tiny_model_dir, tmp_path, "method=full", "model.load_in_8bit=true")
        )


def lora_count_from_config(model_dir, config) -> int:
    """r * (in + out) per adapted linear layer (+ out with DoRA), from the model's config.json alone:
    a wrong choice of adapted modules (one too few, the head too) cannot match it."""
    c = json.loads((model_dir / "config.json").read_text())
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    head = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head, c["num_key_value_heads"] * head
    shapes = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    targets = shapes if config.lora.target_modules == "all-linear" else config.lora.target_modules
    r, dora = config.lora.r, config.lora.dora
    return layers * sum(r * (shapes[t][0] + shapes[t][1]) + (shapes[t][1] if dora else 0) for t in targets)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["lora.rslora=true"],
        ["lora.dora=true"],
        ["lora.target_modules=[q_proj,v_proj]"],
        ["method=qlora"],
        ["model.load_in_8bit=true"],
    ],
)
def test_trainable_count_is_exact_for_every_lora_variant(extra, tmp_path, tiny_model_dir, data):
    config = config_for(data, tiny_model_dir, tmp_path, *extra)
    loaded = trainable_model(
        config, ModelRef(str(tiny_model_dir), str(tiny_model_dir), "local"), device="cpu", precision="fp32"
    )
    assert loaded.trainable == lora_count_from_config(tiny_model_dir, config) > 0
    assert loaded.trainable == expected_lora_parameters(loaded.model, config)
    assert loaded.trainable == sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    assert f"{loaded.trainable:,} trainable" in loaded.summary
    from peft.tuners.lora import LoraLayer

    scaling = {s for m in loaded.model.modules() if isinstance(m, LoraLayer) for s in m.scaling.values()}
    assert scaling == {config.lora.alpha / (config.lora.r**0.5 if config.lora.rslora else config.lora.r)}
    base = {
        n: type(m).__name__
        for n, m in loaded.model.named_modules()
        if n.endswith("layers.0.self_attn.q_proj.base_layer")
    }
    assert list(base.values()) == [
        {"qlora": "Linear4bit"}.get(config.method, "Linear8bitLt" if config.model.load_in_8bit else "Linear")
    ]
    if config.lora.dora:
        assert "DoRA" in loaded.summary
        assert any("lora_magnitude_vector" in n for n, p in loaded.model.named_parameters() if p.requires_grad)


def test_full_fine_tuning_trains_every_weight_and_saves_a_whole_model(tmp_path, tiny_model_dir, data):
    from tunesmith.evaluate.runs import load_run

    result = tunesmith.train(
        config_for(
            data,
            tiny_model_dir,
            tmp_path,
            "method=full",
            "train.learning_rate=1e-3",
            "train.gradient_checkpointing=true",
        )
    )
    folder = result.run_dir / "model"
    assert (folder / "model.safetensors").is_file() and not (result.run_dir / "adapter").exists()
    tuned = load_file(folder / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    changed = {name for name, tensor in tuned.items() if not torch.equal(tensor, base[name])}
    assert {n for n in tuned if "layers.0." in n} <= changed  # every weight of a block moved, not only some
    assert json.loads((folder / "tunesmith.json").read_text())["method"] == "full"
    loaded = load_run(result.run_dir)  # what eval and chat open
    assert not hasattr(loaded.model, "disable_adapter")
    assert torch.equal(
        loaded.model.state_dict()["model.layers.0.mlp.up_proj.weight"], tuned["model.layers.0.mlp.up_proj.weight"]
    )


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
def test_a_non_finite_step_stops_the_run_naming_that_step_and_its_rows_and_saves_nothing_non_finite(
    kind, tmp_path, tiny_model_dir, data, monkeypatch
):
    """A NaN injected into one known micro-batch (the second of optimizer step 4): the run stops at
    step 4 naming exactly the rows of both micro-batches of that step (read back from the token ids the
    model was fed, not from the guard's own bookkeeping), checkpoints 1-3 stay finite and none at or
    after step 4 is written."""
    import re

    from transformers import AutoTokenizer

    from tunesmith.training import run as run_module

    bad_step, accumulation = 4, 2
    lines = data.read_text(encoding="utf-8").splitlines()
    line_of = {int(re.search(r"What is (\d+) plus", text).group(1)): n for n, text in enumerate(lines, start=1)}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fed: list[list[int]] = []  # per training forward: the data rows (by number) in its micro-batch

    def poison(module, args, kwargs, output):
        if not module.training:
            return output
        texts = tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True)
        fed.append([int(n) for text in texts for n in re.findall(r"What is (\d+) plus", text)])
        if len(fed) == bad_step * accumulation:  # the last micro-batch of step 4
            if kind == "loss":
                output["logits"] = output.logits * float("nan")
            else:
                output["logits"] = _NaNGradient.apply(output.logits)
        return output

    original = run_module._load_trainable_model

    def load_poisoned(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_hook(poison, with_kwargs=True)
        return model

    monkeypatch.setattr(run_module, "_load_trainable_model", load_poisoned)
    config = config_for(
        data,
        tiny_model_dir,
        tmp_path,
        "train.packing=none",
        "train.batch_size=2",
        f"train.gradient_accumulation={accumulation}",
        "train.max_steps=8",
        "train.save_steps=1",
        "train.keep_checkpoints=10",
    )
    with pytest.raises(NonFiniteError) as e:
        tunesmith.train(config)
    message = str(e.value)

    assert len(fed) == bad_step * accumulation  # nothing ran past the bad micro-batch
    step_rows = sorted(line_of[i] for batch in fed[-accumulation:] for i in batch)
    assert len(step_rows) == 2 * accumulation == len(set(step_rows))
    named = re.fullmatch(rf"training stopped at step (\d+): the {kind} is nan \(rows ([^)]*)\).*", message)
    assert named, message
    assert int(named.group(1)) == bad_step
    assert sorted(named.group(2).split(", ")) == sorted(f"{data}:{n}" for n in step_rows), message

    run_dir = tmp_path / "runs" / "m"
    steps = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    assert steps == list(range(1, bad_step))  # one per good step, none at or after the bad one
    assert not (run_dir / "adapter").exists() and not (run_dir / "model").exists()
    weights = list(run_dir.rglob("*.safetensors"))
    assert {p.parent.name for p in weights if p.name.startswith("adapter_model")} == {f"step-{s}" for s in steps}
    for path in weights:
        for name, tensor in load_file(path).items():
            assert not torch.is_floating_point(tensor) or bool(torch.isfinite(tensor).all()), f"{path}: {name}"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"


def test_step_sources_name_the_rows_of_the_failing_step():
    from tunesmith.training.guards import describe_sources, non_finite_loss

    error = non_finite_loss(7, float("nan"), ["d.jsonl:4", "d.jsonl:9"])
    assert str(error).startswith("training stopped at step 7: the loss is nan (rows d.jsonl:4, d.jsonl:9)")
    assert describe_sources([]) == "rows unknown"


def test_adamw_8bit_trains_on_cpu_checkpoints_8bit_state_and_resumes_exactly(tmp_path, tiny_model_dir, data):
    """bitsandbytes' 8-bit AdamW on the CPU backend: the checkpointed optimizer state is 8-bit (uint8
    moments for the large adapter tensors; the quantization maps it shares between tensors stored once),
    not a silent fallback to torch AdamW, and a run resumed from step 2 ends bit-identical."""
    import shutil

    from tunesmith.training import checkpoints as ck

    result = tunesmith.train(
        config_for(
            data,
            tiny_model_dir,
            tmp_path,
            "train.optimizer=adamw_8bit",
            "lora.r=64",
            "train.max_steps=4",
            "train.batch_size=2",
            "train.learning_rate=1e-2",
            "train.save_steps=2",
            "train.keep_checkpoints=3",
        )
    )
    run = result.run_dir
    losses = [
        json.loads(line)["loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == 4 and all(x == x for x in losses)
    state = load_file(run / "checkpoints" / "step-2" / "optimizer.safetensors")
    assert any(t.dtype == torch.uint8 for t in state.values()), {k: t.dtype for k, t in list(state.items())[:6]}

    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    shutil.rmtree(copy / "adapter")
    (copy / "manifest.json").unlink()
    shutil.rmtree(copy / "checkpoints" / "step-4")
    assert ck.newest_complete(copy / "checkpoints") == copy / "checkpoints" / "step-2"
    tunesmith.train(copy, resume=True)
    left = load_file(copy / "adapter" / "adapter_model.safetensors")
    right = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(left[k], right[k]) for k in right)
