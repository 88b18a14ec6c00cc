"""`--nproc`: launch options, what each machine refuses before any work, the generated DDP / FSDP2 /
DeepSpeed arguments (checked on CPU), the torchrun command, and how worker failures are reported."""

from __future__ import annotations

import inspect
import json
import re
import sys

import pytest

from tunesmith.cli.main import main
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError, UserError
from tunesmith.training.launch import Launch, check_launch, launch_options, torchrun_command, worker_failure
from tunesmith.training.strategies import deepspeed_config, distributed_arguments, launched_arguments


def config(*overrides: str):
    return load_config(None, ["data.train=x.jsonl", *overrides])


def refusal(cfg, launch: Launch | None = None, *, device="cuda", gpus=8, deepspeed=True) -> str:
    with pytest.raises(UserError) as err:
        check_launch(cfg, launch or Launch(2), device=device, gpu_count=gpus, deepspeed_installed=deepspeed)
    return str(err.value)


# --- launch options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0,), "--nproc 0: must be at least 1"),
        ((2, 0), "--nnodes 0: must be at least 1"),
        ((2, 2, 2, "h:1"), "--node-rank 2: must be between 0 and 1"),
        ((2, 2, 0, None), "--nnodes 2: needs --rdzv HOST:PORT"),
        ((2, 2, 1, "host"), "--rdzv host: expected HOST:PORT"),
        ((2, 2, 1, "host:99999"), "--rdzv host:99999: expected HOST:PORT"),
        ((None, 2, 0, "h:1"), "--nnodes, --node-rank and --rdzv go with --nproc N"),
    ],
)
def test_bad_launch_options_are_refused(args, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        launch_options(*args)


def test_launch_options_of_a_two_node_run():
    launch = launch_options(4, 2, 1, "10.0.0.1:29500")
    assert (launch.world_size, launch.main_node) == (8, False)
    assert launch_options(2) == Launch(2) and Launch(2).main_node


# --- what is refused before launching -----------------------------------------------------------------


def test_ddp_on_cpu_over_gloo_is_accepted():
    check_launch(config(), Launch(2), device="cpu", gpu_count=0, deepspeed_installed=False)
    check_launch(config("distributed.backend=gloo"), Launch(2), device="cpu", gpu_count=0, deepspeed_installed=False)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategies_are_refused_on_cpu_saying_why(strategy):
    message = refusal(config(f"distributed.strategy={strategy}"), device="cpu", gpus=0)
    assert f"distributed.strategy: {strategy} trains only on CUDA GPUs" in message
    assert "quietly fall back to plain DDP" in message and "use distributed.strategy: ddp" in message


def test_nccl_without_cuda_is_refused():
    message = refusal(config("distributed.backend=nccl"), device="cpu", gpus=0)
    assert "distributed.backend: nccl needs CUDA GPUs" in message


def test_more_processes_than_gpus_is_refused():
    assert "--nproc 3: this machine has 2 CUDA GPUs; start at most one process per GPU (--nproc 2)" in refusal(
        config(), Launch(3), gpus=2
    )
    check_launch(config(), Launch(2), device="cuda", gpu_count=2, deepspeed_installed=False)


def test_missing_deepspeed_names_the_install_command():
    message = refusal(config("distributed.strategy=deepspeed"), deepspeed=False)
    assert message.endswith("distributed.strategy: deepspeed needs the deepspeed package: pip install deepspeed")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["distributed.cpu_offload=true"], "distributed.cpu_offload needs distributed.strategy: fsdp or deepspeed"),
        (
            ["distributed.strategy=deepspeed", "distributed.backend=gloo"],
            "distributed.backend: gloo does not go with strategy: deepspeed",
        ),
        (
            ["distributed.strategy=deepspeed", "distributed.cpu_offload=true", "train.optimizer=adamw_8bit"],
            "train.optimizer: adamw_8bit cannot run with distributed.cpu_offload under DeepSpeed",
        ),
    ],
)
def test_incompatible_combinations_are_refused(overrides, expected):
    assert expected in refusal(config(*overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["method=qlora", "distributed.strategy=deepspeed", "distributed.zero_stage=3"],
            "--set method=qlora: method: qlora (a 4-bit base) cannot be sharded by ZeRO-3",
        ),
        (
            ["model.load_in_8bit=true", "distributed.strategy=deepspeed", "distributed.zero_stage=3"],
            "--set model.load_in_8bit=true: model.load_in_8bit (an 8-bit base) cannot be sharded by ZeRO-3",
        ),
        (
            ["method=qlora", "distributed.strategy=fsdp"],
            "--set method=qlora: method: qlora (a 4-bit base) cannot be sharded by FSDP2",
        ),
    ],
)
def test_a_quantized_base_with_a_sharding_strategy_is_refused_when_the_config_loads(overrides, expected):
    with pytest.raises(UserError) as caught:  # a config-only combination: no machine needed to know
        config(*overrides)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=qlora", "distributed.strategy=deepspeed", "distributed.zero_stage=2"],
        ["method=qlora"],
        ["distributed.strategy=fsdp", "distributed.cpu_offload=true"],
        ["distributed.strategy=deepspeed", "distributed.zero_stage=3", "distributed.cpu_offload=true"],
    ],
)
def test_compatible_combinations_on_cuda_pass(overrides):
    check_launch(config(*overrides), Launch(2), device="cuda", gpu_count=2, deepspeed_installed=True)


def test_a_refusal_names_the_line_that_set_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train: x.jsonl\ndistributed:\n  strategy: fsdp\n", encoding="utf-8")
    message = refusal(load_config(path), device="cpu", gpus=0)
    assert message.startswith(f"{path}:4: distributed.strategy: fsdp")


# --- TrainingArguments ------------------------------------------------------------------------------


def test_ddp_arguments():
    assert distributed_arguments(config(), "cpu", 1) == {}
    assert distributed_arguments(config(), "cpu", 2) == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    assert distributed_arguments(config(), "cuda", 8)["ddp_backend"] == "nccl"
    assert distributed_arguments(config("distributed.backend=gloo"), "cuda", 8)["ddp_backend"] == "gloo"


def test_distributed_arguments_apply_only_in_a_torchrun_worker(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_arguments(config(), "cpu") == {}
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_arguments(config(), "cpu")["ddp_backend"] == "gloo"


@pytest.mark.parametrize("offload", [False, True])
def test_fsdp2_arguments_build_transformers_fsdp2_plugin(offload, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # transformers sets it; restored afterwards

    args = distributed_arguments(config("distributed.strategy=fsdp", f"distributed.cpu_offload={offload}"), "cuda", 2)
    assert args["fsdp"] is True and args["ddp_backend"] == "nccl"
    built = TrainingArguments(
        str(tmp_path), use_cpu=True, report_to=[], fsdp=args["fsdp"], fsdp_config=args["fsdp_config"]
    )
    plugin = built.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True  # FSDP2, full shard
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"
    assert plugin.get("cpu_offload", False) is offload


def test_fsdp2_auto_wrap_finds_the_transformer_layers(tiny_model_dir):
    """The wrap policy left to accelerate shards one unit per decoder layer of the model (here Llama's)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import AutoModelForCausalLM

    from tunesmith.training.methods import add_adapter

    cfg = config("distributed.strategy=fsdp", "lora.r=2")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP")
    model = add_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
    assert wrapped == ["LlamaDecoderLayer", "LlamaDecoderLayer"]


def _filled_by_transformers() -> set[str]:
    """Every DeepSpeed key transformers replaces "auto" in (read from its source, as the deepspeed
    package is not installed here and the config class refuses to start without it)."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    source = inspect.getsource(HfTrainerDeepSpeedConfig)
    return set(re.findall(r'fill_(?:match|only)\(\s*"([^"]+)"', source)) | set(
        re.findall(r'"(zero_optimization\.[a-z0-9_]+)"', source)
    )


def _autos(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _autos(value, path + ".")
        elif value == "auto":
            yield path


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_zero_config(stage, offload):
    cfg = config(
        "distributed.strategy=deepspeed", f"distributed.zero_stage={stage}", f"distributed.cpu_offload={offload}"
    )
    ds = distributed_arguments(cfg, "cuda", 4)["deepspeed"]
    assert ds == deepspeed_config(cfg) and json.loads(json.dumps(ds)) == ds  # a plain JSON config
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) is offload and ("optimizer" in ds) is offload
    assert ("offload_param" in zero) is (offload and stage == 3)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)  # adapter/ can be saved
    unfilled = set(_autos(ds)) - _filled_by_transformers()
    assert not unfilled, f"'auto' that transformers does not fill: {unfilled}"
    assert {
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "bf16.enabled",
        "fp16.enabled",
    } <= set(_autos(ds))


def test_deepspeed_arguments_are_refused_by_transformers_without_the_package(tmp_path):
    """Why check_launch asks for the package first: transformers cannot even build the arguments."""
    import importlib.util

    from transformers import TrainingArguments

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    with pytest.raises(Exception, match="deepspeed"):
        TrainingArguments(
            str(tmp_path),
            use_cpu=True,
            report_to=[],
            **distributed_arguments(config("distributed.strategy=deepspeed"), "cuda", 2),
        )


# --- torchrun and how workers end --------------------------------------------------------------------


def test_torchrun_command_single_and_multi_node(tmp_path):
    one = torchrun_command(Launch(2), config_path=tmp_path / "c.yaml", run_dir=tmp_path / "r", reports=tmp_path)
    assert one[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in one and "--standalone" in one
    assert one[one.index("-m", 3) :][:2] == ["-m", "tunesmith.training.worker"]
    two = torchrun_command(
        Launch(4, 2, 1, "10.0.0.1:29500"), config_path=tmp_path / "c.yaml", run_dir=tmp_path / "r", reports=tmp_path
    )
    assert "--standalone" not in two
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=static", "--rdzv-endpoint=10.0.0.1:29500"} <= set(two)


def test_worker_failures_become_one_error():
    launch = Launch(2)
    assert worker_failure({0: {"rank": 0, "status": "trained", "metrics": {}}}, 0, launch) is None
    user = worker_failure(
        {
            1: {"rank": 1, "error": "data.train: bad", "user_error": True},
            0: {"rank": 0, "error": "RuntimeError: peer gone", "user_error": False},
        },
        1,
        launch,
    )
    assert type(user) is UserError and str(user) == "data.train: bad"
    ours = worker_failure({1: {"rank": 1, "error": "RuntimeError: boom", "user_error": False}}, 1, launch)
    assert type(ours) is TunesmithError
    assert str(ours) == "training failed in worker rank 1 of 2: RuntimeError: boom"
    killed = worker_failure({}, -9, launch)
    assert "torchrun exit code -9" in str(killed) and "without reporting an error" in str(killed)


# --- the command line: checks run once, in the launching process, before any worker -------------------


def test_bad_input_with_nproc_is_one_line_exit_2_and_nothing_launched(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train: missing.jsonl\n", encoding="utf-8")
    code = main(["train", str(path), "--nproc", "2", "--set", f"output_dir={tmp_path / 'runs'}"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == [f"error: {path}:2: data.train: data file not found: missing.jsonl"]
    assert "worker" not in out and not (tmp_path / "runs").exists()


def test_a_refused_strategy_stops_before_the_data_is_read(tmp_path, capsys, chat_jsonl):
    """deepspeed is refused here on CPU (or, on a GPU machine, for the missing package)."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed would run here")
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  train: {chat_jsonl}\ndistributed:\n  strategy: deepspeed\n", encoding="utf-8")
    code = main(["train", str(path), "--nproc", "1", "--set", f"output_dir={tmp_path / 'runs'}"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{path}:4: distributed.strategy: deepspeed" in err
    assert "rows" not in out and not (tmp_path / "runs").exists()  # no data loaded, no folder


def test_resume_with_nproc_is_refused():
    from tunesmith.training.run import train

    with pytest.raises(UserError, match="--resume continues a run in one process; leave out --nproc"):
        train(config(), resume=True, launch=Launch(2))
