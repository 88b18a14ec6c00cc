"""The remote side without ssh: the agent run locally through the same stdin protocol, and the
config rewritten for the host. Hostile names go through every op byte for byte."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.errors import UserError
from tunesmith.remote.host import SshSettings, parse_host
from tunesmith.remote.jobs import describe, exit_code, follow, stage_config
from tunesmith.remote.transport import Remote, agent_source

HOSTILE_FILE = "a b'c\"$(touch SENTINEL);d.jsonl"
HOSTILE_RUN = "x; touch SENTINEL $(touch SENTINEL)"
ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


class LocalRemote(Remote):
    """The agent on this machine, spoken to exactly as over ssh but without the ssh in front."""

    def argv(self) -> list[str]:
        return [sys.executable, "-c", agent_source()]


@pytest.fixture()
def remote(tmp_path) -> LocalRemote:
    return LocalRemote(SshSettings(parse_host("test@localhost")), str(tmp_path / "remote"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_sends_only_new_contents(remote, tmp_path, monkeypatch):
    (tmp_path / HOSTILE_FILE).write_bytes(b"one\n")
    (tmp_path / "copy.jsonl").write_bytes(b"one\n")
    (tmp_path / "other.jsonl").write_bytes(b"two\n")
    said: list[str] = []
    hashes = remote.upload([tmp_path / HOSTILE_FILE, tmp_path / "copy.jsonl", tmp_path / "other.jsonl"], said.append)
    assert hashes[tmp_path / HOSTILE_FILE] == _sha(b"one\n")
    assert "2 to send" in said[0]
    blobs = Path(remote.base, "blobs")
    assert sorted(p.name for p in blobs.iterdir()) == sorted([_sha(b"one\n"), _sha(b"two\n")])
    said.clear()
    remote.upload([tmp_path / HOSTILE_FILE, tmp_path / "other.jsonl"], said.append)
    assert "0 to send" in said[0] and "2 already on the host" in said[0]


def test_damaged_upload_is_refused(remote):
    with pytest.raises(UserError, match="sha256 mismatch"):
        remote.call("put", files=[{"sha": _sha(b"right"), "size": 5}], payload=[b"wrong"])
    assert not any(p.name == _sha(b"right") for p in Path(remote.base, "blobs").iterdir())


def test_stage_places_hostile_names_byte_for_byte(remote, tmp_path):
    data = tmp_path / HOSTILE_FILE
    data.write_bytes(b"\x00\xffbytes\n")
    sha = remote.upload([data])[data]
    remote.call(
        "stage", name=HOSTILE_RUN, config_yaml="name: x\n", files=[{"path": f"data/{HOSTILE_FILE}", "sha": sha}]
    )
    placed = Path(remote.base, "jobs", HOSTILE_RUN, "data", HOSTILE_FILE)
    assert placed.read_bytes() == data.read_bytes()
    answer = remote.call("hash", name=HOSTILE_RUN, paths=[f"data/{HOSTILE_FILE}"])
    assert answer["hashes"][f"data/{HOSTILE_FILE}"] == sha
    assert not list(tmp_path.rglob("SENTINEL")) and not Path("SENTINEL").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", ""])
def test_run_names_that_are_not_plain_folder_names_are_refused(remote, name):
    with pytest.raises(UserError, match="not a plain run name"):
        remote.call("status", name=name)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "data/../../x", "data//x"])
def test_stage_refuses_paths_outside_the_job(remote, path, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    sha = remote.upload([tmp_path / "f"])[tmp_path / "f"]
    with pytest.raises(UserError, match="not a relative path"):
        remote.call("stage", name="run", config_yaml="", files=[{"path": path, "sha": sha}])


def test_status_of_an_unknown_run(remote):
    state = remote.call("status", name=HOSTILE_RUN)
    assert state["state"] == "unknown" and state["exists"] is False


def test_fetch_brings_the_run_folder_back(remote, tmp_path):
    run = Path(remote.base, "runs", HOSTILE_RUN)
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"big")
    (run / "manifest.json").write_text('{"status": "completed"}')
    out = remote.fetch(HOSTILE_RUN, tmp_path / "back")
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert not (out / "checkpoints").exists()
    out = remote.fetch(HOSTILE_RUN, tmp_path / "all", checkpoints=True)
    assert (out / "checkpoints" / "step-1" / "model.safetensors").read_bytes() == b"big"
    with pytest.raises(UserError, match="no run folder"):
        remote.fetch("missing", tmp_path / "none")


def test_stage_config_rewrites_paths_for_the_host(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / HOSTILE_FILE).write_text(json.dumps(ROW) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / HOSTILE_FILE).write_text(json.dumps(ROW) + "\n")
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "train": [HOSTILE_FILE, {"path": f"sub/{HOSTILE_FILE}", "weight": 2}],
                    "validation": "bundled:smart_home/val.jsonl",
                },
                "template": {"chat_template": "t.jinja"},
                "train": {"epochs": 2},
            }
        )
    )
    staged = stage_config(config, ["train.max_steps=3", f"name={HOSTILE_RUN}"], "/srv/base")
    remote = yaml.safe_load(staged.config_yaml)
    assert staged.name == HOSTILE_RUN == remote["name"]
    assert remote["output_dir"] == "/srv/base/runs"
    assert remote["data"]["train"][0] == f"data/{HOSTILE_FILE}"
    assert remote["data"]["train"][1] == {**remote["data"]["train"][1], "path": f"data/1/{HOSTILE_FILE}", "weight": 2.0}
    assert remote["data"]["validation"] == "bundled:smart_home/val.jsonl"
    assert remote["template"]["chat_template"] == "template/t.jinja"
    assert remote["train"]["max_steps"] == 3 and remote["train"]["epochs"] == 2.0
    assert staged.files == {
        f"data/{HOSTILE_FILE}": Path(HOSTILE_FILE),
        f"data/1/{HOSTILE_FILE}": Path("sub", HOSTILE_FILE),
        "template/t.jinja": Path("t.jinja"),
    }
    from tunesmith.config import Config

    Config.model_validate(remote)  # the host reads a valid config


def test_stage_config_names_the_missing_file_and_where_it_was_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epochs: 1\ndata:\n  train: nowhere.jsonl\n")
    with pytest.raises(UserError, match=r"run.yaml:4: nowhere.jsonl not found"):
        stage_config(config, [], "/srv")
    staged = stage_config(config, ["data.train=bundled:smart_home/train.jsonl"], "/srv")
    assert staged.name.startswith("run-") and staged.files == {}


def test_exit_codes_and_descriptions():
    assert exit_code({"state": "completed"}) == 0
    assert exit_code({"state": "stopped", "exit_code": 143}) == 143
    assert exit_code({"state": "failed", "exit_code": 2}) == 2
    assert exit_code({"state": "lost"}) == 1
    text = describe(
        {
            "name": "r",
            "state": "stopped",
            "exit_code": 143,
            "manifest_status": "interrupted",
            "last_metrics": {"step": 4, "loss": 1.5},
            "checkpoints": ["step-4"],
        }
    )
    assert text == "r: stopped; exit code 143; manifest: interrupted; step 4, loss 1.5000; checkpoints: step-4"


def _start(remote: LocalRemote, name: str, code: str) -> dict:
    remote.call("stage", name=name, config_yaml="", files=[])
    return remote.call(
        "start", name=name, argv=[sys.executable, "-c", code], env={"SECRET_TOKEN": "s3cret"}, agent=agent_source()
    )


def _wait(remote: LocalRemote, name: str, timeout: float = 30) -> dict:
    import time

    deadline = time.time() + timeout
    while (state := remote.call("status", name=name))["state"] == "running" and time.time() < deadline:
        time.sleep(0.2)
    return state


def test_detached_job_runs_in_its_own_session_and_records_its_exit(remote, tmp_path):
    import os

    code = "import os; print('token', os.environ['SECRET_TOKEN'] == 's3cret', os.getsid(0) == os.getpgid(0))"
    started = _start(remote, HOSTILE_RUN, code)
    state = _wait(remote, HOSTILE_RUN)
    assert state["state"] == "completed" and state["exit_code"] == 0
    out = io_bytes()
    follow_state = follow(remote, HOSTILE_RUN, out=out, follow=True)
    assert b"token True True" in out.getvalue() and b"exited with code 0" in out.getvalue()
    assert follow_state["state"] == "completed"
    secrets = Path(remote.base, "jobs", HOSTILE_RUN, "env.json")
    assert secrets.stat().st_mode & 0o777 == 0o600  # the token sits in a 0600 file, not on a command line
    assert started["pid"] != os.getpid()
    with pytest.raises(UserError, match="no run 'missing'"):
        follow(remote, "missing", out=io_bytes(), follow=False)


def test_cancel_sends_sigterm_to_the_job(remote):
    import time

    _start(remote, "sleeper", "import time; print('up', flush=True); time.sleep(60)")
    log = Path(remote.base, "jobs", "sleeper", "train.log")
    deadline = time.time() + 20
    while not (log.is_file() and b"up" in log.read_bytes()) and time.time() < deadline:
        time.sleep(0.1)
    assert remote.call("status", name="sleeper")["state"] == "running"
    with pytest.raises(UserError, match="already running"):
        _start(remote, "sleeper", "pass")
    assert remote.call("cancel", name="sleeper")["signalled"] is True
    state = _wait(remote, "sleeper")
    assert (state["state"], state["exit_code"]) == ("stopped", 143)
    assert remote.call("cancel", name="sleeper")["signalled"] is False


def test_a_job_whose_process_vanished_is_lost(remote):
    _start(remote, "ghost", "pass")
    _wait(remote, "ghost")
    jobs = Path(remote.base, "jobs", "ghost")
    (jobs / "exit.json").unlink()  # as after a reboot: no exit recorded, no process
    job = json.loads((jobs / "job.json").read_text())
    (jobs / "job.json").write_text(json.dumps({**job, "boot_id": "another-boot"}))
    assert remote.call("status", name="ghost")["state"] == "lost"


def io_bytes():
    import io

    return io.BytesIO()
