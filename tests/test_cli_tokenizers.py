"""Every command uses the tokenizer a checkpoint carries: pretrain with a course BPE, then
generate, fine-tune a classifier and classify, without GPT-2's tokenizer anywhere."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from llmcourse.checkpoints import load_model
from llmcourse.classification import load_classifier
from llmcourse.cli import main
from llmcourse.data_files import CACHE_ENV
from llmcourse.gpt2_weights import load_model_and_tokenizer
from llmcourse.tokenizers import BPETokenizer
from llmcourse.tokenizers.files import TOKENIZER_FILE


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny GPT pretrained on The Verdict with a 300-token BPE trained on it; the output."""
    root = tmp_path_factory.mktemp("bpe")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "cache"))
        out = root / "ckpt"
        argv = ["pretrain", "the-verdict", "--out", str(out), "--preset", "course-tiny",
                "--tokenizer", "bpe-300", "--context-length", "16", "--steps", "4",
                "--batch-size", "2", "--max-characters", "6000", "--eval-every", "2",
                "--eval-batches", "1"]
        import io
        from contextlib import redirect_stdout
        printed = io.StringIO()
        with redirect_stdout(printed):
            assert main(argv) == 0
    return out, printed.getvalue()


def test_pretrain_saves_its_tokenizer_and_reports_bits_per_byte(data_mirror, bpe_checkpoint):
    out, printed = bpe_checkpoint
    assert (out / TOKENIZER_FILE).is_file()
    model, tokenizer = load_model_and_tokenizer(out)
    assert model.config.vocab_size == tokenizer.n_vocab == 300
    saved = BPETokenizer.load(out / TOKENIZER_FILE)
    assert saved.vocab_size == 300
    found = re.search(r"val loss ([\d.]+) \(([\d.]+) bits/byte\)", printed)
    assert found, printed
    loss, bits = map(float, found.groups())
    # bits per byte = loss / ln 2 / bytes per token, and a 300-token BPE has 1 to 4 bytes/token
    assert loss / math.log(2) / 4 < bits < loss / math.log(2)


def test_generate_decodes_with_the_checkpoints_tokenizer(data_mirror, bpe_checkpoint, capsys):
    out, _ = bpe_checkpoint
    assert main(["generate", str(out), "I had always", "-n", "5", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("I had always")


def test_a_classifier_keeps_its_base_models_tokenizer(data_mirror, bpe_checkpoint, tmp_path,
                                                      capsys):
    out, _ = bpe_checkpoint
    classifier_dir = tmp_path / "spam"
    assert main(["finetune", "classify", "--base", str(out), "--out", str(classifier_dir),
                 "--max-examples", "16", "--epochs", "1", "--eval-every", "2"]) == 0
    assert (classifier_dir / TOKENIZER_FILE).read_text() == (out / TOKENIZER_FILE).read_text()
    classifier = load_classifier(classifier_dir)
    assert classifier.tokenizer.n_vocab == 300
    assert classifier.pad_id == 299  # the course BPE's <|endoftext|>, not GPT-2's 50256
    capsys.readouterr()
    assert main(["classify", str(classifier_dir), "Win a prize now"]) == 0
    label, probability, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert (label, text) == classifier.classify("Win a prize now")[0:1] + ("Win a prize now",)
    assert 0.5 <= float(probability) <= 1


def test_a_tokenizer_file_from_another_model_is_a_clear_error(data_mirror, bpe_checkpoint,
                                                              tmp_path, capsys):
    out, _ = bpe_checkpoint
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((out / name).read_bytes())
    (other / TOKENIZER_FILE).write_text(json.dumps(
        BPETokenizer.train("a cat sat on a mat. " * 50 + "the dog ran far away. " * 50,
                           280).to_dict()))
    assert main(["generate", str(other), "hello"]) == 2
    error = capsys.readouterr().err
    assert "tokenizer has" in error and "300 rows" in error
    assert load_model(out).config.vocab_size == 300
