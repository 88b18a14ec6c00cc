"""report.html: one self-contained file (inline CSS, the plot as a base64 PNG, no script, no
network), rendered by jinja2 with autoescaping from what the run folder holds."""

from __future__ import annotations

import base64
import json
import math
import statistics
from pathlib import Path
from typing import Any, TypeGuard

from tunesmith.report.plots import Curves, draw_loss_png, read_curves
from tunesmith.report.warnings import run_warnings
from tunesmith.runfolder import RunFolder, discard, write_text

REPORT = "report.html"
LOSS_PNG = "loss.png"
TOP_SAMPLES = 10
"""How many samples with the largest base-vs-tuned score difference the report shows."""
TEXT_CAP = 2000
"""Sample texts longer than this many characters are cut in the report (the JSONL keeps them whole)."""
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "eval_loss", "ppl"})
NOT_METRICS = frozenset({"loss_tokens"})
"""Numbers in results.json's base/tuned that describe the evaluation rather than score it."""


def write_report(run_dir: str | Path, *, status: str | None = None) -> Path:
    """Write `run_dir`/report.html (and loss.png when there is a train loss); return the report's path.
    Reads config.yaml, data_report.json, metrics.jsonl, eval/results.json, eval/samples.jsonl and
    manifest.json, each only if present. `status` overrides the manifest's (training writes the
    report just before it seals the folder)."""
    run_dir = Path(run_dir)
    curves = read_curves(RunFolder(run_dir).metrics)
    png = draw_loss_png(curves, run_dir / LOSS_PNG) if curves.train else None
    if png is None:
        discard(run_dir / LOSS_PNG)  # a stale plot from an earlier report
    html = render(run_dir, curves, png, status)
    return write_text(run_dir / REPORT, html)


def render(run_dir: Path, curves: Curves, png: Path | None, status: str | None = None) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = number
    return env.get_template("template.html.jinja").render(**context(run_dir, curves, png, status))


def context(run_dir: Path, curves: Curves, png: Path | None, status: str | None = None) -> dict[str, Any]:
    config = _read_yaml(RunFolder(run_dir).config)
    data_report = _read_json(RunFolder(run_dir).data_report)
    manifest = _read_json(RunFolder(run_dir).manifest)
    results = _read_json(RunFolder(run_dir).eval / "results.json")
    samples = _read_jsonl(RunFolder(run_dir).eval / "samples.jsonl")
    return {
        "name": (config or {}).get("name") or run_dir.name,
        "status": status or (manifest or {}).get("status"),
        "finished": None if status else (manifest or {}).get("finished"),
        "config": config_summary(config),
        "data": data_table(data_report),
        "data_notes": data_notes(data_report),
        "warnings": run_warnings(curves.train, curves.evals, data_report),
        "training": training_summary(curves),
        "has_validation": bool(curves.evals),
        "plot": base64.b64encode(png.read_bytes()).decode("ascii") if png else None,
        "eval": eval_table(results),
        "preference": _read_json(RunFolder(run_dir).eval / "preference.json"),
        "samples": most_different(samples),
        "samples_have_base": any("base_scores" in s for s in samples),
    }


def number(value: Any) -> str:
    """A metric for the page: 4 decimals, thousands separated when large; '-' when missing."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def config_summary(config: dict | None) -> list[tuple[str, Any]]:
    """The settings a reader needs to tell runs apart (no tracking settings: they may hold secrets)."""
    if not config:
        return []
    train, data = config.get("train") or {}, config.get("data") or {}
    method = config.get("method")
    rows: list[tuple[str, Any]] = [
        ("method", method),
        ("model", (config.get("model") or {}).get("name")),
        ("data.train", data.get("train")),
        ("data.validation", data.get("validation")),
        ("data.test", data.get("test")),
        ("template.train_on", (config.get("template") or {}).get("train_on")),
        ("template.max_length", (config.get("template") or {}).get("max_length")),
    ]
    if method in ("lora", "qlora") and config.get("lora"):
        rows += [(f"lora.{k}", config["lora"].get(k)) for k in ("r", "alpha", "dropout", "target_modules")]
    rows += [
        (f"train.{k}", train.get(k))
        for k in (
            "epochs",
            "max_steps",
            "batch_size",
            "gradient_accumulation",
            "learning_rate",
            "lr_scheduler",
            "warmup_ratio",
            "precision",
            "packing",
            "seed",
        )
        if k in train
    ]
    return [(key, _plain(value)) for key, value in rows if value is not None]


def data_table(data_report: dict | None) -> list[dict[str, Any]]:
    splits = (data_report or {}).get("splits") or {}
    return [
        {
            "split": name,
            **{
                k: report.get(k)
                for k in ("rows", "tokens", "trainable_tokens", "trainable_share", "truncated", "missing_end_of_turn")
            },
        }
        for name, report in splits.items()
        if isinstance(report, dict)
    ]


def data_notes(data_report: dict | None) -> list[str]:
    data = data_report or {}
    notes = [
        f"{name}: {w}"
        for name, report in (data.get("splits") or {}).items()
        if isinstance(report, dict)
        for w in report.get("warnings") or []
    ]
    schedule = data.get("schedule") or {}
    for choice in schedule.get("chosen") or []:  # training/defaults.py
        notes.append(f"chosen from the data: {choice['setting']} {choice['value']} ({choice['reason']})")
    if schedule.get("optimizer_steps"):
        notes.append(
            f"optimizer steps: {schedule['optimizer_steps']} ({schedule['steps_per_epoch']} an epoch, "
            f"{schedule['units']} {schedule['unit']})"
        )
    for key in ("template", "system_prompt"):
        if data.get(key):
            notes.insert(0, f"{key.replace('_', ' ')}: {data[key]}")
    return notes


def training_summary(curves: Curves) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if curves.train:
        rows += [
            ("optimizer steps", number(curves.train[-1][0])),
            ("train loss, first / last", f"{number(curves.train[0][1])} / {number(curves.train[-1][1])}"),
        ]
    if curves.evals:
        best = min(curves.evals, key=lambda p: p[1])
        rows += [
            ("eval loss, last", number(curves.evals[-1][1])),
            ("eval loss, lowest", f"{number(best[1])} (step {best[0]})"),
        ]
    rates = [r for _, r in curves.tokens_per_s]
    if rates:
        rows += [
            ("tokens/s, median (min-max)", f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})")
        ]
    seen = [r["tokens_seen"] for r in curves.records if isinstance(r.get("tokens_seen"), int)]
    if seen:
        rows.append(("tokens seen", number(seen[-1])))
    elapsed = [r["elapsed_s"] for r in curves.records if isinstance(r.get("elapsed_s"), (int, float))]
    if elapsed:
        rows.append(("training time", f"{elapsed[-1]:.0f} s"))
    memory = [r["memory_mb"] for r in curves.records if isinstance(r.get("memory_mb"), (int, float))]
    if memory:
        rows.append(("peak memory", f"{max(memory):,.0f} MiB"))
    return rows


def eval_table(results: dict | None) -> dict[str, Any] | None:
    """Rows of metric, base, tuned, difference for every numeric key base or tuned holds, the
    metrics named in results["metrics"] first; a `difference` key in results wins over tuned - base."""
    if not results or not isinstance(results.get("tuned"), dict):
        return None
    base = results.get("base") if isinstance(results.get("base"), dict) else None
    tuned = results["tuned"]
    difference = results.get("difference")
    given = difference if isinstance(difference, dict) else {}
    names = [m for m in results.get("metrics") or [] if isinstance(m, str)]
    for source in (tuned, base or {}):
        names += [k for k, v in source.items() if k not in names and k not in NOT_METRICS and _is_number(v)]
    rows = []
    for name in names:
        b, t = (base or {}).get(name), tuned.get(name)
        if not _is_number(b) and not _is_number(t):
            continue
        diff = given.get(name)
        if not _is_number(diff):
            diff = t - b if _is_number(b) and _is_number(t) else None
        better = None
        if _is_number(diff) and diff != 0:
            better = (diff < 0) if name.lower() in LOWER_IS_BETTER else (diff > 0)
        rows.append({"metric": name, "base": b, "tuned": t, "difference": diff, "better": better})
    return {
        "n": results.get("n"),
        "rows": rows,
        "has_base": base is not None,
        "loss_tokens": tuned.get("loss_tokens") if _is_number(tuned.get("loss_tokens")) else None,
    }


def most_different(samples: list[dict], top: int = TOP_SAMPLES) -> list[dict[str, Any]]:
    """The samples whose tuned scores differ most from their base scores (mean over the metrics
    both have), largest absolute difference first, file order among ties; equal scores left out."""
    scored = []
    for index, sample in enumerate(samples):
        base, tuned = sample.get("base_scores"), sample.get("tuned_scores")
        if not isinstance(base, dict) or not isinstance(tuned, dict):
            continue
        keys = [k for k in tuned if _is_number(tuned[k]) and _is_number(base.get(k))]
        if not keys:
            continue
        delta = sum(tuned[k] - base[k] for k in keys) / len(keys)
        if delta == 0:
            continue  # scored the same: not a difference to show
        scored.append((-abs(delta), index, delta, keys, sample))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [
        {
            "index": index + 1,
            "delta": delta,
            "source": sample.get("source"),
            "prompt": _cap(sample.get("prompt")),
            "reference": _cap(sample.get("reference")),
            "base": _cap(sample.get("base")),
            "tuned": _cap(sample.get("tuned")),
            "scores": [(k, sample["base_scores"][k], sample["tuned_scores"][k]) for k in keys],
        }
        for _, index, delta, keys, sample in scored[:top]
    ]


def _cap(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= TEXT_CAP else text[:TEXT_CAP] + f"\u2026 [{len(text) - TEXT_CAP:,} more characters]"


def _plain(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found
