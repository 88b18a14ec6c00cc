"""Checkpoints without pickle: optimizer, scheduler and RNG state as safetensors + JSON, committed
atomically with a manifest of hashes, and pruned to the last K plus the best.

A checkpoint folder is written under a temporary name and renamed to `step-N` only when every file
is on disk with its sha256 in `manifest.json`; a folder without a manifest that verifies is never
resumed from (training/verify.py checks it). A full disk leaves no partial folder and stops the run
with one line naming the previous checkpoint, intact, and the `--resume` command. torch's own
`torch.save` would pickle; these helpers store tensors in safetensors and everything else in JSON,
so a checkpoint can be inspected and loaded without executing code.

`CheckpointMixin` puts this format under transformers' Trainer: it overrides the Trainer's save and
load hooks, so `train(resume_from_checkpoint=...)` restores a run through the Trainer's own code.
A checkpoint `step-N/` holds the weights (adapter_model.safetensors for LoRA, model.safetensors for
full fine-tuning), optimizer.*, scheduler.*, rng.*, scaler.* (fp16), trainer_state.json,
tunesmith.json (data position, eval loss, config and input fingerprints) and manifest.json.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tunesmith.runfolder import MANIFEST, atomic_folder, discard, seal_checkpoint, tree_size, write_json
from tunesmith.training.verify import checkpoint_steps, is_complete, newest_complete, resume_advice  # noqa: F401

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import CallbackHandler

# --- optimizer, scheduler, RNG <-> safetensors + JSON ------------------------------------------------


def split_tensors(tree: Any, prefix: str = "") -> tuple[Any, dict[str, Any]]:
    """Replace every tensor in a nested dict/list by `{"__tensor__": key}`; return (json tree, tensors).

    >>> import torch
    >>> tree, tensors = split_tensors({"step": torch.tensor(3.0), "betas": (0.9, 0.99)})
    >>> tree, sorted(tensors)
    ({'step': {'__tensor__': 'step'}, 'betas': [0.9, 0.99]}, ['step'])
    >>> shared = torch.zeros(2)
    >>> split_tensors({"a": shared, "b": shared})[0]
    {'a': {'__tensor__': 'a'}, 'b': {'__tensor__': 'a'}}
    """
    import torch

    tensors: dict[str, Any] = {}
    first_path: dict[int, str] = {}  # one tensor at several places (bitsandbytes' shared qmaps): stored once
    storages: set[int] = set()

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            if id(node) in first_path:
                return {"__tensor__": first_path[id(node)]}
            stored = node.detach().cpu().contiguous()
            if stored.untyped_storage().data_ptr() in storages:  # a view of one already stored: its own copy
                stored = stored.clone()
            if stored.numel():
                storages.add(stored.untyped_storage().data_ptr())
            first_path[id(node)] = path
            tensors[path] = stored
            return {"__tensor__": path}
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, _join(path, k)) for k, v in node.items()}
            return {
                "__keys__": [_key_json(k) for k in node],
                "__values__": [walk(v, _join(path, str(i))) for i, v in enumerate(node.values())],
            }
        if isinstance(node, (list, tuple)):
            return [walk(v, _join(path, str(i))) for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path or 'the top'} without pickle")

    return walk(tree, prefix), tensors


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def join_tensors(tree: Any, tensors: dict[str, Any]) -> Any:
    """Inverse of `split_tensors` (tuples come back as lists, which torch accepts)."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__keys__", "__values__"}:
            return {k: join_tensors(v, tensors) for k, v in zip(tree["__keys__"], tree["__values__"])}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def _key_json(key: Any) -> Any:
    if isinstance(key, (int, str)) and not isinstance(key, bool):
        return key
    raise TypeError(f"cannot store a dict key of type {type(key).__name__} without pickle")


def save_state(state: Any, folder: Path, name: str) -> None:
    """`name.safetensors` (tensors) + `name.json` (the rest), for any nested state dict."""
    from safetensors.torch import save_file

    tree, tensors = split_tensors(state)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    write_json(folder / f"{name}.json", tree, indent=None)


def load_state(folder: Path, name: str) -> Any:
    from safetensors.torch import load_file

    tree = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensors_file = folder / f"{name}.safetensors"
    tensors = load_file(str(tensors_file)) if tensors_file.is_file() else {}
    return join_tensors(tree, tensors)


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from: Python, NumPy, torch CPU and CUDA."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    # numpy's global generator is MT19937, whose legacy state is this tuple (the stub allows a dict too)
    kind, keys, pos, has_gauss, cached = cast("tuple[str, Any, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- atomic folders, manifests, retention --------------------------------------------------------------


@contextmanager
def atomic_checkpoint(root: Path, step: int) -> Iterator[Path]:
    """Yield a temporary folder; on success write its manifest and rename it to `step-N`.

    The space the previous checkpoint takes is checked to be free first; a full disk (then or while
    writing) leaves no partial folder and becomes one DiskFullError line saying what is intact and
    the `--resume` command."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    previous = checkpoint_steps(root)
    needed = tree_size(previous[-1][1]) if previous else None
    with atomic_folder(  # a re-run of the same step after a resume replaces it whole
        final,
        f"checkpoint {final}",
        needed=needed or None,
        then=resume_advice(root, which="previous"),
        seal=lambda work: seal_checkpoint(work, step),
    ) as work:
        yield work


def prune(root: Path, *, keep_last: int, best: Path | None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and `best`; leftover temporaries too."""
    steps = checkpoint_steps(root)
    keep = {p for _, p in steps[-keep_last:]} | ({best} if best else set())
    removed = [p for _, p in steps if p not in keep]
    removed += [p for pattern in (".step-*.tmp-*", ".step-*.old-*") for p in root.glob(pattern) if p.is_dir()]
    for folder in removed:
        discard(folder)
    return removed


# --- the Trainer's checkpoint hooks --------------------------------------------------------------------

TRAINER_STATE = "trainer_state.json"  # the name transformers' `train(resume_from_checkpoint=...)` reads
META = "tunesmith.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def eval_losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    """Eval loss by step from a TrainerState log history (the latest one when a step has two)."""
    return {int(entry["step"]): float(entry["eval_loss"]) for entry in log_history if "eval_loss" in entry}


def best_checkpoint(root: Path, log_history: list[dict[str, Any]], *, extra: int | None = None) -> Path | None:
    """The checkpoint (of `root`, plus step `extra` being written) with the lowest eval loss; ties: earliest."""
    losses = eval_losses(log_history)
    steps = {step for step, _ in checkpoint_steps(root)} | ({extra} if extra is not None else set())
    scored = sorted((losses[step], step) for step in steps if step in losses)
    return root / f"step-{scored[0][1]}" if scored else None


class CheckpointMixin:
    """Trainer hooks that write and read checkpoints in this module's format, so that the Trainer's
    own resume (`train(resume_from_checkpoint=...)`, skipping consumed batches) restores the exact
    state: weights, optimizer, LR scheduler, grad scaler, RNG, TrainerState and callback states.

    Mixed in before `transformers.Trainer`. `keep_checkpoints`, `load_best_at_end` and
    `checkpoint_meta` (written into every checkpoint's tunesmith.json) are set by the run.
    """

    keep_checkpoints: int = 2
    load_best_at_end: bool = False
    checkpoint_meta: dict[str, Any] = {}
    best_loaded: tuple[Path, float] | None = None
    checkpoints_skipped: bool = False
    stopper: Any = None  # fit.StopOnSignal while training; its `signal` is set when one arrived

    # transformers.Trainer's attributes the hooks use, as the Trainer types them (its __init__ sets them)
    args: TrainingArguments
    state: TrainerState
    control: TrainerControl
    callback_handler: CallbackHandler
    accelerator: Accelerator
    model: PreTrainedModel | nn.Module | None
    model_wrapped: nn.Module
    optimizer: Optimizer | None
    lr_scheduler: LambdaLR | None
    is_fsdp_enabled: bool
    is_deepspeed_enabled: bool

    @property
    def checkpoint_root(self) -> Path:
        output_dir = self.args.output_dir
        assert output_dir is not None  # TrainingArguments.__post_init__ fills in a default; runs set their own
        return Path(output_dir)

    # saving

    def _save_checkpoint(self, model, trial):
        step = self.state.global_step
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # sharded weights and optimizer state need a collective save this format does not do yet
            self.checkpoints_skipped = True
            return
        if not self.args.should_save:
            return
        root = self.checkpoint_root
        with atomic_checkpoint(root, step) as work:
            self._save_weights(work)
            self._save_optimizer_and_scheduler(str(work))
            self._save_scaler(str(work))
            self._save_rng_state(str(work))
            best = best_checkpoint(root, self.state.log_history, extra=step)
            self.state.best_model_checkpoint = str(best) if best else None
            self._store_callback_states()
            self.state.save_to_json(str(work / TRAINER_STATE))
            write_json(work / META, self._meta(step))
        prune(root, keep_last=self.keep_checkpoints, best=best)

    def _save_weights(self, folder: Path) -> None:
        """Adapter weights for a PEFT model, the whole model otherwise (safetensors either way)."""
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(str(folder))  # safetensors by default (PEFT and transformers alike)

    def _save_optimizer_and_scheduler(self, output_dir):
        save_state(self.optimizer.state_dict(), Path(output_dir), "optimizer")
        save_state(self.lr_scheduler.state_dict(), Path(output_dir), "scheduler")

    def _save_scaler(self, output_dir):
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            save_state(scaler.state_dict(), Path(output_dir), "scaler")

    def _save_rng_state(self, output_dir):
        save_state(rng_state(), Path(output_dir), "rng")

    def _store_callback_states(self) -> None:
        """Callback states (early stopping's patience counter, the control flags) into TrainerState."""
        from transformers.trainer_callback import ExportableState

        states: dict[str, Any] = {}
        for callback in self.callback_handler.callbacks + [self.control]:
            if isinstance(callback, ExportableState):
                states.setdefault(type(callback).__name__, []).append(callback.state())
        by_name = {k: v[0] if len(v) == 1 else v for k, v in states.items()}
        # TrainerState types stateful_callbacks as a list, but holds (and saves, and reads back) a dict by name
        self.state.stateful_callbacks = by_name  # type: ignore[assignment]

    def _meta(self, step: int) -> dict[str, Any]:
        """Where in the data the run is, and what it was trained on (checked on resume)."""
        loader = getattr(self.callback_handler, "train_dataloader", None)
        batches = len(loader) if loader is not None else None
        accumulation = self.args.gradient_accumulation_steps
        position: dict[str, Any] = {"global_step": step, "epoch": self.state.epoch, "micro_batches_per_epoch": batches}
        if batches:
            updates = -(-batches // accumulation)
            position |= {"epochs_done": step // updates, "micro_batches_done_in_epoch": (step % updates) * accumulation}
        return {
            "step": step,
            "data_position": position,
            "eval_loss": eval_losses(self.state.log_history).get(step),
            **self.checkpoint_meta,
        }

    # resuming

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        folder = Path(resume_from_checkpoint)
        if not is_complete(folder, verify=False):
            raise ValueError(f"{folder} is not a complete checkpoint (no manifest)")
        self._load_weights(folder, model if model is not None else self.model)

    def _load_weights(self, folder: Path, model: Any) -> None:
        """Copy a checkpoint's weights into the model in place (parameters keep their identity)."""
        from transformers.trainer_utils import _is_peft_model

        from tunesmith.errors import UserError

        model = self.accelerator.unwrap_model(model)
        try:
            if not _is_peft_model(model):
                cast(Any, super())._load_from_checkpoint(str(folder), model)  # the Trainer's: next in the MRO
                return
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            adapter = model.active_adapters[0]
            # peft annotates the result `-> namedtuple` (the factory, not a type); it is torch's _IncompatibleKeys
            result: Any = set_peft_model_state_dict(
                model, load_file(str(folder / ADAPTER_WEIGHTS)), adapter_name=adapter
            )
            missing = [k for k in result.missing_keys if f".{adapter}." in k]
            if result.unexpected_keys or missing:
                raise ValueError(f"unexpected {result.unexpected_keys[:2]}, missing {missing[:2]}")
        except (RuntimeError, ValueError, KeyError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            detail = next((line for line in lines if "mismatch" in line), lines[0])
            raise UserError(
                f"checkpoint {folder.name} does not fit the model this config builds (method, model and "
                f"lora settings must stay as they were): {detail}"
            ) from None

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is None:
            return
        self.optimizer.load_state_dict(load_state(Path(checkpoint), "optimizer"))
        self.lr_scheduler.load_state_dict(load_state(Path(checkpoint), "scheduler"))

    def _load_scaler(self, checkpoint):
        scaler = getattr(self.accelerator, "scaler", None)
        if checkpoint is not None and scaler is not None and (Path(checkpoint) / "scaler.json").is_file():
            scaler.load_state_dict(load_state(Path(checkpoint), "scaler"))

    def _load_rng_state(self, checkpoint):
        if checkpoint is not None:
            set_rng_state(load_state(Path(checkpoint), "rng"))

    # the end

    def _finalize_training(self, trial, num_train_samples, start_time):
        """Checkpoint the last step (unless already written), then restore the best weights if asked."""
        if (
            not (self.checkpoint_root / f"step-{self.state.global_step}" / MANIFEST).is_file()
            and not self.checkpoints_skipped
        ):
            self._save_checkpoint(self.model_wrapped, trial)
        if self.load_best_at_end and getattr(self.stopper, "signal", None) is None:  # not when stopped by a signal
            self._load_best_model()
        return super()._finalize_training(trial, num_train_samples, start_time)

    def _load_best_model(self):
        best = best_checkpoint(self.checkpoint_root, self.state.log_history)
        if best is None or not is_complete(best):
            return
        self._load_weights(best, self.model)
        self.best_loaded = (best, eval_losses(self.state.log_history)[int(best.name.split("-")[1])])
