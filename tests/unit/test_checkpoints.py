"""Checkpoint files: optimizer/scheduler/RNG state round-trip through safetensors + JSON, atomic folders."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tunesmith.training import checkpoints as ck


def trained_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_optimizer_and_scheduler_round_trip_exactly(tmp_path):
    _, optimizer, scheduler = trained_optimizer()
    ck.save_state(optimizer.state_dict(), tmp_path, "optimizer")
    ck.save_state(scheduler.state_dict(), tmp_path, "scheduler")
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    _, fresh, fresh_scheduler = trained_optimizer()
    fresh.load_state_dict(ck.load_state(tmp_path, "optimizer"))
    fresh_scheduler.load_state_dict(ck.load_state(tmp_path, "scheduler"))
    for key, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(fresh.state_dict()["state"][key][name], value, rtol=0, atol=0)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert fresh.state_dict()["param_groups"][0]["betas"] == [0.9, 0.95]  # a list: AdamW unpacks it all the same


def test_rng_state_round_trip_reproduces_the_next_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ck.save_state(ck.rng_state(), tmp_path, "rng")
    expected = (random.random(), np.random.rand(), torch.rand(2).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(ck.load_state(tmp_path, "rng"))
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == expected


def test_objects_that_would_need_pickle_are_refused():
    with pytest.raises(TypeError, match="without pickle"):
        ck.split_tensors({"fn": lambda: 1})


def test_atomic_checkpoint_manifest_and_damage_detection(tmp_path):
    with ck.atomic_checkpoint(tmp_path, 5) as work:
        (work / "adapter.safetensors").write_bytes(b"weights")
    folder = tmp_path / "step-5"
    assert ck.is_complete(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 5 and "adapter.safetensors" in manifest["artifacts"]
    (folder / "adapter.safetensors").write_bytes(b"weightz")
    assert not ck.is_complete(folder)


def test_a_failed_write_leaves_no_checkpoint(tmp_path):
    with pytest.raises(RuntimeError):
        with ck.atomic_checkpoint(tmp_path, 7) as work:
            (work / "half").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_newest_complete_skips_damaged_and_prune_keeps_last_and_best(tmp_path):
    for step in (1, 2, 3, 4):
        with ck.atomic_checkpoint(tmp_path, step) as work:
            (work / "w").write_bytes(bytes([step]))
    (tmp_path / "step-4" / "w").write_bytes(b"broken")
    (tmp_path / ".step-5.tmp-abc").mkdir()
    assert ck.newest_complete(tmp_path) == tmp_path / "step-3"
    removed = ck.prune(tmp_path, keep_last=2, best=tmp_path / "step-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1", "step-3", "step-4"]
    assert tmp_path / "step-2" in removed
