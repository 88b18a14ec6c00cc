"""The quick start's tuned run as llama.cpp k-quants and as a GGUF adapter, checked in real llama.cpp.

- q4_k_m and q5_k_m (llama.cpp's own quantizer through llama-cpp-python) answer the bundled test rows
  through llama.cpp's chat completion, with the template carried in the GGUF, scoring json_exact
  within 0.05 of the f16 export on the same rows;
- every tuned tensor keeps what fine-tuning changed (the embedded base comes from a Q4_1 GGUF, and
  llama.cpp's own type choice loses the change in some tensors: the export says so and fixes them);
- the adapter GGUF on the base GGUF gives the merged f16 GGUF's greedy tokens (16, probe prompts);
- an importance matrix reaches llama.cpp's quantizer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_gguf_llamacpp import llama_greedy
from transformers import AutoTokenizer

from tunesmith.evaluate.metrics import json_exact
from tunesmith.export import gguf_fidelity
from tunesmith.export.gguf import plan_export, write_gguf
from tunesmith.export.merge import probe_prompts
from tunesmith.runfolder import read_record

pytestmark = [pytest.mark.integration, pytest.mark.llamacpp]

BUNDLED_TEST = Path(__file__).parents[2] / "src" / "tunesmith" / "data" / "bundled" / "smart_home" / "test.jsonl"
QUANTS = ("q4_k_m", "q5_k_m")


def tunesmith(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, timeout=1800)


def llama(path: Path, **kwargs):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, seed=0, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def exported(quickstart_run, tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    run, _ = quickstart_run
    copy = tmp_path_factory.mktemp("quantized") / "qs"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    done = {}
    for out_type in ("f16", *QUANTS):
        done[out_type] = tunesmith("export", "gguf", str(copy), "--type", out_type)
        assert done[out_type].returncode == 0, done[out_type].stderr[-3000:]
    done["adapter"] = tunesmith("export", "gguf", str(copy), "--adapter")
    assert done["adapter"].returncode == 0, done["adapter"].stderr[-3000:]
    return copy, done


def _json_exact(path: Path, rows: list[dict]) -> tuple[float, int]:
    cpp = llama(path)
    try:
        score, stopped = 0.0, 0
        for row in rows:
            reply = cpp.create_chat_completion(messages=row["messages"][:-1], temperature=0.0, max_tokens=96)
            choice = reply["choices"][0]
            stopped += choice["finish_reason"] == "stop"
            score += json_exact(choice["message"]["content"] or "", row["messages"][-1]["content"])
    finally:
        cpp.close()
    return score / len(rows), stopped


def test_k_quants_answer_the_test_rows_within_005_of_f16(exported):
    run, _ = exported
    rows = [json.loads(line) for line in BUNDLED_TEST.read_text().splitlines()]
    results = {t: _json_exact(run / "export" / f"model-{t}.gguf", rows) for t in ("f16", *QUANTS)}
    for out_type, (score, stopped) in results.items():
        size = (run / "export" / f"model-{out_type}.gguf").stat().st_size / 2**20
        print(
            f"{out_type}: json_exact {score:.3f} on {len(rows)} rows, {stopped} stopped at <|im_end|>, {size:.1f} MiB"
        )
    f16, _ = results["f16"]
    assert f16 >= 0.9
    for out_type in QUANTS:
        score, stopped = results[out_type]
        assert abs(score - f16) <= 0.05, (out_type, score, f16)
        assert stopped >= len(rows) - 1
        size = (run / "export" / f"model-{out_type}.gguf").stat().st_size
        assert size < 0.5 * (run / "export" / "model-f16.gguf").stat().st_size


def test_every_tuned_tensor_keeps_what_fine_tuning_changed_and_the_export_says_what_it_fixed(exported):
    run, done = exported
    for out_type in QUANTS:
        out = done[out_type].stdout
        assert f"quantizing to {out_type.upper()} with llama.cpp's llama_model_quantize" in out, out
        assert "checked: 210 tuned tensors keep" in out, out
    # the embedded base sits on Q4_1's grid: llama.cpp's own q5_k_m choice rounds many changes away
    assert "lost what fine-tuning changed" in done["q5_k_m"].stdout
    from tunesmith.models.load import resolve_model

    record = read_record(run)
    base = Path(resolve_model(record.base_model).path)
    plan = plan_export(
        base,
        run / "adapter",
        run / "export" / "x.gguf",
        "f16",
        chat_template=record.chat_template,
        end_of_turn=list(record.end_of_turn),
        name="x",
    )
    for out_type in QUANTS:
        found = gguf_fidelity.measure(run / "export" / f"model-{out_type}.gguf", plan, run / "merged", base)
        judged = [k for k in found if k.judged]
        assert len(judged) == 210 and all(k.faithful for k in judged), [k for k in judged if not k.faithful][:3]


def test_the_adapter_on_the_base_gives_the_merged_models_greedy_tokens(exported):
    run, done = exported
    adapter, base = run / "export" / "adapter-f16.gguf", run / "export" / "base-f16.gguf"
    print(f"adapter {adapter.stat().st_size / 2**20:.1f} MiB on base {base.stat().st_size / 2**20:.1f} MiB")
    assert adapter.stat().st_size < 0.05 * base.stat().st_size
    assert "checked with llama.cpp: adapter-f16.gguf loads onto base-f16.gguf" in done["adapter"].stdout
    record = read_record(run)
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in probe_prompts(record)]
    rows = [json.loads(line) for line in BUNDLED_TEST.read_text().splitlines()[:4]]
    prompts += [
        tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=False)
        for r in rows
    ]
    stop = {tokenizer.convert_tokens_to_ids(m) for m in record.end_of_turn}
    with_adapter = llama(base, lora_path=str(adapter), logits_all=True)
    merged = llama(run / "export" / "model-f16.gguf", logits_all=True)
    plain = llama(base, logits_all=True)
    try:
        differs = 0
        for prompt in prompts:
            ours = llama_greedy(with_adapter, prompt, 16, stop)
            assert ours == llama_greedy(merged, prompt, 16, stop), tokenizer.decode(prompt)
            differs += ours != llama_greedy(plain, prompt, 16, stop)
    finally:
        for model in (with_adapter, merged, plain):
            model.close()
    assert differs >= len(prompts) - 1  # the adapter changes what the base says
    modelfile = tunesmith("export", "ollama", str(run), "--adapter")
    assert modelfile.returncode == 0, modelfile.stderr
    text = (run / "export" / "Modelfile").read_text()
    assert "FROM ./base-f16.gguf\nADAPTER ./adapter-f16.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_an_importance_matrix_reaches_llama_cpps_quantizer(tmp_path, tiny_model_dir):
    def export(name: str, imatrix: Path | None) -> Path:
        plan = plan_export(
            tiny_model_dir,
            tiny_model_dir,
            tmp_path / name,
            "q4_k_m",
            chat_template="{{ 'x' }}",
            end_of_turn=["<|end|>"],
            name="t",
            imatrix=imatrix,
        )
        return write_gguf(plan, tiny_model_dir, log=lambda _: None)

    plain = export("plain.gguf", None)
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(tmp_path / "imatrix.gguf"), "llama")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", ["chat.txt"])
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_uint32("imatrix.chunk_size", 512)
    weights = [t for t in gguf.GGUFReader(str(plain)).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    for tensor in weights:
        writer.add_tensor(tensor.name + ".in_sum2", rng.random((1, int(tensor.shape[0])), dtype=np.float32) * 100)
        writer.add_tensor(tensor.name + ".counts", np.array([[10.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    weighted = export("weighted.gguf", tmp_path / "imatrix.gguf")
    reader = gguf.GGUFReader(str(weighted))
    assert reader.get_field("quantize.imatrix.entries_count").contents() == len(weights)
    assert weighted.read_bytes() != plain.read_bytes()
    llama(weighted).close()  # loads in llama.cpp
