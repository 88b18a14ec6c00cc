"""Conversation -> Examples: each trained turn is its generation prompt then what the model generates.

Every trained assistant turn trains on exactly its inference continuation through the stop token
(`formatting/turns.py`). The prompt and the continuation are tokenized apart, as at inference (the
prompt is encoded, then the model emits the continuation's tokens), so no token spans the boundary.

A conversation is one Example when the full render holds every trained turn as generated and
each turn's prompt tokenizes there as it does on its own. A turn for which that fails (a template
that rewrites history: DeepSeek-R1 and Qwen3 drop the reasoning of earlier turns) becomes an
Example of its own: its generation prompt and its continuation, only it training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.types import IGNORE_INDEX, Conversation, Sample, TextSample
from tunesmith.data.validate import MAX_ROW_CHARS
from tunesmith.errors import UserError
from tunesmith.formatting.builtin import BUILTIN_NAMES, builtin_source, check_builtin, is_builtin
from tunesmith.formatting.probe import (
    arguments_form,
    special_strings,
    stop_markers,
    template_stop,
    unknown_special_tokens,
)
from tunesmith.formatting.template import ChatTemplate, template_from_file
from tunesmith.formatting.turns import Turn, check_rendered, inference_turn

TOO_LONG = "too long: "
"""How a row's error starts when the row itself is too long (not the template's fault): data check
names it too_long and `data.on_bad_row: skip` leaves the row out."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    n_trainable: int
    truncated: bool
    source_id: str
    eot_trained: bool
    """Every trained assistant turn has its end-of-turn marker trained too."""
    truncated_turns: int = 0
    """Trained assistant turns that max_length cut, partly or wholly."""
    double_bos: bool = False
    """The ids start with two BOS tokens (the template writes BOS and the text held one too)."""


def build_template(
    tokenizer: Any, setting: str, *, variables: dict[str, Any] | None = None, drop: tuple[str, ...] | list[str] = ()
) -> ChatTemplate:
    """The template a run uses: the model's own (`model`), a built-in by name, or a `.jinja` file.
    `variables` go to every render (`enable_thinking`); `drop` names message fields left out."""
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or "", **(variables or {})}
    if setting == "model":
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise UserError(
                "the model has no chat template of its own; set template.chat_template to a built-in "
                f"one ({', '.join(BUILTIN_NAMES)}) or a .jinja file"
            )
        folder = Path(str(getattr(tokenizer, "name_or_path", "") or "")).name
        name = f"{folder} (the model's own)" if folder else "the model's own"
        template = ChatTemplate(source, name=name, special_tokens=specials, drop=tuple(drop))
    elif is_builtin(setting):
        check_builtin(setting, tokenizer)
        template = ChatTemplate(
            builtin_source(setting), name=f"built-in {setting}", special_tokens=specials, drop=tuple(drop)
        )
    else:
        source = template_from_file(setting)
        missing = unknown_special_tokens(source, tokenizer)
        if missing:
            raise UserError(
                f"chat template {setting} writes {', '.join(missing[:3])}, which the tokenizer does not "
                "have as single tokens (they would be split into pieces and trained as text); use "
                "the model's own template, or add them to the tokenizer as special tokens"
            )
        template = ChatTemplate(source, name=setting, special_tokens=specials, drop=tuple(drop))
    template.probes["tool_hint"] = _tool_hint(tokenizer)
    return template


def _tool_hint(tokenizer: Any) -> str:
    if {"<|im_start|>", "<|im_end|>"} <= set(getattr(tokenizer, "get_added_vocab", dict)()):
        return (
            "set template.chat_template: chatml_tools (a built-in ChatML template with Hermes/Qwen-style "
            "<tool_call> JSON calls and tool results)"
        )
    return "choose a template that renders tool calls and tool results (template.chat_template: a .jinja file)"


def end_of_turn_markers(tokenizer: Any, template: ChatTemplate | None = None) -> tuple[str, ...]:
    """The strings that end an assistant turn (`formatting/probe.py`), eos first."""
    return stop_markers(tokenizer, template)


def trained_messages(conversation: Conversation, train_on: str) -> set[int]:
    """Indices of the messages whose content trains under `train_on` and per-message weights.

    A weight of 1 trains an assistant turn whatever `train_on` says; 0 never trains it.
    """
    messages = conversation.messages
    assistants = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if train_on == "all":
        default = set(range(len(messages)))
    elif train_on == "last":
        default = set(assistants[-1:])
    elif train_on == "completion":
        if conversation.prompt_messages is None:
            raise UserError(
                f"{conversation.source}: template.train_on: completion needs prompt/completion rows "
                "(this row has no prompt/completion split); use assistant or last"
            )
        default = {i for i in assistants if i >= conversation.prompt_messages}
    else:
        default = set(assistants)
    return {i for i, m in enumerate(messages) if m.weight == 1 or (m.weight is None and i in default)}


REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def template_messages(conversation: Conversation, template: ChatTemplate) -> tuple[list[dict], list[dict] | None]:
    """The messages and tools as this template is given them: tool-call arguments in the form it
    expects (`probe.arguments_form`), the fields of `template.drop` left out."""
    calls = any(m.tool_calls for m in conversation.messages)
    form = arguments_form(template) if calls else "given"
    messages = [m.as_dict(arguments=form) for m in conversation.messages]
    if "reasoning" in template.drop:
        for message in messages:
            for key in REASONING_KEYS:
                message.pop(key, None)
            content = message.get("content")
            if message["role"] == "assistant" and isinstance(content, str) and "</think>" in content:
                message["content"] = content.split("</think>", 1)[1].lstrip("\n")
    tools = None if "tools" in template.drop else [dict(tool) for tool in conversation.tools] or None
    return messages, tools


def encode(
    conversation: Conversation,
    template: ChatTemplate,
    tokenizer: Any,
    *,
    train_on: str,
    max_length: int,
    markers: tuple[str, ...],
    trace: list[dict] | None = None,
) -> list[Example]:
    """Tokenize a conversation and mark which tokens train (see the module doc). `trace`, when
    given, receives what `inspect --json` shows of each Example."""
    size = sum(len(m.content) + len(m.reasoning or "") for m in conversation.messages)
    if size > MAX_ROW_CHARS:  # data validation refuses these first; a row that did not pass through it
        raise UserError(
            f"{TOO_LONG}the row is {size:,} characters, far more than any max_length holds; shorten or "
            "split it, or set data.on_bad_row: skip to leave such rows out"
        )
    messages, tools = template_messages(conversation, template)
    full = template.render(messages, tools=tools)
    check_rendered(template, messages, tools, full)
    source = str(conversation.source)
    if train_on == "all":
        example, record = _example(tokenizer, [(full, True, None)], [], max_length, source, full)
        if trace is not None:
            trace.append(record)
        return [example]
    markers = _with_template_stop(template, tokenizer, markers)
    chosen = trained_messages(conversation, train_on)
    indices = sorted(i for i in chosen if messages[i]["role"] == "assistant")
    turns = [inference_turn(template, messages, i, tools, markers, full=full) for i in indices]
    shared = [t for t in turns if full.startswith(t.text[: t.end])]
    alone = [t for t in turns if t not in shared]
    examples: list[tuple[int, Example, dict]] = []
    while shared:
        built = _shared_pieces(tokenizer, full, shared)
        if isinstance(built, Turn):  # its prompt tokenizes differently on its own: give it its own example
            shared.remove(built)
            alone.append(built)
            continue
        text = full[: shared[-1].end]
        examples.append((shared[0].message, *_example(tokenizer, built, shared, max_length, source, text)))
        break
    for turn in alone:
        pieces = [(turn.prompt, False, None), (turn.generated, True, None)]
        examples.append((turn.message, *_example(tokenizer, pieces, [turn], max_length, source, turn.text[: turn.end])))
    ordered = sorted(examples, key=lambda item: item[0])
    if trace is not None:
        trace += [record for _, _, record in ordered]
    return [example for _, example, _ in ordered]


def _with_template_stop(template: ChatTemplate, tokenizer: Any, markers: tuple[str, ...]) -> tuple[str, ...]:
    """The caller's stops plus the one the template writes after an answer (found once per template)."""
    written = template.probes.get("written_stop")
    if written is None:
        written = template.probes["written_stop"] = (
            template_stop(template, list(markers), special_strings(tokenizer)) or ""
        )
    return (*markers, written) if written and written not in markers else markers


def _shared_pieces(tokenizer: Any, text: str, turns: list[Turn]) -> list[tuple[str, bool, list[int] | None]] | Turn:
    """One Example's pieces for several turns of one render, or the first turn whose prompt, tokenized
    on its own as at inference, does not start with the ids the Example holds before it.

    Each turn's generated text is tokenized on its own (what the model emits after its prompt); the
    text between two turns takes its ids from the next turn's whole prompt, as inference tokenizes
    it. What follows the last stop token is left out: nothing after it trains or affects a trained
    position. A piece is (text, trains, ids or None to tokenize it alone).
    """
    first = turns[0]
    pieces: list[tuple[str, bool, list[int] | None]] = [
        (text[: first.start], False, None),
        (first.generated, True, None),
    ]
    if len(turns) == 1:
        return pieces
    held = [token for piece in _encode_pieces(tokenizer, [p for p, _, _ in pieces]) for token in piece]
    generated = _encode_pieces(tokenizer, [turn.generated for turn in turns[1:]])
    prompts = _encode_pieces(tokenizer, [text[: turn.start] for turn in turns[1:]])
    cursor = first.end
    for turn, prompt, answer in zip(turns[1:], prompts, generated):
        if prompt[: len(held)] != held:
            return turn
        pieces += [(text[cursor : turn.start], False, prompt[len(held) :]), (turn.generated, True, answer)]
        held = [*prompt, *answer]
        cursor = turn.end
    return pieces


def _example(
    tokenizer: Any,
    pieces: Sequence[tuple[str, bool, list[int] | None]],
    turns: list[Turn],
    max_length: int,
    source: str,
    text: str,
) -> tuple[Example, dict]:
    """The Example of `pieces`, and what `inspect --json` shows of it (`text`: the render through the last stop)."""
    alone = iter(_encode_pieces(tokenizer, [piece for piece, _, given in pieces if given is None]))
    encoded = [given if given is not None else next(alone) for _, _, given in pieces]
    ids: list[int] = []
    labels: list[int] = []
    turn_ends: list[int] = []
    for (_piece, trains, _), piece_ids in zip(pieces, encoded):
        ids += piece_ids
        labels += piece_ids if trains else [IGNORE_INDEX] * len(piece_ids)
        if trains:
            turn_ends.append(len(ids))
    truncated = len(ids) > max_length
    cut_turns = sum(1 for end in turn_ends if end > max_length)
    ids, labels = ids[:max_length], labels[:max_length]
    if labels:
        labels[0] = IGNORE_INDEX  # the first token is never predicted: keeps packed rows apart
    n_trainable = len(labels) - labels.count(IGNORE_INDEX)
    record = {
        "source": source,
        "input_ids": ids,
        "labels": labels,
        "text": text,
        "trained": [turn.generated for turn in turns],
        "prompts": [turn.prompt for turn in turns],
    }
    example = Example(
        ids, labels, n_trainable, truncated, source, cut_turns == 0, cut_turns, _double_bos(tokenizer, ids)
    )
    return example, record


def _encode_pieces(tokenizer: Any, pieces: list[str]) -> list[list[int]]:
    """Each piece tokenized on its own, straight from the Rust tokenizer when there is one (no Python
    post-processing: the template already wrote every special token, as `apply_chat_template`).
    `encode_batch_fast` gives the same ids without computing offsets, which nothing here reads."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch_fast(pieces, add_special_tokens=False)]
    return [tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else [] for piece in pieces]


def encode_sample(
    sample: Sample,
    template: ChatTemplate,
    tokenizer: Any,
    *,
    train_on: str,
    max_length: int,
    markers: tuple[str, ...],
    trace: list[dict] | None = None,
) -> list[Example]:
    """Any sample to its Examples: chat through the template (see `encode`), raw text with every
    token trained (plus eos, so documents end), pre-tokenized rows as given."""
    if isinstance(sample, Conversation):
        return encode(
            sample, template, tokenizer, train_on=train_on, max_length=max_length, markers=markers, trace=trace
        )
    if isinstance(sample, TextSample):
        ids = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
    else:
        ids = list(sample.input_ids)
        labels = list(sample.labels) if sample.labels is not None else list(ids)
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if labels:
        labels[0] = IGNORE_INDEX
    n_trainable = sum(1 for x in labels if x != IGNORE_INDEX)
    return [Example(ids, labels, n_trainable, truncated, str(sample.source), True)]


def generation_prompt(
    conversation: Conversation, template: ChatTemplate, markers: tuple[str, ...] = ()
) -> tuple[str, str]:
    """The prompt (all messages before the last assistant turn) and that turn's reference: its
    content, or, for a turn that calls tools, the text the template writes for it up to the stop."""
    messages, tools = template_messages(conversation, template)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = template.render(messages[:last], add_generation_prompt=True, tools=tools)
    if not messages[last].get("tool_calls"):
        return prompt, messages[last]["content"]
    markers = markers or template.probes.get("stops") or (template.special_tokens.get("eos_token") or "",)
    turn = inference_turn(template, messages[: last + 1], last, tools, tuple(m for m in markers if m))
    reference = turn.generated
    for stop in markers:
        if reference.endswith(stop):
            reference = reference[: -len(stop)]
            break
    return prompt, reference


def _double_bos(tokenizer: Any, ids: list[int]) -> bool:
    """Two BOS ids first: the template wrote BOS and the text (or the template again) added one."""
    if len(ids) < 2 or ids[0] != ids[1]:
        return False
    return ids[0] == tokenizer.bos_token_id
