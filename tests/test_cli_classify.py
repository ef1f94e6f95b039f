"""``llmcourse finetune classify`` and ``llmcourse classify`` on a tiny base checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from llmcourse.checkpoints import save_checkpoint
from llmcourse.classification import load_classifier
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
    assert "that are not a classifier's (config.json, model.safetensors)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", "classify", "--base", str(base_checkpoint), "--out", "x",
              "--strategy", "everything"])
