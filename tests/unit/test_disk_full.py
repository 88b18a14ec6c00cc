"""A full disk, on a real small file system (a tmpfs, else a loop-mounted ext4 image): a checkpoint,
the final adapter, a merge, a GGUF export and a JSON record each stop with one line saying what was
being written, the space free, what is intact and how to go on; nothing half-written is left, and
`--resume` on a roomy disk ends with the weights of a run that never stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.runfolder import write_json
from tunesmith.training import checkpoints as ck

STEPS = 8  # 8 rows, batch 2, 2 epochs: a checkpoint every 2 steps


@contextmanager
def small_disk(folder: Path, size: int) -> Iterator[Path]:
    """A file system of `size` bytes mounted at `folder`, unmounted again whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder.with_name(folder.name + ".img")
    tried = []
    for argv in (
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        [
            "sh",
            "-c",
            f"truncate -s {max(size, 2 << 20)} {image} && mkfs.ext4 -q -m 0 {image} && mount -o loop {image} {folder}",
        ],
    ):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            tried.append(f"{argv[0]}: {err}")
            continue
        if done.returncode == 0:
            break
        tried.append(f"{' '.join(argv[:3])}: {done.stderr.strip()}")
    else:
        image.unlink(missing_ok=True)
        pytest.skip(f"cannot mount a small file system here (root and mount needed): {'; '.join(tried)}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        image.unlink(missing_ok=True)


def free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def tree_size(path: Path) -> int:
    """Bytes a file or folder takes on disk, in whole blocks (what `du` counts)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(max(f.stat().st_size, f.stat().st_blocks * 512) for f in files)


def fill(disk: Path, leave: int) -> None:
    """Take all the free space of `disk` but `leave` bytes (real blocks, not a sparse file)."""
    take = free_space(disk) - leave
    with (disk / "filler").open("ab") as handle:
        while take > 0:
            block = min(take, 1 << 20)
            handle.write(b"\0" * block)
            take -= block


# --- a run through the CLI -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("disk-full")
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
    path = root / "tiny.yaml"
    path.write_text(
        f"model:\n  name: {tiny_model_dir}\ndata:\n  train: {data}\noutput_dir: {root / 'runs'}\n"
        "template:\n  max_length: 64\nlora:\n  r: 4\n  dropout: 0.1\n"
        "train:\n  epochs: 2\n  batch_size: 2\n  packing: none\n  learning_rate: 1.0e-2\n"
        "  save_steps: 2\n  keep_checkpoints: 2\n",
        encoding="utf-8",
    )
    return path


def tunesmith(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", "train", *args]


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def uninterrupted(config) -> Path:
    done = subprocess.run(
        tunesmith(str(config), "--set", "name=straight"), capture_output=True, text=True, timeout=600, env=env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return config.parent / "runs" / "straight"


def adapter_diff(a: Path, b: Path) -> float:
    left = load_file(a / "adapter" / "adapter_model.safetensors")
    right = load_file(b / "adapter" / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full while writing "), done.stderr[-3000:]
    return lines[0]


def resume_on_a_roomy_disk(run: Path, roomy: Path, uninterrupted: Path, step: int) -> Path:
    """Copy the run folder off the full disk, `--resume` it there from `step`, compare with the run never stopped."""
    copy = Path(shutil.copytree(run, roomy / run.name))
    done = subprocess.run(tunesmith(str(copy), "--resume"), capture_output=True, text=True, timeout=600, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {copy / 'checkpoints' / f'step-{step}'} (step {step}" in done.stdout.replace("\n", "")
    assert json.loads((copy / "manifest.json").read_text())["status"] == "completed"
    assert adapter_diff(copy, uninterrupted) <= 1e-6
    return copy


def test_a_checkpoint_on_a_full_disk_is_one_line_and_resume_ends_exactly(config, uninterrupted, tmp_path):
    with small_disk(tmp_path / "disk", 5 << 20) as disk:
        run = disk / "runs" / "full"
        process = subprocess.Popen(
            tunesmith(str(config), "--set", "name=full", "--set", f"output_dir={disk / 'runs'}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        deadline = time.monotonic() + 300
        while not ck.checkpoint_steps(run / "checkpoints"):  # step-2 appears whole (renamed into place)
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.005)
        process.send_signal(signal.SIGSTOP)  # hold it while the disk fills up to half a checkpoint
        try:
            fill(disk, leave=tree_size(ck.checkpoint_steps(run / "checkpoints")[-1][1]) // 2)
        finally:
            process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=300)
        line = one_error_line(subprocess.CompletedProcess(process.args, process.returncode, out, err))

        assert re.search(
            rf"checkpoint {re.escape(str(run))}/checkpoints/step-\d+: (about [\d.]+ KiB needed, )?"
            rf"[\d.]+ (B|KiB) free on {re.escape(str(disk))}; nothing (was written|of it was kept); "
            r"the previous checkpoint step-\d+ is intact; ",
            line,
        ), line
        assert line.endswith(f"free some space, then continue with: tunesmith train {run} --resume"), line
        intact = run / "checkpoints" / re.search(r"previous checkpoint (step-\d+)", line).group(1)
        assert ck.newest_complete(run / "checkpoints") == intact and ck.is_complete(intact)
        assert [p.name for p in (run / "checkpoints").iterdir() if not ck.is_complete(p)] == []  # no partial
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "failed" and "disk full while writing checkpoint" in manifest["error"]
        assert not (run / "adapter").exists()
        stopped_at = int(intact.name.split("-")[1])
        assert stopped_at < STEPS
        resume_on_a_roomy_disk(run, tmp_path / "roomy", uninterrupted, stopped_at)


def test_the_final_adapter_on_a_full_disk_is_refused_whole_and_resume_finishes_it(config, uninterrupted, tmp_path):
    # room for the run and its checkpoints, not for adapter/ (its tokenizer.json alone is 3.5 MiB)
    with small_disk(tmp_path / "disk", 2 << 20) as disk:
        run = disk / "runs" / "end"
        done = subprocess.run(
            tunesmith(str(config), "--set", "name=end", "--set", f"output_dir={disk / 'runs'}"),
            capture_output=True,
            text=True,
            timeout=600,
            env=env(),
        )
        line = one_error_line(done)
        assert f"the adapter {run / 'adapter'}: about " in line and " MiB needed, " in line, line
        assert line.endswith(
            f"; nothing was written; the last checkpoint step-{STEPS} is intact; free some space, "
            f"then finish with: tunesmith train {run} --resume"
        ), line
        assert not (run / "adapter").exists() and not list(run.glob(".adapter*"))
        assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
        resume_on_a_roomy_disk(run, tmp_path / "roomy", uninterrupted, STEPS)


# --- the writers themselves, on a disk that fills while they write ------------------------------------


def test_a_checkpoint_write_that_fills_the_disk_leaves_nothing_and_the_previous_verifies(tmp_path):
    from tunesmith.errors import DiskFullError

    with small_disk(tmp_path / "disk", 1 << 20) as disk:
        root = disk / "run" / "checkpoints"
        with ck.atomic_checkpoint(root, 1) as work:
            ck.save_state({"w": torch.zeros(16)}, work, "optimizer")
        before = free_space(disk)
        with pytest.raises(DiskFullError) as raised:
            with ck.atomic_checkpoint(root, 2) as work:  # the small step-1 passes the space check; this does not fit
                ck.save_state({"w": torch.zeros(1 << 19)}, work, "optimizer")  # 2 MiB: safetensors' own error
        message = str(raised.value)
        assert message.startswith(f"disk full while writing checkpoint {root / 'step-2'}: about ")
        assert (
            f"free on {disk}; nothing of it was kept; the previous checkpoint step-1 is intact; free some "
            f"space, then continue with: tunesmith train {disk / 'run'} --resume" in message
        )
        assert [p.name for p in root.iterdir()] == ["step-1"] and ck.is_complete(root / "step-1")
        assert free_space(disk) == before


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path):
    from tunesmith.errors import DiskFullError

    with small_disk(tmp_path / "disk", 1 << 20) as disk:
        root = disk / "run" / "checkpoints"
        with ck.atomic_checkpoint(root, 1) as work:
            ck.save_state({"w": torch.zeros(1 << 16)}, work, "optimizer")  # 256 KiB
        fill(disk, leave=128 << 10)
        with pytest.raises(
            DiskFullError,
            match=r"checkpoint .*step-2: about 2\d\d\.\d KiB needed, 1\d\d\.\d KiB "
            r"free on .*; nothing was written; the previous checkpoint step-1",
        ):
            with ck.atomic_checkpoint(root, 2):
                raise AssertionError("nothing may be written")
        assert [p.name for p in root.iterdir()] == ["step-1"]


def test_a_folder_written_whole_keeps_the_old_one_when_the_disk_fills(tmp_path):
    from tunesmith.errors import DiskFullError
    from tunesmith.runfolder import atomic_folder

    with small_disk(tmp_path / "disk", 512 << 10) as disk:
        target = disk / "adapter"
        with atomic_folder(target, f"the adapter {target}", then="; the last checkpoint is intact") as staging:
            (staging / "weights").write_bytes(b"old")
        with pytest.raises(DiskFullError) as raised:
            with atomic_folder(
                target, f"the adapter {target}", needed=1, then="; the last checkpoint is intact"
            ) as staging:
                (staging / "weights").write_bytes(b"\0" * (1 << 20))
        assert re.fullmatch(
            rf"disk full while writing the adapter {re.escape(str(target))}: about 1 B needed, "
            rf"[\d.]+ KiB free on {re.escape(str(disk))}; nothing of it was kept; the last checkpoint "
            r"is intact",
            str(raised.value),
        ), raised.value
        assert sorted(p.name for p in disk.iterdir()) == ["adapter"] and (target / "weights").read_bytes() == b"old"


def test_json_records_keep_their_old_version_and_leave_no_temporary(tmp_path):
    with small_disk(tmp_path / "disk", 256 << 10) as disk:
        write_json(disk / "record.json", {"v": 1})
        fill(disk, leave=0)
        with pytest.raises(OSError):
            write_json(disk / "record.json", {"v": "x" * (64 << 10)})
        assert json.loads((disk / "record.json").read_text()) == {"v": 1}
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "record.json"]


def test_a_merge_that_fills_the_disk_leaves_no_merged_folder(tiny_model_dir, tmp_path):
    from tunesmith.errors import DiskFullError
    from tunesmith.export.merge import merge_run

    run = write_lora_run(tmp_path / "src" / "tiny-lora", tiny_model_dir)
    weights = 2 * sum(t.numel() for t in load_file(tiny_model_dir / "model.safetensors").values())  # bfloat16
    # room for the run, the weights and the space check's reserve, not for the tokenizer after them
    with small_disk(tmp_path / "disk", tree_size(run) + weights + (512 << 10)) as disk:
        copy = Path(shutil.copytree(run, disk / run.name))
        with pytest.raises(DiskFullError) as raised:
            merge_run(copy, dtype="bfloat16", log=lambda _: None)
        assert re.fullmatch(
            rf"disk full while writing the merged model {re.escape(str(copy / 'merged'))}: about "
            rf"2\.0 MiB needed, [\d.]+ (KiB|MiB) free on {re.escape(str(disk))}; nothing of it was "
            rf"kept; free some space, then run again: tunesmith merge {re.escape(str(copy))}",
            str(raised.value),
        ), raised.value
        assert sorted(p.name for p in copy.iterdir()) == ["adapter", "config.yaml"]


def test_a_gguf_export_leaves_no_partial_file(tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith.errors import DiskFullError
    from tunesmith.export import gguf

    with small_disk(tmp_path / "disk", 1 << 20) as disk:
        out = disk / "export" / "model-f32.gguf"
        plan = gguf.plan_export(
            tiny_model_dir,
            tiny_model_dir,
            out,
            "f32",
            chat_template="{{ messages }}",
            end_of_turn=["<|end|>"],
            name="tiny",
        )
        with pytest.raises(
            DiskFullError,
            match=rf"writing {re.escape(str(out))}: about 4\.\d MiB needed, "
            r".* nothing was written; free some space, then export again",
        ):
            gguf.write_gguf(plan, tiny_model_dir, log=lambda _: None)
        monkeypatch.setattr(gguf, "_written_size", lambda *a: 1)  # an estimate too low: the disk fills while writing
        with pytest.raises(DiskFullError, match="no partial file was kept; free some space, then export again"):
            gguf.write_gguf(plan, tiny_model_dir, log=lambda _: None)
        assert list((disk / "export").iterdir()) == []


def write_lora_run(folder: Path, base: Path) -> Path:
    """A finished-looking LoRA run of `base` (as tests/unit/test_merge.py makes them)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.config import load_config
    from tunesmith.config.load import config_to_yaml

    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    meta = {
        "base_model": str(base),
        "method": "lora",
        "template_name": "phi-3",
        "chat_template": tokenizer.chat_template,
        "special_tokens": {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token},
        "end_of_turn": ["<|end|>"],
        "system_prompt": None,
        "train_on": "assistant",
    }
    (folder / "adapter" / "tunesmith.json").write_text(json.dumps(meta), encoding="utf-8")
    config = load_config(None, ["data.train=chat.jsonl", f"model.name={base}", f"name={folder.name}"])
    (folder / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    return folder
