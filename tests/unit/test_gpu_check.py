"""bench/gpu_check.py (`make gpu-check`) on a CPU: its FLOPs and MFU formula, the models, data and configs it
generates, its outputs, its schedule, and how it keeps going: the time budget skips what no longer fits and a
failing step or run is recorded while the rest still runs. Processes are faked (nothing trains here); the
one real part is step 3, `plan`'s estimate, which needs no GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
import gpu_check_data as gd  # noqa: E402
import gpu_check_model as gm  # noqa: E402
import gpu_check_report as gr  # noqa: E402
import gpu_check_steps as gs  # noqa: E402

TINY = {
    **gm.SHAPES["llama-3.2-1b"],
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 300,
    "max_position_embeddings": 131072,
}


# ---------------------------------------------------------------------- parameters and FLOPs


@pytest.mark.parametrize("shape", list(gm.SHAPES))
def test_parameter_counts_agree_with_the_model_built_on_meta(shape):
    import torch
    from transformers import LlamaForCausalLM

    from tunesmith.plan.shapes import parameter_counts

    config = gm.llama_config(shape, tokenizer_size=49152)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    unique = {id(p): p.numel() for p in model.parameters()}
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gm.total_parameters(shape) == sum(unique.values())
    assert gm.matmul_parameters(shape) == linears  # the layers' linears and the head (tied or not)
    trainable, _ = parameter_counts(config, method="lora", r=16)  # the real PEFT adapter, on meta
    assert gm.lora_parameters(shape, 16) == trainable


@pytest.mark.parametrize("method", ["lora", "full"])
def test_flops_per_token_equal_torch_flop_counter(method):
    """Linear layers (torch's mm count) and attention (bmm, an eager kernel: all s^2 pairs) of one training
    step of a tiny Llama, forward and backward, against the formula times the tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(gm.llama_config(TINY), attn_implementation="eager")
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        model.enable_input_require_grads()  # every layer's activation gradient, as in the formula's 4N
    tokens = 12
    ids = torch.randint(0, 300, (1, tokens))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counted = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    flops = gm.flops_per_token(TINY, method=method, lengths=[tokens], r=4, causal=False)
    assert counted["aten.mm"] == pytest.approx((flops["linear"] + flops["adapter"]) * tokens, rel=1e-12)
    assert counted["aten.bmm"] == pytest.approx(flops["attention"] * tokens, rel=1e-12)


def test_attention_of_packed_conversations_is_each_conversations_own():
    lengths = [700, 1500, 300]
    packed = gm.flops_per_token("llama-3.1-8b", method="lora", lengths=lengths)
    alone = [gm.flops_per_token("llama-3.1-8b", method="lora", lengths=[n]) for n in lengths]
    assert packed["attention"] * sum(lengths) == pytest.approx(sum(a["attention"] * n for a, n in zip(alone, lengths)))
    assert packed["linear"] == alone[0]["linear"]  # the matmuls do not depend on the packing
    one = gm.flops_per_token("llama-3.1-8b", method="lora", lengths=[4096])  # one sequence filling the bin
    dims = gm.SHAPES["llama-3.1-8b"]
    usual = 6 * dims["num_hidden_layers"] * dims["num_attention_heads"] * dims["head_dim"] * 4096
    assert one["attention"] == pytest.approx(usual, rel=1 / 4096 + 1e-9)  # 6 L d T, causal: (T + 1) / T
    full = gm.flops_per_token("llama-3.1-8b", method="full", lengths=lengths)
    assert full["linear"] / packed["linear"] == pytest.approx(1.5) and full["adapter"] == 0
    assert gm.mfu(2 * 1000.0, packed["total"], 989e12) == pytest.approx(2 * gm.mfu(1000.0, packed["total"], 989e12))
    assert gm.mfu(None, packed["total"], 989e12) is None


def test_steady_rate_leaves_out_the_warm_up_steps():
    marks, t, n = [], 0.0, 0
    for step in range(1, 21):
        t += 3.0 if step <= 5 else 0.25  # slow first steps (compilation, allocator)
        n += 4096
        marks.append((t, n))
    steady = (marks[-1][1] - marks[4][1]) / (marks[-1][0] - marks[4][0])
    assert gm.steady_rate(marks, 5) == pytest.approx(steady)
    assert gm.steady_rate(marks, 5) > 2 * marks[-1][1] / marks[-1][0]  # the whole run's mean is much lower
    assert gm.steady_rate(marks[:5], 5) is None


def test_peak_flops_knows_the_h100_and_h200():
    assert gm.peak_flops("NVIDIA H200")[0] == gm.peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gm.peak_flops("NVIDIA A100-SXM4-80GB")[0] < 989e12
    assert "assumed" in gm.peak_flops(None)[1]


# ---------------------------------------------------------------------- models, data, configs


def test_random_model_folder_loads_with_tied_head_and_the_tokenizers_vocabulary(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gd.write_model_folder(tmp_path / "m", TINY)
    assert (folder / gd.READY).exists()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size >= len(tokenizer) > TINY["vocab_size"]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    weights = model.model.layers[0].mlp.up_proj.weight.float()
    assert torch.isfinite(weights).all() and 0.015 < weights.std() < 0.025
    assert torch.equal(model.model.norm.weight.float(), torch.ones(TINY["hidden_size"]))


def test_generated_config_is_one_tunesmith_accepts_and_fills_a_bin(tmp_path):
    from tunesmith.config import load_config
    from tunesmith.plan import shapes

    folder = gd.write_model_folder(tmp_path / "m", "llama-3.2-1b", weights=False)
    assert not (folder / gd.READY).exists()  # no weights: not ready for a run
    rows = gd.synthetic_rows(320)
    train = gd.write_jsonl(tmp_path / "train.jsonl", rows)
    path = gd.write_config(
        tmp_path / "c.yaml",
        gd.tunesmith_config(
            name="x",
            output_dir=tmp_path / "runs",
            model=folder,
            data=train,
            method="qlora",
            steps=20,
            max_length=4096,
            lora={"r": 16, "alpha": 32, "dropout": 0.0},
        ),
    )
    config = load_config(path)
    assert (config.method, config.model.name, config.train.max_steps) == ("qlora", str(folder), 20)
    assert (config.train.batch_size, config.train.gradient_accumulation, config.train.packing) == (1, 1, "bins")
    assert (config.template.max_length, config.lora.r, config.lora.alpha) == (4096, 16, 32)
    assert shapes.hf_config_for(config).vocab_size == gm.SHAPES["llama-3.2-1b"]["vocab_size"]
    batch = shapes.micro_batch(config)
    assert 0.95 * 4096 <= batch.tokens <= 4096  # one full packed bin per micro-batch
    lengths = gd.sequence_lengths(rows, gd.TOKENIZER_DIR)
    assert max(lengths) < 4096  # nothing is cut
    assert sum(lengths) > 1.5 * 20 * 4096  # 20 steps without repeating the data


# ---------------------------------------------------------------------- fakes for the orchestration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeBuilder:
    def poll(self):
        return 0

    def kill(self):
        pass


class FakeLauncher:
    """Answers each command the way the real process would, in `seconds[kind]` of the fake clock."""

    def __init__(self, clock, seconds=None, fail=()):
        self.clock, self.calls, self.fail = clock, [], set(fail)
        self.seconds = {"pytest": 30, "tunesmith": 40, "trl": 40, **(seconds or {})}

    def start(self, argv, *, log, env=None):
        for spec in argv[argv.index("build") + 1 :]:
            (Path(spec.partition("=")[2]) / gd.READY).write_text("x")
        return FakeBuilder()

    def run(self, argv, *, timeout, cwd=None, env=None):
        if argv[0] == "nvidia-smi":
            return gpu_check.Done(0, "NVIDIA H200, 143771 MiB, 580.159.04\n", "", 0.1)
        kind = "pytest" if "pytest" in argv else "tunesmith" if "tunesmith" in argv else "trl"
        self.calls.append((kind, argv))
        self.clock.now += self.seconds[kind]
        if kind in self.fail:
            if kind == "pytest":
                raise OSError("pytest could not start")
            if kind == "trl" and "--no-liger" not in argv:
                return gpu_check.Done(1, "", "Traceback ...\nliger_kernel.ops: unsupported", 1.0)
            return gpu_check.Done(1, "", "Traceback ...\nRuntimeError: CUDA out of memory", 1.0)
        if kind == "pytest":
            xml = next(a.split("=", 1)[1] for a in argv if a.startswith("--junitxml="))
            Path(xml).write_text('<testsuites><testsuite tests="6" failures="1" errors="0" skipped="2"/></testsuites>')
            return gpu_check.Done(1, "1 failed, 3 passed, 2 skipped in 9.1s\n", "", 30)
        if kind == "tunesmith":
            config = yaml.safe_load(Path(argv[-1]).read_text())
            run_dir = Path(config["output_dir"]) / config["name"]
            run_dir.mkdir(parents=True)
            run_dir.joinpath("metrics.jsonl").write_text(
                "".join(
                    json.dumps({"step": s, "tokens_seen": n, "elapsed_s": t, "memory_mb": m}) + "\n"
                    for s, (t, n), m in zip(range(1, 21), MARKS, range(1000, 1020))
                )
            )
            return gpu_check.Done(0, "", "", 40)
        return gpu_check.Done(
            0,
            "RESULT "
            + json.dumps({"tokens_per_s": 5000.0, "steps": 20, "tokens": 81920, "peak_bytes": 3 * 2**30, "marks": []})
            + "\n",
            "",
            40,
        )


MARKS = [(2.0 * s if s <= 5 else 10 + 0.5 * (s - 5), 4000 * s) for s in range(1, 21)]


def _check(tmp_path, launcher, clock, **options):
    defaults = {
        "out": tmp_path / "out",
        "work": tmp_path / "work",
        "keep_work": True,
        "shapes": ("llama-3.2-1b",),
        "budget_s": 1000.0,
        "run_estimate_s": {"llama-3.2-1b": 40.0},
        "plan_reserve_s": 30.0,
        "rows": 80,
    }
    opts = gpu_check.Options(**{**defaults, **options})
    return gpu_check.Check(opts, launcher=launcher, budget=gpu_check.Budget(opts.budget_s, clock))


def _no_plan(monkeypatch):
    monkeypatch.setattr(gpu_check, "plan_memory_step", lambda check: {"status": "ok"})


def test_schedule_alternates_the_trainers_run_by_run():
    runs = gpu_check.schedule(tuple(gm.SHAPES), ("lora", "qlora"))
    assert [r["tool"] for r in runs] == ["tunesmith", "trl"] * 4
    assert all((a["shape"], a["method"]) == (b["shape"], b["method"]) for a, b in zip(runs[::2], runs[1::2]))
    assert {(r["shape"], r["method"], r["tool"]) for r in runs} == {
        (s, m, t) for s in gm.SHAPES for m in ("lora", "qlora") for t in ("tunesmith", "trl")
    }
    pairs = [(r["shape"], r["method"]) for r in runs[::2]]
    assert pairs[0] == ("llama-3.2-1b", "lora")  # the quick run that proves the path comes first
    assert pairs[1] == ("llama-3.1-8b", "qlora") and pairs[-1] == ("llama-3.2-1b", "qlora")  # what a cut drops
    assert len({r["id"] for r in runs}) == 8
    assert [(r["shape"], r["method"]) for r in gpu_check.schedule(("llama-3.1-8b",), ("qlora", "lora"))[::2]] == [
        ("llama-3.1-8b", "qlora"),
        ("llama-3.1-8b", "lora"),
    ]


def test_runs_that_no_longer_fit_the_budget_are_skipped_and_said_so(tmp_path, monkeypatch):
    _no_plan(monkeypatch)
    clock = Clock()
    launcher = FakeLauncher(clock)
    # 170 s: the tests take 30, each run 40 and needs 40 + 30 (step 3's reserve) to start: two runs fit
    results = _check(tmp_path, launcher, clock, budget_s=170.0).run()
    runs = results["steps"]["training"]["runs"]
    assert [r["status"] for r in runs] == ["ok", "ok", "skipped", "skipped"]
    assert all("time budget" in r["reason"] for r in runs[2:])
    assert [kind for kind, _ in launcher.calls] == ["pytest", "tunesmith", "trl"]
    ours, _theirs = runs[0], runs[1]
    steady = (MARKS[-1][1] - MARKS[4][1]) / (MARKS[-1][0] - MARKS[4][0])
    assert ours["tokens_per_s"] == pytest.approx(steady)
    assert ours["peak_bytes"] == 1019 * 2**20  # the largest memory_mb logged
    flops = gm.flops_per_token(
        "llama-3.2-1b", method="lora", lengths=gd.sequence_lengths(gd.synthetic_rows(80), gd.TOKENIZER_DIR)
    )
    assert ours["mfu"] == pytest.approx(steady * flops["total"] / 989e12)
    assert results["steps"]["training"]["pairs"][0]["tokens_per_s_ratio"] == pytest.approx(steady / 5000.0)
    tests = results["steps"]["gpu_tests"]
    assert (tests["status"], tests["passed"], tests["failed"], tests["skipped"]) == ("failed", 3, 1, 2)
    on_disk = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [r["status"] for r in on_disk["steps"]["training"]["runs"]] == ["ok", "ok", "skipped", "skipped"]
    text = (tmp_path / "out" / "gpu-check.md").read_text()
    assert text.count("skipped: time budget") == 2 and any("skipped (time budget" in n for n in on_disk["notes"])


def test_a_spent_budget_skips_whole_steps(tmp_path, monkeypatch):
    _no_plan(monkeypatch)
    clock = Clock()
    results = _check(tmp_path, FakeLauncher(clock, seconds={"pytest": 190}), clock, budget_s=200.0).run()
    assert results["steps"]["training"]["status"] == "skipped"  # 10 s left, below step 3's reserve
    assert "time budget" in results["steps"]["training"]["reason"]


def test_a_failing_step_or_run_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    _no_plan(monkeypatch)
    clock = Clock()
    launcher = FakeLauncher(clock, fail={"pytest", "trl"})
    results = _check(tmp_path, launcher, clock, methods=("lora",)).run()
    tests = results["steps"]["gpu_tests"]
    assert tests["status"] == "error" and "pytest could not start" in tests["error"]
    ours, theirs = results["steps"]["training"]["runs"]
    assert ours["status"] == "ok"
    # TRL failed with Liger, ran again without it, and failed again: both errors kept
    assert theirs["status"] == "error" and "out of memory" in theirs["error"] and "liger" in theirs["liger_error"]
    assert ["--no-liger" in argv for kind, argv in launcher.calls if kind == "trl"] == [False, True]
    assert results["steps"]["training"]["status"] == "partial"
    logs = (tmp_path / "out" / gpu_check.LOGS).read_text()
    assert f"===== {theirs['id']}-no-liger" in logs and "CUDA out of memory" in logs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpu-check-logs.txt",
        "gpu-check.json",
        "gpu-check.md",
    ]

    def broken(check):
        raise RuntimeError("step two broke")

    monkeypatch.setattr(gpu_check, "training_step", broken)
    reached = []
    monkeypatch.setattr(gpu_check, "plan_memory_step", lambda check: reached.append(1) or {"status": "ok"})
    results = _check(tmp_path / "again", FakeLauncher(Clock()), Clock()).run()
    assert results["steps"]["training"]["status"] == "error"
    assert "step two broke" in results["steps"]["training"]["error"]
    assert reached and results["steps"]["plan_memory"]["status"] == "ok"


def test_a_model_that_could_not_be_built_fails_its_runs_only(tmp_path, monkeypatch):
    _no_plan(monkeypatch)

    class HalfBuilt(FakeLauncher):
        def start(self, argv, *, log, env=None):
            first = argv[argv.index("build") + 1]
            (Path(first.partition("=")[2]) / gd.READY).write_text("x")  # the 8B's weights never come
            log.write_text("MemoryError while writing llama-3.1-8b")
            return FakeBuilder()

    launcher = HalfBuilt(Clock())
    results = _check(
        tmp_path,
        launcher,
        Clock(),
        tests=False,
        methods=("lora",),
        shapes=("llama-3.2-1b", "llama-3.1-8b"),
        run_estimate_s={},
    ).run()
    runs = results["steps"]["training"]["runs"]
    assert [r["status"] for r in runs] == ["ok", "ok", "error", "error"]
    assert all("building the llama-3.1-8b model failed" in r["error"] and "MemoryError" in r["error"] for r in runs[2:])
    assert len(launcher.calls) == 2  # nothing was started for the 8B


def test_without_a_gpu_nothing_is_built_or_trained(tmp_path, monkeypatch):
    _no_plan(monkeypatch)

    class NoGpu(FakeLauncher):
        def run(self, argv, **kw):
            if argv[0] == "nvidia-smi":
                raise FileNotFoundError("nvidia-smi")
            return super().run(argv, **kw)

        def start(self, argv, **kw):
            raise AssertionError("no model is built without a GPU")

    results = _check(tmp_path, NoGpu(Clock()), Clock(), tests=False).run()
    assert results["steps"]["training"]["status"] == "skipped"
    assert all(r["reason"].startswith("no CUDA GPU") for r in results["steps"]["training"]["runs"])


def test_plan_step_compares_tunesmiths_estimate_with_the_measured_peak(tmp_path):
    from tunesmith.config import load_config
    from tunesmith.plan import estimate as est

    check = _check(tmp_path, FakeLauncher(Clock()), Clock(), methods=("lora",))
    check.results["machine"] = {"gpu": None}
    check.prepare()
    ours = check.results["steps"]["training"]["runs"][0]
    ours.update(status="ok", peak_bytes=12 * 2**30)
    check.step("plan_memory", gs.plan_memory_step)
    entry = check.results["steps"]["plan_memory"]["checks"][0]
    config = load_config(check.configs[ours["id"]])
    expected = est.estimate_memory(config, device_kind="cuda", bf16=True).total_bytes
    # within 2%, not equal: plan's meta-device activation tally varies by up to ~0.5% from call to call
    assert entry["predicted_bytes"] == pytest.approx(expected, rel=0.02) and entry["measured_bytes"] == 12 * 2**30
    assert entry["ratio"] == pytest.approx(entry["predicted_bytes"] / (12 * 2**30), rel=1e-12)
    assert 0.9 * 4096 < entry["micro_batch_tokens"] <= 4096 and entry["settings"]["precision"] == "bf16"
    assert "predicted / measured" in (tmp_path / "out" / "gpu-check.md").read_text()


# ---------------------------------------------------------------------- outputs


def test_pytest_counts_from_junit_xml_and_from_the_closing_line(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="9" failures="2" errors="1" skipped="3"/></testsuites>')
    assert gs.junit_counts(xml) == {"passed": 3, "failed": 2, "errors": 1, "skipped": 3}
    assert gs.junit_counts(tmp_path / "missing.xml") is None
    line = "....\n1 failed, 3 passed, 2 skipped, 1 error in 3.2s\n"
    assert gs.summary_counts(line) == {"passed": 3, "failed": 1, "errors": 1, "skipped": 2}


def test_writer_puts_every_run_and_the_ratios_in_both_files(tmp_path):
    runs = [
        {
            "id": "01",
            "shape": "llama-3.2-1b",
            "method": "lora",
            "tool": "tunesmith",
            "status": "ok",
            "tokens_per_s": 30000.0,
            "mfu": 0.412,
            "peak_bytes": 10 * 2**30,
            "steps": 20,
        },
        {
            "id": "02",
            "shape": "llama-3.2-1b",
            "method": "lora",
            "tool": "trl",
            "status": "ok",
            "tokens_per_s": 20000.0,
            "mfu": 0.275,
            "peak_bytes": 20 * 2**30,
            "steps": 20,
            "liger": False,
        },
        {
            "id": "03",
            "shape": "llama-3.1-8b",
            "method": "qlora",
            "tool": "tunesmith",
            "status": "error",
            "error": "Traceback\nRuntimeError: a | b",
        },
        {
            "id": "04",
            "shape": "llama-3.1-8b",
            "method": "qlora",
            "tool": "trl",
            "status": "skipped",
            "reason": "time budget: 10 s left",
        },
    ]
    results = {
        "started": "now",
        "budget_s": 450,
        "elapsed_s": 400,
        "machine": {"gpu": "NVIDIA H200"},
        "steps": {
            "gpu_tests": {"status": "ok", "passed": 5, "failed": 0, "skipped": 1, "seconds": 12.0},
            "training": {"status": "partial", "runs": runs},
            "plan_memory": {
                "status": "ok",
                "checks": [
                    {
                        "shape": "llama-3.2-1b",
                        "method": "lora",
                        "predicted_bytes": 11 * 2**30,
                        "measured_bytes": 10 * 2**30,
                        "ratio": 1.1,
                    }
                ],
            },
        },
        "notes": ["04: skipped"],
        "flops_formula": gm.FORMULA,
    }
    gr.write_outputs(tmp_path, results)
    assert json.loads((tmp_path / "gpu-check.json").read_text()) == results
    text = (tmp_path / "gpu-check.md").read_text()
    assert gr.TRAINING_HEADER in text and gr.PLAN_HEADER in text
    rows = {
        line.split(" | ")[0].strip("| ") + line.split(" | ")[2]: line
        for line in text.splitlines()
        if line.startswith("| llama")
    }
    assert "| 1.50x | 0.50x |" in rows["llama-3.2-1btunesmith"] and "41.2%" in rows["llama-3.2-1btunesmith"]
    assert "10.00" in rows["llama-3.2-1btunesmith"] and "trl (no Liger)" in text
    assert "error: RuntimeError: a \\| b" in rows["llama-3.1-8btunesmith"]
    assert "skipped: time budget" in rows["llama-3.1-8btrl"]
    assert "| 11.00 | 10.00 | 1.10x |" in text and "5 passed, 0 failed" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_benchmarks_doc_shows_the_tables_the_check_writes():
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = doc[doc.index("## GPU check (`make gpu-check`)") :]
    assert gr.TRAINING_HEADER in section and gr.PLAN_HEADER in section


def test_the_carried_bitsandbytes_wheel_keeps_cpu_and_cuda_13_only(tmp_path):
    """scripts/gpu_wheels.py: the trimmed wheel drops the other CUDA/ROCm libraries and their RECORD
    lines, and keeps every other file byte for byte (a wheel pip can still verify)."""
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("gpu_wheels", Path(__file__).parents[2] / "scripts" / "gpu_wheels.py")
    gpu_wheels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_wheels)
    files = {
        "bitsandbytes/__init__.py": b"x = 1\n",
        "bitsandbytes/libbitsandbytes_cpu.so": b"cpu",
        "bitsandbytes/libbitsandbytes_cuda118.so": b"old" * 100,
        "bitsandbytes/libbitsandbytes_cuda130.so": b"13",
        "bitsandbytes/libbitsandbytes_cuda132.so": b"132",
        "bitsandbytes/libbitsandbytes_rocm72.so": b"rocm",
    }
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items()) + "bnb.dist-info/RECORD,,\n"
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("bnb.dist-info/RECORD", record)
    gpu_wheels.trim_bitsandbytes(wheel)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        kept_record = archive.read("bnb.dist-info/RECORD").decode()
        assert archive.read("bitsandbytes/__init__.py") == files["bitsandbytes/__init__.py"]
    assert names == {
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bnb.dist-info/RECORD",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_cuda132.so",
    }
    assert "cuda118" not in kept_record and "rocm72" not in kept_record and "cuda130" in kept_record
