"""GPT-2's tokenizer built offline from the course's files, checked against Hugging Face's;
the course's BPETokenizer reading the same files, checked against tiktoken."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.data_files import fetch
from llmcourse.errors import CheckpointError, InputError, MissingFileError
from llmcourse.tokenizers import GPT2_EOT_ID, GPT2_VOCAB_SIZE, BPETokenizer, gpt2_tokenizer

LINES_PER_CORPUS = 300
EOT = "<|endoftext|>"
CHECK_TEXT = f"Hello, do you like tea? {EOT} In the sunlit terraces"
CHECK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]
SMALL_MERGES = 40  # merges of the truncated GPT-2 files that the malformed-file tests edit

# Any character, plus emoji with modifiers, combining marks, whitespace runs, digits of several
# scripts, contractions and the end-of-text token.
unicode_text = st.lists(
    st.sampled_from([
        "😀", "👍🏽", "e\u0301", "\u0301", "東京", " naïve", " the", " ", "   ", "\t", "\n\n",
        "\r\n", "\u00a0", "\u3000", "0", " 2024", "٣", "'s", "'ll", "!?", EOT,
    ]) | st.characters(codec="utf-8"),
    max_size=50,
).map("".join)


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    try:
        return gpt2_tokenizer()
    except MissingFileError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def hf_tokenizer(encoding: tiktoken.Encoding) -> Any:
    """Hugging Face's GPT-2 tokenizer (Rust `tokenizers` BPE) made from the same two files."""
    transformers = pytest.importorskip("transformers")
    vocab = json.loads(fetch("gpt2-encoder").read_text(encoding="utf-8"))
    merge_lines = fetch("gpt2-vocab").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in merge_lines]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def gpt2_bpe(encoding: tiktoken.Encoding) -> BPETokenizer:
    """The course's BPETokenizer with GPT-2's merges, read from the same two files."""
    return BPETokenizer.from_gpt2_files(fetch("gpt2-encoder"), fetch("gpt2-vocab"))


def test_the_check_value(encoding: tiktoken.Encoding) -> None:
    assert encoding.encode(CHECK_TEXT, allowed_special={EOT}) == CHECK_IDS


def test_sizes_and_end_of_text(encoding: tiktoken.Encoding) -> None:
    assert encoding.n_vocab == GPT2_VOCAB_SIZE == 50257
    assert encoding.eot_token == GPT2_EOT_ID == 50256
    assert encoding.decode([GPT2_EOT_ID]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="disallowed special token"):
        encoding.encode("<|endoftext|>")


def test_it_is_built_once(encoding: tiktoken.Encoding) -> None:
    assert gpt2_tokenizer() is encoding


@settings(deadline=None)
@given(st.text())
def test_round_trip(encoding: tiktoken.Encoding, text: str) -> None:
    assert encoding.decode(encoding.encode_ordinary(text)) == text


@pytest.mark.parametrize("corpus", ["the-verdict", "tinyshakespeare"])
def test_same_ids_as_hugging_face(
    encoding: tiktoken.Encoding, hf_tokenizer: Any, corpus: str
) -> None:
    lines = fetch(corpus).read_text(encoding="utf-8").splitlines(keepends=True)
    sample = random.Random(0).sample(lines, min(LINES_PER_CORPUS, len(lines)))
    for line in sample:
        assert encoding.encode_ordinary(line) == hf_tokenizer.encode(line), line


def test_same_ids_as_hugging_face_on_unicode_and_a_whole_text(
    encoding: tiktoken.Encoding, hf_tokenizer: Any
) -> None:
    texts = ["  naïve café   Zürich\n\n", "東京の猫 😀👍🏽", "Ψυχή 1234567 don't  it's\t\tx"]
    for text in [*texts, "\r\n  ", fetch("the-verdict").read_text(encoding="utf-8")]:
        assert encoding.encode_ordinary(text) == hf_tokenizer.encode(text), text


# --- The course's BPETokenizer from GPT-2's files --------------------------------------------


def test_bpe_from_gpt2_files_gives_the_check_value(gpt2_bpe: BPETokenizer) -> None:
    assert gpt2_bpe.encode(CHECK_TEXT, allowed_special={EOT}) == CHECK_IDS
    assert gpt2_bpe.to_tiktoken("gpt2").encode(CHECK_TEXT, allowed_special={EOT}) == CHECK_IDS
    assert gpt2_bpe.decode(CHECK_IDS) == CHECK_TEXT


def test_bpe_from_gpt2_files_has_gpt2s_vocabulary(
    gpt2_bpe: BPETokenizer, encoding: tiktoken.Encoding
) -> None:
    assert gpt2_bpe.vocab_size == GPT2_VOCAB_SIZE
    assert len(gpt2_bpe.merges) == 50_000
    assert gpt2_bpe.special_tokens == {EOT: GPT2_EOT_ID}
    assert gpt2_bpe.byte_order[:3] == (ord("!"), ord('"'), ord("#"))  # printable bytes first
    assert gpt2_bpe.token_bytes(220) == b" "
    token_bytes = [gpt2_bpe.token_bytes(i) for i in range(GPT2_VOCAB_SIZE)]
    assert token_bytes == [encoding.decode_single_token_bytes(i) for i in range(GPT2_VOCAB_SIZE)]


def test_gpt2_ranks_follow_merge_order(gpt2_bpe: BPETokenizer) -> None:
    """As tiktoken needs: each merged token's rank (its id) is above those of its parts."""
    encoding = gpt2_bpe.to_tiktoken()
    for (left, right), new_id in gpt2_bpe.merges:
        assert encoding.encode_single_token(gpt2_bpe.token_bytes(new_id)) == new_id
        assert new_id > max(left, right)


@settings(deadline=None)
@given(unicode_text)
def test_bpe_from_gpt2_files_encodes_like_tiktoken(
    gpt2_bpe: BPETokenizer, encoding: tiktoken.Encoding, text: str
) -> None:
    expected = encoding.encode(text, allowed_special="all")
    assert gpt2_bpe.encode(text, allowed_special="all") == expected
    assert gpt2_bpe.to_tiktoken().encode(text, allowed_special="all") == expected
    assert gpt2_bpe.decode(expected) == text


@pytest.mark.parametrize("corpus", ["the-verdict", "tinyshakespeare", "tinystories-2mib"])
def test_bpe_from_gpt2_files_on_corpus_lines(
    gpt2_bpe: BPETokenizer, encoding: tiktoken.Encoding, corpus: str
) -> None:
    lines = fetch(corpus).read_text(encoding="utf-8").splitlines(keepends=True)
    for line in random.Random(0).sample(lines, min(LINES_PER_CORPUS, len(lines))):
        assert gpt2_bpe.encode(line, "all") == encoding.encode(line, allowed_special="all")


def test_bpe_from_gpt2_files_saves_its_byte_order(tmp_path: Path, gpt2_bpe: BPETokenizer) -> None:
    path = tmp_path / "gpt2.json"
    gpt2_bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 2
    assert loaded.byte_order == gpt2_bpe.byte_order
    assert loaded.encode(CHECK_TEXT, "all") == CHECK_IDS


# --- Malformed GPT-2 files ------------------------------------------------------------------


def write_small_gpt2_files(
    directory: Path,
    edit_encoder: Callable[[dict[str, int]], object] = lambda encoder: encoder,
    edit_lines: Callable[[list[str]], list[str]] = lambda lines: lines,
) -> tuple[Path, Path]:
    """GPT-2's files cut to their first ``SMALL_MERGES`` merges and <|endoftext|>, changed by
    ``edit_encoder`` (which returns the new JSON content) and ``edit_lines``."""
    n_tokens = 256 + SMALL_MERGES
    full = json.loads(fetch("gpt2-encoder").read_text(encoding="utf-8"))
    encoder = {token: token_id for token, token_id in full.items() if token_id < n_tokens}
    encoder[EOT] = n_tokens
    lines = fetch("gpt2-vocab").read_text(encoding="utf-8").split("\n")[: 1 + SMALL_MERGES]
    encoder_path, vocab_path = directory / "encoder.json", directory / "vocab.bpe"
    encoder_path.write_text(json.dumps(edit_encoder(encoder)), encoding="utf-8")
    vocab_path.write_text("\n".join(edit_lines(lines)) + "\n", encoding="utf-8")
    return encoder_path, vocab_path


def _with(encoder: dict[str, int], **changes: int) -> dict[str, int]:
    return {**encoder, **changes}


def _without(encoder: dict[str, int], token: str) -> dict[str, int]:
    return {key: value for key, value in encoder.items() if key != token}


def test_small_gpt2_files_load(tmp_path: Path, encoding: tiktoken.Encoding) -> None:
    tokenizer = BPETokenizer.from_gpt2_files(*write_small_gpt2_files(tmp_path))
    assert tokenizer.vocab_size == 256 + SMALL_MERGES + 1
    assert tokenizer.special_tokens == {EOT: 256 + SMALL_MERGES}
    assert tokenizer.encode(" the") == encoding.encode(" the")  # made by early merges


@pytest.mark.parametrize(
    ("edit_encoder", "edit_lines", "message"),
    [
        (lambda e: [1, 2], None, "must be one JSON object mapping each token to its integer id"),
        (lambda e: _with(e, **{"!": "0"}), None, "mapping each token to its integer id"),
        (lambda e: _without(e, "!"), None, "does not give the 256 single bytes the ids 0..255"),
        (lambda e: _with(e, **{"!": 1}), None, "does not give the 256 single bytes"),
        (None, lambda lines: lines[1:], 'its first line must be "#version: ..."'),
        (None, lambda lines: [*lines, "a b c"], "line 42: 'a b c' is not a merge"),
        (None, lambda lines: [*lines, "", "Ġ t"], "line 42: '' is not a merge"),
        (None, lambda lines: [*lines, "Ġt Ġt"], "the token 'ĠtĠt' is not in"),
        (None, lambda lines: [*lines, "Ġ t"],
         "line 42: the merged token 'Ġt' has id 256 in"),
        (lambda e: _with(e, Ġt=300, **{EOT: 256}), None, "the merged token 'Ġt' has id 300"),
        (lambda e: _with(e, **{EOT: 300}), None, "the special tokens the ids from 296 on"),
        (lambda e: _with(e, extra=3), None, "has 298 entries"),
    ],
)
def test_malformed_gpt2_files_are_rejected(
    tmp_path: Path, edit_encoder: Any, edit_lines: Any, message: str
) -> None:
    paths = write_small_gpt2_files(tmp_path, edit_encoder or (lambda e: e),
                                   edit_lines or (lambda lines: lines))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        BPETokenizer.from_gpt2_files(*paths)


def test_gpt2_files_that_are_not_json_or_text(tmp_path: Path) -> None:
    encoder_path, vocab_path = write_small_gpt2_files(tmp_path)
    good_encoder = encoder_path.read_bytes()
    encoder_path.write_text('{"!": 0,', encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(f"{encoder_path} is not a JSON file")):
        BPETokenizer.from_gpt2_files(encoder_path, vocab_path)
    encoder_path.write_bytes(good_encoder)
    vocab_path.write_bytes(b"#version: 0.2\n\xff\xfe\n")
    with pytest.raises(CheckpointError, match="is not a UTF-8 text file"):
        BPETokenizer.from_gpt2_files(encoder_path, vocab_path)


def test_missing_gpt2_files(tmp_path: Path) -> None:
    encoder_path, vocab_path = write_small_gpt2_files(tmp_path)
    with pytest.raises(MissingFileError, match="fetch\\('gpt2-encoder'\\)"):
        BPETokenizer.from_gpt2_files(tmp_path / "missing.json", vocab_path)
    with pytest.raises(MissingFileError, match="fetch\\('gpt2-vocab'\\)"):
        BPETokenizer.from_gpt2_files(encoder_path, tmp_path / "missing.bpe")


@pytest.mark.parametrize("bad", [-1, GPT2_VOCAB_SIZE])
def test_decoding_an_id_outside_the_vocabulary_names_it(
    encoding: tiktoken.Encoding, bad: int
) -> None:
    with pytest.raises(InputError, match=re.escape(
        f"token id {bad} is not in the vocabulary; valid ids are 0..50256"
    )):
        encoding.decode([15496, bad])
