"""The checkers of chapter 3 accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import numpy as np
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


def one_hot_from_an_identity(token_ids, weight):
    return torch.eye(weight.shape[0], dtype=weight.dtype)[token_ids] @ weight


def one_hot_by_einsum(token_ids, weight):
    one_hot = F.one_hot(token_ids, num_classes=weight.shape[0]).to(weight)
    return torch.einsum("...v,vd->...d", one_hot, weight)


@pytest.mark.parametrize("answer", [one_hot_from_an_identity, one_hot_by_einsum])
def test_one_hot_lookup_accepts_answers_written_differently(answer):
    result = run("ch03.one_hot_lookup", answer)
    assert result.status == "passed", result.message_with_hint


def unsqueezes_the_ids_in_place(token_ids, weight):
    token_ids.unsqueeze_(-1)  # (..., 1), meant to broadcast; changes the caller's tensor
    return F.one_hot(token_ids.squeeze(-1), num_classes=weight.shape[0]).to(weight.dtype) @ weight


def float32_product(token_ids, weight):
    return F.one_hot(token_ids, num_classes=weight.shape[0]).float() @ weight.float()


def list_of_rows(token_ids, weight):
    return [learner_one_hot(token_id, weight) for token_id in token_ids]


def one_hot_rows_only(token_ids, weight):
    return F.one_hot(token_ids, num_classes=weight.shape[0]).to(weight.dtype)


def lookup_not_returned(token_ids, weight):
    embedded = learner_one_hot(token_ids, weight)  # noqa: F841


ONE_HOT_MISTAKES = [  # (answer, words of the message, words of the hint)
    (unsqueezes_the_ids_in_place, "the argument `token_ids` was tensor([2, 0]",
     "your function changed its argument `token_ids` in place; work on a copy"),
    (float32_product, "a float64 6x4 weight: got a tensor of dtype torch.float32 but expected "
     "torch.float64", "turn the one-hot rows into weight.dtype"),
    (list_of_rows, "expected a tensor, got list", "return one tensor, not a list"),
    (one_hot_rows_only, "at index (0, 0) expected 20, got 0",
     "multiply them by weight"),
    (lookup_not_returned, "returned None", "did you forget `return`?"),
]


@pytest.mark.parametrize(
    ("answer", "detail", "hint"), ONE_HOT_MISTAKES,
    ids=[row[0].__name__ for row in ONE_HOT_MISTAKES],
)
def test_one_hot_lookup_rejects_a_typical_mistake_with_its_hint(answer, detail, hint):
    result = run("ch03.one_hot_lookup", answer)
    assert result.status == "failed", result.message_with_hint
    assert detail in result.message
    assert hint in result.hint


def test_one_hot_lookup_reports_a_float32_one_hot_against_a_float64_weight():
    def float_one_hot(token_ids, weight):
        return F.one_hot(token_ids, num_classes=weight.shape[0]).float() @ weight

    result = run("ch03.one_hot_lookup", float_one_hot)
    assert result.status == "error"
    assert "a float64 6x4 weight" in result.message
    assert "turn them into weight's dtype" in result.hint


# ----------------------------------------------------------------------------------------------
# ch03.positional_ids


def learner_positions(token_ids, start=0):
    batch_size, num_tokens = token_ids.shape
    row = torch.arange(num_tokens) + start
    return row.repeat(batch_size, 1)


def positions_by_cumsum(token_ids, start=0):
    return torch.ones_like(token_ids).cumsum(dim=1) - 1 + start


def positions_as_an_expanded_view(token_ids, start=0):
    return (torch.arange(token_ids.shape[1]) + start).unsqueeze(0).expand(len(token_ids), -1)


def test_positional_ids_accepts_right_answers():
    assert run("ch03.positional_ids", reference_positional_ids).status == "passed"
    assert run("ch03.positional_ids", learner_positions).status == "passed"


@pytest.mark.parametrize("answer", [positions_by_cumsum, positions_as_an_expanded_view])
def test_positional_ids_accepts_answers_written_differently(answer):
    result = run("ch03.positional_ids", answer)
    assert result.status == "passed", result.message_with_hint


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


def int32_positions(token_ids, start=0):
    return learner_positions(token_ids, start).int()


def overwrites_the_ids(token_ids, start=0):
    token_ids[:] = torch.arange(start, start + token_ids.shape[1])
    return token_ids


def positions_as_lists(token_ids, start=0):
    return learner_positions(token_ids, start).tolist()


def counts_over_the_flattened_batch(token_ids, start=0):
    return torch.arange(start, start + token_ids.numel()).view(token_ids.shape)


def positions_not_returned(token_ids, start=0):
    positions = learner_positions(token_ids, start)  # noqa: F841


POSITIONS_HINT = "not the sequences of the batch"


@pytest.mark.parametrize(
    ("answer", "failing_case", "detail", "hint"),
    [
        (starts_at_one, "2 sequences of 3 tokens, start=0", "at index (0, 0) expected 0, got 1",
         POSITIONS_HINT),
        (per_batch_element, "2 sequences of 3 tokens, start=0",
         "at index (0, 1) expected 1, got 0", POSITIONS_HINT),
        (ignores_start, "start=5", "at index (0, 0) expected 5, got 0", POSITIONS_HINT),
        (one_row_only, "2 sequences of 3 tokens, start=0", "got shape (3,) but expected (2, 3)",
         POSITIONS_HINT),
        (counts_over_the_flattened_batch, "2 sequences of 3 tokens, start=0",
         "at index (1, 0) expected 0, got 3", POSITIONS_HINT),
        (float_positions, "start=0", "got a tensor of dtype torch.float32",
         "positions are int64 (torch.long)"),
        (int32_positions, "start=0", "got a tensor of dtype torch.int32",
         "positions are int64 (torch.long)"),
        (overwrites_the_ids, "start=0",
         "the argument `token_ids` was tensor([[5, 9, 7], [1, 1, 2]]",
         "your function changed its argument `token_ids` in place; work on a copy"),
        (positions_as_lists, "start=0", "expected a tensor, got list [[0, 1, 2], [0, 1, 2]]",
         "return one tensor, not a list"),
        (positions_not_returned, "start=0", "returned None", "did you forget `return`?"),
    ],
)
def test_positional_ids_rejects(answer, failing_case, detail, hint):
    result = run("ch03.positional_ids", answer)
    assert result.status == "failed", answer.__name__
    assert failing_case in result.message
    assert detail in result.message
    assert hint in result.hint


# ----------------------------------------------------------------------------------------------
# ch03.input_embeddings


def learner_input_embeddings(token_ids, token_weight, position_weight):
    token_vectors = nn.functional.embedding(token_ids, token_weight)
    positions = torch.arange(token_ids.shape[1])
    return token_vectors + nn.functional.embedding(positions, position_weight)


def input_embeddings_by_one_hot(token_ids, token_weight, position_weight):
    one_hot = F.one_hot(token_ids, num_classes=token_weight.shape[0]).to(token_weight.dtype)
    return one_hot @ token_weight + position_weight[torch.arange(token_ids.shape[1])]


def input_embeddings_by_modules(token_ids, token_weight, position_weight):
    tokens = nn.Embedding.from_pretrained(token_weight)
    positions = nn.Embedding.from_pretrained(position_weight)
    return tokens(token_ids) + positions(torch.arange(token_ids.shape[1]))


def input_embeddings_added_in_place_to_a_copy(token_ids, token_weight, position_weight):
    embedded = token_weight[token_ids]  # indexing copies, so += leaves token_weight alone
    embedded += position_weight[: token_ids.shape[1]]
    return embedded


def test_input_embeddings_accepts_right_answers():
    assert run("ch03.input_embeddings", reference_input_embeddings).status == "passed"
    assert run("ch03.input_embeddings", learner_input_embeddings).status == "passed"


@pytest.mark.parametrize(
    "answer",
    [input_embeddings_by_one_hot, input_embeddings_by_modules,
     input_embeddings_added_in_place_to_a_copy],
)
def test_input_embeddings_accepts_answers_written_differently(answer):
    result = run("ch03.input_embeddings", answer)
    assert result.status == "passed", result.message_with_hint


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


def zeroes_the_unused_positions(token_ids, token_weight, position_weight):
    position_weight[token_ids.shape[1] :] = 0  # changes the caller's table
    return token_weight[token_ids] + position_weight[: token_ids.shape[1]]


def float32_buffer(token_ids, token_weight, position_weight):
    batch_size, num_tokens = token_ids.shape
    embedded = torch.zeros(batch_size, num_tokens, token_weight.shape[1])  # float32 always
    for b in range(batch_size):
        for t in range(num_tokens):
            embedded[b, t] = token_weight[token_ids[b, t]] + position_weight[t]
    return embedded


def float64_result(token_ids, token_weight, position_weight):
    return reference_input_embeddings(token_ids, token_weight, position_weight).double()


def list_of_sequences(token_ids, token_weight, position_weight):
    return [token_weight[ids] + position_weight[: len(ids)] for ids in token_ids]


def concatenates_the_tables(token_ids, token_weight, position_weight):
    positions = position_weight[: token_ids.shape[1]].expand(len(token_ids), -1, -1)
    return torch.cat([token_weight[token_ids], positions], dim=-1)


def embeddings_not_returned(token_ids, token_weight, position_weight):
    embedded = token_weight[token_ids] + position_weight[: token_ids.shape[1]]  # noqa: F841


EMBEDDING_MISTAKES = [  # (answer, words of the message, words of the hint)
    (zeroes_the_unused_positions, "the argument `position_weight` was tensor(",
     "your function changed its argument `position_weight` in place; work on a copy"),
    (float32_buffer, "a float64 5x2 token weight and a float64 4x2 position weight: got a "
     "tensor of dtype torch.float32 but expected torch.float64", "keep the weights' dtype"),
    (float64_result, "(one token, repeated), a 5x2 token weight, a 4x2 position weight: got a "
     "tensor of dtype torch.float64 but expected torch.float32", "keep the weights' dtype"),
    (list_of_sequences, "expected a tensor, got list", "return one tensor, not a list"),
    (concatenates_the_tables, "got shape (1, 3, 4) but expected (1, 3, 2)",
     "look up both tables"),
    (embeddings_not_returned, "returned None", "did you forget `return`?"),
]


@pytest.mark.parametrize(
    ("answer", "detail", "hint"), EMBEDDING_MISTAKES,
    ids=[row[0].__name__ for row in EMBEDDING_MISTAKES],
)
def test_input_embeddings_rejects_a_typical_mistake_with_its_hint(answer, detail, hint):
    result = run("ch03.input_embeddings", answer)
    assert result.status == "failed", result.message_with_hint
    assert detail in result.message
    assert hint in result.hint


def test_input_embeddings_reports_adding_the_whole_position_table():
    def whole_position_table(token_ids, token_weight, position_weight):
        return token_weight[token_ids] + position_weight  # (context_length, dim), not (T, dim)

    result = run("ch03.input_embeddings", whole_position_table)
    assert result.status == "error"
    assert "(one token, repeated)" in result.message
    assert "uses only the first T position rows" in result.hint


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

    def table_by_table(vocab_size, context_length, dim):
        return sum(rows * dim for rows in (vocab_size, context_length))

    def as_a_tensor(vocab_size, context_length, dim):
        return torch.tensor([vocab_size, context_length]).sum() * dim

    def with_numpy(vocab_size, context_length, dim):
        return np.prod([vocab_size + context_length, dim])

    assert run("ch03.embedding_param_count", reference_embedding_param_count).status == "passed"
    for answer in (learner, table_by_table, as_a_tensor, with_numpy):
        result = run("ch03.embedding_param_count", answer)
        assert result.status == "passed", result.message_with_hint


def count_not_returned(vocab_size, context_length, dim):
    count = (vocab_size + context_length) * dim  # noqa: F841


COUNT_HINT = "context_length rows for the positions"


@pytest.mark.parametrize(
    ("mistake", "answer", "detail", "hint"),
    [
        ("forgets_positions", lambda v, c, d: v * d, "expected 12866816, got 12865792",
         COUNT_HINT),
        ("forgets_dim", lambda v, c, d: v + c, "expected 12866816, got 50261", COUNT_HINT),
        ("counts_a_bias", lambda v, c, d: (v + c) * d + 2 * d, "expected 12866816, got 12867328",
         COUNT_HINT),
        ("multiplies_the_tables", lambda v, c, d: v * c * d, "expected 12866816, got 51463168",
         COUNT_HINT),
        ("float_result", lambda v, c, d: float((v + c) * d), "got float 12866816.0",
         "a count of parameters is an int"),
        ("float_tensor", lambda v, c, d: torch.tensor([v + c], dtype=torch.float32).sum() * d,
         "got Tensor tensor(12866816.0", "a count of parameters is an int"),
        ("the_two_counts_not_added", lambda v, c, d: (v * d, c * d),
         "got tuple (12865792, 1024)", "return one number"),
        ("no_return", count_not_returned, "returned None", "did you forget `return`?"),
    ],
)
def test_embedding_param_count_rejects(mistake, answer, detail, hint):
    result = run("ch03.embedding_param_count", answer)
    assert result.status == "failed", mistake
    assert "this chapter's example" in result.message
    assert detail in result.message
    assert hint in result.hint
