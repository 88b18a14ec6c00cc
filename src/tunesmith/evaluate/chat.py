"""Talk to a finished run (or a merged model folder, or a base model alone): one answer, or an
interactive multi-turn chat that streams tokens and stops at the end-of-turn token.

The prompt is rendered with the run's own training template and, unless told otherwise, the
system prompt every training row shared, so the model sees at inference what it saw in training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from tunesmith.evaluate.generate import generate, stop_token_ids
from tunesmith.evaluate.runs import LoadedRun, open_model


def start_messages(run: LoadedRun, system: str | None) -> list[dict]:
    prompt = system if system is not None else run.record.system_prompt
    return [{"role": "system", "content": prompt}] if prompt else []


def answer_once(run_dir: str | Path, request: str, *, system: str | None = None, max_new_tokens: int = 256) -> str:
    """The tuned model's greedy answer to one user message."""
    run = open_model(run_dir)
    messages = [*start_messages(run, system), {"role": "user", "content": request}]
    prompt = run.template.render(messages, add_generation_prompt=True)
    stops = stop_token_ids(run.tokenizer, run.record.end_of_turn)
    return generate(run.model, run.tokenizer, [prompt], max_new_tokens=max_new_tokens, stop_ids=stops)[0].strip()


def chat(
    run_dir: str | Path,
    *,
    console: Any,
    system: str | None = None,
    max_new_tokens: int = 512,
    stdin: TextIO | None = None,
) -> list[dict]:
    """Read user turns line by line (until EOF or /exit), stream each answer, keep the history
    (returned at the end: the messages of the last conversation)."""
    from transformers import TextStreamer

    run = open_model(run_dir)
    stdin = stdin or sys.stdin
    history = start_messages(run, system)
    stops = stop_token_ids(run.tokenizer, run.record.end_of_turn)
    interactive = stdin.isatty()
    if interactive:
        console.print(f"Chatting with {run.run_dir.name} ({run.record.template_name}). /reset clears, /exit quits.")
    while True:
        if interactive:
            console.print("[bold cyan]you>[/] ", end="")
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return history
        if line.strip() == "/reset":
            history = start_messages(run, system)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        reply = _stream_reply(run, history, stops, max_new_tokens, TextStreamer)
        history.append({"role": "assistant", "content": reply})


def _stream_reply(run: LoadedRun, history: list[dict], stops: list[int], max_new_tokens: int, streamer_cls) -> str:
    import torch

    prompt = run.template.render(history, add_generation_prompt=True)
    batch = run.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(run.model.device)
    streamer = streamer_cls(run.tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        out = run.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=run.tokenizer.pad_token_id,
            streamer=streamer,
        )
    new_tokens = out[0, batch["input_ids"].shape[1] :]
    return run.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
