"""A hosted job from config to a fetched run folder that `tunesmith eval` and `export gguf` work on:
Together's official client against tests/fake_together.py, whose completed job's result is the
quick start's real adapter (trained on the embedded model), packed as Together packs a download."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from fake_together import FakeTogether  # noqa: E402
from tunesmith import cloud  # noqa: E402
from tunesmith.cloud.fetch import fetch  # noqa: E402
from tunesmith.config import load_config  # noqa: E402
from tunesmith.errors import TunesmithError, UserError  # noqa: E402
from tunesmith.export.merge import merge_run  # noqa: E402

pytestmark = pytest.mark.integration
KEY = "tok-fetch-9d2e7c51aa"


def packed(folder: Path, names: tuple[str, ...], change: str | None = None) -> bytes:
    """`names` from `folder` in a gzipped tar under one folder, as a download arrives; `change` names
    a weight to nudge (a merge that is not this adapter's)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            data = (folder / name).read_bytes()
            if change and name.endswith(".safetensors"):
                from safetensors.torch import load, save

                tensors = load(data)
                tensors[change] = tensors[change] * 1.01
                data = save(tensors)
            info = tarfile.TarInfo(f"model-output/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_hosted_job_is_fetched_resumed_after_a_broken_download_then_evaluated_and_exported(
    quickstart_run, tmp_path, monkeypatch
):
    run, _ = quickstart_run
    fake = FakeTogether(KEY)
    monkeypatch.setenv("TOGETHER_BASE_URL", fake.start())
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    try:
        settings = yaml.safe_load((run / "config.yaml").read_text())
        settings.update(name="hosted", output_dir=str(tmp_path / "runs"))
        (tmp_path / "hosted.yaml").write_text(yaml.safe_dump(settings))
        job = cloud.train(load_config(tmp_path / "hosted.yaml"))
        with pytest.raises(UserError, match="is pending; fetch it once it has completed"):
            fetch(job.run_dir)
        fake.jobs[str(job.job_id)]["status"] = "completed"
        fake.results["adapter"] = packed(run / "adapter", ("adapter_config.json", "adapter_model.safetensors"))
        part = job.run_dir / "download" / f"{job.job_id}-adapter.part"
        half = fake.stall_after = len(fake.results["adapter"]) // 2  # half arrives, then the fetch is killed
        killed = subprocess.Popen([sys.executable, "-m", "tunesmith", "cloud", "fetch", str(job.run_dir)])
        for _ in range(600):
            if part.is_file() and part.stat().st_size >= half:
                break
            time.sleep(0.1)
        killed.kill()
        killed.wait()
        fake.release.set()
        assert not (job.run_dir / "adapter").exists()
        assert part.stat().st_size == half
        fake.drop_after = len(fake.results["adapter"]) // 4  # the next one loses its connection: said, resumable
        with pytest.raises(TunesmithError, match="stopped after .* run tunesmith cloud fetch again"):
            fetch(job.run_dir)
        assert part.stat().st_size == half + len(fake.results["adapter"]) // 4
        fetch(job.run_dir)
        downloads = [path for method, path in fake.requests if path == "/v1/finetune/download"]
        assert len(downloads) == 3  # killed, broken, resumed to the end (none while the job was pending)
        adapter = job.run_dir / "adapter"
        assert (adapter / "adapter_model.safetensors").read_bytes() == (
            run / "adapter" / "adapter_model.safetensors"
        ).read_bytes()
        assert json.loads((adapter / "tunesmith.json").read_text())["chat_template"]
        assert not (job.run_dir / "download").exists()
        assert json.loads((job.run_dir / "manifest.json").read_text())["status"] == "completed"
        with pytest.raises(UserError, match="already fetched"):
            fetch(job.run_dir)
        done = subprocess.run(
            [sys.executable, "-m", "tunesmith", "eval", str(job.run_dir), "--no-base"],  # tuned only: what is compared
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # the provider's merged weights, on request: checked against base + adapter before they are kept
        local = tmp_path / "local"
        shutil.copytree(run, local, ignore=shutil.ignore_patterns("checkpoints", "merged", "export"))
        merged = merge_run(local, log=lambda _: None)
        model_files = ("config.json", "generation_config.json", "model.safetensors")
        fake.results["merged"] = packed(merged, model_files, change="model.layers.3.mlp.down_proj.weight")
        with pytest.raises(TunesmithError, match="down_proj.weight differs from base \\+ adapter"):
            fetch(job.run_dir, merged=True)
        assert not (job.run_dir / "merged").exists()
        fake.results["merged"] = packed(merged, model_files)
        fetch(job.run_dir, merged=True)
        record = json.loads((job.run_dir / "merged" / "tunesmith.json").read_text())
        assert record["merged_from"] == f"together:{job.job_id}" and record["chat_template"]
        export = ["export", "gguf", str(job.run_dir), "--type", "f16"]
        done = subprocess.run(
            [sys.executable, "-m", "tunesmith", *export], capture_output=True, text=True, timeout=1800
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "already merged" in done.stdout  # export took the fetched merge as the run's
        results = json.loads((job.run_dir / "eval" / "results.json").read_text())["tuned"]
        quick = json.loads((run / "eval" / "results.json").read_text())["tuned"]
        assert results["json_exact"] == quick["json_exact"]  # the same adapter, evaluated the same way
        assert results["loss"] == pytest.approx(quick["loss"], rel=1e-4)
        assert (job.run_dir / "export" / "model-f16.gguf").stat().st_size > 100 * 2**20
        for path in job.run_dir.rglob("*"):
            assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    finally:
        fake.stop()
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
