"""The checkers of chapter 3 accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.embeddings import TokenAndPositionEmbedding, embed_tokens_and_positions
from llmcourse.exercises import check
from llmcourse.exercises.ch03_embeddings import (
    reference_embedding_param_count,
    reference_input_embeddings,
    reference_one_hot_lookup,
    reference_positional_ids,
)


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


# ----------------------------------------------------------------------------------------------
# The references agree with PyTorch and with the package


def test_reference_lookup_equals_nn_embedding():
    torch.manual_seed(0)
    table = nn.Embedding(7, 3)
    ids = torch.tensor([[6, 0, 2], [2, 2, 5]])
    assert torch.equal(reference_one_hot_lookup(ids, table.weight), table(ids))


def test_reference_positions_are_those_the_package_adds():
    torch.manual_seed(0)
    tokens, positions = nn.Embedding(9, 4), nn.Embedding(12, 4)
    ids = torch.tensor([[1, 8, 3], [0, 0, 7]])
    expected = reference_positional_ids(ids, start=5)
    assert expected.tolist() == [[5, 6, 7], [5, 6, 7]]
    assert expected.dtype == torch.int64
    torch.testing.assert_close(
        embed_tokens_and_positions(tokens, positions, ids, start=5),
        tokens(ids) + positions(expected),
        rtol=0, atol=0,
    )


def test_reference_input_embeddings_equal_the_package_layer():
    torch.manual_seed(0)
    layer = TokenAndPositionEmbedding(vocab_size=11, context_length=6, dim=5)
    ids = torch.tensor([[10, 3, 3, 0], [1, 2, 9, 9]])
    expected = layer(ids)
    got = reference_input_embeddings(ids, layer.wte.weight, layer.wpe.weight)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("vocab", "context", "dim"), [(50257, 4, 256), (13, 7, 3)])
def test_reference_param_count_equals_the_package_layer(vocab, context, dim):
    layer = TokenAndPositionEmbedding(vocab_size=vocab, context_length=context, dim=dim)
    count = sum(parameter.numel() for parameter in layer.parameters())
    assert reference_embedding_param_count(vocab, context, dim) == count


# ----------------------------------------------------------------------------------------------
# ch03.one_hot_lookup


def learner_one_hot(token_ids, weight):
    one_hot = F.one_hot(token_ids, num_classes=weight.shape[0]).to(weight.dtype)
    return one_hot @ weight


def test_one_hot_lookup_accepts_right_answers():
    assert run("ch03.one_hot_lookup", reference_one_hot_lookup).status == "passed"
    result = run("ch03.one_hot_lookup", learner_one_hot)
    assert result.status == "passed"
    assert result.cases == 11


def test_one_hot_lookup_rejects_a_transposed_weight():
    def transposed(token_ids, weight):
        return F.one_hot(token_ids, num_classes=weight.shape[1]).float() @ weight.T

    result = run("ch03.one_hot_lookup", transposed)
    assert result.status == "failed"
    assert "a 3x3 weight" in result.message
    assert "at index (0, 0) expected 20, got 2" in result.message
    assert "row i of weight (vocab_size, dim) is the vector of token i" in result.hint


def test_one_hot_lookup_reports_a_one_hot_too_narrow():
    def width_from_ids(token_ids, weight):
        return F.one_hot(token_ids).float() @ weight  # width max(id) + 1, not vocab_size

    result = run("ch03.one_hot_lookup", width_from_ids)
    assert result.status == "error"
    assert "the largest ids of the vocabulary unused" in result.message
    assert "cannot be multiplied" in result.message


def test_one_hot_lookup_rejects_a_flattened_batch():
    def flattened(token_ids, weight):
        return learner_one_hot(token_ids.flatten(), weight)

    result = run("ch03.one_hot_lookup", flattened)
    assert result.status == "failed"
    assert "of shape (2, 3)" in result.message
    assert "got shape (6, 4) but expected (2, 3, 4)" in result.message
    assert "keeps token_ids' shape plus dim" in result.hint


def test_one_hot_lookup_rejects_an_integer_result():
    def integer_product(token_ids, weight):
        return F.one_hot(token_ids, num_classes=weight.shape[0]) @ weight.long()

    result = run("ch03.one_hot_lookup", integer_product)
    assert result.status == "failed"
    assert "got a tensor of dtype torch.int64 but expected torch.float32" in result.message


# ----------------------------------------------------------------------------------------------
# ch03.positional_ids


def learner_positions(token_ids, start=0):
    batch_size, num_tokens = token_ids.shape
    row = torch.arange(num_tokens) + start
    return row.repeat(batch_size, 1)


def test_positional_ids_accepts_right_answers():
    assert run("ch03.positional_ids", reference_positional_ids).status == "passed"
    assert run("ch03.positional_ids", learner_positions).status == "passed"


def starts_at_one(token_ids, start=0):
    return learner_positions(token_ids, start + 1)


def per_batch_element(token_ids, start=0):
    batch_size, num_tokens = token_ids.shape
    return (torch.arange(batch_size)[:, None] + start).expand(batch_size, num_tokens)


def ignores_start(token_ids, start=0):
    return learner_positions(token_ids)


def one_row_only(token_ids, start=0):
    return torch.arange(start, start + token_ids.shape[1])


def float_positions(token_ids, start=0):
    return learner_positions(token_ids, start).float()


@pytest.mark.parametrize(
    ("answer", "failing_case", "detail"),
    [
        (starts_at_one, "2 sequences of 3 tokens, start=0", "at index (0, 0) expected 0, got 1"),
        (per_batch_element, "2 sequences of 3 tokens, start=0",
         "at index (0, 1) expected 1, got 0"),
        (ignores_start, "start=5", "at index (0, 0) expected 5, got 0"),
        (one_row_only, "2 sequences of 3 tokens, start=0", "got shape (3,) but expected (2, 3)"),
        (float_positions, "start=0", "got a tensor of dtype torch.float32"),
    ],
)
def test_positional_ids_rejects(answer, failing_case, detail):
    result = run("ch03.positional_ids", answer)
    assert result.status == "failed", answer.__name__
    assert failing_case in result.message
    assert detail in result.message
    assert "not the sequences of the batch" in result.hint


# ----------------------------------------------------------------------------------------------
# ch03.input_embeddings


def learner_input_embeddings(token_ids, token_weight, position_weight):
    token_vectors = nn.functional.embedding(token_ids, token_weight)
    positions = torch.arange(token_ids.shape[1])
    return token_vectors + nn.functional.embedding(positions, position_weight)


def test_input_embeddings_accepts_right_answers():
    assert run("ch03.input_embeddings", reference_input_embeddings).status == "passed"
    assert run("ch03.input_embeddings", learner_input_embeddings).status == "passed"


def forgets_positions(token_ids, token_weight, position_weight):
    return token_weight[token_ids]


def positions_start_at_one(token_ids, token_weight, position_weight):
    return token_weight[token_ids] + position_weight[1 : token_ids.shape[1] + 1]


def positions_per_batch_element(token_ids, token_weight, position_weight):
    return token_weight[token_ids] + position_weight[: token_ids.shape[0], None, :]


def adds_position_index(token_ids, token_weight, position_weight):
    return token_weight[token_ids] + torch.arange(token_ids.shape[1])[None, :, None]


def adds_token_ids(token_ids, token_weight, position_weight):
    return token_ids[..., None] + position_weight[: token_ids.shape[1]]


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (forgets_positions, "at index (0, 0, 0) expected 1030, got 30"),
        (positions_start_at_one, "at index (0, 0, 0) expected 1030, got 1040"),
        (positions_per_batch_element, "at index (0, 1, 0) expected 1040, got 1030"),
        (adds_position_index, "at index (0, 0, 0) expected 1030, got 30"),
        (adds_token_ids, "at index (0, 0, 0) expected 1030, got 1003"),
    ],
)
def test_input_embeddings_rejects(answer, detail):
    result = run("ch03.input_embeddings", answer)
    assert result.status == "failed", answer.__name__
    assert "token_ids=tensor([[3, 3, 3]]) (one token, repeated)" in result.message
    assert detail in result.message
    assert "look up both tables" in result.hint


def test_input_embeddings_reports_a_transposed_token_weight():
    def transposed(token_ids, token_weight, position_weight):
        return token_weight.T[token_ids] + position_weight[: token_ids.shape[1]]

    result = run("ch03.input_embeddings", transposed)
    assert result.status == "error"
    assert "(one token, repeated)" in result.message
    assert "out of bounds" in result.message


# ----------------------------------------------------------------------------------------------
# ch03.embedding_param_count


def test_embedding_param_count_accepts_right_answers():
    def learner(vocab_size, context_length, dim):
        return vocab_size * dim + context_length * dim

    assert run("ch03.embedding_param_count", reference_embedding_param_count).status == "passed"
    assert run("ch03.embedding_param_count", learner).status == "passed"


@pytest.mark.parametrize(
    ("mistake", "answer", "detail"),
    [
        ("forgets_positions", lambda v, c, d: v * d, "expected 12866816, got 12865792"),
        ("forgets_dim", lambda v, c, d: v + c, "expected 12866816, got 50261"),
        ("counts_a_bias", lambda v, c, d: (v + c) * d + 2 * d, "expected 12866816, got 12867328"),
        ("multiplies_the_tables", lambda v, c, d: v * c * d, "expected 12866816, got 51463168"),
        ("float_result", lambda v, c, d: float((v + c) * d), "got float 12866816.0"),
    ],
)
def test_embedding_param_count_rejects(mistake, answer, detail):
    result = run("ch03.embedding_param_count", answer)
    assert result.status == "failed", mistake
    assert "this chapter's example" in result.message
    assert detail in result.message
    assert "context_length rows for the positions" in result.hint
