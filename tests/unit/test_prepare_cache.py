"""The processed-data cache: an identical second run hits; changing data, template, tokenizer or options misses."""

from __future__ import annotations

import json
import shutil

import pytest
from rich.console import Console

from tunesmith.config import load_config
from tunesmith.training.prepare import prepare


@pytest.fixture()
def setup(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(20)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data, tiny_model_dir


def run(data, model, *extra):
    config = load_config(None, [f"data.train={data}", f"model.name={model}", *extra])
    return prepare(config, Console(quiet=True)).splits["train"]


def test_second_identical_run_hits_and_gives_the_same_examples(setup):
    data, model = setup
    first, second = run(data, model), run(data, model)
    assert (first.cached, second.cached) == (False, True)
    assert [e.input_ids for e in first.examples] == [e.input_ids for e in second.examples]
    assert [e.labels for e in first.examples] == [e.labels for e in second.examples]
    assert first.report == second.report


def test_changing_any_input_misses(setup, tmp_path):
    data, model = setup
    run(data, model)
    assert not run(data, model, "template.max_length=64").cached
    assert not run(data, model, "template.train_on=all").cached
    template = tmp_path / "plain.jinja"
    template.write_text(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}",
        encoding="utf-8",
    )
    assert not run(data, model, f"template.chat_template={template}").cached
    other_tokenizer = tmp_path / "other-model"
    shutil.copytree(model, other_tokenizer)
    definition = json.loads((other_tokenizer / "tokenizer.json").read_text())
    definition["model"]["merges"] = definition["model"]["merges"][:-1]  # one merge fewer: another tokenizer
    (other_tokenizer / "tokenizer.json").write_text(json.dumps(definition))
    assert not run(data, other_tokenizer).cached
    with data.open("a") as handle:
        handle.write(
            json.dumps({"messages": [{"role": "user", "content": "new"}, {"role": "assistant", "content": "row"}]})
            + "\n"
        )
    assert not run(data, model).cached
    assert run(data, model).cached


def test_every_example_field_survives_the_cache(tmp_path, monkeypatch):
    from tunesmith.formatting import cache
    from tunesmith.formatting.encode import Example

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    examples = [
        Example([1, 1, 5], [-100, -100, 5], 1, True, "a.jsonl:3", False, 2, True),
        Example([7, 8], [-100, 8], 1, False, "a.jsonl:4", True, 0, False),
    ]
    cache.store("k", examples, {"rows": 2})
    assert cache.load("k").examples == examples


@pytest.mark.parametrize("labels_are_ids", [True, False])
def test_flattened_examples_come_back_identical(labels_are_ids):
    """The cache's array round trip, including trained runs that touch both ends of an example
    (so a run continues across the boundary in the flat arrays) and examples that train nothing."""
    import random

    from tunesmith.formatting.cache import _flatten, _unflatten
    from tunesmith.formatting.encode import Example

    rng = random.Random(7)
    examples = []
    for i in range(300):
        ids = [rng.randrange(50_000) for _ in range(rng.randrange(1, 40))]
        labels = [t if rng.random() < 0.5 else -100 for t in ids]
        if i % 3 == 0:
            labels[0], labels[-1] = ids[0], ids[-1]
        if i % 7 == 0:
            labels = [-100] * len(ids)
        if not labels_are_ids and i == 150:
            labels[-1] = ids[-1] + 1
        examples.append(Example(ids, labels, sum(x != -100 for x in labels), i % 2 == 0, f"f:{i}", i % 5 == 0, i % 4))
    arrays = _flatten(examples)
    assert _unflatten(arrays, [e.source_id for e in examples]) == examples
