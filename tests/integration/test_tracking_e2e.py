"""`tunesmith train` with MLflow (a real sqlite store), W&B (offline) and TensorBoard at once, on the
tiny random model, in a subprocess whose environment holds fake tokens: the metrics and params reach
every tracker, and no token value is written anywhere (run folder, stores, home, stdout/stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.integration

RUN = "tracked-run-SENTINEL"
PROJECT = "tunesmith-tracking-test"
SECRETS = {
    "HF_TOKEN": "hf_test_SECRET123hfTokenValue000000000",
    "HUGGING_FACE_HUB_TOKEN": "hf_test_SECRET456hubTokenValue111111",
    "WANDB_API_KEY": "test0SECRET789wandbKey0123456789abcdefgh",  # 40 characters, like a real key
    "MLFLOW_TRACKING_TOKEN": "mlflow_test_SECRET_token_abc123",
    "MLFLOW_TRACKING_PASSWORD": "mlflow_test_SECRET_password_xyz",
    "OPENAI_API_KEY": "sk-test-SECRET-openai-key-0987",
}
GIT_SECRET = "ghp_test_SECRET_in_git_remote_42"  # a token in the working folder's git remote URL


@pytest.fixture(scope="module")
def tracked(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    work, home, store = root / "work", root / "home", root / "store"
    for folder in (work, home, store):
        folder.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(
        ["git", "remote", "add", "origin", f"https://{GIT_SECRET}@example.com/team/repo.git"], cwd=work, check=True
    )
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(12)
    ]
    (work / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (work / "run.yaml").write_text(
        f"name: {RUN}\noutput_dir: {root / 'runs'}\nmodel:\n  name: {tiny_model_dir}\n"
        "data:\n  train: chat.jsonl\n  validation: chat.jsonl\ntemplate:\n  max_length: 64\nlora:\n  r: 4\n"
        "train:\n  epochs: 1\n  batch_size: 4\n  packing: none\n  learning_rate: 1.0e-2\n"
        f"tracking:\n  backends: [mlflow, wandb, tensorboard]\n  project: {PROJECT}\n"
        f"  mlflow_uri: {store / 'mlflow.db'}\n",
        encoding="utf-8",
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "WANDB_", "TENSORBOARD_", "XDG_", "HF_MLFLOW_"))
    }
    env |= SECRETS | {
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "WANDB_CONFIG_DIR": str(home / "wandb-config"),
        "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_DATA_DIR": str(home / "wandb-data"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", "run.yaml"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = root / "runs" / RUN
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return SimpleNamespace(
        root=root,
        work=work,
        run_dir=run_dir,
        store=store,
        stdout=done.stdout,
        stderr=done.stderr,
        steps=[r for r in records if "loss" in r],
        evals=[r for r in records if "eval_loss" in r],
    )


def _files(root: Path) -> list[Path]:
    """Every plain file under root (links not followed), but the test's own git config with the token."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and ".git" not in path.relative_to(root).parts:
                found.append(path)
    return found


def _containing(files: list[Path], needle: str) -> list[Path]:
    return [path for path in files if needle.encode() in path.read_bytes()]


def test_no_token_reaches_any_file_store_or_output(tracked):
    files = _files(tracked.root)
    mlflow_db = tracked.store / "mlflow.db"
    wandb_files = [p for p in files if p.suffix == ".wandb"]
    tb_files = [p for p in files if "tfevents" in p.name]
    assert mlflow_db in files and wandb_files and tb_files
    assert all(p.is_relative_to(tracked.run_dir) for p in wandb_files + tb_files)
    # the scan sees inside each store: the run name is stored in all three, byte for byte
    with_name = _containing(files, RUN)
    assert mlflow_db in with_name and set(wandb_files) <= set(with_name) and set(tb_files) & set(with_name)
    for name, secret in SECRETS.items() | {("git remote", GIT_SECRET)}:
        leaked = [str(p.relative_to(tracked.root)) for p in _containing(files, secret)]
        assert not leaked, f"{name} written to {leaked}"
        assert secret not in tracked.stdout and secret not in tracked.stderr, f"{name} printed"


def test_mlflow_store_has_run_name_params_and_metrics(tracked):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked.store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(PROJECT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    assert run.data.tags["tunesmith.run_dir"] == str(tracked.run_dir)
    params = run.data.params
    # our resolved config, flattened ...
    assert params["tunesmith.train.learning_rate"] == "0.01" and params["tunesmith.lora.r"] == "4"
    assert params["tunesmith.name"] == RUN and params["tunesmith.train.packing"] == "none"
    assert params["tunesmith.data.train"] == str(tracked.work / "chat.jsonl")
    assert json.loads(params["tunesmith.tracking.backends"]) == ["mlflow", "wandb", "tensorboard"]
    # ... besides the integration's own (TrainingArguments, masked tokens)
    assert params["learning_rate"] == "0.01" and params["hub_token"] == "<HUB_TOKEN>"

    def history(key):
        return [
            (m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]

    assert [s for s, _ in history("loss")] == [r["step"] for r in tracked.steps] == [1, 2, 3]
    assert [v for _, v in history("loss")] == pytest.approx([r["loss"] for r in tracked.steps])
    assert [v for _, v in history("learning_rate")] == pytest.approx([r["lr"] for r in tracked.steps])
    assert [v for _, v in history("grad_norm")] == pytest.approx([r["grad_norm"] for r in tracked.steps])
    assert len(tracked.evals) == 1
    assert history("eval_loss") == [(tracked.evals[0]["step"], pytest.approx(tracked.evals[0]["eval_loss"]))]


def test_tensorboard_events_hold_the_loss_and_the_config(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked.run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in tracked.steps]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in tracked.steps], rel=1e-6)
    assert [e.value for e in events.Scalars("eval/loss")] == pytest.approx([tracked.evals[0]["eval_loss"]], rel=1e-6)
    assert {"train/learning_rate", "train/grad_norm"} <= set(events.Tags()["scalars"])
    (config,) = events.Tensors("tunesmith/config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert f"tunesmith.name: {RUN}" in text and "tunesmith.train.learning_rate: 0.01" in text
    args = json.loads(events.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode())
    assert args["run_name"] == RUN
    assert not (tracked.run_dir / "checkpoints" / "runs").exists()  # not the integration's default folder


def _wandb_records(path: Path):
    """Records of a .wandb file: W&B's leveldb-log framing (7-byte header, 32 KiB blocks, chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, partial = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block trailer / zero padding
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (2, 3):  # first / middle chunk of a record
            partial = payload if kind == 2 else partial + payload
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(partial + payload if kind == 4 else payload)
        partial = b""
        yield record


def test_wandb_offline_run_in_the_run_folder_with_history_and_config(tracked):
    assert not (tracked.work / "wandb").exists()
    (run_file,) = (tracked.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == RUN and run.project == PROJECT
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    train = [h for h in history if "train/loss" in h]
    assert [h["train/global_step"] for h in train] == [r["step"] for r in tracked.steps]
    assert [h["train/loss"] for h in train] == pytest.approx([r["loss"] for r in tracked.steps])
    assert [h["train/grad_norm"] for h in train] == pytest.approx([r["grad_norm"] for r in tracked.steps])
    assert [h["eval/loss"] for h in history if "eval/loss" in h] == pytest.approx([tracked.evals[0]["eval_loss"]])
    config = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert config["tunesmith.train.learning_rate"] == 0.01 and config["tunesmith.name"] == RUN
    assert config["learning_rate"] == 0.01 and config["hub_token"] == "<HUB_TOKEN>"
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)


def test_a_failed_run_is_closed_as_failed_and_a_users_own_run_is_left_open(tmp_path, monkeypatch):
    import mlflow

    from tunesmith.config import load_config
    from tunesmith.training.tracking import setup_tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    config = load_config(
        None, ["data.train=x.jsonl", "name=r", "tracking.backends=[mlflow]", f"tracking.mlflow_uri={uri}"]
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError, match="died"):
        with setup_tracking(config, tmp_path / "run"):
            inside = mlflow.start_run(run_name="inside")  # what MLflowCallback does at train begin
            raise RuntimeError("died")  # before on_train_end could end it
    assert mlflow.active_run() is None
    assert mlflow.MlflowClient(uri).get_run(inside.info.run_id).info.status == "FAILED"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    outer = mlflow.start_run(run_name="the user's")  # a run the caller opened: MLflowCallback logs into it
    try:
        with setup_tracking(config, tmp_path / "run2"):
            pass
        assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == outer.info.run_id
    finally:
        mlflow.end_run()
