"""Instruction fine-tuning: teach a pretrained GPT to follow instructions (the book's chapter 7).

The recipe:

1. ``load_instruction_data`` reads the course's 1,100 {instruction, input, output} entries and
   checks every one; ``split_entries`` splits them 85/5/10 as the book does (935/55/110).
2. A prompt format turns an entry into text. ``alpaca``, the book's, is (the first two sentences
   on one line)::

       Below is an instruction that describes a task. Write a response that appropriately
       completes the request.

       ### Instruction:
       {instruction}

       ### Input:
       {input}

       ### Response:
       {output}

   (the Input section only when the input is not empty), and ``phi3``, the book's exercise 7.1:
   ``<|user|>\\n{instruction}\\n{input}\\n<|assistant|>\\n{output}``.
3. ``InstructionDataset`` tokenizes the entries; ``collate`` pads a batch, shifts inputs and
   targets by one token and hides the padding (optionally the prompt too) from the loss.
4. ``train_instruction_model`` runs ``llmcourse.training.train`` on these batches.
5. ``generate_response`` answers an entry, ``generate_responses`` a list of them, and
   ``save_responses`` keeps the answers as JSON for scoring (``llmcourse.response_scoring``).

Tokenization: an entry is encoded in three pieces, the prompt (instruction and input), the
response header ("\\n\\n### Response:\\n") and the output, and the ids are concatenated. For every
entry of the course's data, in both formats, this gives exactly the ids of encoding the whole
text at once (the book's way); it also makes the prompt's length exact and the generation
prompt (prompt + header) a prefix of the training ids.

Generation differs from the book in one detail: the book gives the model the prompt alone and
lets it write the response header itself; here the header ends the prompt, so the model's first
token is already the answer (a fine-tuned model writes that header anyway, and a streamed answer
starts with the answer). ``extract_response`` still removes a header the model repeats.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from llmcourse import data_files
from llmcourse.checkpoints import load_model, write_checkpoint_files
from llmcourse.errors import CheckpointError, ConfigError, DataError, MissingFileError
from llmcourse.generation import GREEDY, Sampling, stream_generate
from llmcourse.model import GPT
from llmcourse.model_state import model_device
from llmcourse.saving import check_destination, recover, staged_directory, write_json_atomic
from llmcourse.splits import Split
from llmcourse.tokenizers import GPT2_EOT_ID, Tokenizer
from llmcourse.tokenizers.files import (
    TOKENIZER_FILE,
    check_vocab_fits,
    end_of_text_id,
    load_tokenizer,
)
from llmcourse.training import TrainingHistory, fine_tuning_config, train

ENTRY_FIELDS = ("instruction", "input", "output")
OPTIONAL_FIELDS = ("task",)  # an entry may name its task (llmcourse.story_instructions)
RESPONSE_KEY = "model_response"  # the book's key for a generated response
IGNORE_INDEX = -100  # targets with this value do not count in the loss
END_OF_TEXT = "<|endoftext|>"
MAX_LISTED_PROBLEMS = 20

INSTRUCTION_FILE = "instruction.json"  # what a fine-tuned model's directory holds
MODEL_DIR = "model"
RESPONSES_FILE = "test-responses.json"
SCORES_FILE = "test-scores.json"
OUTPUT_NAMES = (INSTRUCTION_FILE, MODEL_DIR, RESPONSES_FILE, SCORES_FILE)
INSTRUCTION_FORMAT = "llmcourse-instruction"


class Entry(TypedDict):
    """One example: what to do, the text to do it on (often empty) and the desired answer."""

    instruction: str
    input: str
    output: str


# ---------------------------------------------------------------------------------------------
# Data


def load_instruction_data(path: str | os.PathLike[str] | None = None) -> list[Entry]:
    """The entries of a JSON list of {"instruction", "input", "output"} objects.

    ``path`` defaults to the course's copy (``llmcourse.data_files.fetch("instruction-data")``,
    1,100 entries). Every entry is checked: one ``DataError`` lists all the malformed
    ones by index; none is skipped silently. An entry may also name its ``task`` (a string; the
    story instructions of ``llmcourse.story_instructions`` do).
    """
    path = Path(path) if path is not None else data_files.fetch("instruction-data", quiet=True)
    return validate_entries(read_json(path), ENTRY_FIELDS, source=str(path))


def load_responses(
    path: str | os.PathLike[str], response_key: str = RESPONSE_KEY
) -> list[dict[str, str]]:
    """Entries with responses, as written by ``save_responses``, checked like the data."""
    path = Path(path)
    return validate_entries(read_json(path), (*ENTRY_FIELDS, response_key), source=str(path))


def read_json(path: Path) -> object:
    """The JSON value in the file at ``path``; a clear error when it is missing or not JSON."""
    if not path.is_file():
        raise MissingFileError(f"no file at {path}; give the path of a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"{path} is not valid UTF-8 JSON ({error}); fix or replace the file"
        ) from None


def validate_entries(
    values: object, fields: Sequence[str] = ENTRY_FIELDS, source: str = "<data>",
    optional: Sequence[str] = OPTIONAL_FIELDS,
) -> list[Any]:
    """``values`` itself when it is a non-empty list of objects with exactly the string
    ``fields`` (and, in any of them, the string ``optional`` fields); otherwise one
    ``DataError`` naming every bad entry by index."""
    if not isinstance(values, list):
        raise DataError(
            f"{source} must hold a JSON list of entries, found {_json_type(values)}"
        )
    if not values:
        raise DataError(f"{source} holds an empty list: there are no entries")
    problems = [
        (index, problem)
        for index, value in enumerate(values)
        if (problem := entry_problem(value, fields, optional)) is not None
    ]
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        listed = "\n".join(f"  entry {index}: {problem}" for index, problem in shown)
        more = len(problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            listed += f"\n  ... and {more} more"
        names = ", ".join(repr(name) for name in fields)
        if optional:
            names += " (and optionally " + ", ".join(repr(name) for name in optional) + ")"
        raise DataError(
            f"{source}: {len(problems)} of {len(values)} entries are malformed (entries count "
            f"from 0; each must be an object with exactly the string fields {names}):\n"
            f"{listed}\nfix or remove these entries"
        )
    return values


def entry_problem(
    value: object, fields: Sequence[str] = ENTRY_FIELDS, optional: Sequence[str] = OPTIONAL_FIELDS
) -> str | None:
    """What is wrong with one entry, or None when it is an object with exactly the string
    ``fields``, and perhaps some of the string ``optional`` fields."""
    if not isinstance(value, dict):
        return f"is {_json_type(value)}, not an object"
    issues = []
    missing = [name for name in fields if name not in value]
    if missing:
        issues.append("missing " + ", ".join(repr(name) for name in missing))
    wrong_types = [
        f"{name!r} is {_json_type(value[name])}"
        for name in (*fields, *optional)
        if name in value and not isinstance(value[name], str)
    ]
    if wrong_types:
        issues.append(", ".join(wrong_types) + " (must be a string)")
    unexpected = [repr(name) for name in value if name not in fields and name not in optional]
    if unexpected:
        issues.append("unexpected " + ", ".join(unexpected))
    return "; ".join(issues) or None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (str, "a string"), (list, "a list"),
                       (dict, "an object"), (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def split_entries(
    entries: Sequence[Entry],
    seed: int | None = None,
    fractions: tuple[float, float, float] = (0.85, 0.05, 0.10),
) -> Split:
    """Split entries into training, validation and test parts by ``fractions`` (in that order).

    As in the book: int(n * 0.85) training entries, int(n * 0.10) test entries and the rest for
    validation, taken from the list in the order training, test, validation, without shuffling
    (the course's file is already in random order). For the 1,100 entries: ``data[:935]``
    trains, ``data[935:1045]`` tests and ``data[1045:]`` (55) validates, the book's exact split.
    With a ``seed``, a copy of the list is first shuffled by ``random.Random(seed)``.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ConfigError(
            f"fractions must be three non-negative numbers (train, validation, test) that sum "
            f"to 1, got {fractions}"
        )
    entries = list(entries)
    if seed is not None:
        random.Random(seed).shuffle(entries)
    train_end = int(len(entries) * fractions[0])
    test_end = train_end + int(len(entries) * fractions[2])
    return Split(entries[:train_end], entries[test_end:], entries[train_end:test_end])


# ---------------------------------------------------------------------------------------------
# Prompt formats


def format_alpaca(entry: Mapping[str, str]) -> str:
    """The book's (Alpaca's) prompt: preamble, instruction, and the input when not empty."""
    text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    if entry["input"]:
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def format_phi3(entry: Mapping[str, str]) -> str:
    """Phi-3's prompt: ``<|user|>``, the instruction, and the input when not empty."""
    text = f"<|user|>\n{entry['instruction']}"
    if entry["input"]:
        text += f"\n{entry['input']}"
    return text


@dataclass(frozen=True)
class PromptFormat:
    """How an entry becomes text: ``format_prompt(entry)``, then ``response_header``, then the
    output. ``response_marker`` is what ``extract_response`` looks for in generated text."""

    name: str
    format_prompt: Callable[[Mapping[str, str]], str]
    response_header: str
    response_marker: str

    def prompt(self, entry: Mapping[str, str]) -> str:
        return self.format_prompt(entry)

    def full_text(self, entry: Mapping[str, str]) -> str:
        """The training text of ``entry``: prompt, response header, output."""
        return self.prompt(entry) + self.response_header + entry["output"]


PROMPT_FORMATS: dict[str, PromptFormat] = {
    "alpaca": PromptFormat("alpaca", format_alpaca, "\n\n### Response:\n", "### Response:"),
    "phi3": PromptFormat("phi3", format_phi3, "\n<|assistant|>\n", "<|assistant|>"),
}


def get_prompt_format(prompt_format: str | PromptFormat) -> PromptFormat:
    """The ``PromptFormat`` named ``prompt_format`` (a ``PromptFormat`` is returned as is)."""
    if isinstance(prompt_format, PromptFormat):
        return prompt_format
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(
            f"unknown prompt format {prompt_format!r}; choose one of: {', '.join(PROMPT_FORMATS)}"
        )
    return PROMPT_FORMATS[prompt_format]


def extract_response(text: str, prompt_format: str | PromptFormat = "alpaca") -> str:
    """The answer in generated ``text``: cut at the first ``<|endoftext|>``, keep what follows
    the first response marker ("### Response:" for alpaca) when there is one, strip whitespace."""
    marker = get_prompt_format(prompt_format).response_marker
    text = text.split(END_OF_TEXT, 1)[0]
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip()


# ---------------------------------------------------------------------------------------------
# Tokens and batches


class TokenizedEntry(NamedTuple):
    """An entry's token ids (prompt, response header, output; no end token) and how many of
    them are the prompt (the instruction and input)."""

    ids: list[int]
    prompt_length: int


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; a literal "<|endoftext|>" in it is ordinary text."""
    return tokenizer.encode(text, disallowed_special=())


def encode_entry(
    tokenizer: Tokenizer, entry: Mapping[str, str], prompt_format: str | PromptFormat = "alpaca"
) -> TokenizedEntry:
    """The training ids of ``entry`` (see the module's note on tokenization)."""
    prompt = encode_text(tokenizer, get_prompt_format(prompt_format).prompt(entry))
    response = encode_text(tokenizer, entry["output"])
    return TokenizedEntry(prompt + _header_ids(tokenizer, prompt_format) + response, len(prompt))


def fits_context(
    tokenizer: Tokenizer, max_length: int, prompt_format: str | PromptFormat = "alpaca"
) -> Callable[[Mapping[str, str]], bool]:
    """A test of whether an entry trains whole: its prompt, response and end token take at most
    ``max_length`` tokens (for ``Split.filtered`` or ``load_story_instructions(fits=...)``)."""

    def fits(entry: Mapping[str, str]) -> bool:
        return len(encode_entry(tokenizer, entry, prompt_format).ids) + 1 <= max_length

    return fits


def generation_prompt(
    tokenizer: Tokenizer,
    entry: Mapping[str, str],
    prompt_format: str | PromptFormat = "alpaca",
    context_length: int | None = None,
) -> list[int]:
    """The ids a model answers ``entry`` from: its prompt and the response header (the first
    ids of ``encode_entry``), cut to the last ``context_length`` ids when given."""
    prompt = encode_text(tokenizer, get_prompt_format(prompt_format).prompt(entry))
    ids = prompt + _header_ids(tokenizer, prompt_format)
    return ids[-context_length:] if context_length is not None else ids


def _header_ids(tokenizer: Tokenizer, prompt_format: str | PromptFormat) -> list[int]:
    return encode_text(tokenizer, get_prompt_format(prompt_format).response_header)


class InstructionDataset(Dataset):
    """Entries as ``TokenizedEntry`` items (tokenized once, here), ready for ``collate``."""

    def __init__(
        self,
        entries: Sequence[Mapping[str, str]],
        tokenizer: Tokenizer,
        prompt_format: str | PromptFormat = "alpaca",
    ):
        self.prompt_format = get_prompt_format(prompt_format)
        self.items = [encode_entry(tokenizer, entry, self.prompt_format) for entry in entries]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TokenizedEntry:
        return self.items[index]


def collate(
    batch: Sequence[TokenizedEntry | Sequence[int]],
    pad_id: int = GPT2_EOT_ID,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    mask_prompt: bool = False,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token sequences into a batch (inputs, targets), each (B, L) int64, as the book does.

    Each sequence gets one end token ``pad_id`` (GPT-2's ``<|endoftext|>``) appended and more of
    them up to the longest sequence's length + 1; inputs drop the last token, targets the first,
    so L is the longest sequence's length. In the targets the appended end token stays, so the
    model learns to stop, and every position after it becomes ``ignore_index``, so padding does
    not count in the loss. The book finds those positions by comparing tokens with ``pad_id``;
    here they are found by position, which is the same unless a text itself holds the end
    token. ``mask_prompt`` also sets the targets that predict prompt tokens to ``ignore_index``
    (the items must be ``TokenizedEntry``, which know their prompt's length). Finally inputs and
    targets are cut to their first ``max_length`` positions.

    Example: [0, 1, 2, 3, 4], [5, 6], [7, 8, 9] give inputs [[0, 1, 2, 3, 4], [5, 6, E, E, E],
    [7, 8, 9, E, E]] and targets [[1, 2, 3, 4, E], [6, E, -100, -100, -100], [8, 9, E, -100,
    -100]] with E = 50256.
    """
    if not batch:
        raise ConfigError("cannot collate an empty batch")
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be >= 1 or None, got {max_length}")
    sequences = [list(item.ids if isinstance(item, TokenizedEntry) else item) for item in batch]
    longest = max(len(ids) for ids in sequences)
    padded = torch.full((len(batch), longest + 1), pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    inputs, targets = padded[:, :-1], padded[:, 1:].clone()  # (B, L) each
    positions = torch.arange(longest)[None, :]  # (1, L)
    lengths = torch.tensor([len(ids) for ids in sequences])[:, None]  # (B, 1)
    targets[positions >= lengths] = ignore_index  # after the appended end token
    if mask_prompt:
        targets[positions < _prompt_lengths(batch)[:, None] - 1] = ignore_index
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    if mask_prompt and bool((targets == ignore_index).all()):
        raise ConfigError(
            f"every target of this batch is masked: its prompts are at least max_length "
            f"({max_length}) tokens long, so no response token is left to learn from; use a "
            "larger max_length or leave out the longest entries"
        )
    inputs, targets = inputs.contiguous(), targets.contiguous()
    if device is not None:
        inputs, targets = inputs.to(device), targets.to(device)
    return inputs, targets


def _prompt_lengths(batch: Sequence[TokenizedEntry | Sequence[int]]) -> torch.Tensor:
    if not all(isinstance(item, TokenizedEntry) for item in batch):
        raise ConfigError(
            "mask_prompt needs to know where each prompt ends: give TokenizedEntry items "
            "(from InstructionDataset or encode_entry), not plain lists of ids"
        )
    return torch.tensor([item.prompt_length for item in batch])  # (B,)


def make_loaders(
    split: Split,
    tokenizer: Tokenizer,
    *,
    prompt_format: str | PromptFormat = "alpaca",
    batch_size: int = 8,
    max_length: int | None = None,
    mask_prompt: bool = False,
    pad_id: int | None = None,
    seed: int = 123,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader | None, DataLoader | None]:
    """Train, validation and test loaders of ``collate``d batches, as in the book: the training
    loader shuffles (with its own generator seeded by ``seed``) and drops a last incomplete
    batch, the others keep every entry in order. An empty part gets None instead of a loader.
    ``max_length`` should be at most the model's context length (the book uses 1024).
    ``pad_id`` defaults to the tokenizer's ``<|endoftext|>``."""
    if pad_id is None:
        pad_id = end_of_text_id(tokenizer, default=GPT2_EOT_ID)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if len(split.train) < batch_size:
        raise ConfigError(
            f"{len(split.train)} training entries make no full batch of {batch_size}; use more "
            "entries or a smaller batch size"
        )
    collate_fn = partial(collate, pad_id=pad_id, max_length=max_length, mask_prompt=mask_prompt)
    train_set, validation_set, test_set = (
        InstructionDataset(part, tokenizer, prompt_format)
        for part in (split.train, split.validation, split.test)
    )
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size, shuffle=True, drop_last=True,
                              generator=generator, collate_fn=collate_fn, num_workers=num_workers)
    validation_loader, test_loader = (
        DataLoader(part, batch_size, collate_fn=collate_fn, num_workers=num_workers)
        if len(part) else None
        for part in (validation_set, test_set)
    )
    return train_loader, validation_loader, test_loader


# ---------------------------------------------------------------------------------------------
# Training


def train_instruction_model(
    model: GPT,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    *,
    epochs: int = 2,
    callbacks: Iterable[object] = (),
    **settings: Any,
) -> TrainingHistory:
    """Fine-tune every parameter of ``model`` on the batches of ``make_loaders`` with the
    course's training loop (``llmcourse.training.train``) and the book's settings
    (``llmcourse.training.fine_tuning_config``: a constant learning rate of 5e-5, the losses
    measured every 5 steps on 5 batches ...), on the loss of the batch's targets that are not
    -100. ``settings`` override any ``TrainingConfig`` field (``learning_rate``,
    ``eval_every``, ``autocast_dtype``, ``checkpoint_dir`` ...). Returns the training history."""
    config = fine_tuning_config(epochs, **settings)
    return train(model, train_loader, val_loader, config, callbacks=callbacks)


# ---------------------------------------------------------------------------------------------
# Responses


def generate_response(
    model: GPT,
    tokenizer: Tokenizer,
    entry: Mapping[str, str],
    max_new_tokens: int = 256,
    sampling: Sampling = GREEDY,
    *,
    prompt_format: str | PromptFormat = "alpaca",
) -> str:
    """The model's answer to ``entry`` (its instruction and input; the output is not used).

    Generates from ``generation_prompt`` (greedy by default) until ``sampling.eos_id`` (when
    None: the tokenizer's ``<|endoftext|>``) or ``max_new_tokens`` new tokens, and returns
    ``extract_response`` of the new text."""
    if sampling.eos_id is None:
        sampling = replace(sampling, eos_id=end_of_text_id(tokenizer, default=GPT2_EOT_ID))
    ids = generation_prompt(tokenizer, entry, prompt_format, model.config.context_length)
    device = model_device(model)
    new_ids = stream_generate(model, torch.tensor([ids], device=device), max_new_tokens, sampling)
    text = tokenizer.decode([token for token in new_ids if token != sampling.eos_id])
    return extract_response(text, prompt_format)


def generate_responses(
    model: GPT,
    tokenizer: Tokenizer,
    entries: Sequence[Mapping[str, str]],
    max_new_tokens: int = 256,
    sampling: Sampling = GREEDY,
    *,
    prompt_format: str | PromptFormat = "alpaca",
    response_key: str = RESPONSE_KEY,
    progress: bool = True,
) -> list[dict[str, str]]:
    """A copy of each entry with the model's answer under ``response_key`` (the book's
    "model_response"), each made by ``generate_response`` with ``sampling``."""
    return [
        {**entry, response_key: generate_response(
            model, tokenizer, entry, max_new_tokens, sampling, prompt_format=prompt_format
        )}
        for entry in tqdm(entries, desc="generating responses", unit="entry", disable=not progress)
    ]


def save_responses(path: str | os.PathLike[str], entries: Sequence[Mapping[str, str]]) -> Path:
    """Write entries with their responses as a JSON list (replacing ``path`` atomically)."""
    return write_json_atomic(path, list(entries))


# ---------------------------------------------------------------------------------------------
# Keeping a fine-tuned model


@dataclass
class InstructionModel:
    """A fine-tuned model, the prompt format it was trained with, and its training settings."""

    model: GPT
    prompt_format: PromptFormat
    settings: dict[str, Any] = field(default_factory=dict)
    tokenizer: tiktoken.Encoding | None = None  # the one saved with the model, if it was


def save_instruction_model(
    directory: str | os.PathLike[str],
    model: GPT,
    prompt_format: str | PromptFormat,
    settings: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any | None = None,
) -> Path:
    """Write ``directory/model`` (a course checkpoint, see ``llmcourse.checkpoints``, with
    ``tokenizer`` when given) and ``directory/instruction.json`` (the prompt format and the
    training ``settings``).

    The whole directory is replaced by one staged swap (``llmcourse.saving``): a crash leaves
    the earlier fine-tuned model or the new one, and the earlier model's test responses and
    scores go with it, so they never sit beside the new model."""
    directory = Path(directory)
    check_save_destination(directory)
    if tokenizer is not None:
        check_vocab_fits(tokenizer, model.config.vocab_size, where=f"saving to {directory}")
    description = {
        "format": INSTRUCTION_FORMAT,
        "prompt_format": get_prompt_format(prompt_format).name,
        "settings": dict(settings or {}),
    }
    with staged_directory(directory) as staging:
        (staging / MODEL_DIR).mkdir()
        write_checkpoint_files(staging / MODEL_DIR, model, tokenizer=tokenizer)
        (staging / INSTRUCTION_FILE).write_text(
            json.dumps(description, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return directory


def check_save_destination(directory: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Raise ``CheckpointError`` unless ``directory`` is new, empty, or an earlier
    fine-tuned model's (which saving replaces, unless ``overwrite`` is False)."""
    check_destination(
        directory, what="an instruction-tuned model", own_names=OUTPUT_NAMES,
        marker=INSTRUCTION_FILE, replace=overwrite, error=CheckpointError,
    )


def load_instruction_model(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> InstructionModel:
    """A model saved by ``save_instruction_model``, in evaluation mode on ``device``."""
    directory = Path(directory)
    recover(directory)
    path = directory / INSTRUCTION_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not an instruction-tuned model (it has no {INSTRUCTION_FILE}); "
            "make one with `llmcourse finetune instruct --base MODEL --out DIR`"
        )
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(description, dict) or description.get("format") != INSTRUCTION_FORMAT:
        raise CheckpointError(
            f"{path} was not written by save_instruction_model (no \"format\": "
            f"\"{INSTRUCTION_FORMAT}\"); save the model again"
        )
    prompt_format = get_prompt_format(description.get("prompt_format", ""))
    model = load_model(directory / MODEL_DIR, device=device)
    tokenizer = None  # a model saved before tokenizers were: the caller decides
    if (directory / MODEL_DIR / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(directory / MODEL_DIR, vocab_size=model.config.vocab_size)
    return InstructionModel(model, prompt_format, description.get("settings", {}), tokenizer)
