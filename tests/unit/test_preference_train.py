"""Preference runs on a tiny model: pairs encoded as at inference, packed without contamination,
scored against a reference that is the model as the run started (an SFT adapter when one is given),
rewards in metrics.jsonl, held-out pairs compared, exact resume, and the refusals."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tunesmith
from tunesmith.config import load_config
from tunesmith.data.preference import KtoSample, PreferencePair
from tunesmith.data.types import IGNORE_INDEX, Message, Provenance
from tunesmith.errors import UserError
from tunesmith.formatting.collate import collate_scored
from tunesmith.formatting.encode import build_template, end_of_turn_markers
from tunesmith.formatting.pairs import encode_preference, prompt_ids, with_partners
from tunesmith.training import checkpoints as ck
from tunesmith.training.preference import score
from tunesmith.training.preference_loss import sequence_logps

WHERE = Provenance("prefs.jsonl", 3)
PROMPT = (Message("system", "Answer briefly."), Message("user", "What is 2 plus 2?"))


def _pair(good: str = "4", bad: str = "5, I think") -> PreferencePair:
    return PreferencePair(PROMPT, (Message("assistant", good),), (Message("assistant", bad),), WHERE)


@pytest.fixture(scope="module")
def smol(smol_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    template = build_template(tokenizer, "model")
    return tokenizer, template, end_of_turn_markers(tokenizer, template)


def _trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def test_a_pair_shares_its_prompt_ids_and_trains_each_answer_through_the_stop_token(smol):
    tokenizer, template, markers = smol
    (scored,) = encode_preference(_pair(), template, tokenizer, objective="dpo", max_length=256, markers=markers)
    chosen, rejected = scored.sequences
    assert prompt_ids(chosen) == prompt_ids(rejected)
    prompt = template.render([m.as_dict() for m in PROMPT], add_generation_prompt=True)
    assert tokenizer.decode(prompt_ids(chosen)) == prompt  # the generation prompt, as at inference
    assert _trained_text(tokenizer, chosen) == "4<|im_end|>"
    assert _trained_text(tokenizer, rejected) == "5, I think<|im_end|>"


def test_kto_splits_a_pair_into_a_good_and_a_bad_row_each_with_another_rows_answer(smol):
    tokenizer, template, markers = smol
    rows = [
        row
        for i in range(3)
        for row in encode_preference(
            _pair(str(i), f"wrong {i}"), template, tokenizer, objective="kto", max_length=256, markers=markers
        )
    ]
    assert [r.desirable for r in rows] == [True, False] * 3
    partnered = with_partners(rows, seed=1, max_length=256)
    answers = [_trained_text(tokenizer, r.sequences[0]) for r in partnered]
    for row in partnered:
        own, mismatched = row.sequences
        assert prompt_ids(mismatched) == prompt_ids(own)
        other = _trained_text(tokenizer, mismatched)
        assert other in answers and other != _trained_text(tokenizer, own)


def test_a_kto_row_in_a_pair_objective_is_refused_by_its_row(smol):
    tokenizer, template, markers = smol
    row = KtoSample(PROMPT, (Message("assistant", "4"),), True, WHERE)
    with pytest.raises(UserError, match=r"prefs.jsonl:3: a KTO row .* use train.objective: kto"):
        encode_preference(row, template, tokenizer, objective="dpo", max_length=256, markers=markers)


def test_an_answer_cut_by_max_length_is_refused_not_scored_in_part(smol):
    tokenizer, template, markers = smol
    with pytest.raises(UserError, match="max_length is 20"):
        encode_preference(_pair(bad="word " * 40), template, tokenizer, objective="dpo", max_length=20, markers=markers)


def test_packed_sequences_score_as_they_do_alone(tiny_model_dir):
    """Four sequences of two pairs in one packed row: each sequence's log-probability equals a forward
    pass of that sequence alone (no attention across sequences, positions restart)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(0)

    def sequence(n: int, prompt: int):
        ids = torch.randint(10, 200, (n,), generator=generator).tolist()
        return ids, [IGNORE_INDEX] * prompt + ids[prompt:]

    features = [{"sequences": [sequence(9, 4), sequence(7, 4)]}, {"sequences": [sequence(12, 6), sequence(5, 3)]}]
    with torch.no_grad():
        packed = score(model, collate_scored(features)).total
        alone = []
        for k in range(2):
            for feature in features:
                ids, labels = feature["sequences"][k]
                logits = model(torch.tensor([ids])).logits
                alone.append(sequence_logps(logits, torch.tensor([labels])).total.item())
    assert torch.allclose(packed, torch.tensor(alone), atol=1e-5)


def _pairs_file(path: Path, n: int) -> Path:
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
            "chosen": [{"role": "assistant", "content": f"{i + i}"}],
            "rejected": [{"role": "assistant", "content": f"{i + i + 1}, probably"}],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _settings(root: Path, model_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.train={root / 'train.jsonl'}",
        f"data.validation={root / 'val.jsonl'}",
        f"model.name={model_dir}",
        f"output_dir={root / 'runs'}",
        f"name={name}",
        "train.batch_size=2",
        "train.learning_rate=5e-3",
        "lora.r=4",
        *extra,
    ]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    _pairs_file(root / "train.jsonl", 8)
    _pairs_file(root / "val.jsonl", 4)
    return root


@pytest.fixture(scope="module")
def dpo_run(pairs, tiny_model_dir):
    """DPO, 2 epochs of 4 steps, a checkpoint every 2 steps."""
    config = load_config(
        None,
        _settings(
            pairs,
            tiny_model_dir,
            "dpo",
            "train.objective=dpo",
            "train.epochs=2",
            "train.save_steps=2",
            "train.keep_checkpoints=4",
            "lora.dropout=0.1",
        ),
    )
    return tunesmith.train(config, console=_quiet()).run_dir


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_dpo_run_logs_rewards_and_compares_held_out_pairs_with_its_reference(dpo_run):
    records = _records(dpo_run)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert len(train) == 8 and len(evals) == 2
    assert train[0]["rewards/margin"] == 0.0  # the first step's policy is the reference
    assert all({"rewards/accuracy", "rewards/chosen", "logps/rejected"} <= r.keys() for r in train)
    assert train[-1]["rewards/margin"] > 0
    assert "eval_rewards/accuracy" in evals[-1]
    held = json.loads((dpo_run / "eval" / "preference.json").read_text())
    assert held["pairs"] == 4 and held["beta"] == 0.1
    assert held["reference"]["logps_chosen"] != held["tuned"]["logps_chosen"]
    assert held["margin"] > 0
    stored = load_file(dpo_run / "reference_logps.safetensors")
    assert stored["train"].shape == (8, 2) and stored["validation"].shape == (4, 2)
    manifest = json.loads((dpo_run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and "reference_logps.safetensors" in json.dumps(manifest)


def test_a_dpo_run_resumes_exactly(dpo_run, tmp_path):
    run = tmp_path / "runs" / "copy"
    shutil.copytree(dpo_run, run)
    shutil.rmtree(run / "adapter")
    (run / "manifest.json").unlink()
    for step, folder in ck.checkpoint_steps(run / "checkpoints"):
        if step > 6:
            shutil.rmtree(folder)
    result = tunesmith.train(run, resume=True, console=_quiet())
    assert result.status == "completed"
    left = load_file(run / "adapter" / "adapter_model.safetensors")
    right = load_file(dpo_run / "adapter" / "adapter_model.safetensors")
    assert max((left[k] - right[k]).abs().max().item() for k in left) <= 1e-6
    keys = ("step", "loss", "eval_loss", "rewards/margin", "eval_rewards/accuracy")
    assert [{k: r.get(k) for k in keys} for r in _records(run)] == [
        {k: r.get(k) for k in keys} for r in _records(dpo_run)
    ]


def test_a_run_from_an_adapter_keeps_that_adapter_as_its_reference(dpo_run, pairs, tiny_model_dir):
    """SFT-then-DPO: the reference is the adapter the run starts from, not the base with it switched off."""
    config = load_config(
        None,
        _settings(
            pairs, tiny_model_dir, "orpo-on", "train.objective=orpo", "train.max_steps=1", f"model.adapter={dpo_run}"
        ),
    )
    run = tunesmith.train(config, console=_quiet()).run_dir
    stored = load_file(run / "reference_logps.safetensors")
    assert set(stored) == {"validation"}  # orpo needs no reference to train; held-out pairs are compared with it
    first = json.loads((dpo_run / "eval" / "preference.json").read_text())
    started_from = stored["validation"][:, 0].mean().item()
    assert abs(started_from - first["tuned"]["logps_chosen"]) < 1e-3  # the DPO run's trained adapter
    assert abs(started_from - first["reference"]["logps_chosen"]) > 1e-2  # not the base


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.objective=dpo", "data.train={chat}"], r"chat.jsonl:1: a chat row in a train.objective: dpo run"),
        (["train.objective=dpo", "model.adapter={root}"], r"model.adapter: .* holds no LoRA adapter"),
    ],
)
def test_preference_runs_refuse_in_one_line_and_leave_no_folder(pairs, tiny_model_dir, chat_jsonl, extra, message):
    values = [e.format(chat=chat_jsonl, root=pairs) for e in extra]
    config = load_config(None, _settings(pairs, tiny_model_dir, "refused", *values))
    with pytest.raises(UserError, match=message):
        tunesmith.train(config, console=_quiet())
    assert not (pairs / "runs" / "refused").exists()


def test_an_adapter_start_with_a_full_fine_tune_is_a_config_error(pairs):
    with pytest.raises(UserError, match="model.adapter trains an existing LoRA adapter on"):
        load_config(None, [f"data.train={pairs / 'train.jsonl'}", "method=full", "model.adapter=runs/x"])
