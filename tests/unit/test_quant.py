"""`tunesmith.models.quant`: whether bitsandbytes runs here is tried, not assumed, and said in one line
by `doctor`; a quantized base keeps no checkpoint mapping alive."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from tunesmith.models import quant


def test_a_missing_bitsandbytes_is_the_reason_with_the_install_line(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "bitsandbytes":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    reason = quant.support.__wrapped__("cpu")
    assert "not installed" in reason and 'pip install "tunesmith[quant]"' in reason


def test_a_backend_that_fails_is_the_reason_in_its_own_words(monkeypatch):
    def broken(device):
        raise RuntimeError("no kernel for this CPU\nsecond line")

    monkeypatch.setattr(quant, "_probe", broken)
    reason = quant.support.__wrapped__("cpu")
    assert reason.endswith("(RuntimeError: no kernel for this CPU)") and "\n" not in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU wording; a GPU machine says 'this GPU'")
@pytest.mark.parametrize("reason", [None, "bitsandbytes 0.50.2 cannot quantize on cpu here (RuntimeError: x)"])
def test_doctor_says_whether_quantized_bases_run_here(reason, monkeypatch):
    from tunesmith.plan import doctor

    monkeypatch.setattr(quant, "support", lambda device: reason)
    notes = doctor.diagnose(None)["advice"]
    line = [n for n in notes if "qlora" in n]
    assert len(line) == 1
    if reason is None:
        assert "quantizes on this CPU" in line[0] and "paged_adamw_8bit needs a GPU" in line[0]
    else:
        assert line[0] == f"qlora, load_in_8bit and 8-bit optimizers cannot run here: {reason}"


def test_own_storage_copies_tensors_out_of_a_shared_buffer_and_keeps_ties():
    """Tensors that are views into one big buffer (as into a memory-mapped checkpoint) get storage of
    their own; a tied weight stays one parameter; int8/uint8 codes are left alone."""
    buffer = torch.zeros(1000)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10, bias=False))
    model[0].weight = torch.nn.Parameter(buffer[:80].view(10, 8))
    model[1].weight = model[0].weight  # tied
    model.register_buffer("codes", torch.zeros(4, dtype=torch.uint8))
    codes = model.codes
    quant.own_storage(model)
    assert model[0].weight.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    assert model[0].weight.untyped_storage().nbytes() == 80 * 4
    assert model[1].weight is model[0].weight and model.codes is codes
