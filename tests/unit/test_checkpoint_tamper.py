"""A checkpoint whose bytes changed after it was sealed (one byte flipped in a safetensors file, the
file still loadable): `--resume` names the hash mismatch and the file, moves the checkpoint aside to
checkpoints/rejected/ (never deletes it) and resumes from the newest one that verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tunesmith.cli.main import main
from tunesmith.training import checkpoints as ck


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    """8 optimizer steps (2 epochs), a checkpoint every 2, all four kept."""
    root = tmp_path_factory.mktemp("tamper")
    data = root / "train.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = root / "tiny.yaml"
    config.write_text(
        f"model:\n  name: {tiny_model_dir}\ndata:\n  train: {data}\noutput_dir: {root / 'runs'}\n"
        "template:\n  max_length: 64\nlora:\n  r: 4\n  dropout: 0.1\n"
        "train:\n  epochs: 2\n  batch_size: 2\n  packing: none\n  learning_rate: 1.0e-2\n"
        "  save_steps: 2\n  keep_checkpoints: 4\n",
        encoding="utf-8",
    )
    assert main(["train", str(config), "--set", "name=straight"]) == 0
    return root / "runs" / "straight"


def killed_after(run: Path, to: Path, step: int) -> Path:
    """The run folder as a run killed after checkpoint `step` would have left it."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "adapter")
    (to / "manifest.json").unlink()
    for s, folder in ck.checkpoint_steps(to / "checkpoints"):
        if s > step:
            shutil.rmtree(folder)
    return to


def flip_last_byte(path: Path) -> bytes:
    """Flip a bit of the last tensor byte: the file still loads, only its hash tells."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    load_file(path)  # still a valid safetensors file
    return bytes(data)


def adapter_diff(a: Path, b: Path) -> float:
    left = load_file(a / "adapter" / "adapter_model.safetensors")
    right = load_file(b / "adapter" / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


def test_a_tampered_checkpoint_is_named_moved_aside_and_the_previous_one_resumed(finished, tmp_path, capsys):
    run = killed_after(finished, tmp_path / "runs" / "tampered", 6)
    tampered = flip_last_byte(run / "checkpoints" / "step-6" / "adapter_model.safetensors")
    capsys.readouterr()
    assert main(["train", str(run), "--resume"]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert (
        "warning: hash mismatch in step-6/adapter_model.safetensors: checkpoint step-6 moved aside to "
        "checkpoints/rejected/step-6, not resumed from" in out
    )
    assert f"Resuming from {run / 'checkpoints' / 'step-4'} (step 4" in out
    assert "incomplete" not in out
    from tunesmith.training import verify

    rejected = run / "checkpoints" / "rejected" / "step-6"
    assert (rejected / "adapter_model.safetensors").read_bytes() == tampered  # kept as it was, for a look
    assert verify.problem(rejected) == "hash mismatch in step-6/adapter_model.safetensors"
    assert ck.is_complete(run / "checkpoints" / "step-6")  # written again by the resumed run
    assert [s for s, _ in ck.checkpoint_steps(run / "checkpoints")] == [2, 4, 6, 8]
    assert adapter_diff(run, finished) <= 1e-6
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


def test_when_no_checkpoint_verifies_resume_says_why_in_one_line_and_moves_nothing(finished, tmp_path, capsys):
    run = killed_after(finished, tmp_path / "runs" / "only", 2)
    flip_last_byte(run / "checkpoints" / "step-2" / "optimizer.safetensors")
    capsys.readouterr()
    assert main(["train", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: no complete checkpoint in {run / 'checkpoints'} to resume from (hash mismatch in "
        "step-2/optimizer.safetensors); start a new run under another name"
    ]
    assert (run / "checkpoints" / "step-2").is_dir() and not (run / "checkpoints" / "rejected").exists()


def test_problems_are_named_and_a_second_rejection_keeps_the_first(tmp_path):
    from tunesmith.training import verify

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        with ck.atomic_checkpoint(root, step) as work:
            (work / "w.safetensors").write_bytes(bytes([step]) * 64)
            (work / "state.json").write_text("{}")
    (root / "step-3" / "state.json").unlink()
    (root / "step-2" / "w.safetensors").write_bytes(b"\0" * 64)
    assert verify.newest_verified(root) == (
        root / "step-1",
        [(root / "step-3", "missing step-3/state.json"), (root / "step-2", "hash mismatch in step-2/w.safetensors")],
    )
    assert verify.reject(root / "step-2") == root / "rejected" / "step-2"
    with ck.atomic_checkpoint(root, 2) as work:
        (work / "w.safetensors").write_bytes(b"x")
    (root / "step-2" / "w.safetensors").write_bytes(b"y")
    assert verify.reject(root / "step-2") == root / "rejected" / "step-2.2"
    assert sorted(p.name for p in (root / "rejected").iterdir()) == ["step-2", "step-2.2"]
    assert [s for s, _ in ck.checkpoint_steps(root)] == [1, 3]  # rejected/ is no checkpoint
