"""QLoRA (4-bit NF4) and LoRA on an 8-bit base, for real, on CPU: bitsandbytes' CPU backend under the
embedded model. For each: a short run whose loss falls, SIGKILL + --resume ending bit-identical to the
uninterrupted run, eval and generate on the run (the adapter on the quantized base it trained with),
merge (into the de-quantized base, logits checked) and a GGUF of the merge that llama.cpp loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tunesmith.training import checkpoints as ck

pytestmark = pytest.mark.integration
BUNDLED = Path(__file__).parents[2] / "src" / "tunesmith" / "data" / "bundled" / "smart_home"
KINDS = {"qlora": ["method=qlora"], "8bit": ["model.load_in_8bit=true"]}
EPOCHS, STEPS_PER_EPOCH = 3, 2  # 8 rows, 2 per micro-batch, 2 micro-batches per step


def tunesmith(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, timeout=timeout, env=env()
    )


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quantized")
    rows = (BUNDLED / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "train.jsonl").write_text("\n".join(rows[:8]) + "\n", encoding="utf-8")
    (root / "test.jsonl").write_text("\n".join((BUNDLED / "test.jsonl").read_text().splitlines()[:3]) + "\n")
    return root


def train_args(folder: Path, kind: str, name: str) -> list[str]:
    settings = [
        *KINDS[kind],
        f"data.test={folder / 'test.jsonl'}",
        f"output_dir={folder / 'runs'}",
        f"name={name}",
        f"train.epochs={EPOCHS}",
        "train.batch_size=2",
        "train.gradient_accumulation=2",
        "train.packing=none",
        "template.max_length=128",
        "lora.r=8",
        "lora.dropout=0.1",
        "train.learning_rate=2e-3",
        "train.save_steps=2",
        "eval.max_new_tokens=24",
    ]
    return [
        "train",
        "--data",
        str(folder / "train.jsonl"),
        "--model",
        "smollm2-135m-instruct",
        *[part for s in settings for part in ("--set", s)],
    ]


@pytest.fixture(scope="module", params=list(KINDS))
def straight(request, folder) -> tuple[str, Path, subprocess.CompletedProcess]:
    kind = request.param
    done = tunesmith(*train_args(folder, kind, f"{kind}-straight"))
    assert done.returncode == 0, done.stderr[-3000:]
    return kind, folder / "runs" / f"{kind}-straight", done


def losses(run: Path) -> list[float]:
    return [
        json.loads(line)["loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]


def test_a_short_run_on_the_quantized_base_learns(straight):
    kind, run, done = straight
    base = "on a 4-bit NF4 base" if kind == "qlora" else "on an 8-bit base"
    assert base in done.stdout, done.stdout
    loss = losses(run)
    assert len(loss) == EPOCHS * STEPS_PER_EPOCH
    first, last = sum(loss[:STEPS_PER_EPOCH]), sum(loss[-STEPS_PER_EPOCH:])  # the same 8 rows each epoch
    assert last < 0.8 * first, loss
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    saved = {p.name for p in (run / "adapter").iterdir()}
    assert "adapter_model.safetensors" in saved and not any(n.startswith("model") for n in saved)  # no base


def test_sigkill_then_resume_ends_bit_identical(straight, folder):
    kind, reference, _ = straight
    name = f"{kind}-killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", *train_args(folder, kind, name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    checkpoints = folder / "runs" / name / "checkpoints"
    deadline = time.monotonic() + 600
    while not ck.checkpoint_steps(checkpoints):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    run = folder / "runs" / name
    assert not (run / "adapter").exists()
    resume_from = ck.newest_complete(checkpoints)
    assert resume_from is not None and int(resume_from.name.split("-")[1]) < EPOCHS * STEPS_PER_EPOCH
    done = tunesmith("train", str(run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {resume_from}" in done.stdout.replace("\n", "")
    left = load_file(run / "adapter" / "adapter_model.safetensors")
    right = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    different = [k for k in left if not (left[k] == right[k]).all()]
    assert different == []  # bit-identical, every tensor
    assert losses(run) == losses(reference)


def test_eval_and_generate_run_the_adapter_on_its_quantized_base(straight, tmp_path):
    from tunesmith.evaluate.runs import load_run

    kind, run, _ = straight
    loaded = load_run(run)
    layer = loaded.model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj.base_layer")
    assert type(layer).__name__ == {"qlora": "Linear4bit", "8bit": "Linear8bitLt"}[kind]
    del loaded
    done = tunesmith("eval", str(run), "--limit", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert {"tuned", "base"} <= set(results), results.keys()
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Turn on the kitchen lights"}]}) + "\n")
    done = tunesmith("generate", str(run), str(prompts), str(tmp_path / "out.jsonl"), "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out.jsonl").read_text())["answer"]


@pytest.mark.llamacpp
def test_merge_checks_its_logits_and_its_gguf_loads_in_llama_cpp(straight):
    import llama_cpp

    kind, run, _ = straight
    done = tunesmith("merge", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked: merged logits equal the adapter model's" in done.stdout.replace("\n", " ")
    recorded = json.loads((run / "merged" / "tunesmith.json").read_text())
    assert recorded["merge_max_logit_difference"] <= 1e-4 * 100  # within allowed (scaled by |logit| <= 100)
    assert recorded["quantized_base_bits"] == {"qlora": 4, "8bit": 8}[kind]
    assert recorded["difference_from_unquantized_base_adapter"] > 0
    done = tunesmith("export", "gguf", str(run), "--type", "f16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokenize identically" in done.stdout, done.stdout
    model = llama_cpp.Llama(model_path=str(run / "export" / "model-f16.gguf"), n_ctx=256, n_threads=2, verbose=False)
    try:
        tokens = model.tokenize(b"Turn on the kitchen lights", add_bos=False)
        model.eval(tokens)
        assert model.n_tokens == len(tokens) > 0
    finally:
        model.close()


def test_loftq_on_the_embedded_4bit_model_lowers_every_layers_weight_error_and_reports_the_logits():
    """LoftQ (one iteration, as peft's replace_lora_weights_loftq) makes scale * B A the best rank-r
    approximation of each layer's quantization error: every layer's |W - dequant(Q) - scale B A| must be
    below |W - dequant(Q)|. On SmolLM2-135M at r=16 that is about 6% of the error, which does not carry
    to the logits (measured and printed here; docs/lora-init.md says so); the logits gain is asserted
    on the tiny model in tests/unit/test_lora_init.py."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import Linear4bit
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.config import load_config
    from tunesmith.models.load import resolve_model
    from tunesmith.training.methods import trainable_model

    ref = resolve_model("smollm2-135m-instruct")
    rows = [json.loads(line) for line in (BUNDLED / "test.jsonl").read_text().splitlines()[:2]]
    ids = AutoTokenizer.from_pretrained(ref.path)(rows[0]["messages"][-2]["content"], return_tensors="pt")["input_ids"]

    def logits(model):
        model.train()  # dropout 0; one code path (de-quantize + matmul) for both inits
        with torch.no_grad():
            return model(input_ids=ids).logits.float()

    full = logits(AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32))
    errors, models = {}, {}
    for init in ("default", "loftq"):
        config = load_config(
            None,
            [
                "data.train=x.jsonl",
                "model.name=smollm2-135m-instruct",
                "method=qlora",
                f"lora.init={init}",
                "lora.r=16",
                "lora.alpha=32",
            ],
        )
        models[init] = trainable_model(config, ref, device="cpu", precision="fp32").model
        errors[init] = float((logits(models[init]) - full).abs().mean())
    weights = safe_open(str(Path(ref.path) / "model.safetensors"), "pt")
    before = after = 0.0
    for name, module in models["loftq"].named_modules():
        if isinstance(module, Linear4bit):
            w = weights.get_tensor(name.removeprefix("base_model.model.") + ".weight").float()
            base = module.get_base_layer().weight
            residual = w - bnb.functional.dequantize_4bit(base.data, base.quant_state).float()
            update = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
            assert (residual - update).norm() < residual.norm(), name
            before, after = before + float(residual.norm()) ** 2, after + float((residual - update).norm()) ** 2
    print(
        f"SmolLM2-135M NF4, r=16: weight error {before**0.5:.1f} -> {after**0.5:.1f} with loftq; mean "
        f"|logit - full precision| default {errors['default']:.3g}, loftq {errors['loftq']:.3g}"
    )
    assert after < 0.97 * before
