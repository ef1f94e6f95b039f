"""Checkers of chapter 3, embeddings: one-hot lookups, position ids, input embeddings, sizes.

Weights in the hand-picked cases hold small integers, so a wrong row or a missing term shows
up as a readable number in the failure message; random cases follow.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import torch

from llmcourse.exercises.core import Mismatch, exercise, expect_close, expect_equal, run_cases
from llmcourse.exercises.inputs import randint, random_ids, shape_text

expect_float = functools.partial(expect_close, atol=1e-6, rtol=1e-6)

NOT_ONE_TENSOR_HINT = (
    "return one tensor, not a list: build it with tensor operations, or torch.stack a list of "
    "tensors"
)


def _with_tensor_hints(compare: Callable[..., None], dtype_hint: str) -> Callable[..., None]:
    """``compare`` with a hint for a list instead of a tensor and for a tensor of another dtype."""

    def compare_with_hints(
        got: object, expected: torch.Tensor, *, case: str, hint: str = ""
    ) -> None:
        try:
            compare(got, expected, case=case, hint=hint)
        except Mismatch as mismatch:
            if not mismatch.hint and isinstance(got, (list, tuple)):
                mismatch.hint = NOT_ONE_TENSOR_HINT
            elif (
                not mismatch.hint and isinstance(got, torch.Tensor)
                and got.shape == expected.shape and got.dtype != expected.dtype
            ):
                mismatch.hint = dtype_hint
            raise

    return compare_with_hints


# ----------------------------------------------------------------------------------------------
# References


def reference_one_hot_lookup(token_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` (vocab_size, dim) for ``token_ids`` (any shape): (*ids.shape, dim)."""
    return weight[token_ids]


def reference_positional_ids(token_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Positions start..start+T-1 for every sequence of ``token_ids`` (B, T): (B, T) int64."""
    positions = torch.arange(start, start + token_ids.size(1), device=token_ids.device)
    return positions.expand(token_ids.size(0), -1).clone()


def reference_input_embeddings(
    token_ids: torch.Tensor, token_weight: torch.Tensor, position_weight: torch.Tensor
) -> torch.Tensor:
    """token_weight[token_ids] + position_weight[0..T-1]: (B, T, dim)."""
    return token_weight[token_ids] + position_weight[: token_ids.size(1)]


def reference_embedding_param_count(vocab_size: int, context_length: int, dim: int) -> int:
    """Parameters of a token table (vocab_size, dim) plus a position table (context_length, dim)."""
    return (vocab_size + context_length) * dim


# ----------------------------------------------------------------------------------------------
# Inputs


def _counting_weight(rows: int, columns: int, first: int = 0) -> torch.Tensor:
    """A float weight whose row r is [first + 10 r, first + 10 r + 1, ...]: easy to read back."""
    row_starts = first + 10 * torch.arange(rows, dtype=torch.float32)[:, None]
    return row_starts + torch.arange(columns, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# ch03.one_hot_lookup


@exercise(
    "ch03.one_hot_lookup",
    title="Embedding lookup as a one-hot product",
    hint="row i of weight (vocab_size, dim) is the vector of token i: build one-hot rows of "
    "width vocab_size (F.one_hot(token_ids, num_classes=weight.shape[0])), turn them into "
    "weight's dtype and multiply them by weight; the result keeps token_ids' shape plus dim",
)
def check_one_hot_lookup(answer: object) -> None:
    generator = torch.Generator().manual_seed(5)
    square = _counting_weight(3, 3)
    wide = _counting_weight(6, 4)
    cases = [
        (f"token_ids=tensor([2, 0]), a 3x3 weight {square.tolist()}",
         (torch.tensor([2, 0]), square)),
        ("token_ids=tensor([1, 5, 5, 0]) (a repeated id), a 6x4 weight",
         (torch.tensor([1, 5, 5, 0]), wide)),
        ("token_ids=tensor([0, 1]) (the largest ids of the vocabulary unused), a 6x4 weight",
         (torch.tensor([0, 1]), wide)),
        ("a batch token_ids=tensor([[3, 1, 4], [1, 5, 2]]) of shape (2, 3), a 6x4 weight",
         (torch.tensor([[3, 1, 4], [1, 5, 2]]), wide)),
        ("token_ids=tensor([4]), a float64 6x4 weight", (torch.tensor([4]), wide.double())),
    ]
    for _ in range(6):
        vocab_size, dim = randint(generator, 2, 40), randint(generator, 1, 8)
        shape = (randint(generator, 1, 4), randint(generator, 1, 6))
        weight = torch.randn(vocab_size, dim, generator=generator)
        token_ids = random_ids(generator, shape, vocab_size)
        cases.append((
            f"token_ids of shape {shape}, a random {vocab_size}x{dim} weight",
            (token_ids, weight),
        ))
    run_cases(answer, reference_one_hot_lookup, cases, _with_tensor_hints(
        expect_float,
        "the result has weight's dtype: turn the one-hot rows into weight.dtype "
        "(.to(weight.dtype)) before the product, and keep weight as it is",
    ))


# ----------------------------------------------------------------------------------------------
# ch03.positional_ids


@exercise(
    "ch03.positional_ids",
    title="Position ids of a batch",
    hint="positions count the tokens along each sequence (dimension 1), not the sequences of "
    "the batch: every row is start, start + 1, ..., start + T - 1 (torch.arange), repeated for "
    "each of the B sequences, as int64",
)
def check_positional_ids(answer: object) -> None:
    generator = torch.Generator().manual_seed(6)
    cases = [
        ("a batch of 2 sequences of 3 tokens, start=0", (torch.tensor([[5, 9, 7], [1, 1, 2]]),)),
        ("one sequence of 4 tokens, start=0", (torch.tensor([[8, 6, 7, 5]]),)),
        ("a batch of 3 sequences of 1 token, start=0", (torch.tensor([[4], [2], [9]]),)),
        ("a batch of 2 sequences of 3 tokens, start=5 (5 earlier tokens hold positions 0-4)",
         (torch.tensor([[5, 9, 7], [1, 1, 2]]), 5)),
        ("one sequence of 1 token, start=12", (torch.tensor([[3]]), 12)),
    ]
    for _ in range(6):
        shape = (randint(generator, 1, 5), randint(generator, 1, 9))
        start = randint(generator, 0, 20)
        cases.append((
            f"a batch of shape {shape}, start={start}",
            (random_ids(generator, shape, 50257), start),
        ))
    run_cases(answer, reference_positional_ids, cases, _with_tensor_hints(
        expect_equal,
        "positions are int64 (torch.long), the dtype torch.arange gives for int bounds: no "
        "float and no int32",
    ))


# ----------------------------------------------------------------------------------------------
# ch03.input_embeddings


@exercise(
    "ch03.input_embeddings",
    title="Token plus position embeddings",
    hint="look up both tables: token_weight[token_ids] (B, T, dim) plus position_weight at "
    "positions 0, 1, ..., T - 1 (T, dim), which broadcasts over the batch; a sequence shorter "
    "than the context uses only the first T position rows",
)
def check_input_embeddings(answer: object) -> None:
    generator = torch.Generator().manual_seed(7)
    token_weight = _counting_weight(5, 2)  # token t -> [10 t, 10 t + 1]
    position_weight = _counting_weight(4, 2, first=1000)  # position p -> [1000 + 10 p, ...]
    square = _counting_weight(3, 3)
    cases = [
        ("token_ids=tensor([[3, 3, 3]]) (one token, repeated), a 5x2 token weight, "
         "a 4x2 position weight", (torch.tensor([[3, 3, 3]]), token_weight, position_weight)),
        ("token_ids=tensor([[0, 4], [2, 1]]), a 5x2 token weight, a 4x2 position weight",
         (torch.tensor([[0, 4], [2, 1]]), token_weight, position_weight)),
        ("token_ids=tensor([[1, 0, 2], [2, 2, 0]]), a 3x3 token weight and a 3x3 position weight "
         "(as many tokens as positions)", (torch.tensor([[1, 0, 2], [2, 2, 0]]), square, square)),
        ("a batch of 3 sequences of 4 tokens (the full context), a 5x2 token weight",
         (torch.tensor([[0, 1, 2, 3], [4, 4, 4, 4], [1, 3, 0, 2]]), token_weight,
          position_weight)),
        ("token_ids=tensor([[4, 0]]), a float64 5x2 token weight and a float64 4x2 position "
         "weight", (torch.tensor([[4, 0]]), token_weight.double(), position_weight.double())),
    ]
    for _ in range(6):
        vocab_size, dim = randint(generator, 2, 60), randint(generator, 1, 8)
        context_length = randint(generator, 1, 10)
        shape = (randint(generator, 1, 4), randint(generator, 1, context_length))
        token_weight = torch.randn(vocab_size, dim, generator=generator)
        position_weight = torch.randn(context_length, dim, generator=generator)
        cases.append((
            f"token_ids of shape {shape}, a random {shape_text(token_weight)} token weight, "
            f"a {shape_text(position_weight)} position weight",
            (random_ids(generator, shape, vocab_size), token_weight, position_weight),
        ))
    run_cases(answer, reference_input_embeddings, cases, _with_tensor_hints(
        expect_float,
        "the embeddings keep the weights' dtype: add the looked-up rows as they are, without "
        "a conversion and without a buffer (torch.zeros) of the default dtype",
    ))


# ----------------------------------------------------------------------------------------------
# ch03.embedding_param_count


def _expect_count(got: object, expected: int, *, case: str, hint: str = "") -> None:
    """``got`` equals the int ``expected``; an integer tensor or NumPy integer counts as an int."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got)
    elif isinstance(got, numbers.Integral) and not isinstance(got, bool):
        got = int(got)
    try:
        expect_equal(got, expected, case=case, hint=hint)
    except Mismatch as mismatch:
        if isinstance(got, (list, tuple)):
            mismatch.hint = mismatch.hint or (
                "return one number: the token table's count plus the position table's"
            )
        elif isinstance(got, float) or (
            isinstance(got, torch.Tensor) and got.is_floating_point()
        ):
            mismatch.hint = mismatch.hint or (
                "a count of parameters is an int: multiply and add ints, with no / and no float"
            )
        raise


@exercise(
    "ch03.embedding_param_count",
    title="Parameters of the embedding tables",
    hint="each table holds one row of dim trainable numbers per entry: vocab_size rows for the "
    "tokens plus context_length rows for the positions (nn.Embedding has no bias)",
)
def check_embedding_param_count(answer: object) -> None:
    cases = [
        ("vocab_size=50257, context_length=4, dim=256 (this chapter's example)", (50257, 4, 256)),
        ("vocab_size=50257, context_length=1024, dim=768 (GPT-2 small)", (50257, 1024, 768)),
        ("vocab_size=6, context_length=3, dim=2", (6, 3, 2)),
        ("vocab_size=1, context_length=1, dim=1", (1, 1, 1)),
        ("vocab_size=1132, context_length=256, dim=1 (one number per row)", (1132, 256, 1)),
    ]
    cases += [
        (f"vocab_size={vocab}, context_length={context}, dim={dim}", (vocab, context, dim))
        for vocab, context, dim in [(10, 20, 30), (50257, 2048, 1600), (100, 1, 7)]
    ]
    run_cases(answer, reference_embedding_param_count, cases, _expect_count)

