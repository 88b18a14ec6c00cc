"""Checkpoints of a real (tiny) run, exact resume from them, what resume refuses, early stopping and
the best checkpoint."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.torch import load_file

import tunesmith
from tunesmith.cli.main import main
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.runfolder import run_folder_guard
from tunesmith.training import checkpoints as ck
from tunesmith.training.resume import load_run_config


def write_rows(path: Path, n: int, answer) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": answer(i)},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    # the validation answers contradict the training ones, so eval loss turns up once training bites
    return {
        "root": root,
        "train": write_rows(root / "train.jsonl", 16, lambda i: f"{i + i}"),
        "validation": write_rows(root / "val.jsonl", 8, lambda i: f"banana {i}"),
    }


def settings(data, model_dir, output: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.train={data['train']}",
        f"model.name={model_dir}",
        f"output_dir={output}",
        f"name={name}",
        "train.batch_size=2",
        "train.learning_rate=1e-2",
        "lora.r=4",
        "train.packing=none",
        *extra,
    ]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def printed(console: Console) -> str:
    return console.file.getvalue()


@pytest.fixture(scope="module")
def finished(data, tiny_model_dir, tmp_path_factory):
    """2 epochs of 4 optimizer steps (2 micro-batches each), dropout on, eval each epoch, a checkpoint every 2."""
    output = tmp_path_factory.mktemp("resume-runs")
    config = load_config(
        None,
        settings(
            data,
            tiny_model_dir,
            output,
            "full",
            f"data.validation={data['validation']}",
            "train.epochs=2",
            "train.gradient_accumulation=2",
            "lora.dropout=0.1",
            "train.save_steps=2",
            "train.keep_checkpoints=4",
        ),
    )
    result = tunesmith.train(config, console=quiet())
    return result.run_dir


def resumable_copy(run: Path, to: Path, keep_up_to: int) -> Path:
    """The run folder as a run killed after step `keep_up_to` would have left it."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "adapter")
    (to / "manifest.json").unlink()
    for step, folder in ck.checkpoint_steps(to / "checkpoints"):
        if step > keep_up_to:
            shutil.rmtree(folder)
    return to


def adapter_diff(a: Path, b: Path) -> float:
    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


def records(run: Path) -> list[dict]:
    keys = ("step", "loss", "eval_loss", "lr", "grad_norm", "tokens_seen")
    return [
        {k: v for k, v in json.loads(line).items() if k in keys}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_checkpoints_hold_the_whole_state_without_pickle(finished):
    root = finished / "checkpoints"
    assert [s for s, _ in ck.checkpoint_steps(root)] == [2, 4, 6, 8]
    for step, folder in ck.checkpoint_steps(root):
        assert ck.is_complete(folder)
        names = {p.name for p in folder.iterdir()}
        assert {
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
            "optimizer.json",
            "scheduler.json",
            "rng.json",
            "rng.safetensors",
            "trainer_state.json",
            "tunesmith.json",
            "manifest.json",
        } <= names
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == step
        meta = ck.read_meta(folder)
        assert meta["data_position"]["micro_batches_per_epoch"] == 8
        assert meta["data_position"]["micro_batches_done_in_epoch"] == (step % 4) * 2
        assert set(meta["fingerprints"]["data"]) == {"train", "validation"}
        optimizer = load_file(folder / "optimizer.safetensors")
        assert any(k.endswith("exp_avg_sq") for k in optimizer)
    assert not [p for p in finished.rglob("*") if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".pickle"}]
    # the end-of-epoch evaluation of step 4 ran after that step's save: the checkpoint was written again with it
    assert ck.read_meta(root / "step-4")["eval_loss"] is not None
    assert ck.read_meta(root / "step-8")["eval_loss"] is not None
    assert ck.read_meta(root / "step-2")["eval_loss"] is None


@pytest.mark.parametrize("step", [4, 6], ids=["epoch-boundary", "mid-epoch"])
def test_resume_ends_exactly_where_the_uninterrupted_run_did(finished, tmp_path, step):
    run = resumable_copy(finished, tmp_path / "runs" / "copy", step)
    (run / "metrics.jsonl").write_text((finished / "metrics.jsonl").read_text() + '{"step": 99, "loss": 1.0}\n')
    console = quiet()
    result = tunesmith.train(run, resume=True, console=console)
    assert result.status == "completed"
    assert f"Resuming from {run / 'checkpoints' / f'step-{step}'}" in printed(console)
    assert adapter_diff(run / "adapter", finished / "adapter") <= 1e-6
    assert records(run) == records(finished)  # same losses, LR and eval losses step by step, none twice


def test_a_damaged_or_half_written_checkpoint_is_never_resumed_from(finished, tmp_path):
    run = resumable_copy(finished, tmp_path / "copy", 8)
    weights = run / "checkpoints" / "step-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # manifest no longer verifies
    half = run / "checkpoints" / ".step-9.tmp-x1"
    shutil.copytree(run / "checkpoints" / "step-6", half)  # a write killed before its rename
    console = quiet()
    tunesmith.train(run, resume=True, console=console)
    out = printed(console)
    assert "step-6 (step 6" in out
    assert "ignored and removed incomplete checkpoints: .step-9.tmp-x1" in out.replace("\n", "")
    assert (
        "hash mismatch in step-8/adapter_model.safetensors: checkpoint step-8 moved aside to "
        "checkpoints/rejected/step-8" in out.replace("\n", "")
    )
    assert adapter_diff(run / "adapter", finished / "adapter") <= 1e-6
    assert not half.exists() and ck.is_complete(run / "checkpoints" / "step-8")  # rewritten by the resumed run


def test_no_complete_checkpoint_is_a_user_error_and_the_folder_stays(finished, tmp_path):
    run = resumable_copy(finished, tmp_path / "copy", 0)
    (run / "checkpoints" / ".step-2.tmp-abc").mkdir()
    unsealed = run / "checkpoints" / "step-2"
    shutil.copytree(finished / "checkpoints" / "step-2", unsealed)
    (unsealed / "manifest.json").unlink()
    with pytest.raises(UserError, match="no complete checkpoint in .*checkpoints to resume from"):
        tunesmith.train(run, resume=True, console=quiet())
    assert (run / "config.yaml").is_file() and unsealed.is_dir()


def resume_with(run: Path, *overrides: str) -> tuple[Console, object]:
    console = quiet()
    return console, tunesmith.train(load_run_config(run, list(overrides)), resume=True, console=console)


def test_resume_refuses_changed_data_naming_it(finished, tmp_path, data):
    run = resumable_copy(finished, tmp_path / "copy", 8)
    other = write_rows(tmp_path / "other.jsonl", 16, lambda i: f"{i * 3}")
    with pytest.raises(UserError, match=r"data\.train changed since it was written \(.*other\.jsonl\)"):
        resume_with(run, f"data.train={other}")
    with pytest.raises(UserError, match=r"data\.validation changed"):
        resume_with(run, f"data.validation={other}")
    assert (run / "checkpoints" / "step-8").is_dir()


def test_resume_refuses_a_changed_template_or_processing(finished, tmp_path, tiny_model_dir):
    run = resumable_copy(finished, tmp_path / "copy", 8)
    own = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["chat_template"]
    edited = tmp_path / "edited.jinja"
    edited.write_text("{# the model's template, edited #}" + own, encoding="utf-8")  # renders the same text
    with pytest.raises(UserError, match=r"chat template changed since it was written \(template\.chat_template\)"):
        resume_with(run, f"template.chat_template={edited}")
    with pytest.raises(UserError, match=r"processed data\.train differs .* by template\.train_on"):
        resume_with(run, "template.train_on=all")  # same files and template, other labels
    assert ck.newest_complete(run / "checkpoints") == run / "checkpoints" / "step-8"


def test_other_changed_settings_are_listed_and_the_run_goes_on(finished, tmp_path):
    run = resumable_copy(finished, tmp_path / "copy", 8)
    console, result = resume_with(run, "train.logging_steps=2", "eval.limit=3")
    out = printed(console).replace("\n", "")
    assert "settings changed since the run started" in out
    assert "train.logging_steps: 1 -> 2" in out and "eval.limit: None -> 3" in out
    assert result.status == "completed" and adapter_diff(run / "adapter", finished / "adapter") == 0


def test_a_checkpoint_that_does_not_fit_the_model_is_a_user_error(finished, tmp_path):
    run = resumable_copy(finished, tmp_path / "copy", 8)
    with pytest.raises(UserError, match=r"checkpoint step-8 does not fit the model .*size mismatch"):
        resume_with(run, "lora.r=8")
    assert ck.is_complete(run / "checkpoints" / "step-8")
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"  # kept, marked, resumable
    console, result = resume_with(run)
    assert result.status == "completed" and "settings changed" not in printed(console)


def test_a_completed_or_missing_run_is_refused_in_one_line(finished, tmp_path, capsys, data, tiny_model_dir):
    assert main(["train", str(finished), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "already completed" in err and err.count("\n") == 1
    config = tmp_path / "mine.yaml"
    config.write_text(
        f"data:\n  train: {data['train']}\nmodel:\n  name: {tiny_model_dir}\noutput_dir: {tmp_path / 'runs'}\n",
        encoding="utf-8",
    )
    assert main(["train", str(config), "--resume"]) == 2
    assert "--resume needs to know the run" in capsys.readouterr().err
    assert main(["train", str(config), "--resume", "--set", "name=gone"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume: run folder" in err and "gone does not exist" in err and err.count("\n") == 1
    assert main(["train", str(finished)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_features_need_a_validation_split(data, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="train.load_best_at_end needs a validation split"):
        tunesmith.train(
            load_config(None, settings(data, tiny_model_dir, tmp_path, "x", "train.load_best_at_end=true")),
            console=quiet(),
        )
    assert not (tmp_path / "x").exists()


def early_stopping_run(data, model_dir, output: Path, *extra: str) -> tuple[Path, Console]:
    config = load_config(
        None,
        settings(
            data,
            model_dir,
            output,
            "es",
            f"data.validation={data['validation']}",
            "train.batch_size=4",
            "train.max_steps=30",
            "train.eval_steps=1",
            "train.early_stopping_patience=2",
            "train.load_best_at_end=true",
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0",
            *extra,
        ),
    )
    console = quiet()
    return tunesmith.train(config, console=console).run_dir, console


def expected_early_stop(run: Path, patience: int = 2) -> tuple[int, int]:
    """(best step, step where training should stop) by early stopping's rule on the recorded eval losses."""
    best_step, best, waited = None, float("inf"), 0
    for step, loss in [(r["step"], r["eval_loss"]) for r in records(run) if "eval_loss" in r]:
        best_step, best, waited = (step, loss, 0) if loss < best else (best_step, best, waited + 1)
        if waited >= patience:
            return best_step, step
    raise AssertionError("eval loss never stopped improving: the scenario does not exercise early stopping")


def test_early_stopping_keeps_and_restores_the_best_checkpoint(data, tiny_model_dir, tmp_path):
    run, console = early_stopping_run(data, tiny_model_dir, tmp_path, "train.keep_checkpoints=1")
    best_step, expected_stop = expected_early_stop(run)
    last = max(r["step"] for r in records(run))
    assert last == expected_stop < 30  # it stopped, and where it should have
    kept = [s for s, _ in ck.checkpoint_steps(run / "checkpoints")]
    assert kept == sorted({best_step, last})  # the newest one plus the best, whatever keep_checkpoints says
    assert adapter_diff(run / "adapter", run / "checkpoints" / f"step-{best_step}") == 0
    assert adapter_diff(run / "adapter", run / "checkpoints" / f"step-{last}") > 0
    assert f"best checkpoint, step-{best_step}" in printed(console)


def test_early_stopping_patience_count_survives_a_resume(data, tiny_model_dir, tmp_path):
    run, _ = early_stopping_run(data, tiny_model_dir, tmp_path, "train.save_steps=1", "train.keep_checkpoints=30")
    best_step, stop = expected_early_stop(run)
    assert stop - 1 > best_step  # the checkpoint resumed from has one evaluation without improvement behind it
    copy = resumable_copy(run, tmp_path / "copy", stop - 1)
    tunesmith.train(copy, resume=True, console=quiet())
    assert max(r["step"] for r in records(copy)) == stop  # one more evaluation without improvement, not two
    assert records(copy) == records(run) and adapter_diff(copy / "adapter", run / "adapter") == 0


def test_run_folder_guard_keeps_folders_worth_resuming(tmp_path):
    for name, keep, with_checkpoint, kept in [
        ("a", False, False, False),
        ("b", False, True, True),
        ("c", True, False, True),
    ]:
        folder = tmp_path / name
        (folder / "checkpoints" / ("step-3" if with_checkpoint else "")).mkdir(parents=True)
        with pytest.raises(UserError), run_folder_guard(folder, keep=keep):
            raise UserError("bad input")
        assert folder.exists() == kept
        if kept:
            assert json.loads((folder / "manifest.json").read_text())["status"] == "failed"
