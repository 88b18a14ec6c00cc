"""Preference rows: which format a row is in, read as one `PreferencePair` (a prompt and two
answers) or `KtoSample` (a prompt and one answer marked good or bad), checked like chat rows.

The prompt is the conversation up to the point where the model generates (it ends on a user or
tool turn); an answer is what the model generates from there: assistant turns, possibly with tool
calls and the tool results between them, ending on an assistant turn. Formats, told apart by keys
(`detect_preference_format`, reason stated):

- `trl`: `prompt` + `chosen` + `rejected`, each text or a list of messages; or, without `prompt`,
  two whole conversations sharing their prompt (TRL's implicit prompt; UltraFeedback's binarized
  rows too, whose `prompt` text must then be the last prompt turn).
- `llamafactory`: `conversations` (ShareGPT turns) + `chosen` and `rejected` turn objects.
- `openai_dpo`: OpenAI's and Together's DPO JSONL, `input.messages` + `preferred_output` +
  `non_preferred_output`.
- `hh`: Anthropic-HH, `chosen` and `rejected` transcripts of "\\n\\nHuman: " and "\\n\\nAssistant: "
  turns, identical up to the last assistant turn.
- `kto`: `prompt` + `completion` + `label`, or `messages` + `label` (the last assistant turns are
  the answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunesmith.data.adapters import SHAREGPT_ROLES, Fields, prompt_side, sharegpt_turn
from tunesmith.data.chat_messages import messages
from tunesmith.data.options import FormatOptions
from tunesmith.data.types import Issue, Message, Provenance
from tunesmith.data.values import as_dict, as_list, fail, kind, short, text

PREFERENCE_FORMATS = ("trl", "llamafactory", "openai_dpo", "hh", "kto")
_KTO_TEXT = {"true": True, "false": False}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    source: Provenance
    tools: tuple[dict, ...] = field(default=())


@dataclass(frozen=True)
class KtoSample:
    prompt: tuple[Message, ...]
    completion: tuple[Message, ...]
    desirable: bool
    source: Provenance
    tools: tuple[dict, ...] = field(default=())


PreferenceSample = PreferencePair | KtoSample


def is_preference_row(row: dict) -> bool:
    """Whether a row holds preference data (a pair of answers, or an answer with a label)."""
    return detect_preference_format(row) is not None


def detect_preference_format(row: dict) -> tuple[str, str] | None:
    """The row's preference format and why, or None when it is not preference data.

    >>> detect_preference_format({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    ('trl', 'keys prompt, chosen and rejected')
    """
    if "input" in row and "preferred_output" in row and "non_preferred_output" in row:
        return "openai_dpo", "keys input, preferred_output and non_preferred_output"
    if "chosen" in row and "rejected" in row:
        if "conversations" in row:
            return "llamafactory", "keys conversations, chosen and rejected"
        if "prompt" in row:
            return "trl", "keys prompt, chosen and rejected"
        if isinstance(row["chosen"], str) and _HH_TURN.search(row["chosen"]):
            return "hh", "chosen and rejected are Human/Assistant transcripts"
        return "trl", "keys chosen and rejected (the prompt is what they share)"
    label = row.get("label")
    boolean = isinstance(label, bool) or (isinstance(label, str) and label.strip().lower() in _KTO_TEXT)
    if boolean and ("completion" in row or "messages" in row):  # other labels (classes, scores) are not KTO's
        return "kto", f"keys {'prompt, completion' if 'completion' in row else 'messages'} and label"
    return None


def to_preference(row: dict, where: Provenance, fmt: str, options: FormatOptions | None = None) -> PreferenceSample:
    """The row in preference format `fmt`; `RowError` naming file:line and field when it cannot be read."""
    options = options or FormatOptions()
    f = Fields(row, where, options)
    if fmt == "trl":
        sample: PreferenceSample = _trl(f)
    elif fmt == "llamafactory":
        roles = {**SHAREGPT_ROLES, **options.roles}
        turns = as_list(f.required("conversations"), where, "conversations")
        prompt = tuple(f.system() + [sharegpt_turn(t, f, roles, f"conversations[{i}]") for i, t in enumerate(turns)])
        sample = PreferencePair(
            prompt,
            (sharegpt_turn(as_dict(f.required("chosen"), where, "chosen"), f, roles, "chosen"),),
            (sharegpt_turn(as_dict(f.required("rejected"), where, "rejected"), f, roles, "rejected"),),
            where,
            f.tools(),
        )
    elif fmt == "openai_dpo":
        given = as_dict(f.required("input"), where, "input")
        prompt = messages(given.get("messages"), where, "input.messages")
        tools = tuple(as_dict(t, where, f"input.tools[{i}]") for i, t in enumerate(given.get("tools") or []))
        chosen = messages(f.required("preferred_output"), where, "preferred_output")
        rejected = messages(f.required("non_preferred_output"), where, "non_preferred_output")
        sample = PreferencePair(prompt, chosen, rejected, where, tools)
    elif fmt == "hh":
        chosen_all = _transcript(text(f.required("chosen"), where, "chosen"), where, "chosen")
        rejected_all = _transcript(text(f.required("rejected"), where, "rejected"), where, "rejected")
        sample = _split_shared(chosen_all, rejected_all, where, ())
    elif fmt == "kto":
        sample = _kto(f)
    else:
        raise ValueError(f"unknown preference format {fmt!r} (one of {', '.join(PREFERENCE_FORMATS)})")
    _check_shape(sample)
    return sample


def _trl(f: Fields) -> PreferencePair:
    where, row = f.where, f.row
    chosen = prompt_side(f.required("chosen"), where, "chosen", "assistant")
    rejected = prompt_side(f.required("rejected"), where, "rejected", "assistant")
    if "prompt" not in row:
        return _split_shared(chosen, rejected, where, f.tools())
    prompt = prompt_side(row["prompt"], where, "prompt", "user")
    if chosen and chosen[0].role != "assistant" and rejected and rejected[0].role != "assistant":
        # UltraFeedback binarized: whole conversations beside the prompt's text
        pair = _split_shared(chosen, rejected, where, f.tools())
        if len(prompt) == 1 and pair.prompt and pair.prompt[-1].content != prompt[0].content:
            fail(where, "prompt_mismatch", "prompt", "differs from the last prompt turn of chosen and rejected")
        return pair
    return PreferencePair(prompt, chosen, rejected, where, f.tools())


def _kto(f: Fields) -> KtoSample:
    where, row = f.where, f.row
    label = f.required("label")
    if isinstance(label, str) and label.strip().lower() in _KTO_TEXT:
        label = _KTO_TEXT[label.strip().lower()]
    if not isinstance(label, bool):
        fail(where, "wrong_type", "label", f"expected true or false, got {kind(label)} {short(label)}")
    if "completion" in row:
        prompt = prompt_side(f.required("prompt"), where, "prompt", "user")
        completion = prompt_side(row["completion"], where, "completion", "assistant")
        return KtoSample(prompt, completion, label, where, f.tools())
    turns = messages(f.required("messages"), where, "messages")
    start = len(turns)
    while start > 0 and turns[start - 1].role in ("assistant", "tool"):
        start -= 1
    while start < len(turns) and turns[start].role == "tool":
        start += 1
    return KtoSample(turns[:start], turns[start:], label, where, f.tools())


def _transcript(value: str, where: Provenance, field: str) -> tuple[Message, ...]:
    parts = _HH_TURN.split(value)
    if parts[0].strip():
        fail(where, "hh_transcript", field, f"text before the first Human/Assistant turn: {short(parts[0])}")
    speakers = parts[1::2]
    contents = parts[2::2]
    return tuple(
        Message("user" if who == "Human" else "assistant", what.strip()) for who, what in zip(speakers, contents)
    )


def _split_shared(
    chosen: tuple[Message, ...], rejected: tuple[Message, ...], where: Provenance, tools: tuple[dict, ...]
) -> PreferencePair:
    """Two whole conversations as one prompt (everything before the last answer) and two answers;
    the prompts must be identical."""
    cut_c, cut_r = _answer_start(chosen), _answer_start(rejected)
    if chosen[:cut_c] != rejected[:cut_r]:
        at = next((i for i, (a, b) in enumerate(zip(chosen[:cut_c], rejected[:cut_r])) if a != b), min(cut_c, cut_r))
        fail(
            where,
            "prompt_mismatch",
            f"rejected[{at}]",
            "chosen and rejected differ before their answers: a pair must share its prompt",
            "compare the two conversations turn by turn",
        )
    return PreferencePair(chosen[:cut_c], chosen[cut_c:], rejected[cut_r:], where, tools)


def _answer_start(turns: tuple[Message, ...]) -> int:
    """Where the final answer begins: after the last user turn."""
    users = [i for i, m in enumerate(turns) if m.role == "user"]
    return users[-1] + 1 if users else 0


def _check_shape(sample: PreferenceSample) -> None:
    where = sample.source
    if not sample.prompt or sample.prompt[-1].role not in ("user", "tool"):
        fail(
            where,
            "no_prompt",
            "prompt",
            "the prompt must end on a user (or tool) turn, where the model starts to answer",
        )
    answers = (
        (("chosen", sample.chosen), ("rejected", sample.rejected))
        if isinstance(sample, PreferencePair)
        else (("completion", sample.completion),)
    )
    for name, answer in answers:
        if not answer:
            fail(where, "empty_answer", name, "no answer")
        for i, message in enumerate(answer):
            if message.role not in ("assistant", "tool"):
                fail(where, "answer_role", f"{name}[{i}].role", f"{message.role} turn inside an answer")
        if answer[0].role != "assistant" or answer[-1].role != "assistant":
            fail(where, "answer_role", name, "an answer starts and ends with an assistant turn")


def check_preference(sample: PreferenceSample) -> list[Issue]:
    """Rules a readable row can still break: empty answers, chosen identical to rejected."""
    where = sample.source
    issues = []
    answers = (
        (("chosen", sample.chosen), ("rejected", sample.rejected))
        if isinstance(sample, PreferencePair)
        else (("completion", sample.completion),)
    )
    for name, answer in answers:
        if not any(m.content.strip() or m.tool_calls for m in answer if m.role == "assistant"):
            issues.append(Issue("empty_answer", "error", where, name, "the answer is empty: nothing to prefer"))
    if isinstance(sample, PreferencePair) and sample.chosen == sample.rejected:
        issues.append(
            Issue(
                "same_answers",
                "error",
                where,
                "rejected",
                "identical to chosen: the pair teaches nothing",
                "drop the row or fix the rejected answer",
            )
        )
    return issues


def preference_parts(sample: PreferenceSample) -> list[tuple[str, tuple[Message, ...]]]:
    """The sample's pieces by name, for content keys: prompt and answers (a KTO label as a turn)."""
    if isinstance(sample, PreferencePair):
        return [("prompt", sample.prompt), ("chosen", sample.chosen), ("rejected", sample.rejected)]
    label = (Message("system", str(sample.desirable)),)
    return [("prompt", sample.prompt), ("completion", sample.completion), ("label", label)]
