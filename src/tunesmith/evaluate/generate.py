"""Greedy batched generation that stops at the end-of-turn token(s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def stop_token_ids(tokenizer: Any, markers: Sequence[str]) -> list[int]:
    """Token ids that end an assistant turn (from the run's recorded end-of-turn markers)."""
    ids = [tokenizer.convert_tokens_to_ids(m) for m in markers]
    ids = [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]
    return list(dict.fromkeys(ids or [tokenizer.eos_token_id]))


def generate(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, stop_ids: list[int], batch_size: int = 16
) -> list[str]:
    """Complete each rendered prompt greedily; returns the new text without special tokens.

    Prompts are padded on the left (generation continues from the right edge) through the tokenizer
    call's own `padding_side` argument: the caller's tokenizer is left as it was."""
    import torch

    outputs: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(model.device)
        with torch.inference_mode():
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def read_prompt_rows(reference: str) -> list[Any]:
    """Every row of a chat file (any supported format) as a Conversation, without the training
    checks (a row may end with a user turn and have no answer yet); an unreadable row is a UserError."""
    from tunesmith.data.formats import detect_format, to_sample
    from tunesmith.data.options import FormatOptions
    from tunesmith.data.sources import open_source
    from tunesmith.data.types import Conversation, RowError
    from tunesmith.errors import UserError

    options = FormatOptions()
    fmt: str | None = None
    rows: list[Conversation] = []
    for raw in open_source(reference).rows():
        if raw.data is None:
            raise UserError(str(raw.issue) if raw.issue else f"{raw.where}: unreadable row")
        try:
            if fmt is None:
                fmt, _ = detect_format(raw.data, raw.where, options)
            sample = to_sample(raw.data, raw.where, fmt, options)
        except RowError as err:
            raise UserError(str(err.issue)) from None
        if not isinstance(sample, Conversation) or not sample.messages:
            raise UserError(f"{raw.where}: not a chat row (format {fmt}); generate needs conversations")
        rows.append(sample)
    if not rows:
        raise UserError(f"{reference}: the file has no rows")
    return rows


def prompt_messages(conversation: Any, system: str | None = None, template: Any = None) -> list[dict]:
    """The conversation up to (not including) its last assistant turn when it ends with one, else
    all of it; `system` is put first when the conversation has no system message. With `template`,
    the messages are as that template is given them in training (tool-call arguments, dropped fields)."""
    if template is not None:
        from tunesmith.formatting.encode import template_messages

        messages = template_messages(conversation, template)[0]
    else:
        messages = conversation.as_dicts()
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def generate_file(
    target: str, in_path: str, out_path: str, *, max_new_tokens: int = 256, batch_size: int = 16, console: Any = None
) -> int:
    """Answer every row of `in_path` greedily with `target` (run folder, model folder or built-in
    name), writing one JSON line per row to `out_path` (through a temporary file and a rename):
    {"id", "line", "answer"}. Returns the number of rows."""
    from pathlib import Path

    from tunesmith.evaluate.runs import open_model

    conversations = read_prompt_rows(in_path)  # bad input fails before weights load
    run = open_model(target)
    system = run.record.system_prompt
    prompts = []
    for conversation in conversations:
        tools = None if "tools" in run.template.drop else [dict(tool) for tool in conversation.tools] or None
        prompts.append(
            run.template.render(
                prompt_messages(conversation, system, run.template), add_generation_prompt=True, tools=tools
            )
        )
    stops = stop_token_ids(run.tokenizer, run.record.end_of_turn)
    if console is not None:
        with console.status(f"Generating {len(prompts)} answers"):
            answers = generate(
                run.model, run.tokenizer, prompts, max_new_tokens=max_new_tokens, stop_ids=stops, batch_size=batch_size
            )
    else:
        answers = generate(
            run.model, run.tokenizer, prompts, max_new_tokens=max_new_tokens, stop_ids=stops, batch_size=batch_size
        )
    from tunesmith.runfolder import write_jsonl

    write_jsonl(
        Path(out_path),
        (
            {"id": conversation.id or None, "line": conversation.source.line, "answer": answer.strip()}
            for conversation, answer in zip(conversations, answers)
        ),
    )
    return len(conversations)
