"""Settings that are each valid but cannot go together, refused when the config loads, naming where
the deciding key was set (file:line or --set). Machine-dependent refusals (no GPU here, bitsandbytes
that cannot load) are the machine's and come later, before any data is read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.errors import UserError

if TYPE_CHECKING:
    from tunesmith.config.schema import Config


def check_combinations(config: Config) -> None:
    """Raise a UserError for the first combination that cannot be trained faithfully."""
    for check in (_eight_bit_method, _lora_init, _quantized_sharding, _eval_loss_needs_validation):
        check(config)


def _eight_bit_method(config: Config) -> None:
    if config.model.load_in_8bit and config.method != "lora":
        raise UserError(
            f"{config.origin('model.load_in_8bit')}: model.load_in_8bit goes with method: lora, "
            f"not method: {config.method}"
        )


def _lora_init(config: Config) -> None:
    """LoftQ starts from a 4-bit base's quantization error; PiSSA/OLoRA rewrite the base weights."""
    init, where = config.lora.init, config.origin("lora.init")
    if init == "default" or config.method == "full":
        return
    quantized = config.method == "qlora" or config.model.load_in_8bit
    if init == "loftq" and config.method != "qlora":
        raise UserError(
            f"{where}: lora.init: loftq starts the adapter from what 4-bit quantization lost, so it "
            "needs method: qlora; on an unquantized base use default, gaussian, pissa or olora"
        )
    if init in ("pissa", "olora") and quantized:
        raise UserError(
            f"{where}: lora.init: {init} rewrites the base weights, which a quantized base cannot "
            "hold exactly; use lora.init: loftq with method: qlora, or method: lora"
        )


def _quantized_sharding(config: Config) -> None:
    """FSDP2 and ZeRO-3 split parameters across processes; quantized weights are packed integers."""
    d = config.distributed
    bits = 4 if config.method == "qlora" else 8 if config.model.load_in_8bit else None
    if not bits or not (d.strategy == "fsdp" or (d.strategy == "deepspeed" and d.zero_stage == 3)):
        return
    key = "method" if bits == 4 else "model.load_in_8bit"
    what = "method: qlora (a 4-bit base)" if bits == 4 else "model.load_in_8bit (an 8-bit base)"
    shard = "FSDP2" if d.strategy == "fsdp" else "ZeRO-3"
    raise UserError(
        f"{config.origin(key)}: {what} cannot be sharded by {shard}: the quantized weights are "
        f"stored as integers, which {shard} cannot split across processes; use "
        "distributed.strategy: ddp, or deepspeed with zero_stage 1 or 2"
    )


def _eval_loss_needs_validation(config: Config) -> None:
    """Early stopping and keeping the best checkpoint measure eval loss on data.validation."""
    if config.data.validation:
        return
    for key in ("early_stopping_patience", "load_best_at_end"):
        if getattr(config.train, key):
            raise UserError(
                f"{config.origin(f'train.{key}')}: train.{key} needs a validation split "
                "(data.validation) to measure eval loss on"
            )
