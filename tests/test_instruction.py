"""Instruction fine-tuning: data checks, split, prompt formats, collate masks, training, answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from llmcourse import instruction as inst
from llmcourse.checkpoints import save_checkpoint
from llmcourse.errors import CheckpointError, ConfigError, DataError
from llmcourse.evaluation import evaluate_loss
from llmcourse.model import GPT, GPTConfig
from llmcourse.splits import Split
from llmcourse.tokenizers import gpt2_tokenizer

E = 50256  # <|endoftext|>
X = -100  # ignored target
PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
WITH_INPUT = {
    "instruction": "Identify the correct spelling of the following word.",
    "input": "Ocassion",
    "output": "The correct spelling is 'Occasion.'",
}
WITHOUT_INPUT = {
    "instruction": "What is an antonym of 'complicated'?",
    "input": "",
    "output": "An antonym of 'complicated' is 'simple'.",
}


# ---------------------------------------------------------------------------------------------
# collate


def test_collate_pads_shifts_and_keeps_only_the_first_end_token_as_a_target():
    inputs, targets = inst.collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]]
    assert targets.tolist() == [[1, 2, 3, 4, E], [6, E, X, X, X], [8, 9, E, X, X]]


def test_collate_masks_the_prompt_tokens_in_the_targets():
    batch = [
        inst.TokenizedEntry([0, 1, 2, 3, 4], prompt_length=3),
        inst.TokenizedEntry([5, 6], prompt_length=1),
        inst.TokenizedEntry([7, 8, 9], prompt_length=2),
    ]
    inputs, targets = inst.collate(batch, mask_prompt=True)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]]
    assert targets.tolist() == [[X, X, 3, 4, E], [6, E, X, X, X], [X, 9, E, X, X]]
    _, unmasked = inst.collate(batch)
    assert unmasked.tolist() == [[1, 2, 3, 4, E], [6, E, X, X, X], [8, 9, E, X, X]]


def test_collate_truncates_to_max_length_after_masking():
    inputs, targets = inst.collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, E], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, E, X], [8, 9, E]]


def test_collate_with_other_pad_and_ignore_values_and_an_end_token_inside_the_text():
    inputs, targets = inst.collate([[3, 0, 4], [5]], pad_id=0, ignore_index=-1)
    assert inputs.tolist() == [[3, 0, 4], [5, 0, 0]]
    # the 0 inside the first text stays a target: padding is found by position
    assert targets.tolist() == [[0, 4, 0], [0, -1, -1]]


def test_collate_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="TokenizedEntry"):
        inst.collate([[1, 2, 3]], mask_prompt=True)
    with pytest.raises(ConfigError, match="every target of this batch is masked"):
        inst.collate([inst.TokenizedEntry([1, 2, 3, 4], 4)], mask_prompt=True, max_length=2)
    with pytest.raises(ConfigError, match="empty batch"):
        inst.collate([])
    with pytest.raises(ConfigError, match="max_length must be >= 1"):
        inst.collate([[1]], max_length=0)


# ---------------------------------------------------------------------------------------------
# Loading and checking data


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_every_malformed_entry_is_reported_in_one_error(tmp_path: Path):
    entries = [
        WITH_INPUT,
        {"instruction": "a", "input": ""},
        {"instruction": "a", "input": 3, "output": "b"},
        ["a", "b", "c"],
        WITHOUT_INPUT,
        {"instruction": "a", "input": "", "output": "b", "id": 7},
        {"instruction": None, "output": ["x"]},
        "just a string",
    ]
    path = write_json(tmp_path / "data.json", entries)
    with pytest.raises(DataError) as caught:
        inst.load_instruction_data(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 6 of 8 entries are malformed")
    assert message.splitlines()[1:] == [
        "  entry 1: missing 'output'",
        "  entry 2: 'input' is a number (must be a string)",
        "  entry 3: is a list, not an object",
        "  entry 5: unexpected 'id'",
        "  entry 6: missing 'input'; 'instruction' is null, 'output' is a list (must be a "
        "string)",
        "  entry 7: is a string, not an object",
        "fix or remove these entries",
    ]


def test_entries_may_name_their_task(tmp_path: Path):
    entries = [{**WITH_INPUT, "task": "rename"}, WITHOUT_INPUT]
    assert inst.load_instruction_data(write_json(tmp_path / "data.json", entries)) == entries
    responses = [{**entry, "model_response": "x"} for entry in entries]
    assert inst.load_responses(write_json(tmp_path / "responses.json", responses)) == responses
    assert inst.entry_problem({**WITH_INPUT, "task": 3}) == "'task' is a number (must be a string)"
    assert inst.entry_problem({**WITH_INPUT, "task": None, "id": 1}) == (
        "'task' is null (must be a string); unexpected 'id'")
    assert inst.entry_problem({**WITH_INPUT, "task": "rename"}, optional=()) == (
        "unexpected 'task'")
    with pytest.raises(DataError) as caught:
        inst.load_instruction_data(write_json(tmp_path / "bad.json", [{**WITH_INPUT, "task": 1}]))
    assert "exactly the string fields 'instruction', 'input', 'output' (and optionally " \
        "'task'))" in str(caught.value)


def test_long_lists_of_problems_are_cut_with_a_count(tmp_path: Path):
    path = write_json(tmp_path / "data.json", [{"instruction": "a"}] * 25)
    with pytest.raises(DataError) as caught:
        inst.load_instruction_data(path)
    lines = str(caught.value).splitlines()
    assert lines[20] == "  entry 19: missing 'input', 'output'"
    assert lines[21] == "  ... and 5 more"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a"}', "must hold a JSON list of entries, found an object"),
        ("[]", "holds an empty list"),
        ('[{"instruction": "a",', "is not valid UTF-8 JSON"),
    ],
)
def test_files_that_are_not_lists_of_entries_are_refused(tmp_path: Path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        inst.load_instruction_data(path)


def test_a_missing_file_is_a_file_not_found_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        inst.load_instruction_data(tmp_path / "absent.json")


def test_the_course_data_loads_and_splits_like_the_book(data_mirror):
    data = inst.load_instruction_data()
    assert len(data) == 1100
    split = inst.split_entries(data)
    assert (len(split.train), len(split.validation), len(split.test)) == (935, 55, 110)
    # the book: train_data = data[:935], test_data = data[935:1045], val_data = data[1045:]
    assert split.train == data[:935]
    assert split.test == data[935:1045]
    assert split.validation == data[1045:]


def test_a_seeded_split_shuffles_a_copy_into_parts_of_the_same_sizes():
    entries = [{"instruction": str(i), "input": "", "output": ""} for i in range(20)]
    original = list(entries)
    split = inst.split_entries(entries, seed=1, fractions=(0.5, 0.25, 0.25))
    assert entries == original
    assert (len(split.train), len(split.validation), len(split.test)) == (10, 5, 5)
    parts = split.train + split.test + split.validation
    assert parts != entries and sorted(parts, key=lambda e: int(e["instruction"])) == entries
    assert inst.split_entries(entries, seed=1, fractions=(0.5, 0.25, 0.25)) == split
    assert split.truncated(2) == Split(split.train[:2], split.validation[:2], split.test[:2])
    with pytest.raises(ConfigError, match="sum to 1"):
        inst.split_entries(entries, fractions=(0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# Prompt formats and responses


def test_alpaca_prompts_are_the_books_exact_text():
    assert inst.format_alpaca(WITH_INPUT) == (
        f"{PREAMBLE}\n\n### Instruction:\nIdentify the correct spelling of the following word."
        "\n\n### Input:\nOcassion"
    )
    assert inst.format_alpaca(WITHOUT_INPUT) == (
        f"{PREAMBLE}\n\n### Instruction:\nWhat is an antonym of 'complicated'?"
    )
    assert inst.PROMPT_FORMATS["alpaca"].full_text(WITHOUT_INPUT) == (
        f"{PREAMBLE}\n\n### Instruction:\nWhat is an antonym of 'complicated'?"
        "\n\n### Response:\nAn antonym of 'complicated' is 'simple'."
    )


def test_phi3_prompts():
    assert inst.format_phi3(WITH_INPUT) == (
        "<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
    )
    phi3 = inst.get_prompt_format("phi3")
    assert phi3.full_text(WITHOUT_INPUT) == (
        "<|user|>\nWhat is an antonym of 'complicated'?"
        "\n<|assistant|>\nAn antonym of 'complicated' is 'simple'."
    )
    with pytest.raises(ConfigError, match="choose one of: alpaca, phi3"):
        inst.get_prompt_format("chatml")


@pytest.mark.parametrize(
    ("generated", "prompt_format", "expected"),
    [
        ("The answer is 4.", "alpaca", "The answer is 4."),
        ("\n\n### Response:\n  The answer is 4.\n", "alpaca", "The answer is 4."),
        (f"{PREAMBLE}\n\n### Instruction:\nAdd 2 and 2.\n\n### Response:\nThe answer is 4.",
         "alpaca", "The answer is 4."),
        ("The answer is 4.<|endoftext|>### Instruction:\nMore", "alpaca", "The answer is 4."),
        ("### Response:\nFirst.\n### Response:\nSecond.", "alpaca",
         "First.\n### Response:\nSecond."),
        ("\n<|assistant|>\nBlue.", "phi3", "Blue."),
        ("\n<|assistant|>\nBlue.", "alpaca", "<|assistant|>\nBlue."),
        ("   ", "alpaca", ""),
    ],
)
def test_extract_response(generated, prompt_format, expected):
    assert inst.extract_response(generated, prompt_format) == expected


# ---------------------------------------------------------------------------------------------
# Tokens and loaders


@pytest.mark.parametrize("prompt_format", ["alpaca", "phi3"])
def test_entries_encode_as_the_whole_text_with_the_prompt_length(data_mirror, prompt_format):
    tokenizer = gpt2_tokenizer()
    chosen = inst.get_prompt_format(prompt_format)
    for entry in inst.load_instruction_data():
        ids, prompt_length = inst.encode_entry(tokenizer, entry, prompt_format)
        assert ids == tokenizer.encode(chosen.full_text(entry))
        assert prompt_length == len(tokenizer.encode(chosen.prompt(entry)))
        prompt = inst.generation_prompt(tokenizer, entry, prompt_format)
        assert prompt == ids[: len(prompt)]
        assert tokenizer.decode(prompt) == chosen.prompt(entry) + chosen.response_header


def test_literal_end_tokens_in_entries_are_text_and_long_prompts_keep_their_end(data_mirror):
    tokenizer = gpt2_tokenizer()
    entry = {"instruction": "Say <|endoftext|>", "input": "", "output": "<|endoftext|>"}
    ids, _ = inst.encode_entry(tokenizer, entry)
    assert E not in ids
    prompt = inst.generation_prompt(tokenizer, entry)
    assert len(prompt) > 5
    assert inst.generation_prompt(tokenizer, entry, context_length=5) == prompt[-5:]


@pytest.mark.parametrize("prompt_format", ["alpaca", "phi3"])
def test_fits_context_counts_the_prompt_answer_and_end_token(prompt_format):
    tokenizer = gpt2_tokenizer()
    length = len(inst.encode_entry(tokenizer, WITH_INPUT, prompt_format).ids) + 1
    assert inst.fits_context(tokenizer, length, prompt_format)(WITH_INPUT)
    assert not inst.fits_context(tokenizer, length - 1, prompt_format)(WITH_INPUT)
    short = {"instruction": "Say yes.", "input": "", "output": "Yes."}
    split = Split([WITH_INPUT, short], [], [WITH_INPUT])
    shorter = len(inst.encode_entry(tokenizer, short, prompt_format).ids) + 1
    assert shorter < length
    kept = split.filtered(inst.fits_context(tokenizer, shorter, prompt_format))
    assert kept.train == [short] and kept.test == []


def test_loaders_batch_as_the_book(data_mirror):
    data = inst.load_instruction_data()
    split = Split(data[:10], data[10:13], [])
    tokenizer = gpt2_tokenizer()
    train, validation, test = inst.make_loaders(
        split, tokenizer, batch_size=4, max_length=40, mask_prompt=True, seed=1
    )
    assert test is None
    assert len(train) == 2 and len(validation) == 1  # drop_last for training only
    inputs, targets = next(iter(validation))
    assert inputs.shape == targets.shape == (3, 40)
    expected_inputs, expected_targets = inst.collate(
        [inst.encode_entry(tokenizer, entry) for entry in data[10:13]], max_length=40,
        mask_prompt=True,
    )
    assert torch.equal(inputs, expected_inputs) and torch.equal(targets, expected_targets)
    with pytest.raises(ConfigError, match="make no full batch of 11"):
        inst.make_loaders(split, tokenizer, batch_size=11)


def test_training_lowers_the_loss_on_16_examples(data_mirror):
    data = inst.load_instruction_data()[:16]
    split = Split(data, data[:4], [])
    train_loader, val_loader, _ = inst.make_loaders(
        split, gpt2_tokenizer(), batch_size=4, max_length=32, seed=0
    )
    torch.manual_seed(0)
    model = GPT(GPTConfig(context_length=32, n_layer=1, n_head=2, n_embd=32))
    before = evaluate_loss(model, val_loader)
    history = inst.train_instruction_model(
        model, train_loader, val_loader, epochs=1, learning_rate=1e-2, eval_every=4,
        eval_batches=1, progress=False, fused_optimizer=False,
    )
    after = evaluate_loss(model, val_loader)
    assert len(history.steps) == 4
    assert set(history.learning_rates) == {1e-2}  # constant, as in the book
    assert history.evals[0].val_loss == pytest.approx(after, abs=1e-6)
    assert before > 10.0 and after < before - 1.0
    assert history.train_losses[-1] < history.train_losses[0] - 1.0


# ---------------------------------------------------------------------------------------------
# Generating responses


class ScriptedModel(nn.Module):
    """Answers every prompt with the same scripted tokens, and checks the prompt it gets."""

    def __init__(self, prompt: list[int], script: list[int]):
        super().__init__()
        self.config = GPTConfig(context_length=256, n_layer=1, n_head=1, n_embd=4)
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device and dtype
        self.prompt, self.script = prompt, script
        self.calls = 0

    def forward(
        self, idx: torch.Tensor, targets=None, *, kv_cache=None, last_only=False
    ) -> torch.Tensor:
        # the cache's length is never advanced, so idx is always the whole sequence so far
        assert idx[0, : len(self.prompt)].tolist() == self.prompt
        step = idx.size(1) - len(self.prompt)
        logits = torch.zeros(1, idx.size(1), self.config.vocab_size)
        logits[0, -1, self.script[step]] = 1.0
        self.calls += 1
        return logits[:, -1:] if last_only else logits


def test_generate_response_answers_from_the_prompt_and_stops_at_the_end_token(data_mirror):
    tokenizer = gpt2_tokenizer()
    answer = tokenizer.encode("\n### Response:\n Paris is the capital.\n")
    model = ScriptedModel(
        inst.generation_prompt(tokenizer, WITH_INPUT),
        answer + [E] + tokenizer.encode("### Instruction: more"),
    )
    assert inst.generate_response(model, tokenizer, WITH_INPUT) == "Paris is the capital."
    assert model.calls == len(answer) + 1
    short = inst.generate_response(model, tokenizer, WITH_INPUT, max_new_tokens=3)
    assert short == inst.extract_response(tokenizer.decode(answer[:3]))


def test_generate_responses_adds_answers_and_save_responses_writes_them(data_mirror, tmp_path):
    tokenizer = gpt2_tokenizer()
    entries = [WITH_INPUT, WITH_INPUT]
    model = ScriptedModel(
        inst.generation_prompt(tokenizer, WITH_INPUT, "phi3"), tokenizer.encode("Occasion") + [E]
    )
    answered = inst.generate_responses(model, tokenizer, entries, prompt_format="phi3",
                                       progress=False)
    assert answered == [{**WITH_INPUT, "model_response": "Occasion"}] * 2
    assert entries == [WITH_INPUT, WITH_INPUT]  # copies, the entries are untouched
    path = inst.save_responses(tmp_path / "out" / "responses.json", answered)
    assert json.loads(path.read_text(encoding="utf-8")) == answered
    assert inst.load_responses(path) == answered
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["responses.json"]
    with pytest.raises(DataError, match="entry 0: missing 'model_response'"):
        inst.load_responses(write_json(tmp_path / "plain.json", [WITH_INPUT]))


# ---------------------------------------------------------------------------------------------
# Keeping a fine-tuned model


def test_a_saved_instruction_model_loads_with_its_prompt_format(tmp_path: Path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context_length=16, n_layer=1, n_head=2, n_embd=8))
    inst.save_instruction_model(tmp_path / "tuned", model, "phi3", {"epochs": 2})
    loaded = inst.load_instruction_model(tmp_path / "tuned")
    assert loaded.prompt_format is inst.PROMPT_FORMATS["phi3"]
    assert loaded.settings == {"epochs": 2}
    assert not loaded.model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    inst.save_instruction_model(tmp_path / "tuned", model, "alpaca")  # replaces its own files
    assert inst.load_instruction_model(tmp_path / "tuned").prompt_format.name == "alpaca"


def test_instruction_models_are_not_written_over_other_files(tmp_path: Path):
    model = GPT(GPTConfig(vocab_size=64, context_length=16, n_layer=1, n_head=2, n_embd=8))
    base = save_checkpoint(tmp_path / "base", model)
    with pytest.raises(CheckpointError, match="config.json, model.safetensors"):
        inst.save_instruction_model(base, model, "alpaca")
    with pytest.raises(CheckpointError, match="not an instruction-tuned model"):
        inst.load_instruction_model(base)
