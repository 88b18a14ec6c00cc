"""Several processes, one run: `tunesmith train CONFIG --nproc N [--nnodes M --node-rank R --rdzv HOST:PORT]`.

The launching process does everything that can fail on the user's input before any worker starts:
the config, the data, the template (`prepare`) and the distributed settings against this machine
(`check_launch`), so a mistake is reported once, as one line, not once per process. It creates
the run folder and writes config.yaml and data_report.json into it; then torchrun
(`python -m torch.distributed.run`, never a home-made launcher) starts the workers
(`training/worker.py`). Each worker loads the run folder's config.yaml, prepares again (the
processed-data cache makes that quick) and trains; `distributed.strategy` picks DDP, FSDP2 or
DeepSpeed ZeRO through `training/strategies.py`, merged into the Trainer's arguments.

Rank 0 alone writes into the run folder (metrics.jsonl, adapter/); every other rank writes
nothing. When the workers are done, the launching process evaluates the saved weights on one device
and writes manifest.json: evaluation never runs on a sharded model, and the process that created
the folder is the one that seals it.

Workers report how they ended through small JSON files in a temporary folder outside the run
folder. A worker's `UserError` becomes the launcher's `UserError` (the run folder is removed, as in
a single-process run); any other failure becomes a `TunesmithError` naming the rank (manifest.json
says failed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.errors import TunesmithError, UserError
from tunesmith.runfolder import write_json, write_text

STRATEGIES_NEEDING_CUDA = ("fsdp", "deepspeed")
REPORT = "rank-{rank}.json"


@dataclass(frozen=True)
class Launch:
    """Where the workers of a run go: `nproc` on this machine, node `node_rank` of `nnodes`."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def main_node(self) -> bool:
        """The node of rank 0: it creates, writes and seals the run folder."""
        return self.node_rank == 0

    def check(self, config: Config) -> None:
        """Refuse distributed settings this machine cannot run, before any data or model work."""
        import torch

        from tunesmith.machine import pick_device

        device = pick_device()
        check_launch(
            config,
            self,
            device=device,
            gpu_count=torch.cuda.device_count() if device == "cuda" else 0,
            deepspeed_installed=deepspeed_installed(),
        )

    def run(self, prepared: Any, run_dir: Path, console: Any) -> Any:
        """Train in torchrun workers and wait for them (a `training.run.Trained`)."""
        return run_workers(self, prepared, run_dir, console)


def launch_options(nproc: int | None, nnodes: int = 1, node_rank: int = 0, rdzv: str | None = None) -> Launch | None:
    """The `--nproc/--nnodes/--node-rank/--rdzv` options checked, or None for a single-process run.

    >>> launch_options(None) is None
    True
    >>> launch_options(2).world_size
    2
    >>> launch_options(4, nnodes=2, node_rank=1, rdzv="10.0.0.1:29500").main_node
    False
    """
    if nproc is None:
        if nnodes != 1 or node_rank != 0 or rdzv is not None:
            raise UserError("--nnodes, --node-rank and --rdzv go with --nproc N (processes on this machine)")
        return None
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: must be at least 1")
    if nnodes < 1:
        raise UserError(f"--nnodes {nnodes}: must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank {node_rank}: must be between 0 and {nnodes - 1} (--nnodes {nnodes})")
    if nnodes > 1 and rdzv is None:
        raise UserError(
            f"--nnodes {nnodes}: needs --rdzv HOST:PORT, the address of node 0 (where rank 0 runs) "
            "that every node can reach"
        )
    if rdzv is not None:
        host, _, port = rdzv.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--rdzv {rdzv}: expected HOST:PORT, e.g. 10.0.0.1:29500")
    return Launch(nproc, nnodes, node_rank, rdzv)


def deepspeed_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def check_launch(config: Config, launch: Launch, *, device: str, gpu_count: int, deepspeed_installed: bool) -> None:
    """Every distributed setting this machine cannot run, refused with the key that set it.

    `device` is where training would run ("cuda" or "cpu"), `gpu_count` the CUDA GPUs on this node.
    """

    d = config.distributed
    strategy = f"{config.origin('distributed.strategy')}: distributed.strategy: {d.strategy}"
    backend = f"{config.origin('distributed.backend')}: distributed.backend: {d.backend}"
    if d.backend == "nccl" and device != "cuda":
        raise UserError(f"{backend} needs CUDA GPUs and this machine has none; use backend: gloo (or auto)")
    if device == "cuda" and launch.nproc > gpu_count:
        raise UserError(
            f"--nproc {launch.nproc}: this machine has {gpu_count} CUDA GPU"
            f"{'' if gpu_count == 1 else 's'}; start at most one process per GPU (--nproc {gpu_count})"
        )
    if d.strategy in STRATEGIES_NEEDING_CUDA and device != "cuda":
        raise UserError(
            f"{strategy} trains only on CUDA GPUs and this machine has none: accelerate runs "
            "neither FSDP nor DeepSpeed on CPU processes (it would quietly fall back to plain DDP); "
            "on CPU use distributed.strategy: ddp"
        )
    if d.cpu_offload and d.strategy == "ddp":
        raise UserError(
            f"{config.origin('distributed.cpu_offload')}: distributed.cpu_offload needs "
            "distributed.strategy: fsdp or deepspeed (DDP keeps a whole copy of the model on every GPU)"
        )
    if d.strategy == "deepspeed":
        if not deepspeed_installed:
            raise UserError(f"{strategy} needs the deepspeed package: pip install deepspeed")
        if d.backend == "gloo":
            raise UserError(
                f"{backend} does not go with strategy: deepspeed, which communicates over nccl; use backend: auto"
            )
        if d.cpu_offload and config.train.optimizer not in ("adamw", "adamw_fused"):
            raise UserError(
                f"{config.origin('train.optimizer')}: train.optimizer: {config.train.optimizer} cannot "
                "run with distributed.cpu_offload under DeepSpeed, which steps its own CPU AdamW on "
                "the offloaded state; use train.optimizer: adamw"
            )


# --- starting the workers and collecting how they ended ---------------------------------------------


def torchrun_command(launch: Launch, *, config_path: Path, run_dir: Path, reports: Path) -> list[str]:
    """`python -m torch.distributed.run ... -m tunesmith.training.worker ...` for this node."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={launch.nproc}",
        f"--nnodes={launch.nnodes}",
        "--max-restarts=0",
        f"--log-dir={reports / 'torchrun'}",
    ]  # not a torchelastic_* folder left in the temp dir
    if launch.nnodes == 1 and launch.rdzv is None:
        command.append("--standalone")  # a rendezvous on a free local port
    else:
        command += ["--rdzv-backend=static", f"--rdzv-endpoint={launch.rdzv}", f"--node-rank={launch.node_rank}"]
    return command + [
        "-m",
        "tunesmith.training.worker",
        "--config",
        str(config_path),
        "--run-dir",
        str(run_dir),
        "--reports",
        str(reports),
    ]


def worker_environment(launch: Launch) -> dict[str, str]:
    """This process's environment plus thread counts that share the cores instead of oversubscribing them."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.nproc))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_workers(launch: Launch, prepared: Any, run_dir: Path | None, console: Any) -> Any:
    """Start this node's workers and wait: a `Trained` without the model (the pipeline loads the saved
    weights back to evaluate); on other nodes one without `prepared` (node 0 seals the folder)."""
    from tunesmith.config import config_to_yaml
    from tunesmith.training.outputs import write_inputs
    from tunesmith.training.run import Trained

    started = time.time()
    reports = Path(tempfile.mkdtemp(prefix="tunesmith-launch-"))
    try:
        if launch.main_node:
            assert run_dir is not None
            write_inputs(prepared, run_dir)
        else:  # the run folder is on node 0
            run_dir = prepared.config.run_dir()
        # the workers' config, real values (the run folder's copy is redacted), in this 0700 temporary folder
        config_path = reports / "config.yaml"
        write_text(config_path, config_to_yaml(prepared.config, redact=False))
        console.print(
            f"Starting {launch.nproc} worker process{'es' if launch.nproc > 1 else ''}"
            + (f" on node {launch.node_rank} of {launch.nnodes}" if launch.nnodes > 1 else "")
            + f" ({launch.world_size} in all, distributed.strategy: {prepared.config.distributed.strategy})"
        )
        command = torchrun_command(launch, config_path=config_path, run_dir=run_dir, reports=reports)
        returncode = _wait(subprocess.Popen(command, env=worker_environment(launch)))
        outcome = read_reports(reports)
        failure = worker_failure(outcome, returncode, launch)
        if failure is not None:
            _show_traceback(outcome, console)
            raise failure
        if not launch.main_node:
            return Trained(run_dir=run_dir, status="trained")
        if 0 not in outcome or "metrics" not in outcome[0]:
            raise TunesmithError("the workers finished but rank 0 did not report its results")
        if outcome[0]["status"] == "interrupted":  # stopped by a signal; rank 0 wrote a checkpoint
            return Trained(run_dir=run_dir, status="interrupted", metrics=outcome[0]["metrics"], prepared=prepared)
        metrics = dict(
            outcome[0]["metrics"],
            processes=launch.world_size,
            strategy=prepared.config.distributed.strategy,
            train_seconds=round(time.time() - started, 1),
        )
        return Trained(run_dir=run_dir, status="trained", metrics=metrics, prepared=prepared)
    finally:
        shutil.rmtree(reports, ignore_errors=True)


def _wait(process: subprocess.Popen) -> int:
    """The exit code of torchrun; Ctrl-C reaches the workers too (same process group), so wait for them."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def write_report(reports: Path, rank: int, record: dict[str, Any]) -> None:
    """A worker's outcome, written atomically (the launcher may read it while others still run)."""
    write_json(reports / REPORT.format(rank=rank), dict(record, rank=rank))


def read_reports(reports: Path) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for path in sorted(reports.glob("rank-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        found[int(record["rank"])] = record
    return found


def worker_failure(outcome: dict[int, dict[str, Any]], returncode: int, launch: Launch) -> TunesmithError | None:
    """The one error to raise for how the workers ended, or None when they all succeeded.

    A user error any rank reported wins (the same mistake usually stops every rank); then the
    first failure by rank; then torchrun's own exit code when no worker could say what happened
    (killed, e.g. for memory).
    """
    errors = {rank: r for rank, r in sorted(outcome.items()) if "error" in r}
    user = [r for r in errors.values() if r.get("user_error")]
    if user:
        return UserError(user[0]["error"])
    if errors:
        rank, record = next(iter(errors.items()))
        more = len(errors) - 1
        others = f" ({more} other rank{'s' if more > 1 else ''} failed too)" if more else ""
        return TunesmithError(
            f"training failed in worker rank {rank} of {launch.world_size}: {record['error']}{others}"
        )
    if returncode != 0:
        return TunesmithError(
            f"training failed: the worker processes stopped (torchrun exit code {returncode}) "
            "without reporting an error; see the output above (a worker killed for memory "
            "ends like this)"
        )
    return None


def _show_traceback(outcome: dict[int, dict[str, Any]], console: Any) -> None:
    """The traceback of the first rank that failed unexpectedly (the others usually repeat it)."""
    for rank, record in sorted(outcome.items()):
        if record.get("traceback"):
            console.print(f"[rank {rank}] {record['traceback'].rstrip()}", markup=False)
            return
