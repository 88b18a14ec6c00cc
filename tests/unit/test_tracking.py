"""Tracker selection, environment and pre-flight checks (training/tracking.py); no training here.

The end-to-end run with MLflow, W&B and TensorBoard is tests/integration/test_tracking_e2e.py.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

import tunesmith
from tunesmith.cli.main import main
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.training import trackers, tracking

ALL = "tracking.backends=[mlflow,wandb,tensorboard]"
SETTLED = (
    "train.packing=bins",
    "train.batch_size=8",
    "train.epochs=1",
    "train.learning_rate=2e-4",
)  # as prepare leaves them


def _config(tmp_path, *overrides):
    return load_config(
        None,
        [
            f"data.train={tmp_path / 'missing.jsonl'}",
            f"output_dir={tmp_path / 'runs'}",
            "name=tracked",
            *SETTLED,
            *overrides,
        ],
    )


def test_report_to_is_the_chosen_backends(tmp_path):
    assert tracking.report_to(_config(tmp_path)) == []
    assert tracking.report_to(_config(tmp_path, ALL)) == ["mlflow", "wandb", "tensorboard"]


def test_training_arguments_carry_report_to_and_run_name(tmp_path):
    from tunesmith.training.trainer import training_arguments

    args = training_arguments(
        _config(tmp_path, "tracking.backends=[tensorboard]"),
        tmp_path / "ck",
        device="cpu",
        precision="fp32",
        has_eval=False,
    )
    assert args.report_to == ["tensorboard"] and args.run_name == "tracked"
    plain = training_arguments(_config(tmp_path), tmp_path / "ck", device="cpu", precision="fp32", has_eval=False)
    assert plain.report_to == []


@pytest.mark.parametrize("backend", ["mlflow", "wandb", "tensorboard"])
def test_missing_package_is_one_line_user_error_before_any_data_or_folder(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # find_spec answers None: as if not installed
    config = _config(tmp_path, f"tracking.backends=[{backend}]")
    # data.train does not exist: had the data been read first, this would be a different error
    with pytest.raises(UserError) as err:
        tunesmith.train(config)
    message = str(err.value)
    assert "\n" not in message
    assert f"tracking.backends: {backend} needs the tunesmith[tracking] extra" in message
    assert 'pip install "tunesmith[tracking]"' in message
    assert not (tmp_path / "runs").exists()


def test_missing_package_through_the_cli_exits_2_naming_the_config_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"name: tracked\noutput_dir: {tmp_path / 'runs'}\ndata:\n  train: {tmp_path / 'x.jsonl'}\n"
        "tracking:\n  backends: [tensorboard, wandb]\n",
        encoding="utf-8",
    )
    assert main(["train", str(config)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: {config}:6: tracking.backends: wandb needs the tunesmith[tracking] extra")
    assert not (tmp_path / "runs").exists()


def test_no_backends_needs_no_package(tmp_path, monkeypatch):
    for name in ("mlflow", "wandb", "tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    tracking.check_tracking(_config(tmp_path))  # nothing chosen, nothing checked


def test_mlflow_file_store_and_disabled_integration_are_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UserError, match="MLFLOW_ALLOW_FILE_STORE"):
        tracking.check_tracking(
            _config(tmp_path, "tracking.backends=[mlflow]", f"tracking.mlflow_uri=file://{tmp_path / 'mlruns'}")
        )
    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    with pytest.raises(UserError, match="DISABLE_MLFLOW_INTEGRATION"):
        tracking.check_tracking(_config(tmp_path, "tracking.backends=[mlflow]"))


def test_mlflow_uri_forms(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = trackers.mlflow_tracking_uri
    assert uri(_config(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's own default, made absolute
    assert uri(_config(tmp_path, "tracking.mlflow_uri=store/x.db")) == f"sqlite:///{tmp_path / 'store' / 'x.db'}"
    assert uri(_config(tmp_path, "tracking.mlflow_uri=store")) == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert uri(_config(tmp_path, "tracking.mlflow_uri=http://127.0.0.1:5000")) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000")
    assert uri(_config(tmp_path)) == "http://10.0.0.1:5000"
    assert uri(_config(tmp_path, "tracking.mlflow_uri=sqlite:///a.db")) == "sqlite:///a.db"  # the config wins


def test_environment_is_set_inside_and_put_back_after(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's own value, restored afterwards
    monkeypatch.setenv("WANDB_LOG_MODEL", "end")  # a logging choice of the user's: kept
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    config = _config(tmp_path, ALL, "tracking.project=proj", f"tracking.mlflow_uri={tmp_path / 'm.db'}")
    run_dir = tmp_path / "runs" / "tracked"
    with tracking.setup_tracking(config, run_dir) as callbacks:
        assert len(callbacks) == 1
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(run_dir)
        assert os.environ["WANDB_PROJECT"] == "proj" and os.environ["WANDB_LOG_MODEL"] == "end"
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run_dir / "tensorboard")
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'm.db'}"
        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "proj" and os.environ["MLFLOW_FLATTEN_PARAMS"] == "TRUE"
        assert json.loads(os.environ["MLFLOW_TAGS"]) == {"tunesmith.run_dir": str(run_dir)}
    assert os.environ["WANDB_MODE"] == "online" and os.environ["WANDB_LOG_MODEL"] == "end"
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and "MLFLOW_EXPERIMENT_NAME" not in os.environ


def test_environment_is_put_back_when_training_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    config = _config(tmp_path, "tracking.backends=[tensorboard]")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.setup_tracking(config, tmp_path / "run"):
            assert "TENSORBOARD_LOGGING_DIR" in os.environ
            raise RuntimeError("boom")
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ


def test_no_backends_touch_nothing(tmp_path):
    before = dict(os.environ)
    with tracking.setup_tracking(_config(tmp_path), tmp_path / "run") as callbacks:
        assert callbacks == [] and dict(os.environ) == before


def test_secret_values_come_from_secret_named_variables():
    env = {
        "HF_TOKEN": "hf_abcdefgh",
        "WANDB_API_KEY": "k" * 40,
        "MLFLOW_TRACKING_PASSWORD": "pw-123456",
        "TOKENIZERS_PARALLELISM": "false-but-long",
        "HF_HUB_OFFLINE": "1",
        "AWS_SECRET_ACCESS_KEY": "aws-xyz-123",
        "SHORT_TOKEN": "abc",
        "PATH": "/usr/bin:/bin",
    }
    assert set(tracking.secret_values(env)) == {"hf_abcdefgh", "k" * 40, "pw-123456", "aws-xyz-123"}


def test_config_params_are_flat_and_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_SECRET123456")
    config = _config(
        tmp_path,
        "tracking.backends=[mlflow]",
        "tracking.project=team-hf_test_SECRET123456",
        "tracking.mlflow_uri=https://alice:s3cr3t-pass@mlflow.example.com/",
        "eval.max_new_tokens=7",
    )
    params = tracking.config_params(config)
    assert params["tunesmith.tracking.project"] == "team-<redacted>"
    assert params["tunesmith.tracking.mlflow_uri"] == "https://alice:<redacted>@mlflow.example.com/"
    assert params["tunesmith.eval.max_new_tokens"] == 7  # "tokens" is not a secret-named key
    assert params["tunesmith.tracking.backends"] == ["mlflow"] and params["tunesmith.name"] == "tracked"
    text = json.dumps(params)
    assert "SECRET123456" not in text and "s3cr3t-pass" not in text
    assert all(not isinstance(v, dict) or v == {} for v in params.values())  # only empty mappings stay
