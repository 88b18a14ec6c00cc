"""`tunesmith plan CONFIG` (memory and time before any compute) and `tunesmith doctor`.

Parsing only; heavy imports happen in the handlers, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import json

from tunesmith.cli.common import add_set_option

GIB = 2**30  # the one memory unit plan and doctor print: GiB (2^30 bytes); see plan/gpus.py


def register(verbs: argparse._SubParsersAction) -> None:
    plan = verbs.add_parser(
        "plan",
        help="memory and time estimate, recommended settings",
        description="Estimate a run's peak memory by part (weights, adapter, gradients, optimizer, activations, "
        "logits) from the model's config (built on the meta device: no weights are loaded) and the "
        "data's real token counts after templating and packing; recommend settings that fit a target "
        "memory, and estimate steps and time per epoch. Memory is in GiB (2^30 bytes) throughout: "
        "--vram is GiB, and a --gpu is sized by the memory nvidia-smi reports for it (an H100 80GB: "
        "81559 MiB = 79.6 GiB), so --gpu NAME and --vram given that MiB / 1024 are the same target.",
    )
    plan.add_argument("config", help="YAML config file")
    target = plan.add_mutually_exclusive_group()
    target.add_argument(
        "--vram",
        type=float,
        metavar="GIB",
        help="target GPU memory in GiB (2^30 bytes): nvidia-smi's memory.total in MiB / 1024",
    )
    target.add_argument(
        "--gpu",
        metavar="NAME",
        help="a known GPU (T4, L4, A10G, A100-40GB, A100-80GB, H100-80GB, H200, ...), sized by "
        "the memory nvidia-smi reports for it, in GiB",
    )
    plan.add_argument("--all-methods", action="store_true", help="estimate full, LoRA and QLoRA side by side")
    plan.add_argument(
        "--measure",
        action="store_true",
        help="time a short real warm-up (a few steps; this loads the model) instead of using the "
        "hardware's known throughput",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add_set_option(plan)
    plan.set_defaults(handler="tunesmith.cli.plan:run_plan")

    doctor = verbs.add_parser(
        "doctor",
        help="torch/CUDA, GPUs, bf16, bitsandbytes, attention kernels, free disk",
        description="Report what this machine can run and what it means for your config.",
    )
    doctor.add_argument("config", nargs="?", help="a config to check against this machine (optional)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    add_set_option(doctor)
    doctor.set_defaults(handler="tunesmith.cli.plan:run_doctor")


def run_plan(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.console import make_console, quiet_libraries
    from tunesmith.plan import gpus

    config = load_config(args.config, args.overrides)
    gpu = gpus.find_gpu(args.gpu) if args.gpu else None  # an unknown name fails before any work
    quiet_libraries()
    result = plan(config, vram_gb=args.vram, gpu=gpu, all_methods=args.all_methods, measure=args.measure)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_plan(result, make_console())
    return 0


def plan(config, *, vram_gb=None, gpu=None, all_methods=False, measure=False) -> dict:
    """Everything `tunesmith plan` prints, as one dict."""
    import torch

    from tunesmith.machine import pick_device
    from tunesmith.models.quant import plannable
    from tunesmith.plan import estimate as est
    from tunesmith.plan import recommend, shapes, timing
    from tunesmith.plan.gpus import GPU_EFFICIENCY, match_device_name

    here_cuda = pick_device() == "cuda"
    if gpu is not None or vram_gb is not None:
        device_kind = "cuda"
        target = gpu.memory_bytes if gpu else round(vram_gb * GIB)
        bf16 = gpu.bf16 if gpu else True
        target_name = gpu.describe() if gpu else f"{vram_gb:g} GiB (--vram)"
    elif here_cuda:
        device_kind, bf16 = "cuda", None
        target = torch.cuda.get_device_properties(0).total_memory
        gpu = match_device_name(torch.cuda.get_device_name(0))
        target_name = f"{torch.cuda.get_device_name(0)} ({target / GIB:.1f} GiB as CUDA reports)"
    else:
        from tunesmith.plan.measure import available_memory_bytes

        device_kind, bf16 = "cpu", None
        target = available_memory_bytes()
        target_name = f"this machine's available memory ({target / GIB:.1f} GiB)"
    hf_config = shapes.hf_config_for(config)
    config, batch = shapes.prepared_shape(config)  # settings the config leaves unset, chosen from the data
    methods = ["full", "lora", "qlora"] if all_methods else [config.method]
    if not plannable(device_kind):
        methods = [m for m in methods if m != "qlora"] or ["lora"]
    estimates = {
        m: est.estimate_memory(config, method=m, device_kind=device_kind, batch=batch, hf_config=hf_config, bf16=bf16)
        for m in methods
    }
    own = estimates.get(config.method) or next(iter(estimates.values()))
    step_seconds = None
    if measure:
        from tunesmith.plan.measure import warm_up

        step_seconds = warm_up(config)["step_seconds"]
    if device_kind == "cuda":
        rate = (gpu.tflops * 1e12 if gpu else 100e12) * GPU_EFFICIENCY
    else:
        rate = timing.cpu_flops_per_second() * timing.CPU_EFFICIENCY
    return {
        "target": {
            "name": target_name,
            "device": device_kind,
            "bytes": int(target),
            "gib": round(int(target) / GIB, 2),
        },
        "estimates": {m: e.as_dict() for m, e in estimates.items()},
        "recommended": recommend.recommend(
            config,
            target_bytes=int(target),
            device_kind=device_kind,
            batch=batch,
            hf_config=hf_config,
            bf16=bf16,
            methods=tuple(methods) if all_methods else None,
        ),
        "time": timing.time_estimate(config, own, hf_config, flops_per_second=rate, step_seconds=step_seconds),
    }


def _print_plan(result: dict, console) -> None:
    from rich.table import Table

    estimates = result["estimates"]
    first = next(iter(estimates.values()))
    batch = first["batch"]
    console.print(
        f"Data: {batch['sequences']} sequences of <= {batch['max_length']} tokens; the largest micro-batch "
        f"has {batch['tokens']:,} tokens, {batch['trained']:,} of them trained"
    )
    table = Table(title=f"Predicted peak memory ({result['target']['device']}), GiB (2^30 bytes)")
    table.add_column("part")
    for method in estimates:
        table.add_column(method, justify="right")
    parts = list(dict.fromkeys(p for e in estimates.values() for p in e["parts"]))
    for part in parts:
        table.add_row(part, *[f"{e['parts'].get(part, 0) / GIB:.2f}" for e in estimates.values()])
    table.add_row("[bold]peak[/]", *[f"[bold]{e['total_bytes'] / GIB:.2f}[/]" for e in estimates.values()])
    table.add_row("trainable params", *[f"{e['trainable']:,}" for e in estimates.values()])
    console.print(table)
    console.print(
        "peak = weights + adapter + optimizer + the larger of (activations + logits) and (gradients + "
        "the optimizer step's temporaries)" + (" + allocator" if "allocator" in parts else "")
    )
    for method, e in estimates.items():
        loading = e["settings"].get("load_peak_bytes", 0)
        if loading and loading >= e["total_bytes"]:
            console.print(
                f"{method}: the peak is while the quantized base loads ({loading / GIB:.2f} GiB: the "
                "checkpoint file's pages plus the quantized weights), above training's"
            )
    rec, target = result["recommended"], result["target"]
    if rec["fits"]:
        console.print(
            f"Fits {target['name']}: method {rec['method']}, micro-batch "
            f"{rec['micro_batch']}, gradient accumulation {rec['gradient_accumulation']}, max_length "
            f"{rec['max_length']}, gradient checkpointing {'on' if rec['gradient_checkpointing'] else 'off'} "
            f"(peak {rec['peak_bytes'] / GIB:.2f} GiB){'; ' + rec['note'] if rec['note'] else ''}"
        )
    else:
        console.print(f"[red]Nothing fits {target['name']}[/]: {rec['note']}")
    t = result["time"]
    seconds = t["seconds_per_epoch"]
    span = f"{seconds:.0f} seconds" if seconds < 120 else f"{seconds / 60:.1f} minutes"
    console.print(f"Time: {t['steps_per_epoch']} optimizer steps per epoch, about {span} per epoch ({t['source']})")


def run_doctor(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.console import make_console
    from tunesmith.plan.doctor import diagnose

    config = load_config(args.config, args.overrides) if args.config else None
    facts = diagnose(config)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    console = make_console()
    console.print(
        f"torch {facts['torch']} (CUDA {facts['cuda'] or 'none'}), transformers {facts['transformers']}, "
        f"peft {facts['peft']}, {facts['cpu_cores']} CPU cores"
    )
    for g in facts["gpus"] or [{"name": "no CUDA GPU", "memory_gib": 0, "capability": "-"}]:
        console.print(
            f"GPU: {g['name']}" + (f", {g['memory_gib']} GiB, compute {g['capability']}" if g["memory_gib"] else "")
        )
    console.print(
        f"bf16: {'yes' if facts['bf16'] else 'no'}, fp16: {'yes' if facts['fp16'] else 'no'}, "
        f"bitsandbytes: {facts['bitsandbytes'] or 'no'}, flash-attn: {facts['flash_attn'] or 'no'}, "
        f"flex attention: {'yes' if facts['flex_attention'] else 'no'}"
    )
    console.print(f"cache: {facts['cache_dir']}")
    console.print("free disk: " + ", ".join(f"{k} {v} GiB" for k, v in facts["free_disk_gib"].items()))
    for note in facts["advice"]:
        console.print(f"- {note}", soft_wrap=True)
    return 0
