"""``llmcourse finetune instruct`` and ``llmcourse chat`` on a tiny base checkpoint."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from llmcourse import instruction as inst
from llmcourse.checkpoints import load_model, save_checkpoint
from llmcourse.cli import main
from llmcourse.evaluation import score_responses
from llmcourse.generation import generate
from llmcourse.model import GPT, GPTConfig
from llmcourse.tokenizers import GPT2_EOT_ID, gpt2_tokenizer

TINY = GPTConfig(context_length=96, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def base_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(TINY)
    with torch.no_grad():  # larger weights than GPT-2's init, so greedy answers vary
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return save_checkpoint(tmp_path / "base", model)


def finetune(base: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "instruct", "--base", str(base), "--out", str(out),
                 "--max-examples", "4", "--batch-size", "2", "--epochs", "1", "--eval-every", "1",
                 "--eval-batches", "1", "--max-new-tokens", "4", *extra])


def chat(checkpoint: Path, lines: str, monkeypatch, *extra: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    return main(["chat", str(checkpoint), "--max-new-tokens", "6", *extra])


def greedy_answer(model: GPT, instruction: str, prompt_format: str, max_new_tokens: int) -> str:
    """The text a chat turn streams: the greedy continuation of the generation prompt."""
    tokenizer = gpt2_tokenizer()
    entry = {"instruction": instruction, "input": ""}
    prompt = torch.tensor([inst.generation_prompt(tokenizer, entry, prompt_format, 96)])
    new_ids = generate(model, prompt, max_new_tokens, eos_id=GPT2_EOT_ID)[0, prompt.size(1):]
    return tokenizer.decode([token for token in new_ids.tolist() if token != GPT2_EOT_ID])


def test_finetune_instruct_saves_the_model_answers_and_scores(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    out = tmp_path / "tuned"
    assert finetune(base_checkpoint, out, "--format", "phi3", "--mask-prompt",
                    "--max-length", "80") == 0
    printed = capsys.readouterr().out
    assert printed.startswith("4 training, 4 validation and 4 test entries; phi3 prompts of up "
                              "to 80 tokens, 2 steps per epoch\n")
    assert re.search(r"^step 1: train loss [\d.]+, val loss [\d.]+\nstep 2: ", printed, re.M)
    assert f"saved the model to {out}\n" in printed

    tuned = inst.load_instruction_model(out)
    assert tuned.prompt_format.name == "phi3"
    assert tuned.settings == {"base": str(base_checkpoint), "epochs": 1, "lr": 5e-5,
                              "weight_decay": 0.1, "batch_size": 2, "mask_prompt": True,
                              "seed": 123, "max_length": 80}
    test_entries = inst.split_entries(inst.load_instruction_data()).test[:4]
    responses = inst.load_responses(out / inst.RESPONSES_FILE)
    assert [{key: r[key] for key in inst.ENTRY_FIELDS} for r in responses] == test_entries
    tokenizer = gpt2_tokenizer()
    for response, entry in zip(responses, test_entries, strict=True):
        assert response["model_response"] == inst.generate_response(
            tuned.model, tokenizer, entry, 4, prompt_format="phi3"
        )
    summary = score_responses(responses)
    assert json.loads((out / inst.SCORES_FILE).read_text()) == summary.to_dict()
    assert printed.endswith(
        f"test set: ROUGE-L F1 {summary.rouge_l:.3f}, token F1 {summary.token_f1:.3f}, exact "
        f"match {summary.exact_match:.1%} over 4 responses (in {out / inst.RESPONSES_FILE})\n"
    )

    # chat uses the saved model and its prompt format, and stops at /quit
    assert chat(out, "Name a color.\n\n  Say hi  \n/quit\nNever read.\n", monkeypatch) == 0
    expected = "".join(greedy_answer(tuned.model, instruction, "phi3", 6) + "\n"
                       for instruction in ("Name a color.", "Say hi"))
    assert capsys.readouterr().out == expected

    assert finetune(base_checkpoint, out, "--max-examples", "2") == 0  # replaces the result
    assert inst.load_instruction_model(out).prompt_format.name == "alpaca"


def test_chat_with_any_model_in_the_chosen_format_until_end_of_input(
    data_mirror, base_checkpoint: Path, capsys, monkeypatch
):
    model = load_model(base_checkpoint)
    assert chat(base_checkpoint, "What is 2 + 2?", monkeypatch) == 0  # no newline, no /quit
    assert capsys.readouterr().out == greedy_answer(model, "What is 2 + 2?", "alpaca", 6) + "\n"
    assert chat(base_checkpoint, "What is 2 + 2?\n", monkeypatch, "--format", "phi3") == 0
    assert capsys.readouterr().out == greedy_answer(model, "What is 2 + 2?", "phi3", 6) + "\n"
    assert chat(base_checkpoint, "", monkeypatch) == 0
    assert capsys.readouterr().out == ""


def test_errors_are_reported_without_a_traceback(
    data_mirror, base_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    assert finetune(base_checkpoint, base_checkpoint) == 2  # checked before any training
    assert "not an instruction-tuned model's (config.json, model.safetensors)" in \
        capsys.readouterr().err
    assert finetune(base_checkpoint, tmp_path / "out", "--max-length", "97") == 2
    assert "--max-length must be between 1 and the model's context of 96" in \
        capsys.readouterr().err
    bad_data = tmp_path / "bad.json"
    bad_data.write_text('[{"instruction": "a", "input": ""}]')
    assert finetune(base_checkpoint, tmp_path / "out", "--data", str(bad_data)) == 2
    assert "entry 0: missing 'output'" in capsys.readouterr().err
    assert chat(tmp_path / "absent", "hi\n", monkeypatch) == 2
    assert "absent" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", "instruct", "--base", "x", "--out", "y", "--format", "chatml"])
