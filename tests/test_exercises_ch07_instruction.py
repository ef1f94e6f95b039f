"""The checkers of chapter 7.2 (instruction fine-tuning) accept right answers and reject the
typical wrong ones."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from llmcourse.exercises import check
from llmcourse.exercises.ch07_instruction import (
    ALPACA_MISTAKES,
    COLLATE_MISTAKES,
    ENTRY_WITH_INPUT,
    ENTRY_WITHOUT_INPUT,
    EXTRACT_MISTAKES,
    PHI3_MISTAKES,
    PROMPT_MASK_MISTAKES,
    PROMPT_SHARE_MISTAKES,
    RENAME_MISTAKES,
    USES_ALL_WORDS_MISTAKES,
    reference_extract_response,
    reference_format_alpaca,
    reference_format_phi3,
    reference_instruction_collate,
    reference_mask_prompt,
    reference_prompt_loss_share,
    reference_rename_entry,
    reference_uses_all_words,
)
from llmcourse.instruction import PROMPT_FORMATS, TokenizedEntry, collate

PAD = 50256


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


# ----------------------------------------------------------------------------------------------
# The references are what the package does


def test_reference_prompts_are_the_book_formats_written_out():
    assert reference_format_alpaca(ENTRY_WITHOUT_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nWhat is the capital of Italy?"
    )
    assert reference_format_alpaca(ENTRY_WITH_INPUT).endswith(
        "spelling given.\n\n### Input:\nfreind --> friend"
    )
    assert reference_format_phi3(ENTRY_WITH_INPUT) == (
        "<|user|>\nEvaluate the following phrase by transforming it into the spelling given."
        "\nfreind --> friend"
    )
    assert reference_format_phi3(ENTRY_WITHOUT_INPUT) == "<|user|>\nWhat is the capital of Italy?"


def test_reference_collate_is_the_docstring_example():
    inputs, targets = reference_instruction_collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]]
    assert targets.tolist() == [
        [1, 2, 3, 4, PAD], [6, PAD, -100, -100, -100], [8, 9, PAD, -100, -100]
    ]
    assert inputs.dtype == targets.dtype == torch.int64


def test_reference_mask_prompt_equals_the_package_collate_with_prompt_masking():
    items = [TokenizedEntry([10, 11, 12, 13, 14], 3), TokenizedEntry([20, 21, 22], 2),
             TokenizedEntry([30, 31, 32, 33], 4)]
    for max_length in (None, 2, 4):
        _, targets = collate(items, pad_id=99, max_length=max_length)
        _, expected = collate(items, pad_id=99, max_length=max_length, mask_prompt=True)
        got = reference_mask_prompt(targets, [item.prompt_length for item in items])
        assert torch.equal(got, expected)
    assert reference_mask_prompt(collate(items, pad_id=99)[1], [3, 2, 4]).tolist() == [
        [-100, -100, 13, 14, 99], [-100, 22, 99, -100, -100], [-100, -100, -100, 99, -100]
    ]


def test_reference_extract_response_reads_the_answer():
    assert reference_extract_response("### Response:\n Rome. <|endoftext|>More") == "Rome."
    assert reference_extract_response("no marker here ") == "no marker here"


# ----------------------------------------------------------------------------------------------
# Every recognised mistake gets its own hint


@pytest.mark.parametrize(
    ("exercise_id", "mistake"),
    [("ch07.format_alpaca", mistake) for mistake in ALPACA_MISTAKES]
    + [("ch07.format_phi3", mistake) for mistake in PHI3_MISTAKES]
    + [("ch07.instruction_collate", mistake) for mistake in COLLATE_MISTAKES]
    + [("ch07.mask_prompt", mistake) for mistake in PROMPT_MASK_MISTAKES]
    + [("ch07.extract_response", mistake) for mistake in EXTRACT_MISTAKES]
    + [("ch07.uses_all_words", mistake) for mistake in USES_ALL_WORDS_MISTAKES]
    + [("ch07.rename_entry", mistake) for mistake in RENAME_MISTAKES],
    ids=lambda value: getattr(value, "name", value),
)
def test_each_mistake_is_rejected_with_its_hint(exercise_id, mistake):
    result = run(exercise_id, mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


def test_not_attempted_answers_are_reported_so():
    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("ch07.format_alpaca", "ch07.format_phi3", "ch07.instruction_collate",
                        "ch07.mask_prompt", "ch07.extract_response", "ch07.uses_all_words",
                        "ch07.rename_entry", "ch07.prompt_loss_share"):
        assert run(exercise_id, stub).status == "not attempted"


# ----------------------------------------------------------------------------------------------
# ch07.format_alpaca and ch07.format_phi3


def test_format_alpaca_accepts_right_answers():
    def with_a_list(entry):
        parts = [
            "Below is an instruction that describes a task. Write a response that "
            "appropriately completes the request.",
            "### Instruction:\n" + entry["instruction"],
        ]
        if entry["input"] != "":
            parts.append("### Input:\n" + entry["input"])
        return "\n\n".join(parts)

    for answer in (reference_format_alpaca, with_a_list):
        result = run("ch07.format_alpaca", answer)
        assert result.status == "passed", result.message
    assert result.cases == 5


def test_format_alpaca_rejects_an_input_section_for_an_empty_input():
    def always_input(entry):
        return reference_format_alpaca(entry) + ("" if entry["input"] else "\n\n### Input:\n")

    result = run("ch07.format_alpaca", always_input)
    assert result.status == "failed"
    assert "input=''" in result.message
    assert "got 166 characters but expected 153" in result.message
    assert "gets no Input section" in result.hint


def test_format_alpaca_rejects_wrong_separators():
    result = run(
        "ch07.format_alpaca", lambda entry: reference_format_alpaca(entry).replace("\n\n", "\n")
    )
    assert result.status == "failed"
    assert "character 106: expected '\\n', got '#'" in result.message
    assert "separated by a blank line" in result.hint


def test_format_phi3_accepts_a_right_answer():
    def joined(entry):
        lines = ["<|user|>", entry["instruction"]] + ([entry["input"]] if entry["input"] else [])
        return "\n".join(lines)

    result = run("ch07.format_phi3", joined)
    assert result.status == "passed", result.message


def test_format_phi3_rejects_the_alpaca_format():
    result = run("ch07.format_phi3", reference_format_alpaca)
    assert result.status == "failed"
    assert "character 0: expected '<', got 'B'" in result.message


def test_prompt_formats_end_where_the_package_adds_the_response_header():
    entry = dict(ENTRY_WITH_INPUT)
    for name, reference in (("alpaca", reference_format_alpaca), ("phi3", reference_format_phi3)):
        prompt_format = PROMPT_FORMATS[name]
        assert prompt_format.full_text(entry) == (
            reference(entry) + prompt_format.response_header + entry["output"]
        )


# ----------------------------------------------------------------------------------------------
# ch07.instruction_collate


def book_style_collate(batch, pad_id=PAD, ignore_index=-100, max_length=None):
    """The book's way: pad each list, find the end tokens of the targets by value, keep the
    first."""
    longest = max(len(ids) + 1 for ids in batch)
    inputs, targets = [], []
    for ids in batch:
        padded = ids + [pad_id] * (longest - len(ids))
        row_inputs, row_targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        pads = torch.nonzero(row_targets == pad_id).squeeze(1)
        if pads.numel() > 1:
            row_targets[pads[1:]] = ignore_index
        if max_length is not None:
            row_inputs, row_targets = row_inputs[:max_length], row_targets[:max_length]
        inputs.append(row_inputs)
        targets.append(row_targets)
    return torch.stack(inputs), torch.stack(targets)


def test_instruction_collate_accepts_the_book_style_and_the_reference():
    for answer in (reference_instruction_collate, book_style_collate):
        result = run("ch07.instruction_collate", answer)
        assert result.status == "passed", result.message
    assert result.cases == 11


def test_instruction_collate_rejects_masking_the_first_end_token():
    def mask_all_pads(batch, pad_id, ignore_index, max_length):
        inputs, targets = reference_instruction_collate(batch, pad_id, ignore_index, max_length)
        targets[targets == pad_id] = ignore_index
        return inputs, targets

    result = run("ch07.instruction_collate", mask_all_pads)
    assert result.status == "failed"
    assert "batch=[[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]" in result.message
    assert "in the targets, 3 of 15 values differ; at index (0, 4) expected 50256, got -100" in (
        result.message
    )
    assert "keep the first end token" in result.hint


def test_instruction_collate_rejects_unshifted_targets_and_no_masking():
    def unshifted(batch, pad_id, ignore_index, max_length):
        inputs, _ = reference_instruction_collate(batch, pad_id, ignore_index, max_length)
        return inputs, inputs.clone()

    result = run("ch07.instruction_collate", unshifted)
    assert result.status == "failed"
    assert "at index (0, 0) expected 1, got 0" in result.message

    def unmasked(batch, pad_id, ignore_index, max_length):
        inputs, targets = reference_instruction_collate(batch, pad_id, ignore_index, max_length)
        return inputs, targets.masked_fill(targets == ignore_index, pad_id)

    result = run("ch07.instruction_collate", unmasked)
    assert result.status == "failed"
    assert "the padding is not masked" in result.hint


def test_instruction_collate_names_a_wrong_length_and_a_wrong_return_value():
    def to_longest(batch, pad_id, ignore_index, max_length):
        inputs, targets = reference_instruction_collate(batch, pad_id, ignore_index, max_length)
        return inputs[:, :-1], targets[:, :-1]

    result = run("ch07.instruction_collate", to_longest)
    assert result.status == "failed"
    assert "in the inputs, got shape (3, 4) but expected (3, 5)" in result.message

    result = run("ch07.instruction_collate",
                 lambda *args: reference_instruction_collate(*args)[0])
    assert result.status == "failed"
    assert "expected a pair (inputs, targets) of tensors" in result.message


# ----------------------------------------------------------------------------------------------
# ch07.mask_prompt


def test_mask_prompt_accepts_right_answers():
    def with_a_loop(targets, prompt_lengths, ignore_index=-100):
        masked = targets.clone()
        for row, length in enumerate(prompt_lengths):
            masked[row, : max(length - 1, 0)] = ignore_index
        return masked

    for answer in (reference_mask_prompt, with_a_loop):
        result = run("ch07.mask_prompt", answer)
        assert result.status == "passed", result.message
    assert result.cases == 9


def test_mask_prompt_rejects_a_mask_written_into_the_callers_targets():
    def in_place(targets, prompt_lengths, ignore_index=-100):
        for row, length in enumerate(prompt_lengths):
            targets[row, : length - 1] = ignore_index
        return targets

    result = run("ch07.mask_prompt", in_place)
    assert result.status == "failed"
    assert result.hint == "your function changed its argument `targets` in place; work on a copy"


def test_mask_prompt_rejects_both_off_by_ones():
    def masks_first_response_token(targets, prompt_lengths, ignore_index):
        masked = targets.clone()
        for row, length in enumerate(prompt_lengths):
            masked[row, :length] = ignore_index
        return masked

    result = run("ch07.mask_prompt", masks_first_response_token)
    assert result.status == "failed"
    assert "prompt_lengths=[3, 2]" in result.message
    assert "at index (0, 2) expected 13, got -100" in result.message
    assert "first token after the prompt" in result.hint

    def leaves_last_prompt_token(targets, prompt_lengths, ignore_index):
        masked = targets.clone()
        for row, length in enumerate(prompt_lengths):
            masked[row, : max(length - 2, 0)] = ignore_index
        return masked

    result = run("ch07.mask_prompt", leaves_last_prompt_token)
    assert result.status == "failed"
    assert "at index (0, 1) expected -100, got 12" in result.message
    assert "prompt's last token" in result.hint


# ----------------------------------------------------------------------------------------------
# ch07.extract_response


def test_extract_response_accepts_right_answers():
    def with_partition(text):
        text = text.partition("<|endoftext|>")[0]
        before, marker, after = text.partition("### Response:")
        return (after if marker else before).strip()

    def with_a_regex(text):
        text = re.split(re.escape("<|endoftext|>"), text, maxsplit=1)[0]
        match = re.search(r"### Response:(.*)", text, flags=re.DOTALL)
        return (match.group(1) if match else text).strip()

    for answer in (reference_extract_response, with_partition, with_a_regex):
        result = run("ch07.extract_response", answer)
        assert result.status == "passed", result.message
    assert result.cases == 12


def test_extract_response_rejects_keeping_the_marker_and_not_stripping():
    def keeps_marker(text):
        text = text.split("<|endoftext|>")[0]
        return text[text.index("### Response:"):].strip() if "### Response:" in text else (
            text.strip()
        )

    result = run("ch07.extract_response", keeps_marker)
    assert result.status == "failed"
    assert "got '### Response:\\nThe capital of Italy is Rome.'" in result.message
    assert "drop the marker" in result.hint

    result = run(
        "ch07.extract_response",
        lambda text: text.split("<|endoftext|>")[0].split("### Response:")[-1],
    )
    assert result.status == "failed"
    assert "text='### Response:\\nThe capital of Italy is Rome.'" in result.message
    assert ".strip()" in result.hint


# ----------------------------------------------------------------------------------------------
# ch07.uses_all_words and ch07.rename_entry (story instructions)


def test_reference_uses_all_words_matches_whole_words_in_any_case():
    assert reference_uses_all_words("The Cat sat. A dog, too!", ["cat", "DOG"]) is True
    assert reference_uses_all_words("Tim played catch.", ["cat"]) is False
    assert reference_uses_all_words("", []) is True


def test_uses_all_words_accepts_other_right_answers():
    def with_split(response, required):
        present = {piece for piece in re.split(r"[^a-z0-9]+", response.lower()) if piece}
        return all(word.lower() in present for word in required)

    def with_loop(response, required):
        found = re.findall(r"\w+", response.lower())
        for word in required:
            if word.lower() not in found:
                return False
        return True

    for answer in (reference_uses_all_words, with_split, with_loop):
        assert run("ch07.uses_all_words", answer).status == "passed"


def test_reference_rename_entry_replaces_whole_words_only():
    assert reference_rename_entry("Timmy waved at Tim's dog.", "Tim", "Max") == {
        "instruction": "Rewrite the sentence with the name Max instead of Tim.",
        "input": "Timmy waved at Tim's dog.",
        "output": "Timmy waved at Max's dog.",
        "task": "rename",
    }


def test_rename_entry_accepts_another_right_answer():
    def by_words(sentence, old, new):
        output = re.sub(r"\w+", lambda match: new if match.group() == old else match.group(),
                        sentence)
        return {"instruction": f"Rewrite the sentence with the name {new} instead of {old}.",
                "input": sentence, "output": output, "task": "rename"}

    assert run("ch07.rename_entry", by_words).status == "passed"


# ----------------------------------------------------------------------------------------------
# ch07.prompt_loss_share: an experiment


def prompt_loss_share_by_rows(model, items, pad_id):
    """Another right answer: each entry on its own (no padding at all), log_softmax and
    gather, the split by position written as two loops."""
    prompt_losses, response_losses = [], []
    for ids, prompt_length in items:
        sequence = torch.tensor([list(ids) + [pad_id]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(sequence[:, :-1])[0].float(), dim=-1)
        targets = sequence[0, 1:]
        losses = -log_probs[torch.arange(len(targets)), targets]
        prompt_losses += losses[:prompt_length - 1].tolist()
        response_losses += losses[prompt_length - 1:].tolist()
    prompt_sum, response_sum = sum(prompt_losses), sum(response_losses)
    share = prompt_sum / (prompt_sum + response_sum)
    return {"prompt_loss": prompt_sum / len(prompt_losses),
            "response_loss": response_sum / len(response_losses),
            "prompt_share": share, "mostly_prompt": share > 0.5}


def test_prompt_loss_share_accepts_the_reference_and_another_right_answer():
    assert run("ch07.prompt_loss_share", reference_prompt_loss_share).passed
    result = run("ch07.prompt_loss_share", prompt_loss_share_by_rows)
    assert result.status == "passed", result.message_with_hint


def test_reference_prompt_loss_share_splits_the_targets_as_mask_prompt_does():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 10)

    items = [TokenizedEntry([1, 2, 3, 4, 5], 3), TokenizedEntry([6, 7], 1)]
    result = reference_prompt_loss_share(Uniform(), items, 0)
    # every target costs log 10; prompt targets: 2 of row 0, none of row 1; response: 3 + 2
    assert result["prompt_share"] == pytest.approx(2 / 7)
    assert result["prompt_loss"] == pytest.approx(result["response_loss"])
    assert result["mostly_prompt"] is False


@pytest.mark.parametrize("mistake", PROMPT_SHARE_MISTAKES, ids=lambda mistake: mistake.name)
def test_prompt_loss_share_rejects_a_typical_mistake_with_its_hint(mistake):
    result = run("ch07.prompt_loss_share", mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


@pytest.mark.parametrize(
    "conclusion",
    [lambda result: True, lambda result: result["prompt_loss"] > result["response_loss"]],
    ids=["typed_in", "compares_the_means"],
)
def test_prompt_loss_share_rejects_a_conclusion_not_drawn_from_the_share(conclusion):
    def answer(model, items, pad_id):
        result = reference_prompt_loss_share(model, items, pad_id)
        return {**result, "mostly_prompt": conclusion(result)}

    result = run("ch07.prompt_loss_share", answer)
    assert result.status == "failed"
    assert "compute 'mostly_prompt' from your measurements (prompt_share > 0.5)" in result.hint


def test_prompt_loss_share_rejects_a_masked_prompt():
    def masked(model, items, pad_id):
        inputs, targets = collate(items, pad_id=pad_id, mask_prompt=True)
        losses = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(),
                                 reduction="none")
        return {"prompt_loss": 0.0, "response_loss": losses[targets.flatten() != -100].mean()
                .item(), "prompt_share": 0.0, "mostly_prompt": False}

    result = run("ch07.prompt_loss_share", masked)
    assert result.status == "failed"
    assert "'prompt_loss': expected" in result.message
