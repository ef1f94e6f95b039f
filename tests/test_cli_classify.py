"""``llmcourse finetune classify`` and ``llmcourse classify`` on a tiny base checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from llmcourse.checkpoints import save_checkpoint
from llmcourse.classification import Classifier, load_classifier, replace_head, save_classifier
from llmcourse.cli import main
from llmcourse.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=50257, context_length=64, n_layer=1, n_head=2, n_embd=16)
TEXTS = ["WINNER! Claim your free prize now", "See you at lunch?"]


@pytest.fixture
def base_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "base", GPT(TINY))


def finetune(base: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "classify", "--base", str(base), "--out", str(out),
                 "--max-examples", "40", "--epochs", "1", "--eval-every", "2", *extra])


def test_finetune_then_classify(data_mirror, base_checkpoint: Path, tmp_path: Path, capsys):
    out = tmp_path / "classifier"
    assert finetune(base_checkpoint, out, "--strategy", "lora", "--rank", "2") == 0
    printed = capsys.readouterr().out
    assert re.search(r"^lora: [\d,]+ of [\d,]+ parameters train", printed, re.M)
    assert re.search(r"^epoch 1 \(step 5\): train accuracy [\d.]+%, val accuracy [\d.]+%, "
                     r"train loss [\d.]+, val loss [\d.]+$", printed, re.M)
    for part, count in (("train", 40), ("validation", 40), ("test", 40)):
        assert re.search(rf"^{part} accuracy: [\d.]+% \(F1 [\d.]+, {count} messages\)$",
                         printed, re.M)
    assert printed.rstrip().endswith(f"saved the classifier to {out}")

    assert main(["classify", str(out), *TEXTS]) == 0
    lines = capsys.readouterr().out.splitlines()
    classifier = load_classifier(out)
    assert len(lines) == 2
    for line, text in zip(lines, TEXTS, strict=True):
        label, probability = classifier.classify(text)
        assert line == f"{label}\t{probability:.3f}\t{text}"
        assert label in ("spam", "not spam") and 0.5 <= probability <= 1


def test_the_book_recipe_trains_and_is_reproducible(data_mirror, base_checkpoint, tmp_path,
                                                    capsys):
    assert finetune(base_checkpoint, tmp_path / "a", "--seed", "5") == 0
    first = capsys.readouterr().out
    assert "last_block: " in first
    assert finetune(base_checkpoint, tmp_path / "b", "--seed", "5") == 0
    second = capsys.readouterr().out
    assert first.replace(str(tmp_path / "a"), "") == second.replace(str(tmp_path / "b"), "")


def test_errors_are_reported_without_a_traceback(data_mirror, base_checkpoint, tmp_path, capsys):
    assert main(["classify", str(base_checkpoint), "hello"]) == 2
    assert "not a classifier checkpoint" in capsys.readouterr().err
    assert finetune(base_checkpoint, tmp_path / "out", "--batch-size", "64") == 2
    assert "no full batch of 64" in capsys.readouterr().err
    assert finetune(base_checkpoint, base_checkpoint) == 2  # checked before any training
    assert "holds config.json, model.safetensors but no classifier.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", "classify", "--base", str(base_checkpoint), "--out", "x",
              "--strategy", "everything"])


def test_a_training_part_of_one_class_is_refused(data_mirror, base_checkpoint, tmp_path,
                                                 capsys):
    # the first message of the training part only: a classifier of one class learns nothing
    assert finetune(base_checkpoint, tmp_path / "out", "--max-examples", "1") == 2
    printed = capsys.readouterr().err
    assert "Traceback" not in printed
    error = printed.splitlines()[-1]  # after a note on the base's tokenizer
    assert error.startswith("error: the training part holds one class only (")
    assert error.endswith("use more examples (--max-examples) or a split with both classes")
    assert not (tmp_path / "out").exists()


def one_line_error(capsys) -> str:
    """The message of a command that failed with a one-line error and printed nothing else."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err.removeprefix("error: ").rstrip("\n")


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without a CUDA or Apple GPU, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("action", ["classify", "instruct"])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (["--lr", "nan"], "--lr must be a positive number, got nan"),
        (["--lr", "inf"], "--lr must be a positive number, got inf"),
        (["--weight-decay", "-0.5"], "--weight-decay must be 0 or a positive number, got -0.5"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
        (["--device", "cuda"], "--device 'cuda' is not available: PyTorch finds no CUDA GPU on "
                               "this machine (or was built without CUDA); use one of the devices "
                               "available here: cpu"),
        (["--device", "cuda:1"], "--device 'cuda:1' is not available"),
        (["--device", "mps"], "--device 'mps' is not available: PyTorch finds no Apple GPU"),
    ],
)
def test_finetune_options_fail_before_any_work(tmp_path, capsys, no_gpu, action, options,
                                               message):
    # a base model that does not exist: the options are refused before it is looked for
    argv = ["finetune", action, "--base", str(tmp_path / "nowhere"), "--out",
            str(tmp_path / "out"), *options]
    assert main(argv) == 2
    assert one_line_error(capsys).startswith(message)
    assert not (tmp_path / "out").exists()


def test_classify_checks_the_device_before_loading(tmp_path, capsys, no_gpu):
    assert main(["classify", str(tmp_path / "nowhere"), "hello", "--device", "cuda"]) == 2
    assert one_line_error(capsys).endswith("use one of the devices available here: cpu")


def test_an_earlier_classifier_is_replaced_only_with_overwrite(base_checkpoint, tmp_path, capsys,
                                                               monkeypatch):
    torch.manual_seed(0)
    model = GPT(TINY)
    replace_head(model, 2)
    out = save_classifier(tmp_path / "clf", Classifier(model, max_length=12))

    def refuse_work(*args, **kwargs):
        raise AssertionError("the command started working before it checked --out")

    monkeypatch.setattr("llmcourse.cli.finetune.load_model_and_tokenizer", refuse_work)
    assert finetune(base_checkpoint, out) == 2
    assert one_line_error(capsys) == (
        f"{out} already holds a classifier; pass --overwrite to replace it, or choose another "
        "--out")
    with pytest.raises(AssertionError, match="started working"):  # allowed: it goes on to work
        finetune(base_checkpoint, out, "--overwrite")


def test_a_tampered_classifier_file_is_a_one_line_error(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPT(TINY)
    replace_head(model, 2)
    save_classifier(tmp_path / "clf", Classifier(model, max_length=12))
    settings_path = tmp_path / "clf" / "classifier.json"
    settings = json.loads(settings_path.read_text())
    settings_path.write_text(json.dumps({**settings, "max_length": "12"}))
    assert main(["classify", str(tmp_path / "clf"), "hello"]) == 2
    assert one_line_error(capsys) == (
        f"{settings_path}: field 'max_length' must be null or a whole number, at least 1, got "
        '"12" (a JSON string); the file was changed or damaged: save the classifier again'
    )
