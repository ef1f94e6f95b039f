from __future__ import annotations

import pytest
import torch

from llmcourse.checkpoints import save_checkpoint
from llmcourse.cli import main
from llmcourse.generation import generate
from llmcourse.gpt2_weights import save_gpt2_format
from llmcourse.model import GPT, GPTConfig
from llmcourse.tokenizers import gpt2_tokenizer

CONFIG = GPTConfig(context_length=32, n_layer=1, n_head=2, n_embd=16)
PROMPT = "Every effort moves you"


def tiny_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so greedy output varies
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model


def expected_text(model: GPT, max_new_tokens: int) -> str:
    tokenizer = gpt2_tokenizer()
    prompt = torch.tensor([tokenizer.encode(PROMPT)])
    ids = generate(model, prompt, max_new_tokens)
    return PROMPT + tokenizer.decode(ids[0, prompt.size(1) :].tolist())


def test_generate_from_a_course_checkpoint_streams_the_greedy_text(tmp_path, capsys):
    model = tiny_model()
    save_checkpoint(tmp_path / "ckpt", model)
    assert main(["generate", str(tmp_path / "ckpt"), PROMPT, "-n", "8", "--keep-going"]) == 0
    assert capsys.readouterr().out == expected_text(model, 8) + "\n"


def test_generate_from_a_gpt2_layout_directory_without_streaming(tmp_path, capsys):
    model = tiny_model()
    save_gpt2_format(model, tmp_path / "hub")
    argv = ["generate", str(tmp_path / "hub"), PROMPT, "-n", "5", "--no-stream", "--keep-going"]
    assert main(argv) == 0
    assert capsys.readouterr().out == expected_text(model, 5) + "\n"


def test_seeded_sampling_is_reproducible(tmp_path, capsys):
    save_checkpoint(tmp_path / "ckpt", tiny_model())
    argv = ["generate", str(tmp_path / "ckpt"), PROMPT, "-n", "6", "-t", "1.5", "-k", "50",
            "--seed", "3", "--keep-going"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    assert capsys.readouterr().out == first


def test_missing_checkpoint_and_too_long_prompt_fail_clearly(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nowhere"), PROMPT]) == 2
    assert "nowhere" in capsys.readouterr().err
    save_checkpoint(tmp_path / "ckpt", tiny_model())
    assert main(["generate", str(tmp_path / "ckpt"), "word " * 40, "--no-stream"]) == 2
    assert "between 1 and 32 tokens" in capsys.readouterr().err


def one_line_error(capsys) -> str:
    """The message of a command that failed with a one-line error and printed nothing else
    (not the prompt either)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err.removeprefix("error: ").rstrip("\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["-t", "nan"], "--temperature must be 0 or a positive number, got nan"),
        (["-t", "-1"], "--temperature must be 0 or a positive number, got -1.0"),
        (["-t", "inf"], "--temperature must be 0 or a positive number, got inf"),
        (["-k", "0"], "--top-k must be at least 1, got 0"),
        (["-p", "0"], "--top-p must lie in (0, 1] (the probability mass to sample from; 1 keeps "
                      "every token), got 0.0"),
        (["-p", "1.5"], "--top-p must lie in (0, 1]"),
        (["-n", "0"], "--max-new-tokens must be at least 1, got 0"),
    ],
)
def test_bad_sampling_options_fail_before_loading_or_printing(tmp_path, capsys, options, message):
    save_checkpoint(tmp_path / "ckpt", tiny_model())
    assert main(["generate", str(tmp_path / "ckpt"), PROMPT, *options]) == 2
    assert one_line_error(capsys).startswith(message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["-t", "nan"], "--temperature must be 0 or a positive number, got nan"),
        (["--device", "cuda"], "--device 'cuda' is not available: PyTorch finds no CUDA GPU on "
                               "this machine (or was built without CUDA); use one of the devices "
                               "available here: cpu"),
        (["--device", "gpu"], "--device 'gpu' is not a device name; use one of the devices "
                              "available here: cpu"),
    ],
)
def test_chat_checks_its_options_before_loading(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    # no checkpoint there: the options are refused before it is looked for
    assert main(["chat", str(tmp_path / "nowhere"), *options]) == 2
    assert one_line_error(capsys) == message
