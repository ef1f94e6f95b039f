"""Checkers of section 7.3, instruction fine-tuning: prompt formats, the padding and masking
collate, prompt masking, reading the answer out of generated text, and the story instructions
(a task criterion and the builder of one task family).

Like the other chapter-7 checkers (they share ``run_diagnosed_cases`` of section 7.1), each runs
hand-picked cases first, then seeded random ones where the input allows, and a wrong answer that
matches a typical mistake (the Input section of an empty input, the first end token masked with
the padding, an off-by-one prompt mask, the response marker kept...) gets a hint about that
mistake. The references are the package's own functions (``llmcourse.instruction``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.exercises.core import (
    LabelledArgs,
    Mistake,
    exercise,
    expect_equal,
    run_cases,
)
from llmcourse.exercises.inputs import (
    expect_inputs_and_targets,
    measurement_compare,
    randint,
    seeded,
)
from llmcourse.instruction import (
    END_OF_TEXT,
    IGNORE_INDEX,
    TokenizedEntry,
    collate,
    extract_response,
)
from llmcourse.instruction import format_alpaca as package_format_alpaca
from llmcourse.instruction import format_phi3 as package_format_phi3
from llmcourse.story_instructions import rename_entry, uses_all_words
from llmcourse.tokenizers import GPT2_EOT_ID

Pair = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, L) int64

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
RESPONSE_MARKER = "### Response:"

ENTRY_WITH_INPUT = {
    "instruction": "Evaluate the following phrase by transforming it into the spelling given.",
    "input": "freind --> friend",
    "output": 'The spelling of the given phrase "freind" is incorrect, the correct spelling is '
    '"friend".',
}
ENTRY_WITHOUT_INPUT = {
    "instruction": "What is the capital of Italy?",
    "input": "",
    "output": "The capital of Italy is Rome.",
}
ENTRY_WITH_LINES = {
    "instruction": "Sort the following list in alphabetical order.",
    "input": "pear\napple\nfig",
    "output": "apple\nfig\npear",
}


def _entry_case(entry: dict[str, str]) -> LabelledArgs:
    shown = ", ".join(f"{name}={entry[name]!r}" for name in ("instruction", "input"))
    return (f"the entry {{{shown}, ...}}", (dict(entry),))


def _entry_cases() -> list[LabelledArgs]:
    return [
        _entry_case(ENTRY_WITH_INPUT),
        _entry_case(ENTRY_WITHOUT_INPUT),
        _entry_case(ENTRY_WITH_LINES),
        _entry_case({"instruction": "Name a primary colour.", "input": "", "output": "Red."}),
        _entry_case({"instruction": "Translate to French.", "input": "Good morning",
                     "output": "Bonjour"}),
    ]


# ----------------------------------------------------------------------------------------------
# ch07.format_alpaca


def reference_format_alpaca(entry: dict[str, str]) -> str:
    """The Alpaca prompt of ``entry``: preamble, instruction, and the input when not empty."""
    return package_format_alpaca(entry)


def _alpaca_with(entry: dict[str, str], *, separator: str = "\n\n", header_end: str = "\n",
                 preamble: str = PREAMBLE, always_input: bool = False) -> str:
    text = f"{preamble}{separator}### Instruction:{header_end}{entry['instruction']}"
    if entry["input"] or always_input:
        text += f"{separator}### Input:{header_end}{entry['input']}"
    return text


ALPACA_MISTAKES = (
    Mistake(
        "empty_input_kept",
        lambda entry: _alpaca_with(entry, always_input=True),
        "an entry whose input is empty gets no Input section at all: add "
        "'\\n\\n### Input:\\n' + input only when entry['input'] is not empty",
    ),
    Mistake(
        "single_newline_between_sections",
        lambda entry: _alpaca_with(entry, separator="\n"),
        "sections are separated by a blank line: '\\n\\n' before '### Instruction:' and before "
        "'### Input:', not a single '\\n'",
    ),
    Mistake(
        "space_after_header",
        lambda entry: _alpaca_with(entry, header_end=" "),
        "each header ('### Instruction:', '### Input:') ends its line: the text follows after "
        "'\\n', not after a space",
    ),
    Mistake(
        "preamble_on_two_lines",
        lambda entry: _alpaca_with(entry, preamble=PREAMBLE.replace("task. ", "task.\n")),
        "the two sentences of the preamble stand on one line, separated by a single space",
    ),
    Mistake(
        "response_header_included",
        lambda entry: reference_format_alpaca(entry) + "\n\n### Response:\n",
        "the prompt ends with the instruction (or the input): the response header "
        "'\\n\\n### Response:\\n' is added separately, before the output",
    ),
    Mistake(
        "output_included",
        lambda entry: reference_format_alpaca(entry) + "\n\n### Response:\n" + entry["output"],
        "the prompt holds the instruction and the input only, not the response: that is what "
        "the model must write",
    ),
)


@exercise(
    "ch07.format_alpaca",
    title="The Alpaca prompt",
    hint="preamble + '\\n\\n### Instruction:\\n' + instruction, then "
    "'\\n\\n### Input:\\n' + input only when the input is not empty",
)
def check_format_alpaca(answer: object) -> None:
    run_cases(
        answer, reference_format_alpaca, _entry_cases(), expect_equal, mistakes=ALPACA_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.format_phi3


def reference_format_phi3(entry: dict[str, str]) -> str:
    """Phi-3's prompt of ``entry``: '<|user|>', the instruction, and the input when not empty."""
    return package_format_phi3(entry)


PHI3_MISTAKES = (
    Mistake(
        "empty_input_kept",
        lambda entry: f"<|user|>\n{entry['instruction']}\n{entry['input']}",
        "with an empty input, the prompt ends with the instruction: no '\\n' is added for it",
    ),
    Mistake(
        "no_newline_after_user_tag",
        lambda entry: reference_format_phi3(entry).replace("<|user|>\n", "<|user|>", 1),
        "the '<|user|>' tag stands on its own line: '<|user|>\\n' then the instruction",
    ),
    Mistake(
        "assistant_tag_included",
        lambda entry: reference_format_phi3(entry) + "\n<|assistant|>\n",
        "the prompt ends with the instruction (or the input): the '\\n<|assistant|>\\n' that "
        "introduces the response is added separately",
    ),
    Mistake(
        "alpaca_input_header",
        lambda entry: f"<|user|>\n{entry['instruction']}"
        + (f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""),
        "Phi-3's format has no '### Input:' header: the input follows the instruction after "
        "a single '\\n'",
    ),
    Mistake(
        "blank_line_before_input",
        lambda entry: f"<|user|>\n{entry['instruction']}"
        + (f"\n\n{entry['input']}" if entry["input"] else ""),
        "the input follows the instruction after a single '\\n', not a blank line",
    ),
)


@exercise(
    "ch07.format_phi3",
    title="The Phi-3 prompt",
    hint="'<|user|>\\n' + instruction, then '\\n' + input only when the input is not empty",
)
def check_format_phi3(answer: object) -> None:
    run_cases(answer, reference_format_phi3, _entry_cases(), expect_equal, mistakes=PHI3_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch07.instruction_collate


def reference_instruction_collate(
    batch: list[list[int]],
    pad_id: int = GPT2_EOT_ID,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
) -> Pair:
    """Inputs and targets (B, L) int64: every sequence gets one end token ``pad_id`` and more up
    to the longest length + 1; inputs drop the last position, targets the first; targets after
    each sequence's end token are ``ignore_index``; both are cut to ``max_length`` positions."""
    return collate(batch, pad_id=pad_id, ignore_index=ignore_index, max_length=max_length)


def _padded(batch: Sequence[Sequence[int]], pad_id: int, length: int) -> torch.Tensor:
    """The sequences right-padded with ``pad_id`` to ``length`` (B, length)."""
    return torch.tensor([list(ids) + [pad_id] * (length - len(ids)) for ids in batch])


def _mask_from(targets: torch.Tensor, lengths: Sequence[int], ignore_index: int) -> torch.Tensor:
    """``targets`` (B, L), changed in place: in row b, positions >= lengths[b] set to
    ``ignore_index``."""
    positions = torch.arange(targets.shape[1])[None, :]
    targets[positions >= torch.tensor(lengths)[:, None]] = ignore_index
    return targets


def _collate_masking_all_padding(
    batch: list[list[int]], pad_id: int, ignore_index: int, max_length: int | None
) -> Pair:
    inputs, targets = reference_instruction_collate(batch, pad_id, ignore_index, max_length)
    return inputs, targets.masked_fill(targets == pad_id, ignore_index)


def _collate_without_masking(
    batch: list[list[int]], pad_id: int, ignore_index: int, max_length: int | None
) -> Pair:
    longest = max(len(ids) for ids in batch)
    padded = _padded(batch, pad_id, longest + 1)
    return padded[:, :-1][:, :max_length], padded[:, 1:][:, :max_length]


def _collate_unshifted(
    batch: list[list[int]], pad_id: int, ignore_index: int, max_length: int | None
) -> Pair:
    longest = max(len(ids) for ids in batch)
    inputs = _padded(batch, pad_id, longest + 1)[:, :-1]
    targets = _mask_from(inputs.clone(), [len(ids) + 1 for ids in batch], ignore_index)
    return inputs[:, :max_length], targets[:, :max_length]


def _collate_padded_to_longest(
    batch: list[list[int]], pad_id: int, ignore_index: int, max_length: int | None
) -> Pair:
    longest = max(len(ids) for ids in batch)
    padded = _padded(batch, pad_id, longest)
    targets = _mask_from(padded[:, 1:].clone(), [len(ids) for ids in batch], ignore_index)
    return padded[:, :-1][:, :max_length], targets[:, :max_length]


def _collate_padded_to_max_length(
    batch: list[list[int]], pad_id: int, ignore_index: int, max_length: int | None
) -> Pair:
    longest = max(len(ids) for ids in batch)
    padded = _padded(batch, pad_id, max(longest, max_length or 0) + 1)
    targets = _mask_from(padded[:, 1:].clone(), [len(ids) for ids in batch], ignore_index)
    return padded[:, :-1][:, :max_length], targets[:, :max_length]


def _collate_cut_before_padding(
    batch: list[list[int]], pad_id: int, ignore_index: int, max_length: int | None
) -> Pair:
    cut = [ids[:max_length] for ids in batch] if max_length is not None else batch
    return reference_instruction_collate(cut, pad_id, ignore_index, None)


COLLATE_MISTAKES = (
    Mistake(
        "all_padding_masked",
        _collate_masking_all_padding,
        "you mask every end token in the targets, the first one too: keep the first end token "
        "of each sequence as a target (that is how the model learns to stop) and set only the "
        "positions after it to ignore_index",
    ),
    Mistake(
        "no_masking",
        _collate_without_masking,
        "the padding is not masked: set every target after a sequence's first end token to "
        "ignore_index, so the padding does not count in the loss",
    ),
    Mistake(
        "hard_coded_ignore_index",
        lambda batch, pad_id, ignore_index, max_length: collate(
            batch, pad_id=pad_id, ignore_index=IGNORE_INDEX, max_length=max_length),
        "use the ignore_index argument, not a fixed -100",
    ),
    Mistake(
        "hard_coded_pad_id",
        lambda batch, pad_id, ignore_index, max_length: collate(
            batch, pad_id=GPT2_EOT_ID, ignore_index=ignore_index, max_length=max_length),
        f"pad with the pad_id argument, not a fixed {GPT2_EOT_ID}",
    ),
    Mistake(
        "targets_not_shifted",
        _collate_unshifted,
        "the targets are the inputs shifted by one position: the target at position t is the "
        "token at position t + 1 (targets = padded[:, 1:], inputs = padded[:, :-1])",
    ),
    Mistake(
        "padded_to_the_longest_only",
        _collate_padded_to_longest,
        "pad every sequence to the longest length + 1 (one end token even for the longest), "
        "then drop one position: inputs and targets have as many positions as the longest "
        "sequence has tokens",
    ),
    Mistake(
        "padded_to_max_length",
        _collate_padded_to_max_length,
        "max_length does not set the padded length, it only cuts: pad to the longest sequence "
        "+ 1, shift, and then keep at most the first max_length positions",
    ),
    Mistake(
        "cut_before_padding",
        _collate_cut_before_padding,
        "cut after shifting, not before: pad and shift the whole sequences, then keep the "
        "first max_length positions of inputs and targets (a cut sequence must not get an end "
        "token where the text goes on)",
    ),
)


def _collate_cases() -> list[LabelledArgs]:
    example = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
    cases: list[LabelledArgs] = [
        (f"batch={example}, pad_id={GPT2_EOT_ID}, ignore_index=-100, max_length=None",
         (example, GPT2_EOT_ID, IGNORE_INDEX, None)),
        ("batch=[[1, 2, 3]] (one sequence), pad_id=99, ignore_index=-100, max_length=None",
         ([[1, 2, 3]], 99, IGNORE_INDEX, None)),
        ("batch=[[5], [6, 7, 8]] (a sequence of one token), pad_id=99, ignore_index=-100, "
         "max_length=None", ([[5], [6, 7, 8]], 99, IGNORE_INDEX, None)),
        ("batch=[[1, 2], [3, 4]] (equal lengths), pad_id=99, ignore_index=-100, max_length=None",
         ([[1, 2], [3, 4]], 99, IGNORE_INDEX, None)),
        (f"batch={example}, pad_id=50, ignore_index=-1, max_length=None",
         (example, 50, -1, None)),
        (f"batch={example}, pad_id={GPT2_EOT_ID}, ignore_index=-100, max_length=3",
         (example, GPT2_EOT_ID, IGNORE_INDEX, 3)),
        (f"batch={example}, pad_id={GPT2_EOT_ID}, ignore_index=-100, max_length=8 (longer "
         "than every sequence)", (example, GPT2_EOT_ID, IGNORE_INDEX, 8)),
    ]
    generator = seeded(72)
    for max_length in (None, None, 6, 12):
        size = randint(generator, 1, 6)
        batch = [
            torch.randint(0, GPT2_EOT_ID, (randint(generator, 1, 16),), generator=generator)
            .tolist()
            for _ in range(size)
        ]
        lengths = [len(ids) for ids in batch]
        cases.append((
            f"a random batch of {size} sequences of lengths {lengths}, pad_id={GPT2_EOT_ID}, "
            f"ignore_index=-100, max_length={max_length}",
            (batch, GPT2_EOT_ID, IGNORE_INDEX, max_length),
        ))
    return cases


@exercise(
    "ch07.instruction_collate",
    title="Pad, shift and mask a batch",
    hint="pad each sequence with pad_id to the longest length + 1; inputs = padded[:, :-1], "
    "targets = padded[:, 1:]; in the targets keep each sequence's first end token and set the "
    "positions after it to ignore_index; finally cut both to max_length positions",
)
def check_instruction_collate(answer: object) -> None:
    run_cases(
        answer, reference_instruction_collate, _collate_cases(), expect_inputs_and_targets,
        mistakes=COLLATE_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.mask_prompt


def reference_mask_prompt(
    targets: torch.Tensor, prompt_lengths: list[int], ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """A copy of ``targets`` (B, L) in which the targets that are prompt tokens are
    ``ignore_index``: target t is token t + 1, a prompt token when t + 1 < the row's prompt
    length, so positions t < prompt_length - 1 are masked."""
    positions = torch.arange(targets.shape[1])[None, :]  # (1, L)
    prompt = positions < torch.tensor(prompt_lengths)[:, None] - 1  # (B, L)
    return targets.masked_fill(prompt, ignore_index)


def _mask_prompt_shifted_by(offset: int) -> Callable[[torch.Tensor, list[int], int], torch.Tensor]:
    """A prompt mask whose prompts are ``offset`` tokens longer than they are."""

    def mask(targets: torch.Tensor, prompt_lengths: list[int], ignore_index: int) -> torch.Tensor:
        return reference_mask_prompt(targets, [n + offset for n in prompt_lengths], ignore_index)

    return mask


PROMPT_MASK_MISTAKES = (
    Mistake(
        "first_response_token_masked",
        _mask_prompt_shifted_by(1),
        "off by one: you also mask the target at position prompt_length - 1, which is the "
        "first token after the prompt (targets are shifted: target t is token t + 1). Mask "
        "positions t < prompt_length - 1",
    ),
    Mistake(
        "last_prompt_token_not_masked",
        _mask_prompt_shifted_by(-1),
        "off by one: the target at position prompt_length - 2 is the prompt's last token and "
        "must be masked too. Mask positions t < prompt_length - 1",
    ),
    Mistake(
        "hard_coded_ignore_index",
        lambda targets, prompt_lengths, ignore_index: reference_mask_prompt(
            targets, prompt_lengths, IGNORE_INDEX),
        "use the ignore_index argument, not a fixed -100",
    ),
    Mistake(
        "first_row_length_for_every_row",
        lambda targets, prompt_lengths, ignore_index: reference_mask_prompt(
            targets, [prompt_lengths[0]] * len(prompt_lengths), ignore_index),
        "each row has its own prompt length: mask row b up to prompt_lengths[b] - 1",
    ),
)


def _targets_of(batch: list[list[int]], pad_id: int = 99) -> torch.Tensor:
    return collate(batch, pad_id=pad_id)[1]


def _mask_prompt_cases() -> list[LabelledArgs]:
    batch = [[10, 11, 12, 13, 14], [20, 21, 22]]
    targets = _targets_of(batch)
    shown = targets.tolist()
    cases: list[LabelledArgs] = [
        (f"targets={shown} (of the sequences {batch}), prompt_lengths=[3, 2]",
         (targets, [3, 2], IGNORE_INDEX)),
        (f"targets={shown}, prompt_lengths=[1, 1] (nothing to mask: the first token is never a "
         "target)", (targets, [1, 1], IGNORE_INDEX)),
        (f"targets={shown}, prompt_lengths=[5, 3] (no response: only the end token is left)",
         (targets, [5, 3], IGNORE_INDEX)),
        (f"targets={shown}, prompt_lengths=[2, 2], ignore_index=-1",
         (targets, [2, 2], -1)),
        (f"targets={shown[:1]}, prompt_lengths=[4]", (targets[:1], [4], IGNORE_INDEX)),
        (f"targets cut to 2 positions: {targets[:, :2].tolist()}, prompt_lengths=[5, 3]",
         (targets[:, :2].clone(), [5, 3], IGNORE_INDEX)),
    ]
    generator = seeded(73)
    for _ in range(3):
        size = randint(generator, 1, 5)
        lengths = [randint(generator, 2, 20) for _ in range(size)]
        batch = [torch.randint(0, 99, (n,), generator=generator).tolist() for n in lengths]
        prompt_lengths = [randint(generator, 1, n) for n in lengths]
        cases.append((
            f"the targets of a random batch of {size} sequences of lengths {lengths}, "
            f"prompt_lengths={prompt_lengths}",
            (_targets_of(batch), prompt_lengths, IGNORE_INDEX),
        ))
    return cases


@exercise(
    "ch07.mask_prompt",
    title="Mask the prompt in the targets",
    hint="target t predicts token t + 1, so in row b the targets at positions "
    "t < prompt_lengths[b] - 1 are prompt tokens: set them to ignore_index",
)
def check_mask_prompt(answer: object) -> None:
    run_cases(
        answer, reference_mask_prompt, _mask_prompt_cases(), expect_equal,
        mistakes=PROMPT_MASK_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.extract_response


def reference_extract_response(text: str) -> str:
    """The answer in generated ``text``: cut at the first '<|endoftext|>', keep what follows the
    first '### Response:' when there is one, strip the whitespace around it."""
    return extract_response(text, "alpaca")


def _extract_keeping_the_marker(text: str) -> str:
    text = text.split(END_OF_TEXT)[0]
    start = text.find(RESPONSE_MARKER)
    return text[max(start, 0):].strip()


EXTRACT_MISTAKES = (
    Mistake(
        "marker_kept",
        _extract_keeping_the_marker,
        "the answer starts AFTER '### Response:': drop the marker itself",
    ),
    Mistake(
        "not_stripped",
        lambda text: text.split(END_OF_TEXT)[0].split(RESPONSE_MARKER, 1)[-1],
        "strip the whitespace (the newlines after the marker, spaces at the end) with .strip()",
    ),
    Mistake(
        "end_token_kept",
        lambda text: text.split(RESPONSE_MARKER, 1)[-1].strip(),
        "cut the text at the first '<|endoftext|>': the model stops there, what follows is "
        "not part of the answer",
    ),
    Mistake(
        "last_marker",
        lambda text: text.split(END_OF_TEXT)[0].split(RESPONSE_MARKER)[-1].strip(),
        "keep what follows the FIRST '### Response:' (split(marker, 1)), not the last",
    ),
    Mistake(
        "marker_removed_in_place",
        lambda text: text.split(END_OF_TEXT)[0].replace(RESPONSE_MARKER, "").strip(),
        "removing the marker keeps the prompt before it: keep only the text that follows it",
    ),
)


def _extract_cases() -> list[LabelledArgs]:
    prompt = package_format_alpaca(ENTRY_WITHOUT_INPUT)
    texts = [
        "The capital of Italy is Rome.",
        "### Response:\nThe capital of Italy is Rome.",
        "\n\nThe capital of Italy is Rome.  \n",
        f"{prompt}\n\n### Response:\nThe capital of Italy is Rome.",
        "### Response:\nRome.<|endoftext|>### Instruction:\nName a river.",
        "Rome.<|endoftext|>### Response:\nParis.",
        "### Response:\nRome.<|endoftext|>Paris.<|endoftext|>",
        "### Response:\nRome.<|endoftext|><|endoftext|><|endoftext|>",
        "### Response:\nRome.\n\n### Response:\nRome again.",
        "### Response: Rome.",
        "",
        "### Response:\n",
    ]
    return [(f"text={text!r}", (text,)) for text in texts]


@exercise(
    "ch07.extract_response",
    title="Read the answer out of generated text",
    hint="text.split('<|endoftext|>')[0], then what follows the first '### Response:' (when "
    "there is one), then .strip()",
)
def check_extract_response(answer: object) -> None:
    run_cases(
        answer, reference_extract_response, _extract_cases(), expect_equal,
        mistakes=EXTRACT_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.uses_all_words: the criterion of the story_with_words task


def reference_uses_all_words(response: str, required: list[str]) -> bool:
    """Whether every word of ``required`` is a whole word of ``response``, in any case."""
    return uses_all_words(response, required)


USES_ALL_WORDS_MISTAKES = (
    Mistake(
        "substring",
        lambda response, required: all(word.lower() in response.lower() for word in required),
        "look for whole words, not substrings: 'cat' is in 'catch' as text, but the story does "
        "not use the word cat. Split the response into words first",
    ),
    Mistake(
        "split_on_spaces",
        lambda response, required: all(
            word.lower() in response.lower().split() for word in required),
        "splitting on spaces keeps the punctuation: 'farm.' is not 'farm'. Take runs of "
        "letters, e.g. re.findall(r'[^\\W_]+', response.lower())",
    ),
    Mistake(
        "case_sensitive",
        lambda response, required: all(
            word in re.findall(r"[^\W_]+", response) for word in required),
        "compare in lower case on both sides: 'Cat' at the start of a sentence is the word cat",
    ),
    Mistake(
        "any_word",
        lambda response, required: any(
            word.lower() in re.findall(r"[^\W_]+", response.lower()) for word in required),
        "EVERY word must appear (all), not just one of them (any)",
    ),
)


def _uses_all_words_cases() -> list[LabelledArgs]:
    pairs = [
        ("Tim saw a cat in the garden.", ["cat"]),
        ("Tim liked to play catch.", ["cat"]),
        ("Cat and dog were friends.", ["cat", "dog"]),
        ("They went to the farm. The pigs were happy!", ["farm", "pigs"]),
        ("A big dog barked.", ["dog", "cat"]),
        ("Lily's ball was red.", ["lily", "ball", "red"]),
        ("The Farm had a red barn.", ["farm", "Barn"]),
        ("", ["dog"]),
        ("Any story at all.", []),
        ('"Look, a bird!" said Sam.', ["bird", "look", "sam"]),
    ]
    return [(f"response={response!r}, required={required!r}", (response, required))
            for response, required in pairs]


@exercise(
    "ch07.uses_all_words",
    title="The criterion of 'write a story that uses the words ...'",
    hint="lower-case the response, take its words (re.findall(r'[^\\W_]+', ...)) into a set, "
    "and check that every required word, lower-cased, is in it",
)
def check_uses_all_words(answer: object) -> None:
    run_cases(
        answer, reference_uses_all_words, _uses_all_words_cases(), expect_equal,
        mistakes=USES_ALL_WORDS_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.rename_entry: the builder of the rename task family


def reference_rename_entry(sentence: str, old: str, new: str) -> dict[str, str]:
    """The rename entry of ``sentence`` (see ``llmcourse.story_instructions.rename_entry``)."""
    return rename_entry(sentence, old, new)


def _rename_with(replace: Callable[[str, str, str], str], *, swap: bool = False
                 ) -> Callable[[str, str, str], dict[str, str]]:
    def build(sentence: str, old: str, new: str) -> dict[str, str]:
        first, second = (old, new) if swap else (new, old)
        return {"instruction": f"Rewrite the sentence with the name {first} instead of {second}.",
                "input": sentence, "output": replace(sentence, old, new), "task": "rename"}
    return build


RENAME_MISTAKES = (
    Mistake(
        "str_replace",
        _rename_with(lambda sentence, old, new: sentence.replace(old, new)),
        "str.replace also changes the name inside longer words ('Tim' in 'Timmy'): replace whole "
        "words only, e.g. re.sub(rf'\\b{re.escape(old)}\\b', new, sentence)",
    ),
    Mistake(
        "first_only",
        _rename_with(lambda sentence, old, new: re.sub(rf"\b{re.escape(old)}\b", new, sentence,
                                                       count=1)),
        "replace EVERY occurrence of the old name, not only the first one",
    ),
    Mistake(
        "names_swapped",
        _rename_with(lambda sentence, old, new: re.sub(rf"\b{re.escape(old)}\b", new, sentence),
                     swap=True),
        "the instruction names the NEW name first: '... with the name {new} instead of {old}.'",
    ),
    Mistake(
        "task_missing",
        lambda sentence, old, new: {
            key: value for key, value in reference_rename_entry(sentence, old, new).items()
            if key != "task"},
        "the entry also names its task family: add the key 'task' with the value 'rename' "
        "(the criterion that scores the answer is looked up by it)",
    ),
)


def _rename_cases() -> list[LabelledArgs]:
    triples = [
        ("Tim and Sue are friends.", "Tim", "Sam"),
        ("Lily smiled at her mom.", "Lily", "Lucy"),
        ("Timmy waved at Tim.", "Tim", "Max"),
        ("Ben's dog ran to Ben.", "Ben", "Jack"),
        ('"Come here, Mia!" said Mom.', "Mia", "Anna"),
        ("Sue, Sue and Sue played.", "Sue", "Amy"),
    ]
    return [(f"sentence={sentence!r}, old={old!r}, new={new!r}", (sentence, old, new))
            for sentence, old, new in triples]


@exercise(
    "ch07.rename_entry",
    title="Build a 'rename' story instruction",
    hint="instruction f'Rewrite the sentence with the name {new} instead of {old}.', input the "
    "sentence, output the sentence with every whole-word old name replaced by the new one, and "
    "task 'rename'",
)
def check_rename_entry(answer: object) -> None:
    run_cases(
        answer, reference_rename_entry, _rename_cases(), expect_equal, mistakes=RENAME_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.prompt_loss_share: an experiment, how much of the loss the prompt carries


def _mostly_prompt(result: dict) -> bool:
    """Whether the prompt's targets carry more than half of the summed loss."""
    return result["prompt_share"] > 0.5


def _prompt_loss_share(
    model: nn.Module, items: list[TokenizedEntry], pad_id: int, *, prompt_offset: int = 1,
    count_padding: bool = False, end_in_prompt: bool = False, share: str = "loss",
) -> dict:
    """The measurement of ``reference_prompt_loss_share``, one thing wrong on request."""
    inputs, targets = collate(items, pad_id=pad_id)
    with torch.no_grad():
        logits = model(inputs)  # (B, L, V)
    losses = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)  # (B, L), 0 at the ignored targets
    positions = torch.arange(targets.shape[1])[None, :]
    lengths = torch.tensor([item.prompt_length for item in items])[:, None]
    prompt = positions < lengths - prompt_offset
    counted = torch.ones_like(prompt) if count_padding else targets != IGNORE_INDEX
    if end_in_prompt:
        prompt = prompt | (targets == pad_id)
    prompt_losses, response_losses = losses[prompt & counted], losses[~prompt & counted]
    if share == "loss":
        prompt_share = prompt_losses.sum().item() / losses[counted].sum().item()
    elif share == "tokens":
        prompt_share = prompt_losses.numel() / losses[counted].numel()
    else:  # the share of the two means
        prompt_share = (prompt_losses.mean() / (prompt_losses.mean() + response_losses.mean())
                        ).item()
    result = {
        "prompt_loss": prompt_losses.mean().item(),
        "response_loss": response_losses.mean().item(),
        "prompt_share": prompt_share,
    }
    result["mostly_prompt"] = _mostly_prompt(result)
    return result


def reference_prompt_loss_share(
    model: nn.Module, items: list[TokenizedEntry], pad_id: int
) -> dict:
    """Where the loss of an unmasked batch comes from. The batch is ``collate(items,
    pad_id=pad_id)``; a target at position t is a prompt target when t < the row's
    prompt_length - 1, a response target otherwise (the response header, the output and the
    end token), and padding targets (-100) count in neither. Returns ``{"prompt_loss": mean
    cross-entropy of the prompt targets, "response_loss": that of the response targets,
    "prompt_share": the prompt targets' part of the summed loss, "mostly_prompt":
    prompt_share > 0.5}``."""
    return _prompt_loss_share(model, items, pad_id)


PROMPT_SHARE_MISTAKES = (
    Mistake(
        "prompt_one_too_long",
        lambda model, items, pad_id: _prompt_loss_share(model, items, pad_id, prompt_offset=0),
        "off by one: target t predicts token t + 1, so the prompt targets are the positions "
        "t < prompt_length - 1 (as in mask_prompt); position prompt_length - 1 already "
        "predicts the first response token",
    ),
    Mistake(
        "padding_counted",
        lambda model, items, pad_id: _prompt_loss_share(model, items, pad_id,
                                                        count_padding=True),
        "leave out the padding targets (those equal to -100): cross_entropy gives them a loss "
        "of 0, but they are not response tokens and must not lower the response's mean",
    ),
    Mistake(
        "end_token_left_out",
        lambda model, items, pad_id: _prompt_loss_share(model, items, pad_id,
                                                        end_in_prompt=True),
        "the first end token after each response is a response target (the model learns to "
        "stop there); count it with the response, not with the prompt",
    ),
    Mistake(
        "share_of_tokens",
        lambda model, items, pad_id: _prompt_loss_share(model, items, pad_id, share="tokens"),
        "prompt_share is the prompt's part of the summed LOSS (sum of the prompt targets' "
        "losses / sum of all counted losses), not its part of the tokens",
    ),
    Mistake(
        "share_of_the_means",
        lambda model, items, pad_id: _prompt_loss_share(model, items, pad_id, share="means"),
        "prompt_share compares SUMS of losses (a long prompt carries more of the loss), not "
        "the two mean losses",
    ),
)


class BigramModel(nn.Module):
    """A language model that reads only the current token: logits = ``table[ids]`` (B, T, V)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def _prompt_share_case(generator: torch.Generator, knows: str, noise: tuple[int, int] = (3, 12)
                       ) -> tuple:
    """A bigram model over 40 tokens that has learned the chain 1 -> 2 -> ... -> 9 (a fixed
    template), and 4 entries whose prompts ("template") or responses ("responses") follow it;
    the other part is ``noise`` (shortest, longest) random tokens 10 to 39."""
    vocab, pad_id = 40, 0
    table = torch.randn(vocab, vocab, generator=generator)
    for token in range(1, 9):
        table[token, token + 1] += 8.0
    items = []
    for _ in range(4):
        chain = list(range(1, randint(generator, 5, 9) + 1))
        others = torch.randint(10, vocab, (randint(generator, *noise),), generator=generator)
        if knows == "template":
            items.append(TokenizedEntry(chain + others.tolist(), len(chain)))
        else:
            items.append(TokenizedEntry(others.tolist() + chain, len(others)))
    return BigramModel(table), items, pad_id


def _prompt_share_cases() -> list[LabelledArgs]:
    generator = seeded(81)
    return [
        ("a bigram model that predicts the prompts' template well, 4 entries with prompts of "
         "5 to 9 tokens, pad_id=0", _prompt_share_case(generator, "template")),
        ("the same kind of model, 4 entries whose responses it predicts well and whose "
         "prompts are random, pad_id=0", _prompt_share_case(generator, "responses")),
        ("another model and entries of the first kind", _prompt_share_case(generator,
                                                                           "template")),
        ("entries of the second kind with random prompts of 2 tokens only (hard, but short)",
         _prompt_share_case(generator, "responses", noise=(2, 2))),
    ]


@exercise(
    "ch07.prompt_loss_share",
    title="Experiment: how much of the loss is the prompt?",
    hint="inputs, targets = collate(items, pad_id=pad_id); per-target losses with "
    "F.cross_entropy(..., reduction='none'); prompt targets: positions t < prompt_length - 1; "
    "counted targets: those != -100",
    time_limit=60.0,
)
def check_prompt_loss_share(answer: object) -> None:
    compare = measurement_compare(
        "mostly_prompt", _mostly_prompt, "prompt_share > 0.5", atol=1e-5, rtol=1e-4,
    )
    run_cases(
        answer, reference_prompt_loss_share, _prompt_share_cases(), compare,
        mistakes=PROMPT_SHARE_MISTAKES,
    )
