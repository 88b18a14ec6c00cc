"""What a run writes into its folder besides the trainer's checkpoints and metrics: its inputs
first (config.yaml, data_report.json, quarantine.jsonl), its weights last (adapter/ or model/, with
the tokenizer, the exact template and tunesmith.json)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunesmith.config import config_to_yaml
from tunesmith.runfolder import RunFolder, RunRecord, write_json, write_jsonl, write_text
from tunesmith.training.prepare import Prepared


def write_inputs(p: Prepared, run_dir: Path) -> None:
    """What a run was asked to do, written first: config.yaml, data_report.json, quarantine.jsonl."""
    folder = RunFolder(run_dir)
    write_text(folder.config, config_to_yaml(p.config))
    write_json(folder.data_report, _data_report(p))
    _write_quarantine(p, folder)


def save_weights(p: Prepared, model: Any, run_dir: Path, state: dict[str, Any] | None = None) -> None:
    """adapter/ (LoRA, QLoRA: PEFT files) or model/ (full: the whole model), each with the tokenizer,
    the exact template, and what inference needs to know. Non-finite weights are never written."""
    from tunesmith.runfolder import atomic_folder
    from tunesmith.training.guards import check_finite_weights
    from tunesmith.training.verify import resume_advice

    if state is None:  # a gathered `state` (FSDP, DeepSpeed) was checked where it was gathered
        check_finite_weights(model)
    adapter = RunFolder(run_dir).weights(p.config.method)
    advice = resume_advice(RunFolder(run_dir).checkpoints, which="last", verb="finish")
    with atomic_folder(
        adapter, f"the {adapter.name} {adapter}", needed=_weights_size(p, run_dir), then=advice
    ) as staging:  # written whole under a temporary name, or not at all
        _write_weights(p, model, staging, state)


def _weights_size(p: Prepared, run_dir: Path) -> int:
    """What adapter/ (model/) will take at least: the newest checkpoint's weights and the tokenizer files."""
    from tunesmith.runfolder import tree_size
    from tunesmith.training.verify import checkpoint_steps

    steps = checkpoint_steps(RunFolder(run_dir).checkpoints)
    weights = (
        [f for f in steps[-1][1].glob("*.safetensors") if f.name.startswith(("adapter_model", "model"))]
        if steps
        else []
    )
    source = Path(p.ref.path)  # a local folder, or the model hub's cache entry, or a hub id (no files)
    tokenizer = [source / n for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")]
    return sum(tree_size(f) for f in [*weights, *tokenizer] if f.is_file())


def _write_weights(p: Prepared, model: Any, adapter: Path, state: dict[str, Any] | None) -> None:
    from tunesmith.training.lora_init import save_adapter

    save_adapter(model, adapter, state)
    write_record(p, adapter)


def write_record(p: Prepared, folder: Path) -> None:
    """Beside the weights: the tokenizer with the exact template, and tunesmith.json (what inference
    must reproduce). Also what `tunesmith cloud fetch` writes beside a hosted run's adapter."""
    p.tokenizer.chat_template = p.template.source
    p.tokenizer.save_pretrained(str(folder))
    RunRecord(
        base_model=p.config.model.name,
        method=p.config.method,
        template_name=p.template.name,
        chat_template=p.template.source,
        special_tokens=p.template.special_tokens,
        drop=tuple(sorted(p.template.drop)),
        end_of_turn=tuple(p.markers),
        system_prompt=p.system_prompt,
        train_on=p.config.template.train_on,
    ).write(folder)


def _data_report(p: Prepared) -> dict:
    splits: dict[str, Any] = {}
    for name, data in p.splits.items():
        report = asdict(data.report) | {"trainable_share": round(data.report.trainable_share, 4)}
        splits[name] = report | {
            "files": data.summary["files"],
            "warnings": data.summary["warnings"],
            "quarantined": len(data.summary["quarantined"]),
            "from_cache": data.cached,
        }
    if p.test:
        splits["test"] = {"rows": len(p.test)}
    schedule = {"schedule": p.schedule.to_json()} if p.schedule else {}  # training/defaults.py
    return {"template": p.template.name, "system_prompt": p.system_prompt, "end_of_turn": list(p.markers)} | {
        "splits": splits,
        **schedule,
    }


def _write_quarantine(p: Prepared, folder: RunFolder) -> None:
    """Rows left out under `on_bad_row: skip`, each with its issues, so nothing is lost silently."""
    records = [dict(record, split=split) for split, data in p.splits.items() for record in data.summary["quarantined"]]
    if records:
        write_jsonl(folder.quarantine, records, default=str)
