"""Conversation -> Examples: one render, one tokenization, labels from character spans.

A token trains when any of its characters lies inside a trained range: what an assistant turn
generates, end-of-turn marker included (see `formatting/turns.py`), so the model learns to stop.

A conversation is one Example, unless the template rewrites history: when an assistant turn that
should train is not in the full render verbatim (DeepSeek-R1 strips reasoning from earlier turns),
training it there would teach text the model never sees at inference, or nothing at all. Then the
conversation becomes one Example per trained assistant turn: the conversation up to and including
that turn, rendered on its own so the turn is the last one (kept whole, as at inference), with
only that turn training.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from operator import le
from pathlib import Path
from typing import Any

from tunesmith.data.types import Conversation, Sample, TextSample
from tunesmith.errors import UserError
from tunesmith.formatting.builtin import BUILTIN_NAMES, builtin_source, check_builtin, is_builtin
from tunesmith.formatting.template import KNOWN_END_OF_TURN, ChatTemplate, template_from_file
from tunesmith.formatting.turns import Turn, locate_turns

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
    truncated_turns: int = 0
    """Trained assistant turns that max_length cut, partly or wholly."""
    double_bos: bool = False
    """The ids start with two BOS tokens (the template writes BOS and the text held one too)."""


def build_template(tokenizer: Any, setting: str) -> ChatTemplate:
    """The template a run uses: the model's own (`model`), a built-in by name, or a `.jinja` file."""
    specials = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    if setting == "model":
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise UserError("the model has no chat template of its own; set template.chat_template to a built-in "
                            f"one ({', '.join(BUILTIN_NAMES)}) or a .jinja file")
        folder = Path(str(getattr(tokenizer, "name_or_path", "") or "")).name
        name = f"{folder} (the model's own)" if folder else "the model's own"
        return ChatTemplate(source, name=name, special_tokens=specials)
    if is_builtin(setting):
        check_builtin(setting, tokenizer)
        return ChatTemplate(builtin_source(setting), name=f"built-in {setting}", special_tokens=specials)
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
           max_length: int, markers: tuple[str, ...]) -> list[Example]:
    """Tokenize a conversation and mark which tokens train: one Example, or one per trained
    assistant turn when the template does not keep those turns verbatim (see the module doc)."""
    messages = conversation.as_dicts()
    tools = [dict(tool) for tool in conversation.tools] or None
    rendered = template.render_with_spans(messages, tools=tools)
    chosen = trained_messages(conversation, train_on)
    assistants = sorted(i for i in chosen if messages[i]["role"] == "assistant")
    turns = locate_turns(template, rendered, messages, assistants, markers, tools=tools)
    source = str(conversation.source)
    if train_on == "all":
        located = [t for t in turns.values() if t is not None]
        return [_example(rendered.text, [(0, len(rendered.text))], located, True, tokenizer, max_length, source)]
    if any(turn is None for turn in turns.values()):
        return [_final_turn_example(messages[: i + 1], i, template, tokenizer, max_length, markers, tools, source)
                for i in assistants]
    located = [t for t in turns.values() if t is not None]
    ranges = [(t.start, t.end) for t in located]
    eot_trained = all(t.eot for t in located)
    return [_example(rendered.text, ranges, located, eot_trained, tokenizer, max_length, source)]


def _final_turn_example(messages: list[dict], index: int, template: ChatTemplate, tokenizer: Any, max_length: int,
                        markers: tuple[str, ...], tools: list[dict] | None, source: str) -> Example:
    """The conversation up to assistant message `index`, rendered with it last; only it trains."""
    rendered = template.render_with_spans(messages, tools=tools)
    turn = locate_turns(template, rendered, messages, [index], markers, tools=tools)[index]
    located = [turn] if turn is not None else []
    ranges = [(turn.start, turn.end)] if turn is not None else []
    return _example(rendered.text, ranges, located, turn is not None and turn.eot, tokenizer, max_length, source)


def _example(text: str, ranges: list[tuple[int, int]], turns: list[Turn], eot_trained: bool, tokenizer: Any,
             max_length: int, source: str) -> Example:
    ids, offsets = _tokenize(tokenizer, text)
    labels = _labels(ids, offsets, sorted(ranges), _added_ids(tokenizer))
    truncated = len(ids) > max_length
    cut_turns = 0
    if truncated:
        kept_end = offsets[max_length - 1][1] if max_length > 0 else 0
        cut_turns = sum(1 for turn in turns if turn.end > kept_end)
        eot_trained = eot_trained and cut_turns == 0  # a cut turn's end-of-turn is not in the ids
        ids, labels = ids[:max_length], labels[:max_length]
    if labels:
        labels[0] = IGNORE_INDEX  # the first token is never predicted: keeps packed rows apart
    n_trainable = len(labels) - labels.count(IGNORE_INDEX)
    return Example(ids, labels, n_trainable, truncated, source, eot_trained, cut_turns, _double_bos(tokenizer, ids))


def encode_sample(sample: Sample, template: ChatTemplate, tokenizer: Any, *, train_on: str, max_length: int,
                  markers: tuple[str, ...]) -> list[Example]:
    """Any sample to its Examples: chat through the template (one Example, or one per trained
    assistant turn when the template rewrites history), raw text with every token trained (plus
    eos, so documents end), pre-tokenized rows as given."""
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
    return [Example(ids, labels, n_trainable, truncated, str(sample.source), True)]


def generation_prompt(conversation: Conversation, template: ChatTemplate) -> tuple[str, str | None]:
    """The prompt (all messages before the last assistant turn) and that turn's reference text."""
    messages = conversation.as_dicts()
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = template.render(messages[:last], add_generation_prompt=True,
                             tools=[dict(tool) for tool in conversation.tools] or None)
    return prompt, messages[last]["content"]


def _double_bos(tokenizer: Any, ids: list[int]) -> bool:
    """Two BOS ids first: the template wrote BOS and the text (or the template again) added one."""
    if len(ids) < 2 or ids[0] != ids[1]:
        return False
    return ids[0] == tokenizer.bos_token_id


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets, straight from the Rust tokenizer when there is one (no Python
    post-processing: the template already wrote every special token, as `apply_chat_template`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encoding = backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


_ADDED: "weakref.WeakKeyDictionary[Any, frozenset[int]]" = weakref.WeakKeyDictionary()


def _added_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's added tokens (role markers, end-of-turn, ...), once per tokenizer."""
    known = _ADDED.get(tokenizer)
    if known is None:
        added = getattr(tokenizer, "get_added_vocab", dict)()
        known = frozenset(added.values()) | frozenset(getattr(tokenizer, "all_special_ids", ()))
        _ADDED[tokenizer] = known
    return known


def _labels(ids: list[int], offsets: list[tuple[int, int]], ranges: list[tuple[int, int]],
            added: frozenset[int] = frozenset()) -> list[int]:
    """Label = token id where the token overlaps a trained character range, else -100.

    An added token (`added`) that starts before the range is the template's marker, not the
    answer: Phi-3's `<|assistant|>` strips the whitespace to its right, so before an answer that
    starts with a space its characters run into the answer's span. It never trains.

    Token offsets run left to right, so the tokens of a range are one run found by bisection (a
    few Python steps per range, not per token); offsets that go backwards anywhere (no tokenizer
    seen so far) take a token-by-token sweep instead.

    >>> _labels([7, 8, 9], [(0, 2), (2, 4), (4, 6)], [(3, 5)])
    [-100, 8, 9]
    >>> _labels([7, 8, 9], [(0, 2), (2, 4), (4, 6)], [(3, 5)], added=frozenset({8}))
    [-100, -100, 9]
    """
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    if not (all(map(le, starts, starts[1:])) and all(map(le, ends, ends[1:]))):
        return _labels_by_sweep(ids, offsets, ranges, added)
    labels = [IGNORE_INDEX] * len(ids)
    for low, high in ranges:
        first = bisect_right(ends, low)  # the first token ending after the range starts
        stop = bisect_left(starts, high, lo=first)  # the first token starting at or after its end
        if first < stop and starts[first] < low and ids[first] in added:
            first += 1
        labels[first:stop] = ids[first:stop]
    return labels


def _labels_by_sweep(ids: list[int], offsets: list[tuple[int, int]], ranges: list[tuple[int, int]],
                     added: frozenset[int]) -> list[int]:
    """`_labels` token by token: tokens and (sorted) ranges both advance left to right."""
    labels = [IGNORE_INDEX] * len(ids)
    r = 0
    for i, (start, end) in enumerate(offsets):
        while r < len(ranges) and ranges[r][1] <= start:
            r += 1
        if r < len(ranges) and start < ranges[r][1] and end > ranges[r][0]:
            if start < ranges[r][0] and ids[i] in added:
                continue
            labels[i] = ids[i]
    return labels
