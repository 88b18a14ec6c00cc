"""One torchrun worker of `tunesmith train --nproc N`, started by training/launch.py (not by hand).

    python -m tunesmith.training.worker --config RUN_DIR/config.yaml --run-dir RUN_DIR --reports DIR

Rank 0 prints the run's progress and writes into the run folder; the other ranks print nothing
and write only their report. Every rank reports how it ended in DIR/rank-N.json: the training
metrics (rank 0), or the error, whether it was the user's, and for an unexpected one its
traceback, which the launcher shows once (not once per process).
"""

from __future__ import annotations

import argparse
import os
import traceback
from pathlib import Path

from tunesmith.errors import TunesmithError, UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunesmith.training.worker")
    parser.add_argument("--config", required=True, help="the resolved config of the run")
    parser.add_argument("--run-dir", required=True, help="the run folder (rank 0 writes into it)")
    parser.add_argument("--reports", required=True, help="folder for this worker's outcome")
    args = parser.parse_args(argv)

    from tunesmith.training.launch import write_report

    rank = int(os.environ.get("RANK", "0"))
    reports = Path(args.reports)
    try:
        from tunesmith.console import make_console, quiet_libraries

        quiet_libraries()
        console = make_console()
        if rank != 0:
            console.quiet = True  # one progress bar, not one per process
        _use_local_gpu()
        from tunesmith.training.run import execute_worker

        result = execute_worker(Path(args.config), Path(args.run_dir), console)
        if rank == 0:
            write_report(reports, rank, {"status": result.status, "metrics": result.metrics})
        return 0
    except UserError as err:
        write_report(reports, rank, {"error": str(err), "user_error": True})
        return err.exit_code
    except TunesmithError as err:  # a failure we explain in one line (e.g. a NaN loss)
        write_report(reports, rank, {"error": str(err), "user_error": False})
        return err.exit_code
    except KeyboardInterrupt:
        write_report(reports, rank, {"error": "interrupted", "user_error": False})
        return 130
    except BaseException as err:  # noqa: BLE001 - every failure is reported; the launcher shows one traceback
        write_report(
            reports,
            rank,
            {"error": f"{type(err).__name__}: {err}", "user_error": False, "traceback": traceback.format_exc()},
        )
        return 1
    finally:
        _leave_process_group()


def _use_local_gpu() -> None:
    """Make this worker's GPU the current device, so everything placed on "cuda" lands on it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
