"""`evaluate.generate.generate` pads prompts on the left without changing the caller's tokenizer."""

from __future__ import annotations

import pytest

from tunesmith.evaluate.generate import generate


class _Recorder:
    """The model side of generate: records the batches it is given, answers with no new tokens."""

    device = "cpu"

    def __init__(self):
        self.batches = []

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        self.batches.append((input_ids.clone(), attention_mask.clone()))
        return input_ids


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("side", ["right", "left"])
def test_generate_leaves_the_tokenizers_padding_side_as_it_was(tokenizer, side):
    tokenizer.padding_side = side
    model = _Recorder()
    generate(
        model,
        tokenizer,
        ["a", "a much longer prompt than the first one"],
        max_new_tokens=2,
        stop_ids=[tokenizer.eos_token_id],
        batch_size=2,
    )
    assert tokenizer.padding_side == side
    # and the prompts were still padded on the left: generation continues from the right edge
    ((ids, mask),) = model.batches
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and bool(mask[1].all())
    assert ids[0, 0] == tokenizer.pad_token_id


def test_generate_with_a_real_model_keeps_right_padding_for_training(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "right"
    answers = generate(
        model, tokenizer, ["hi", "a longer prompt"], max_new_tokens=3, stop_ids=[tokenizer.eos_token_id], batch_size=2
    )
    assert len(answers) == 2 and tokenizer.padding_side == "right"
