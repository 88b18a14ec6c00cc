"""Conversation -> Example: one render, one tokenization, labels from character spans.

A token trains when any of its characters lies inside a trained span: an assistant message's
content plus the end-of-turn marker the template puts right after it (so the model learns to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.types import Conversation, Sample, TextSample
from tunesmith.errors import UserError
from tunesmith.formatting.template import KNOWN_END_OF_TURN, ChatTemplate, end_of_turn_length, template_from_file

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    n_trainable: int
    truncated: bool
    source_id: str
    eot_trained: bool
    """Every trained assistant turn has its end-of-turn marker trained too."""


def build_template(tokenizer: Any, setting: str) -> ChatTemplate:
    """The template a run uses: the model's own (`model`) or a user's `.jinja` file."""
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    if setting == "model":
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise UserError("the model has no chat template of its own; set template.chat_template to a .jinja file")
        return ChatTemplate(source, name="the model's own chat template", special_tokens=specials)
    return ChatTemplate(template_from_file(setting), name=setting, special_tokens=specials)


def end_of_turn_markers(tokenizer: Any) -> tuple[str, ...]:
    """End-of-turn strings this tokenizer knows as special tokens, eos first."""
    specials = set(getattr(tokenizer, "all_special_tokens", [])) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    markers = [m for m in KNOWN_END_OF_TURN if m in specials]
    eos = getattr(tokenizer, "eos_token", None)
    return tuple(dict.fromkeys([eos, *markers] if eos else markers))


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
            raise UserError(f"{conversation.source}: template.train_on: completion needs prompt/completion rows "
                            "(this row has no prompt/completion split); use assistant or last")
        default = {i for i in assistants if i >= conversation.prompt_messages}
    else:
        default = set(assistants)
    return {i for i, m in enumerate(messages) if m.weight == 1 or (m.weight is None and i in default)}


def encode(conversation: Conversation, template: ChatTemplate, tokenizer: Any, *, train_on: str,
           max_length: int, markers: tuple[str, ...]) -> Example:
    """Tokenize a conversation and mark which tokens train."""
    rendered = template.render_with_spans(conversation.as_dicts())
    chosen = trained_messages(conversation, train_on)
    ranges: list[tuple[int, int]] = []
    eot_trained = True
    for span in rendered.spans:
        if span.message in chosen:
            tail = end_of_turn_length(rendered.text, span.end, markers)
            eot_trained &= tail > 0 or conversation.messages[span.message].role != "assistant"
            ranges.append((span.start, span.end + tail))
    if train_on == "all":
        ranges = [(0, len(rendered.text))]
    ids, offsets = _tokenize(tokenizer, rendered.text)
    labels = _labels(ids, offsets, sorted(ranges))
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if labels:
        labels[0] = IGNORE_INDEX  # the first token is never predicted: keeps packed rows apart
    n_trainable = sum(1 for x in labels if x != IGNORE_INDEX)
    return Example(ids, labels, n_trainable, truncated, str(conversation.source), eot_trained)


def encode_sample(sample: Sample, template: ChatTemplate, tokenizer: Any, *, train_on: str, max_length: int,
                  markers: tuple[str, ...]) -> Example:
    """Any sample to an Example: chat through the template, raw text with every token trained
    (plus eos, so documents end), pre-tokenized rows as given."""
    if isinstance(sample, Conversation):
        return encode(sample, template, tokenizer, train_on=train_on, max_length=max_length, markers=markers)
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
    return Example(ids, labels, n_trainable, truncated, str(sample.source), True)


def generation_prompt(conversation: Conversation, template: ChatTemplate) -> tuple[str, str | None]:
    """The prompt (all messages before the last assistant turn) and that turn's reference text."""
    messages = conversation.as_dicts()
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = template.render(messages[:last], add_generation_prompt=True)
    return prompt, messages[last]["content"]


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets, straight from the Rust tokenizer when there is one (no Python
    post-processing: the template already wrote every special token)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encoding = backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


def _labels(ids: list[int], offsets: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[int]:
    """Label = token id where the token overlaps a trained character range, else -100.

    One sweep: tokens and (sorted) ranges both advance left to right.

    >>> _labels([7, 8, 9], [(0, 2), (2, 4), (4, 6)], [(3, 5)])
    [-100, 8, 9]
    """
    labels = [IGNORE_INDEX] * len(ids)
    r = 0
    for i, (start, end) in enumerate(offsets):
        while r < len(ranges) and ranges[r][1] <= start:
            r += 1
        if r < len(ranges) and start < ranges[r][1] and end > ranges[r][0]:
            labels[i] = ids[i]
    return labels
