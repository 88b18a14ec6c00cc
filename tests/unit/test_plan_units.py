"""`tunesmith plan` and `doctor` state memory in one unit, GiB (2^30 bytes): a `--gpu` is sized by the
memory nvidia-smi reports for it, `--vram` is GiB, and the same capacity given either way is the same
target with the same recommendation and the same printed figures."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli.main import main
from tunesmith.plan import gpus

GIB = 2**30
H100_MIB = 81559  # memory.total of an H100 80GB HBM3 in nvidia-smi (MiB)
H100_GIB = H100_MIB / 1024  # 79.6484375


@pytest.fixture()
def config_file(tmp_path, tiny_model_dir, chat_jsonl):
    path = tmp_path / "run.yaml"
    path.write_text(
        f"model:\n  name: {tiny_model_dir}\ndata:\n  train: {chat_jsonl}\ntemplate:\n  max_length: 64\n"
        "train:\n  batch_size: 4\n",
        encoding="utf-8",
    )
    return path


def _plan_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _plan_text(capsys, *args) -> str:
    capsys.readouterr()
    assert main(["plan", *args]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_gpu_h100_80gb_and_the_same_vram_in_gib_are_the_same_target(config_file, capsys):
    by_name = _plan_json(capsys, str(config_file), "--gpu", "H100-80GB")
    by_vram = _plan_json(capsys, str(config_file), "--vram", str(H100_GIB))
    assert by_name["target"]["bytes"] == by_vram["target"]["bytes"] == H100_MIB * 2**20
    assert by_name["target"]["gib"] == by_vram["target"]["gib"] == 79.65
    # the same settings recommended and the same bytes: the traced activation estimate is repeatable
    # (plan/activations.py keeps every tensor it tallies alive, so no storage key is reused)
    assert by_name["recommended"] == by_vram["recommended"] and by_name["recommended"]["fits"]
    assert by_name["estimates"]["lora"]["total_bytes"] == by_vram["estimates"]["lora"]["total_bytes"]


def test_the_printed_plan_states_gib_for_both_and_the_data_sheet_figure_for_the_gpu(config_file, capsys):
    by_name = _plan_text(capsys, str(config_file), "--gpu", "H100")
    by_vram = _plan_text(capsys, str(config_file), "--vram", str(H100_GIB))
    assert "Fits H100 (80 GB card: 79.6 GiB as nvidia-smi reports): method" in by_name
    assert f"Fits {H100_GIB:g} GiB (--vram): method" in by_vram and "74.5" not in by_name + by_vram
    assert "GiB (2^30 bytes)" in by_name and "GiB (2^30 bytes)" in by_vram  # the table's unit
    assert " GB)" not in by_vram and "GB:" not in by_name  # no figure in the ambiguous unit
    advice = [text.split("Fits")[1].split("method")[1].split("Time:")[0] for text in (by_name, by_vram)]
    assert advice[0] == advice[1]  # the same settings (time differs: a --vram has no known throughput)


def test_a_plan_for_this_cpu_sizes_against_available_memory_and_times_from_a_measured_rate(config_file, capsys):
    plan = _plan_json(capsys, str(config_file), "--all-methods")
    assert plan["target"]["device"] == "cpu" and plan["target"]["bytes"] > 0
    assert "this machine's available memory" in plan["target"]["name"]
    assert {"lora", "full"} <= set(plan["estimates"]) and plan["recommended"]["fits"]
    assert plan["time"]["steps_per_epoch"] > 0 and "TFLOP/s effective" in plan["time"]["source"]  # a measured rate


def test_help_states_the_unit(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "GiB (2^30 bytes)" in text and "--vram GIB" in text


def test_every_known_gpu_is_sized_in_mib_from_nvidia_smi_and_close_to_its_data_sheet_figure():
    for gpu in gpus.KNOWN_GPUS.values():
        assert gpu.memory_bytes == gpu.memory_mib * 2**20
        # the data sheet's "GB" is a name: reported capacity is within 8% of it read as GiB or as 10^9 bytes
        assert 0.92 * gpu.marketed_gb <= gpu.memory_gib <= 1.08 * gpu.marketed_gb, gpu
    assert gpus.find_gpu("H100-80GB") is gpus.find_gpu("H100") is gpus.find_gpu("NVIDIA H100 80GB HBM3")
    assert gpus.find_gpu("A100-80GB").memory_gib == 80.0 and gpus.find_gpu("T4").memory_gib == 15.0


def test_doctor_prints_gib(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "free disk: cache" in out and " GiB" in out and " GB" not in out
    assert main(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert set(facts["free_disk_gib"]) == {"cache", "runs"} and facts["cache_dir"] == str(tmp_path / "cache")
