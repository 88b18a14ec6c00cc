"""What `distributed.strategy` means to the Trainer: DDP, FSDP2 or DeepSpeed ZeRO as
TrainingArguments keys, applied only inside a torchrun worker (`--nproc`, see `training/launch.py`),
and the gathering of sharded weights for saving.
"""

from __future__ import annotations

import os
from typing import Any

from tunesmith.config import Config
from tunesmith.training.guards import check_finite_tensors


def distributed_arguments(config: Config, device: str, world_size: int) -> dict[str, Any]:
    """TrainingArguments keys for `config.distributed` in a run of `world_size` processes on `device`.

    DDP: the process-group backend and no search for unused parameters (every trainable weight is
    used in every step). FSDP2: `fsdp=True` and an `fsdp_config` of version 2 that shards every
    transformer layer (accelerate finds them from the model's `_no_split_modules`). DeepSpeed: a
    generated ZeRO config (`deepspeed_config`). One DDP process needs nothing.
    """
    d = config.distributed
    backend = process_group_backend(config, device)
    if d.strategy == "ddp":
        if world_size <= 1:
            return {}
        return {"ddp_backend": backend, "ddp_find_unused_parameters": False}
    if d.strategy == "fsdp":
        return {"ddp_backend": backend, "fsdp": True, "fsdp_config": fsdp_config(config)}
    return {"deepspeed": deepspeed_config(config)}


def process_group_backend(config: Config, device: str) -> str:
    """`distributed.backend`, with `auto` resolved: nccl on CUDA, gloo on CPU.

    >>> from tunesmith.config import load_config
    >>> process_group_backend(load_config(None, ["data.train=x.jsonl"]), "cpu")
    'gloo'
    """
    if config.distributed.backend != "auto":
        return config.distributed.backend
    return "nccl" if device == "cuda" else "gloo"


def fsdp_config(config: Config) -> dict[str, Any]:
    """transformers' `fsdp_config` for FSDP2: full sharding (parameters re-sharded after forward),
    one FSDP unit per transformer layer, a full (unsharded) state dict for saving."""
    return {
        "version": 2,
        "reshard_after_forward": True,  # full_shard
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_offload": config.distributed.cpu_offload,
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": False,
    }


def deepspeed_config(config: Config) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO `distributed.zero_stage`, "auto" where transformers fills in the
    run's own values (batch sizes, clipping, precision, bucket sizes from the hidden size).

    With `cpu_offload`, the optimizer state (stage 1-3) and the parameters (stage 3) live in CPU
    memory, and DeepSpeed's own AdamW steps them there (a torch optimizer cannot). Stage 3 gathers
    the whole weights when saving, so adapter/ is written as in any other run.
    """
    d = config.distributed
    zero: dict[str, Any] = {
        "stage": d.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if d.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if d.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        }
        if d.cpu_offload:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,  # our progress bar and metrics.jsonl report instead
        "wall_clock_breakdown": False,
    }
    if d.cpu_offload:
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return ds


def launched_world_size() -> int:
    """The number of processes when this process is a torchrun worker, else 0."""
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0
    return int(os.environ["WORLD_SIZE"])


def launched_arguments(config: Config, device: str) -> dict[str, Any]:
    """`distributed_arguments` for this process: none unless torchrun started it (`--nproc`)."""
    world_size = launched_world_size()
    return distributed_arguments(config, device, world_size) if world_size else {}


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The whole trained weights where they are sharded (FSDP, DeepSpeed): a collective, so every
    rank calls it; rank 0 then saves from it. None where each rank holds whole weights (DDP)."""
    from accelerate.utils import DistributedType

    if trainer.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        check_finite_tensors(state.items(), what="weight")
    return state
