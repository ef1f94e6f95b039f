"""The tokenized-corpus cache: the same ids as encoding the split text, tokenized only once."""

from __future__ import annotations

import numpy as np
import pytest

from llmcourse import token_cache
from llmcourse.errors import CourseError
from llmcourse.sliding_window import split_text
from llmcourse.tokenizers import BPETokenizer, gpt2_tokenizer

TEXT = (
    "Once upon a time, there was a little dog named Max. Max liked to run.<|endoftext|>"
    "One day, Lily found a shiny stone! She said: \"Look, Mom!\" 3 cats ran away. "
    "Ünïcödé and emoji 🐶 too.\n\n  Spaces   and\ttabs.<|endoftext|>"
) * 40


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(token_cache, "READ_CHARACTERS", 97)  # many pieces, cut anywhere
    monkeypatch.setattr(token_cache, "WRITE_TOKENS", 50)
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.mark.parametrize("max_characters", [None, 1234])
def test_ids_are_those_of_the_character_split(cache, data_mirror, max_characters):
    tokenizer = gpt2_tokenizer()
    corpus = token_cache.tokenized_corpus(cache, tokenizer, val_fraction=0.25,
                                          max_characters=max_characters, progress=False)
    text = TEXT[:max_characters] if max_characters else TEXT
    train_text, val_text = split_text(text, 0.75)
    for split, part in ((corpus.train, train_text), (corpus.val, val_text)):
        assert split.ids.dtype == np.uint16
        assert split.ids.tolist() == tokenizer.encode(part, allowed_special="all")
        assert split.text_bytes == len(part.encode("utf-8"))
        assert split.bytes_per_token == pytest.approx(split.text_bytes / len(split.ids))


def test_a_second_call_reads_the_cache_without_tokenizing(cache, data_mirror, monkeypatch):
    tokenizer = gpt2_tokenizer()
    first = token_cache.tokenized_corpus(cache, tokenizer, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(token_cache, "encode_iterable", fail)
    again = token_cache.tokenized_corpus(cache, tokenizer, progress=False)
    assert again.directory == first.directory
    assert isinstance(again.train.ids, np.memmap)
    assert again.train.ids.tolist() == first.train.ids.tolist()


def test_another_tokenizer_text_or_split_gets_its_own_entry(cache, data_mirror):
    gpt2 = gpt2_tokenizer()
    small = BPETokenizer.train(TEXT, 300)
    directories = {
        token_cache.tokenized_corpus(cache, gpt2, progress=False).directory,
        token_cache.tokenized_corpus(cache, small, progress=False).directory,
        token_cache.tokenized_corpus(cache, gpt2, val_fraction=0.2, progress=False).directory,
        token_cache.tokenized_corpus(cache, gpt2, max_characters=500, progress=False).directory,
    }
    cache.write_text(TEXT + "The end.", encoding="utf-8")
    directories.add(token_cache.tokenized_corpus(cache, gpt2, progress=False).directory)
    assert len(directories) == 5
    ids = token_cache.tokenized_corpus(cache, small, progress=False).train.ids
    assert ids.tolist() == small.encode(split_text(TEXT + "The end.", 0.9)[0],
                                        allowed_special="all")


def test_bad_settings_and_non_utf8_files_are_refused(cache, data_mirror, tmp_path):
    with pytest.raises(CourseError, match="val_fraction"):
        token_cache.tokenized_corpus(cache, gpt2_tokenizer(), val_fraction=1.5)
    with pytest.raises(CourseError, match="max_characters"):
        token_cache.tokenized_corpus(cache, gpt2_tokenizer(), max_characters=-10)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe not text")
    with pytest.raises(CourseError, match="not UTF-8"):
        token_cache.tokenized_corpus(binary, gpt2_tokenizer(), progress=False)


def test_the_fingerprint_changes_with_the_ids_and_only_with_them(cache, data_mirror, tmp_path,
                                                                 monkeypatch):
    short_file = tmp_path / "short.txt"
    short_file.write_text(TEXT[:1234], encoding="utf-8")
    encoding = gpt2_tokenizer()
    cut = token_cache.tokenized_corpus(cache, encoding, max_characters=1234, progress=False)
    same_text = token_cache.tokenized_corpus(short_file, encoding, progress=False)
    assert cut.directory != same_text.directory  # another file: another cache entry
    assert cut.fingerprint() == same_text.fingerprint()  # the same ids
    counts = f"{len(cut.train.ids)} + {len(cut.val.ids)} tokens"
    assert cut.fingerprint().endswith(f": {counts}") and len(cut.fingerprint()) == 18 + len(counts)
    monkeypatch.setattr(token_cache, "HASH_TOKENS", 7)  # read in pieces: the same hash
    assert cut.fingerprint() == same_text.fingerprint()
    other_split = token_cache.tokenized_corpus(short_file, encoding, val_fraction=0.5,
                                               progress=False)
    assert other_split.fingerprint() != same_text.fingerprint()
