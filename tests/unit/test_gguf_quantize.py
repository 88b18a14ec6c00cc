"""llama.cpp's quantizer around tunesmith: the importance matrix read and checked as llama-quantize
reads it, and the check that a quantized tensor keeps what fine-tuning changed (gguf_fidelity)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from tunesmith.errors import TunesmithError, UserError
from tunesmith.export import gguf_fidelity as fidelity
from tunesmith.export import quantize
from tunesmith.export.gguf import plan_export, write_gguf

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
T = gguf.GGMLQuantizationType


def write_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]], *, metadata: bool = True) -> Path:
    """An importance matrix as llama-imatrix writes it: <name>.in_sum2 (n_mat x ne0) and <name>.counts (n_mat)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("imatrix")
    if metadata:
        writer.add_array("imatrix.datasets", ["train.txt"])
        writer.add_uint32("imatrix.chunk_count", 4)
        writer.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        writer.add_tensor(name + ".in_sum2", sums.astype(np.float32))
        writer.add_tensor(name + ".counts", counts.astype(np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_importance_is_the_sum_over_the_count_per_expert_and_one_where_nothing_was_counted(tmp_path):
    sums = np.array([[2.0, 4.0, 6.0], [1.0, 1.0, 1.0]])
    path = write_imatrix(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": (sums, np.array([2.0, 0.0]))})
    values = quantize.read_imatrix(path)["blk.0.ffn_up.weight"]
    np.testing.assert_array_equal(values, [1.0, 2.0, 3.0, 1.0, 1.0, 1.0])


def test_unreadable_importance_matrices_are_refused_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"^--imatrix .*nope.gguf: file not found$"):
        quantize.find_quantizer("q4_k_m", tmp_path / "nope.gguf")
    bare = write_imatrix(tmp_path / "bare.gguf", {"a.weight": (np.ones((1, 4)), np.ones(1))}, metadata=False)
    with pytest.raises(UserError, match=r"no imatrix.datasets, .*not an importance matrix written by llama-imatrix"):
        quantize.find_quantizer("q4_k_m", bare)
    legacy = tmp_path / "imatrix.dat"
    legacy.write_bytes(b"\x01\x00\x00\x00 legacy")
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize
    convert = r"`llama-imatrix --in-file imatrix.dat -o imatrix.gguf`$"
    with pytest.raises(UserError, match=r"legacy .dat format .* " + convert):
        quantize.find_quantizer("q4_k_m", legacy)


def test_without_any_quantizer_the_error_says_how_to_get_one(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(quantize, "has_python_quantizer", lambda: False)
    with pytest.raises(UserError, match=r"needs llama.cpp's quantizer, and none is here: .*tunesmith\[gguf\].*q8_0"):
        plan_export(
            tiny_model_dir,
            tiny_model_dir,
            tmp_path / "x.gguf",
            "q4_k_m",
            chat_template=CHATML,
            end_of_turn=["<|end|>"],
            name="x",
        )
    assert not (tmp_path / "x.gguf").exists()


def test_an_importance_matrix_for_another_model_is_named_before_llama_cpp_sees_it(tmp_path, tiny_model_dir):
    f16 = tmp_path / "m.gguf"
    plan = plan_export(
        tiny_model_dir, tiny_model_dir, f16, "f16", chat_template=CHATML, end_of_turn=["<|end|>"], name="m"
    )
    write_gguf(plan, tiny_model_dir, log=lambda _: None)
    right = write_imatrix(tmp_path / "right.gguf", {"blk.0.ffn_up.weight": (np.ones((1, 32)), np.ones(1))})
    assert quantize.check_imatrix_fits(right, f16) == 1
    wide = write_imatrix(tmp_path / "wide.gguf", {"blk.0.ffn_up.weight": (np.ones((1, 48)), np.ones(1))})
    with pytest.raises(UserError, match=r"made for another model: blk.0.ffn_up.weight has 48 values, .* 32 columns"):
        quantize.check_imatrix_fits(wide, f16)
    other = write_imatrix(tmp_path / "other.gguf", {"model.layers.0.mlp.up_proj": (np.ones((1, 32)), np.ones(1))})
    with pytest.raises(UserError, match=r"none of its 1 entries names a tensor of this one"):
        quantize.check_imatrix_fits(other, f16)


# ---------------------------------------------------------------- does quantization keep the fine-tune


def _quantized(array: np.ndarray, qtype: T) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype).reshape(array.shape)


def test_a_base_already_on_a_quantization_grid_pulls_the_change_back_and_kept_shows_it():
    """The embedded SmolLM2 comes from a Q4_1 GGUF: its weights sit on Q4_1's grid. Re-quantizing the
    tuned weights to that grid keeps almost none of a LoRA-sized change; rounding on a finer grid
    keeps it (kept near 1), and the figure's noise says it could be measured."""
    rng = np.random.default_rng(0)
    base = _quantized(rng.normal(0, 0.05, (256, 256)).astype(np.float32), T.Q4_1)
    tuned = base + rng.normal(0, 0.0005, base.shape).astype(np.float32)  # ~1% of |W|
    snapped, snapped_noise = fidelity.kept_fraction(_quantized(tuned, T.Q4_1), tuned, base)
    kept, noise = fidelity.kept_fraction(_quantized(tuned, T.Q8_0), tuned, base)
    assert snapped < 0.2 and snapped_noise < fidelity.NOISE_LIMIT
    assert 0.9 < kept < 1.1 and noise < fidelity.NOISE_LIMIT
    assert fidelity.kept_fraction(base, base, base) is None


def test_unfaithful_tensors_get_the_next_fallback_while_the_rest_stay_as_llama_cpp_chose():
    calls: list[list[tuple[str, str]]] = []
    states = iter(
        [
            {"a": (0.1, "q5_k"), "b": (1.0, "q6_k")},
            {"a": (1.6, "q5_0"), "b": (1.0, "q6_k")},
            {"a": (1.0, "q8_0"), "b": (1.0, "q6_k")},
        ]
    )

    def measure():
        return [fidelity.Kept(name, kept, 0.01, qtype) for name, (kept, qtype) in next(states).items()]

    lines: list[str] = []
    changed = fidelity.faithful_quantization(
        calls.append, measure, lambda: {"a": "q5_k", "b": "q6_k", "c": "q4_k"}, lines.append
    )
    assert changed == {"a": "q8_0"}
    assert calls[0] == []
    assert dict((p.strip("^$").replace("\\", ""), t) for p, t in calls[1]) == {"a": "q5_0", "b": "q6_k", "c": "q4_k"}
    assert dict((p.strip("^$").replace("\\", ""), t) for p, t in calls[2]) == {"a": "q8_0", "b": "q6_k", "c": "q4_k"}
    assert "1 tensors lost" in lines[0] and lines[-1].startswith("checked: 2 tuned tensors keep 1.00..1.00")


def test_a_change_too_small_to_measure_is_not_judged_and_one_lost_even_at_q8_0_is_refused():
    assert fidelity.Kept("x", 0.0, 0.5, "q4_k").faithful  # noise 0.5: cannot tell
    always_lost = lambda: [fidelity.Kept("a", 0.1, 0.01, "q8_0")]  # noqa: E731
    with pytest.raises(TunesmithError, match="even with q8_0 tensors; nothing was kept; export --type f16 or q8_0"):
        fidelity.faithful_quantization(lambda overrides: None, always_lost, lambda: {"a": "q4_k"}, lambda _: None)
