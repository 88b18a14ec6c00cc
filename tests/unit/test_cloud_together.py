"""`tunesmith cloud` against a local server speaking Together's fine-tuning API (tests/fake_together.py),
driven through Together's official client (its base URL pointed at the server): the data checked
before anything is sent, the settings mapped or refused, the upload holding exactly tunesmith's
labels, a start that can be repeated without a second upload or job, status, cancel, no key on disk."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from fake_together import FakeTogether  # noqa: E402
from tunesmith import cloud  # noqa: E402
from tunesmith.cli.main import main  # noqa: E402
from tunesmith.config import load_config  # noqa: E402
from tunesmith.errors import TunesmithError, UserError  # noqa: E402

KEY = "tok-secret-4f1c9a7e2b"


@pytest.fixture()
def server(monkeypatch):
    fake = FakeTogether(KEY)
    monkeypatch.setenv("TOGETHER_BASE_URL", fake.start())
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    yield fake
    fake.stop()


def config_for(tmp_path: Path, model: Path, data: Path, *settings: str):
    return load_config(
        None,
        [
            f"data.train={data}",
            f"model.name={model}",
            f"output_dir={tmp_path / 'runs'}",
            "name=hosted",
            "template.max_length=256",
            "train.epochs=2",
            "lora.r=8",
            "lora.alpha=16",
            "train.warmup_ratio=0.1",
            *settings,
        ],
    )


def test_a_job_goes_from_config_to_a_run_folder_with_the_settings_mapped(server, tmp_path, tiny_model_dir, sums_jsonl):
    job = cloud.train(config_for(tmp_path, tiny_model_dir, sums_jsonl))
    run = tmp_path / "runs" / "hosted"
    assert job.job_id == "ft-0001" and job.status == "pending" and job.run_dir == run
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "data_report.json", "cloud.json", "upload"}
    recorded = json.loads((run / "cloud.json").read_text())
    assert recorded["job_id"] == "ft-0001" and recorded["files"] == {"train": "file-0001"}
    sent = server.jobs["ft-0001"]
    assert sent["training_file"] == "file-0001" and sent["model"] == str(tiny_model_dir)
    assert sent["n_epochs"] == 2 and sent["max_seq_length"] == 256 and sent["warmup_ratio"] == 0.1
    assert sent["training_type"]["lora_r"] == 8 and sent["training_type"]["lora_alpha"] == 16
    methods = [m for m, _ in server.requests]
    assert methods.count("PUT") == 1 and ("POST", "/v1/fine-tunes") in server.requests


def test_the_upload_carries_exactly_tunesmiths_labels(server, tmp_path, tiny_model_dir, sums_jsonl):
    import pyarrow.parquet as pq

    config = config_for(tmp_path, tiny_model_dir, sums_jsonl)
    cloud.train(config)
    table = pq.read_table(io.BytesIO(server.files["file-0001"]["content"])).to_pylist()
    inspected = tmp_path / "inspect.jsonl"
    assert main(["inspect", str(_yaml(tmp_path, config)), "--rows", "1000", "--json", str(inspected)]) == 0
    expected = [json.loads(line) for line in inspected.read_text().splitlines()]
    assert [(r["input_ids"], r["labels"]) for r in table] == [(e["input_ids"], e["labels"]) for e in expected]
    assert all(r["attention_mask"] == [1] * len(r["input_ids"]) for r in table)
    assert any(-100 in r["labels"] for r in table) and any(x != -100 for r in table for x in r["labels"])


def test_a_bad_row_is_refused_before_the_server_sees_any_request(server, tmp_path, tiny_model_dir, sums_jsonl):
    lines = sums_jsonl.read_text().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "assistent", "content": "x"}]})
    sums_jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{sums_jsonl.name}:3: messages\[0\].role"):
        cloud.train(config_for(tmp_path, tiny_model_dir, sums_jsonl))
    assert server.requests == [] and not (tmp_path / "runs" / "hosted").exists()


def test_settings_together_cannot_honour_are_listed_with_exit_2_and_nothing_uploaded(
    server, tmp_path, tiny_model_dir, sums_jsonl, capsys
):
    path = _yaml(
        tmp_path,
        config_for(tmp_path, tiny_model_dir, sums_jsonl),
        "train:\n  lr_scheduler: constant\n  optimizer: sgd\n  epochs: 1.5\nlora:\n  r: 128\n  rslora: true\n",
    )
    assert main(["cloud", "train", str(path)]) == 2
    printed = " ".join(capsys.readouterr().err.split())
    for expected in ("lr_scheduler constant", "train.optimizer 'sgd'", "epochs 1.5", "lora.r 128", "lora.rslora True"):
        assert expected in printed, printed
    assert f"{path}:" in printed  # each names where it was set
    assert all(method == "GET" for method, _ in server.requests)  # the model's limits only: nothing uploaded
    assert not (tmp_path / "runs" / "hosted").exists()


def test_a_full_fine_tune_is_refused_before_upload_because_fetch_could_not_complete_it(
    server, tmp_path, tiny_model_dir, sums_jsonl, capsys
):
    path = _yaml(tmp_path, config_for(tmp_path, tiny_model_dir, sums_jsonl), "method: full\n")
    assert main(["cloud", "train", str(path)]) == 2
    printed = " ".join(capsys.readouterr().err.split())
    assert "method full" in printed and "use method lora" in printed, printed
    assert all(method == "GET" for method, _ in server.requests)
    assert not (tmp_path / "runs" / "hosted").exists()


def test_an_interrupted_start_continues_without_a_second_upload_or_job(server, tmp_path, tiny_model_dir, sums_jsonl):
    server.fail_create = 3  # the client retries twice: the job is not created this time
    config = config_for(tmp_path, tiny_model_dir, sums_jsonl)
    with pytest.raises(TunesmithError, match="Together did not create the job"):
        cloud.train(config)
    recorded = json.loads((tmp_path / "runs" / "hosted" / "cloud.json").read_text())
    assert recorded["files"] == {"train": "file-0001"} and recorded["job_id"] is None
    job = cloud.train(config)
    assert job.job_id == "ft-0001" and len(server.files) == 1 and len(server.jobs) == 1
    assert [m for m, _ in server.requests].count("PUT") == 1


def test_status_records_progress_and_cancel_stops_the_job(server, tmp_path, tiny_model_dir, sums_jsonl):
    job = cloud.train(config_for(tmp_path, tiny_model_dir, sums_jsonl))
    server.progress(job.job_id, [(1, 2.5), (2, 1.75)])
    assert cloud.status(job.run_dir).status == "running"
    server.progress(job.job_id, [(1, 2.5), (2, 1.75), (3, 1.25)])
    assert cloud.status(job.run_dir).metrics[-1] == {"step": 3, "loss": 1.25, "source": "together"}
    lines = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 2.5), (2, 1.75), (3, 1.25)]  # each step once
    assert cloud.cancel(job.run_dir).status == "cancelled"
    with pytest.raises(UserError, match="already cancelled"):
        cloud.cancel(job.run_dir)


def test_the_key_is_never_written_and_a_missing_key_says_where_it_comes_from(
    server, tmp_path, tiny_model_dir, sums_jsonl, monkeypatch
):
    job = cloud.train(config_for(tmp_path, tiny_model_dir, sums_jsonl))
    cloud.status(job.run_dir)
    for path in job.run_dir.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    monkeypatch.delenv("TOGETHER_API_KEY")
    with pytest.raises(UserError, match="set TOGETHER_API_KEY in the environment"):
        cloud.status(job.run_dir)


def _yaml(tmp_path: Path, config, extra: str = "") -> Path:
    """The config as a file (what a user passes), with `extra` YAML merged over it."""
    import yaml

    from tunesmith.config.load import config_to_yaml

    data = yaml.safe_load(config_to_yaml(config))
    for section, values in (yaml.safe_load(extra) or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    path = tmp_path / "hosted.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _adapter_archive(tmp_path: Path, base: Path, **lora) -> bytes:
    import tarfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora))
    folder = tmp_path / "result"
    model.save_pretrained(folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            tar.add(folder / name, arcname=f"out/{name}")
    return buffer.getvalue()


def test_fetch_installs_a_checked_adapter_and_an_adapter_for_another_shape_is_refused(
    server, tmp_path, tiny_model_dir, sums_jsonl
):
    from tunesmith.cloud.fetch import fetch

    job = cloud.train(config_for(tmp_path, tiny_model_dir, sums_jsonl))
    server.jobs[job.job_id]["status"] = "completed"
    server.results["adapter"] = _adapter_archive(
        tmp_path, tiny_model_dir, r=8, lora_alpha=16, target_modules=["q_proj"], init_lora_weights=False
    )
    _wrong_rank(server)  # its config says r=4, its weights are r=8: not what PEFT would build from it
    with pytest.raises(TunesmithError, match="does not fit"):
        fetch(job.run_dir)
    assert not (job.run_dir / "adapter").exists()
    server.results["adapter"] = _adapter_archive(
        tmp_path, tiny_model_dir, r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False
    )
    fetch(job.run_dir)
    record = json.loads((job.run_dir / "adapter" / "tunesmith.json").read_text())
    assert record["base_model"] == str(tiny_model_dir) and record["end_of_turn"]
    assert json.loads((job.run_dir / "manifest.json").read_text())["status"] == "completed"
    from tunesmith.evaluate.runs import load_run

    loaded = load_run(job.run_dir)  # what eval, chat and generate open
    assert any("lora_A" in name for name, _ in loaded.model.named_parameters())


def _wrong_rank(server) -> None:
    """An adapter whose rank differs from what its own config says: the shapes PEFT would build differ."""
    import tarfile

    source = tarfile.open(fileobj=io.BytesIO(server.results["adapter"]))
    files = {Path(m.name).name: source.extractfile(m).read() for m in source.getmembers() if m.isfile()}
    settings = json.loads(files["adapter_config.json"])
    settings["r"] = 4
    files["adapter_config.json"] = json.dumps(settings).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"out/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    server.results["adapter"] = buffer.getvalue()


def test_a_zstd_packed_download_unpacks_to_the_adapter_files(tmp_path):
    import tarfile

    import zstandard

    from tunesmith.cloud.fetch import unpack

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (
            ("adapter_config.json", b"{}"),
            ("adapter_model.safetensors", b"weights"),
            ("notes.txt", b"x"),
        ):
            info = tarfile.TarInfo(f"job/checkpoint/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "ft-1.part"
    archive.write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    wanted = ("adapter_config.json", "adapter_model.safetensors")
    assert unpack(archive, lambda name: name in wanted, wanted) == {
        "adapter_config.json": b"{}",
        "adapter_model.safetensors": b"weights",
    }
    archive.write_bytes(b"not an archive")
    with pytest.raises(TunesmithError, match="not a readable archive"):
        unpack(archive, lambda name: True, ())


def test_a_preference_objective_is_refused_before_any_request(server, tmp_path, tiny_model_dir, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n", encoding="utf-8")
    path = _yaml(tmp_path, config_for(tmp_path, tiny_model_dir, pairs), "train:\n  objective: dpo\n")
    assert main(["cloud", "train", str(path)]) == 2
    printed = " ".join(capsys.readouterr().err.split())
    assert f"{path}:" in printed and "train.objective dpo" in printed and "tunesmith remote train" in printed, printed
    assert server.requests == [] and not (tmp_path / "runs" / "hosted").exists()
