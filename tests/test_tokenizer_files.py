"""Checkpoints carry their tokenizer: saved beside config.json, used by every loader."""

from __future__ import annotations

import pytest
import torch

from llmcourse.checkpoints import save_checkpoint
from llmcourse.errors import CheckpointError
from llmcourse.gpt2_weights import load_model_and_tokenizer
from llmcourse.model import GPT, GPTConfig
from llmcourse.tokenizers import BPETokenizer, gpt2_tokenizer
from llmcourse.tokenizers.files import (
    TOKENIZER_FILE,
    as_bpe,
    bpe_from_encoding,
    end_of_text_id,
    load_tokenizer,
    tokenizer_fingerprint,
)

STORIES = "Once upon a time, a little cat named Tom found a red ball. He was happy. " * 30
CHECK = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(STORIES, 300)


def tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=16, n_layer=1, n_head=2,
                         n_embd=8))


def test_a_checkpoint_loads_with_the_tokenizer_it_was_saved_with(small_bpe, tmp_path):
    directory = save_checkpoint(tmp_path / "ckpt", tiny_model(300), tokenizer=small_bpe)
    assert (directory / TOKENIZER_FILE).is_file()
    model, tokenizer = load_model_and_tokenizer(directory)
    assert model.config.vocab_size == tokenizer.n_vocab == 300
    text = "Tom found a ball. Ünïcode 🐱 too"
    assert tokenizer.encode(text) == small_bpe.encode(text)
    assert end_of_text_id(tokenizer) == small_bpe.special_tokens["<|endoftext|>"] == 299


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(small_bpe, tmp_path, data_mirror):
    with pytest.raises(CheckpointError, match="300 tokens.*50,257 rows"):
        save_checkpoint(tmp_path / "gpt2-sized", tiny_model(50257), tokenizer=small_bpe)
    directory = save_checkpoint(tmp_path / "ckpt", tiny_model(300), tokenizer=small_bpe)
    other = BPETokenizer.train(STORIES, 290)
    (directory / TOKENIZER_FILE).write_text(
        (save_checkpoint(tmp_path / "other", tiny_model(290), tokenizer=other)
         / TOKENIZER_FILE).read_text()
    )
    with pytest.raises(CheckpointError, match=r"has 290 tokens but .* has 300 rows"):
        load_model_and_tokenizer(directory)
    padded = save_checkpoint(tmp_path / "padded", tiny_model(320), tokenizer=small_bpe)
    assert load_model_and_tokenizer(padded)[1].n_vocab == 300  # 300 rounded up to 64 * 5


def test_an_old_checkpoint_gets_gpt2s_tokenizer_with_a_note(tmp_path, capsys, data_mirror):
    directory = save_checkpoint(tmp_path / "old", tiny_model(50257))
    _, tokenizer = load_model_and_tokenizer(directory)
    assert tokenizer.encode(CHECK, allowed_special="all") == gpt2_tokenizer().encode(
        CHECK, allowed_special="all"
    )
    assert "no tokenizer.bpe.json" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_tokenizer(save_checkpoint(tmp_path / "small", tiny_model(300)), vocab_size=300)


def test_gpt2s_encoding_is_stored_as_a_bpe_with_the_same_ids(data_mirror, tmp_path):
    recovered = bpe_from_encoding(gpt2_tokenizer())
    assert recovered.vocab_size == 50257
    ids = gpt2_tokenizer().encode(CHECK, allowed_special="all")
    assert recovered.encode(CHECK, allowed_special="all") == ids
    assert ids == [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812,
                   2114]
    directory = save_checkpoint(tmp_path / "gpt2", tiny_model(50257), tokenizer=gpt2_tokenizer())
    _, tokenizer = load_model_and_tokenizer(directory)
    assert tokenizer.encode(CHECK, allowed_special="all") == ids


def test_fingerprints_tell_tokenizers_apart(small_bpe):
    same = BPETokenizer.train(STORIES, 300)
    assert tokenizer_fingerprint(small_bpe) == tokenizer_fingerprint(same)
    assert tokenizer_fingerprint(small_bpe.to_tiktoken()) == tokenizer_fingerprint(small_bpe)
    assert as_bpe(small_bpe.to_tiktoken()).merges == small_bpe.merges
    assert tokenizer_fingerprint(BPETokenizer.train(STORIES, 301)) != tokenizer_fingerprint(same)
