"""`tunesmith.train` end to end on a tiny in-process model from a local folder."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import UserError


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config(
        None,
        [
            f"data.train={data}",
            f"data.test={data}",
            f"model.name={tiny_model_dir}",
            f"output_dir={root / 'runs'}",
            "name=tiny",
            "train.max_steps=4",
            "train.batch_size=4",
            "train.learning_rate=1e-2",
            "lora.r=4",
            "eval.limit=3",
            "eval.max_new_tokens=4",
            "eval.metrics=[exact]",
        ],
    )
    return tunesmith.train(config), tiny_model_dir


def test_run_folder_has_every_artifact(finished_run):
    result, _ = finished_run
    run = result.run_dir
    for name in (
        "config.yaml",
        "data_report.json",
        "metrics.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tunesmith.json",
        "eval/results.json",
        "eval/samples.jsonl",
        "manifest.json",
    ):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and result.status == "completed"
    assert "adapter/adapter_model.safetensors" in manifest["artifacts"]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3, 4]
    assert all(s["tokens_per_s"] > 0 and s["loss"] == s["loss"] for s in steps if "loss" in s)
    meta = json.loads((run / "adapter" / "tunesmith.json").read_text())
    assert meta["system_prompt"] == "Answer briefly." and "<|end|>" in meta["end_of_turn"]


def test_resolved_config_reloads_from_the_run_folder(finished_run):
    result, model_dir = finished_run
    saved = load_config(result.run_dir / "config.yaml")
    assert saved.model.name == str(model_dir) and saved.train.max_steps == 4
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["batch_size"] == 4


def test_only_adapter_weights_changed_and_peft_loads_them(finished_run):
    result, model_dir = finished_run
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, result.run_dir / "adapter")
    adapter = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    merged = tuned.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith(("proj.weight",)) for k in changed)


def test_existing_run_name_is_refused(finished_run):
    result, model_dir = finished_run
    config = load_config(result.run_dir / "config.yaml")
    with pytest.raises(UserError, match="already exists"):
        tunesmith.train(config)
