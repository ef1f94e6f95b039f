from __future__ import annotations

import torch

from llmcourse.checkpoints import save_checkpoint
from llmcourse.cli import main
from llmcourse.generation import generate
from llmcourse.model import GPT, GPTConfig
from llmcourse.pretrained import save_gpt2_format
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
