"""report.html and loss.png (tunesmith.report): the overfitting rule, data warnings, escaping,
a page that loads nothing, runs without validation or evaluation, and a real overfitting run."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tunesmith.report import write_report
from tunesmith.report.warnings import data_warnings, overfitting

FALLING_TRAIN = [(s, 3.0 - 0.1 * s) for s in range(1, 21)]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def external_urls(html: str) -> list[str]:
    """src=/href=/url() values that would load or link something outside the page."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]*)|url\(\s*["']?((?:https?:)?//)""", html)


def make_run(
    folder: Path, *, train=FALLING_TRAIN, evals=(), results=None, samples=None, data_report=None, config=None
) -> Path:
    """A synthetic run folder with the files a finished run writes."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "step": s,
            "epoch": s / 10,
            "loss": loss,
            "lr": 1e-3 * (1 - s / 30),
            "grad_norm": 1.0,
            "tokens_seen": 100 * s,
            "tokens_per_s": 500.0 + s,
            "elapsed_s": float(s),
            "memory_mb": 900.0,
        }
        for s, loss in train
    ]
    records += [
        {"step": s, "epoch": s / 10, "eval_loss": loss, "elapsed_s": float(s), "memory_mb": 900.0} for s, loss in evals
    ]
    records.sort(key=lambda r: (r["step"], "eval_loss" in r))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (folder / "config.yaml").write_text(
        config
        or "name: synthetic\nmethod: lora\nmodel:\n  name: tiny\n"
        "lora:\n  r: 4\n  alpha: 8.0\ntrain:\n  epochs: 3.0\n  learning_rate: 0.001\n",
        encoding="utf-8",
    )
    report = data_report or {
        "template": "model",
        "splits": {
            "train": {
                "rows": 10,
                "tokens": 1000,
                "trainable_tokens": 400,
                "truncated": 0,
                "missing_end_of_turn": 0,
                "trainable_share": 0.4,
            }
        },
    }
    (folder / "data_report.json").write_text(json.dumps(report), encoding="utf-8")
    if results is not None:
        (folder / "eval").mkdir(exist_ok=True)
        (folder / "eval" / "results.json").write_text(json.dumps(results), encoding="utf-8")
        (folder / "eval" / "samples.jsonl").write_text(
            "".join(json.dumps(s) + "\n" for s in samples or []), encoding="utf-8"
        )
    return folder


# --- the overfitting rule ---------------------------------------------------------------------------


def test_overfitting_fires_when_eval_rises_while_train_falls():
    evals = [(5, 2.0), (10, 1.6), (15, 1.8), (20, 2.1)]  # lowest 1.6 at step 10, last 2.1: +31%
    found = overfitting(FALLING_TRAIN, evals)
    assert found and "1.6000 (step 10)" in found and "2.1000 (step 20)" in found and "+31%" in found


def test_overfitting_silent_on_a_falling_eval_curve():
    assert overfitting(FALLING_TRAIN, [(5, 2.0), (10, 1.6), (15, 1.4), (20, 1.3)]) is None


def test_overfitting_needs_two_evaluations_and_a_rise_past_both_thresholds():
    assert overfitting(FALLING_TRAIN, [(20, 5.0)]) is None  # one evaluation: nothing to compare
    assert overfitting(FALLING_TRAIN, []) is None
    assert overfitting(FALLING_TRAIN, [(5, 1.0), (10, 0.95), (20, 1.04)]) is None  # +9.5%: under 10%
    assert overfitting(FALLING_TRAIN, [(5, 1.0), (10, 0.95), (20, 1.06)]) is not None  # +11.6%
    assert overfitting(FALLING_TRAIN, [(5, 0.02), (10, 0.01), (20, 0.015)]) is None  # +50% but 0.005 < 0.01


def test_overfitting_needs_train_loss_falling():
    rising_train = [(s, 1.0 + 0.1 * s) for s in range(1, 21)]
    assert overfitting(rising_train, [(5, 2.0), (10, 1.6), (20, 2.1)]) is None  # diverging, not overfitting
    assert overfitting(FALLING_TRAIN, [(5, 2.0), (10, 2.6), (20, 1.6)]) is None  # rose, then fell to its lowest


def test_data_warnings_for_truncated_rows_and_low_trained_share():
    report = {
        "splits": {
            "train": {
                "rows": 50,
                "tokens": 10000,
                "trainable_tokens": 300,
                "truncated": 7,
                "missing_end_of_turn": 0,
                "trainable_share": 0.03,
            },
            "validation": {
                "rows": 5,
                "tokens": 500,
                "trainable_tokens": 200,
                "truncated": 0,
                "missing_end_of_turn": 0,
                "trainable_share": 0.4,
            },
            "test": {"rows": 9},
        }
    }
    notes = data_warnings(report)
    assert len(notes) == 2
    assert notes[0].startswith("truncated rows: 7 of 50 train rows")
    assert notes[1].startswith("low trainable-token share: only 3.0% of train tokens")
    assert data_warnings(None) == []


# --- the page ---------------------------------------------------------------------------------------

RESULTS = {
    "n": 3,
    "metrics": ["exact", "json_valid"],
    "base": {"exact": 0.0, "json_valid": 0.3333, "loss": 2.5, "perplexity": 12.18, "loss_tokens": 1234},
    "tuned": {"exact": 0.6667, "json_valid": 1.0, "loss": 0.9, "perplexity": 2.46, "loss_tokens": 1234},
    "difference": {"exact": 0.6667, "json_valid": 0.6667, "loss": -1.6, "perplexity": -9.72},
}
HOSTILE = '<script>alert("x")</script><img src="https://evil.example/a.png"> & \'quotes\''
SAMPLES = [
    {
        "source": "t.jsonl:1",
        "prompt": "same",
        "reference": "a",
        "base": "a",
        "tuned": "a",
        "base_scores": {"exact": 1.0, "json_valid": 1.0},
        "tuned_scores": {"exact": 1.0, "json_valid": 1.0},
    },
    {
        "source": "t.jsonl:2",
        "prompt": HOSTILE,
        "reference": '{"ok": true}',
        "base": HOSTILE,
        "tuned": '{"ok": true}',
        "base_scores": {"exact": 0.0, "json_valid": 0.0},
        "tuned_scores": {"exact": 1.0, "json_valid": 1.0},
    },
    {
        "source": "t.jsonl:3",
        "prompt": "half",
        "reference": "b",
        "base": "x",
        "tuned": "{}",
        "base_scores": {"exact": 0.0, "json_valid": 0.0},
        "tuned_scores": {"exact": 0.0, "json_valid": 1.0},
    },
]


@pytest.fixture()
def full_run(tmp_path) -> Path:
    run = make_run(
        tmp_path / "run", evals=[(5, 2.0), (10, 1.6), (15, 1.8), (20, 2.1)], results=RESULTS, samples=SAMPLES
    )
    write_report(run)
    return run


def test_report_shows_overfitting_and_writes_loss_png(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    assert 'data-kind="overfitting"' in html and "eval loss rose from 1.6000 (step 10)" in html
    width, height = png_size(full_run / "loss.png")
    assert width >= 600 and height >= 400
    assert "data:image/png;base64," in html  # the same plot, inside the page


def test_sample_text_is_escaped(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=&#34;https://evil.example/a.png&#34;&gt; &amp; &#39;quotes&#39;" in html
    assert '<img src="https://' not in html


def test_page_loads_and_links_nothing_outside_itself(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    assert external_urls(html) == []
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html)
    assert "<link" not in html and "@import" not in html
    assert all(src.startswith("data:") for src in re.findall(r'<img[^>]*\ssrc="([^"]*)"', html))


def test_eval_table_has_every_metric_key_and_the_given_difference(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    rows = re.findall(r'<tr data-metric="([^"]+)">', html)
    assert rows == ["exact", "json_valid", "loss", "perplexity"]  # results["metrics"] first, then the rest
    assert "over 1,234 trained tokens" in html  # loss_tokens: a count, not a metric row
    loss_row = re.search(r'<tr data-metric="loss">.*?</tr>', html).group(0)
    assert 'data-col="difference" data-value="-1.6"' in loss_row and "better" in loss_row  # lower loss: better
    assert ">+0.6667<" in re.search(r'<tr data-metric="exact">.*?</tr>', html).group(0)


def test_samples_that_differ_most_come_first_and_ties_are_left_out(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    order = re.findall(r"sample (\d+) \(t\.jsonl:\d\)", html)
    assert order == ["2", "3"]  # sample 1 scores the same for base and tuned


def test_run_without_validation_or_eval_omits_those_sections_with_a_note(tmp_path):
    run = make_run(tmp_path / "plain")
    path = write_report(run)
    html = path.read_text(encoding="utf-8")
    assert path == run / "report.html" and (run / "loss.png").is_file()
    assert 'id="no-validation"' in html and 'id="no-eval"' in html and 'id="eval-table"' not in html
    assert 'id="no-warnings"' in html and "Samples where" not in html


def test_eval_without_base_shows_tuned_only(tmp_path):
    results = {"n": 2, "metrics": ["exact"], "tuned": {"exact": 0.5}}
    samples = [{"prompt": "p", "reference": "r", "tuned": "r", "tuned_scores": {"exact": 1.0}}]
    html = write_report(make_run(tmp_path / "r", results=results, samples=samples)).read_text(encoding="utf-8")
    assert "the base model was not scored" in html and 'data-col="base"' not in html
    assert 'data-col="tuned" data-value="0.5">0.5000<' in html and "No per-sample base scores" in html


def test_empty_folder_still_gets_a_page(tmp_path):
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No train loss was logged" in html and not (tmp_path / "loss.png").exists()


def test_truncation_and_low_share_appear_as_warnings(tmp_path):
    report = {
        "splits": {
            "train": {
                "rows": 20,
                "tokens": 5000,
                "trainable_tokens": 100,
                "truncated": 4,
                "missing_end_of_turn": 0,
                "trainable_share": 0.02,
            }
        }
    }
    html = write_report(make_run(tmp_path / "r", data_report=report)).read_text(encoding="utf-8")
    assert 'data-kind="truncated rows"' in html and 'data-kind="low trainable-token share"' in html


def test_quickstart_shaped_run_has_no_overfitting_warning(tmp_path):
    """The quick start's curves: train loss 2.5 falling to ~0.01 over 53 steps, one evaluation at the end."""
    train = [(s, max(2.5 * 0.8**s, 0.005)) for s in range(1, 54)]
    results = {
        "n": 60,
        "metrics": ["json_exact", "json_valid", "exact"],
        "tuned": {"json_exact": 0.9833, "json_valid": 1.0, "exact": 0.9833},
        "base": {"json_exact": 0.0, "json_valid": 0.0, "exact": 0.0},
    }
    run = make_run(tmp_path / "qs", train=train, evals=[(53, 0.00996)], results=results, samples=[])
    html = write_report(run).read_text(encoding="utf-8")
    assert "overfitting:" not in html and 'id="no-warnings"' in html


# --- a real run -------------------------------------------------------------------------------------


def test_real_overfitting_run_is_warned(tiny_model_dir, tmp_path):
    """4 rows, 30 epochs of full fine-tuning, validated on 4 other rows: the tiny model memorizes."""
    import tunesmith
    from tunesmith.config import load_config

    def rows(answers, first):
        return "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Name thing {first + i}."},
                        {"role": "assistant", "content": a},
                    ]
                }
            )
            + "\n"
            for i, a in enumerate(answers)
        )

    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text(rows(["red apple pie", "blue ocean wave", "green forest tree", "yellow sun ray"], 0))
    val.write_text(rows(["quantum flux drive", "marble statue hall", "violin string song", "desert camel ride"], 100))
    config = load_config(
        None,
        [
            f"data.train={train}",
            f"data.validation={val}",
            f"model.name={tiny_model_dir}",
            f"output_dir={tmp_path / 'runs'}",
            "name=overfit",
            "method=full",
            "train.epochs=30",
            "train.batch_size=4",
            "train.learning_rate=3e-2",
            "train.eval_steps=5",
            "train.logging_steps=1",
        ],
    )
    result = tunesmith.train(config)
    html = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert 'data-kind="overfitting"' in html, re.findall(r'<li class="warning"[^>]*>[^<]*', html)
    assert png_size(result.run_dir / "loss.png")[0] >= 600
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert {"report.html", "loss.png"} <= set(manifest["artifacts"])
