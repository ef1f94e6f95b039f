"""Checkers of chapter 4, attention: scores, the causal mask, masked softmax, heads, attention.

Each checker runs the learner's function and a reference on hand-picked cases first (small,
readable shapes in which every typical mistake changes the result), then on random ones:
batched and unbatched inputs, a single token (T = 1), more keys than queries (as with a
key/value cache), head sizes different from the number of tokens, float64. When an answer
differs, the checker also runs a list of typical wrong answers on the same input; if one of
them gives exactly what the learner's function gave, the hint names that mistake.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from llmcourse.exercises.core import LabelledArgs, Mistake, exercise, expect_close, run_cases
from llmcourse.exercises.inputs import (
    expect_experiment,
    randint,
    randn,
    random_mask,
    seeded,
    shape_text,
)
from llmcourse.model import causal_mask

ATOL, RTOL = 1e-5, 1e-4
expect_tensor = functools.partial(expect_close, atol=ATOL, rtol=RTOL)

# ----------------------------------------------------------------------------------------------
# References


def reference_attention_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores queries @ keys^T / sqrt(D): (..., T, S) from queries (..., T, D), keys (..., S, D)."""
    return queries @ keys.transpose(-2, -1) / math.sqrt(queries.size(-1))


def reference_causal_mask(num_tokens: int) -> torch.Tensor:
    """(T, T) bool, True where query i may attend to key j, that is where j <= i."""
    return torch.ones(num_tokens, num_tokens, dtype=torch.bool).tril()


def reference_masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over the keys (last dimension) of ``scores`` (..., T, S), where ``mask`` (T, S)
    is True; weight 0 where it is False."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def reference_split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D) with D = C / H: head h gets channels h*D to (h+1)*D - 1."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def reference_merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D): the heads of each token side by side, head 0 first."""
    batch, heads, tokens, head_size = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_size)


def reference_scaled_dot_product_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(queries keys^T / sqrt(D), masked) values: (..., T, Dv).

    queries (..., T, D), keys (..., S, D), values (..., S, Dv), mask (T, S) bool or None.
    """
    scores = reference_attention_scores(queries, keys)
    if mask is not None:
        return reference_masked_softmax(scores, mask) @ values
    return torch.softmax(scores, dim=-1) @ values


# ----------------------------------------------------------------------------------------------
# ch04.attention_scores


def _scores_without_scale(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return queries @ keys.transpose(-2, -1)


SCORE_MISTAKES: list[Mistake] = [
    Mistake(
        "scores are not scaled",
        _scores_without_scale,
        "the scores are not scaled: divide queries @ keys^T by sqrt(d), d = "
        "queries.shape[-1], the head size",
    ),
    Mistake(
        "scores are divided by d",
        lambda q, k: _scores_without_scale(q, k) / q.size(-1),
        "the scores are divided by d: divide by the square root of d (math.sqrt(d) or d ** "
        "0.5)",
    ),
    Mistake(
        "scores are multiplied by sqrt(d)",
        lambda q, k: _scores_without_scale(q, k) * math.sqrt(q.size(-1)),
        "the scores are multiplied by sqrt(d): divide by it instead",
    ),
    Mistake(
        "scores are divided by the square root of the number of keys",
        lambda q, k: _scores_without_scale(q, k) / math.sqrt(k.size(-2)),
        "the scores are divided by the square root of the number of keys: d is the size of "
        "the last dimension of queries and keys (the head size), not the number of tokens",
    ),
    Mistake(
        "rows and columns are swapped",
        lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.size(-1)),
        "rows and columns are swapped: row i must hold query i's scores against every key, "
        "queries @ keys.transpose(-2, -1), not keys @ queries^T",
    ),
]


def _score_cases() -> list[LabelledArgs]:
    generator = seeded(41)
    queries = torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 3.0], [2.0, 2.0, 0.0, 1.0]])
    keys = torch.tensor([
        [1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 1.0], [3.0, 0.0, 1.0, 2.0],
        [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 0.0],
    ])
    cases: list[LabelledArgs] = [
        ("queries of shape (3, 4) and keys of shape (5, 4): 3 queries, 5 keys, d = 4",
         (queries, keys)),
        ("queries and keys of shape (2, 6, 8) (a batch of 2, 6 tokens, d = 8)",
         (randn(generator, 2, 6, 8), randn(generator, 2, 6, 8))),
        ("queries (2, 3, 5, 16) and keys (2, 3, 7, 16): batch 2, 3 heads, 5 queries, 7 keys",
         (randn(generator, 2, 3, 5, 16), randn(generator, 2, 3, 7, 16))),
        ("a single token: queries and keys of shape (1, 1, 1, 4)",
         (randn(generator, 1, 1, 1, 4), randn(generator, 1, 1, 1, 4))),
        ("one new query against 9 cached keys: queries (1, 2, 1, 8), keys (1, 2, 9, 8)",
         (randn(generator, 1, 2, 1, 8), randn(generator, 1, 2, 9, 8))),
        ("float64 queries and keys of shape (4, 3)",
         (randn(generator, 4, 3).double(), randn(generator, 4, 3).double())),
    ]
    for _ in range(6):
        batch, heads = randint(generator, 1, 3), randint(generator, 1, 4)
        n_queries, n_keys, head_size = (randint(generator, 1, 9) for _ in range(3))
        queries = randn(generator, batch, heads, n_queries, head_size)
        keys = randn(generator, batch, heads, n_keys, head_size)
        cases.append((f"random queries {shape_text(queries)} and keys {shape_text(keys)}",
                      (queries, keys)))
    return cases


@exercise(
    "ch04.attention_scores",
    title="Scaled attention scores",
    hint="score[i, j] is the dot product of query i and key j divided by sqrt(d), where d is "
    "the last dimension of queries and keys: queries @ keys.transpose(-2, -1) / math.sqrt(d); "
    "transpose(-2, -1) (not .T) keeps any batch and head dimensions in front",
)
def check_attention_scores(answer: object) -> None:
    run_cases(
        answer, reference_attention_scores, _score_cases(), expect_tensor, mistakes=SCORE_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch04.causal_mask


def _ones(size: int) -> torch.Tensor:
    return torch.ones(size, size, dtype=torch.bool)


MASK_MISTAKES: list[Mistake] = [
    Mistake(
        "mask is inverted",
        lambda size: _ones(size).triu(diagonal=1),
        "the mask is inverted: it is True where a token must NOT look. This exercise wants "
        "True where attention is allowed (key j <= query i), the lower triangle: torch.tril",
    ),
    Mistake(
        "mask lets tokens see the future",
        lambda size: _ones(size).triu(),
        "the mask lets tokens see the future: row i (the query) may see columns j <= i only, "
        "the lower triangle torch.tril, not the upper one torch.triu",
    ),
    Mistake(
        "diagonal is missing",
        lambda size: _ones(size).tril(diagonal=-1),
        "the diagonal is missing: a token may attend to itself (j == i), so keep the diagonal"
        " (torch.tril with the default diagonal=0)",
    ),
    Mistake(
        "mask holds numbers",
        lambda size: torch.ones(size, size).tril(),
        "the mask holds numbers: return a bool tensor (True = allowed), for example "
        "torch.ones(T, T, dtype=torch.bool).tril() or .bool() on your tensor",
    ),
    Mistake(
        "the additive form (0 and -inf)",
        lambda size: torch.zeros(size, size).masked_fill(~_ones(size).tril(), float("-inf")),
        "this is the additive form (0 and -inf): this exercise wants the boolean form, True "
        "where attention is allowed",
    ),
]


@exercise(
    "ch04.causal_mask",
    title="The causal mask",
    hint="mask[i, j] (row i = query, column j = key) is True when j <= i: every token sees "
    "itself and the tokens before it, never a later one; a (T, T) bool tensor, "
    "torch.ones(T, T, dtype=torch.bool).tril()",
)
def check_causal_mask(answer: object) -> None:
    cases = [(f"num_tokens={size}", (size,)) for size in (4, 1, 2, 3, 6, 9, 16)]
    run_cases(answer, reference_causal_mask, cases, expect_tensor, mistakes=MASK_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch04.masked_softmax


def _fill_masked(scores: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    return scores.masked_fill(where, value)


def _softmax_over(dim: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A masked softmax over dimension ``dim`` instead of the keys."""
    return lambda scores, mask: torch.softmax(_fill_masked(scores, ~mask, float("-inf")), dim=dim)


MASKING_MISTAKES: list[Mistake] = [  # mistakes of a masked softmax, also made in attention
    Mistake(
        "weights zeroed after the softmax",
        lambda scores, mask: torch.softmax(scores, dim=-1) * mask,
        "the weights were zeroed after the softmax without renormalising, so rows no longer "
        "sum to 1 (and how much is lost depends on the hidden, future scores): set the masked"
        " scores to -inf BEFORE the softmax",
    ),
    Mistake(
        "mask is used the wrong way round",
        lambda scores, mask: torch.softmax(_fill_masked(scores, mask, float("-inf")), dim=-1),
        "the mask is used the wrong way round: True marks the keys a query MAY see, so fill "
        "the scores where the mask is False: scores.masked_fill(~mask, float('-inf'))",
    ),
    *[
        Mistake(
            f"softmax over dimension {dim}",
            _softmax_over(dim),
            "the softmax runs over the wrong dimension: each query's weights over the keys "
            "must sum to 1, so normalise along the last dimension (dim=-1), the keys",
        )
        for dim in (-2, 0, 1, 2)
    ],
    Mistake(
        "masked scores set to 0",
        lambda scores, mask: torch.softmax(_fill_masked(scores, ~mask, 0.0), dim=-1),
        "the masked scores were set to 0, which still gets weight exp(0) > 0: set them to "
        "float('-inf'), whose exp is exactly 0",
    ),
]

EXTREME_SCORES = torch.tensor([[1000.0, -5.0, 0.0], [999.0, 1000.0, 0.0], [-1000.0, 0.0, 1000.0]])


def _unstabilised_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    exponentials = scores.exp() * mask
    return exponentials / exponentials.sum(dim=-1, keepdim=True)


SOFTMAX_MISTAKES: list[Mistake] = [
    *MASKING_MISTAKES,
    Mistake(
        "unstabilised softmax",
        _unstabilised_softmax,
        "exp of a large score overflows to inf (and inf / inf is nan): subtract each row's "
        "largest score before exp, or use torch.softmax, which does",
    ),
    Mistake(
        "mask is ignored",
        lambda scores, mask: torch.softmax(scores, dim=-1),
        "the mask is ignored: apply the mask you are given",
    ),
    Mistake(
        "a causal mask built inside the function",
        lambda scores, mask: torch.softmax(_fill_masked(
         scores, ~torch.ones(mask.shape, dtype=torch.bool).tril(), float("-inf")), dim=-1),
        "this is a causal mask built inside the function: use the `mask` argument, which need"
        " not be causal (and may have more keys than queries)",
    ),
]


def _masked_softmax_cases() -> list[LabelledArgs]:
    generator = seeded(42)
    scores = torch.tensor([
        [0.5, 1.0, -1.0, 2.0], [1.5, 0.0, 0.5, -0.5], [0.0, 2.0, 1.0, 1.0], [1.0, -2.0, 0.5, 3.0],
    ])
    cases: list[LabelledArgs] = [
        ("4x4 scores with the causal mask of 4 tokens", (scores, causal_mask(4, 0))),
        ("scores (2, 3, 6, 6) (batch 2, 3 heads) with the causal mask of 6 tokens",
         (randn(generator, 2, 3, 6, 6), causal_mask(6, 0))),
        ("a single token: scores (1, 1, 1, 1), mask [[True]]",
         (randn(generator, 1, 1, 1, 1), causal_mask(1, 0))),
        ("2 new queries after 3 cached keys: scores (1, 2, 2, 5), mask causal_mask(2, 3) "
         "(query 0 sees keys 0-3, query 1 keys 0-4)",
         (randn(generator, 1, 2, 2, 5), causal_mask(2, 3))),
        ("scores (3, 5) with a mask that is not causal "
         "[[T, F, T, F, F], [F, F, F, T, T], [T, T, F, F, T]]",
         (randn(generator, 3, 5), torch.tensor([
             [True, False, True, False, False], [False, False, False, True, True],
             [True, True, False, False, True]]))),
        ("float64 scores (2, 5, 5) with the causal mask",
         (randn(generator, 2, 5, 5).double(), causal_mask(5, 0))),
        (f"extreme scores {EXTREME_SCORES.tolist()} with the causal mask of 3 tokens "
         "(exp(1000) overflows)", (EXTREME_SCORES, causal_mask(3, 0))),
    ]
    for _ in range(6):
        n_queries, n_keys = randint(generator, 1, 7), randint(generator, 1, 7)
        scores = 3 * randn(generator, randint(generator, 1, 3), n_queries, n_keys)
        cases.append((f"random scores {shape_text(scores)} with a random mask ({n_queries}, "
                      f"{n_keys})", (scores, random_mask(generator, n_queries, n_keys))))
    return cases


@exercise(
    "ch04.masked_softmax",
    title="Masked softmax",
    hint="set the scores where the mask is False to float('-inf') (scores.masked_fill(~mask, "
    "float('-inf'))), then take the softmax over the last dimension, the keys: every row sums "
    "to 1 and masked keys get weight exactly 0",
)
def check_masked_softmax(answer: object) -> None:
    run_cases(
        answer, reference_masked_softmax, _masked_softmax_cases(), expect_tensor,
        mistakes=SOFTMAX_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch04.split_heads and ch04.merge_heads


SPLIT_MISTAKES: list[Mistake] = [
    Mistake(
        "tensor was reshaped straight to (B, H,",
        lambda x, heads: x.reshape(x.shape[0], heads, x.shape[1], x.shape[2] // heads),
        "the tensor was reshaped straight to (B, H, T, D), which cuts the sequence of all "
        "tokens' channels into pieces that mix tokens: first view it as (B, T, H, D), which "
        "splits each token's channels into heads, then swap the token and head dimensions "
        "with transpose(1, 2)",
    ),
    Mistake(
        "heads are still the third dimension",
        lambda x, heads: x.view(x.shape[0], x.shape[1], heads, x.shape[2] // heads),
        "the heads are still the third dimension: after view(B, T, H, D), transpose(1, 2) "
        "gives (B, H, T, D)",
    ),
    Mistake(
        "every head takes every H-th channel",
        lambda x, heads: x.view(x.shape[0], x.shape[1], x.shape[2] // heads, heads)
     .permute(0, 3, 1, 2),
        "every head takes every H-th channel: head h must own the D consecutive channels h*D "
        "to (h+1)*D - 1, so view the channels as (H, D), not (D, H)",
    ),
    Mistake(
        "tokens moved after the head size",
        lambda x, heads: x.view(x.shape[0], x.shape[1], heads, x.shape[2] // heads)
     .permute(0, 2, 3, 1),
        "the result must be (B, H, T, D), tokens before the head size: after view(B, T, H, D), "
        "transpose(1, 2) swaps only the token and head dimensions",
    ),
]

MERGE_MISTAKES: list[Mistake] = [
    Mistake(
        "tensor was reshaped straight from (B, H,",
        lambda x: x.reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3]),
        "the tensor was reshaped straight from (B, H, T, D) to (B, T, C), which puts head 0's"
        " tokens side by side instead of each token's heads: transpose(1, 2) to (B, T, H, D) "
        "first, then reshape (or .contiguous().view) to (B, T, H * D)",
    ),
    Mistake(
        "channels come out in the order (D,",
        lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1),
        "the channels come out in the order (D, H), one value from each head in turn: the "
        "heads must stay in blocks, head 0's D values first, so reshape (B, T, H, D) to (B, "
        "T, H * D)",
    ),
    Mistake(
        "heads were not merged",
        lambda x: x.transpose(1, 2),
        "the heads were not merged: transpose(1, 2) gives (B, T, H, D), which still needs a "
        "reshape to (B, T, H * D)",
    ),
    Mistake(
        "tokens were flattened too",
        lambda x: x.transpose(1, 2).flatten(1),
        "the tokens were flattened together with the heads: keep the token dimension, "
        "reshape to (B, T, H * D) (or flatten(2) after the transpose)",
    ),
]


def _counting(*shape: int) -> torch.Tensor:
    """0, 1, 2, ... in ``shape``, as floats: each value says where it came from."""
    return torch.arange(math.prod(shape), dtype=torch.float32).view(shape)


def _split_cases() -> list[LabelledArgs]:
    generator = seeded(43)
    cases: list[LabelledArgs] = [
        ("x = torch.arange(24.).view(1, 3, 8) (1 sequence, 3 tokens, 8 channels), num_heads=2",
         (_counting(1, 3, 8), 2)),
        ("x of shape (2, 5, 12), num_heads=3 (head size 4)", (randn(generator, 2, 5, 12), 3)),
        ("x of shape (1, 4, 6), num_heads=2 (head size 3)", (randn(generator, 1, 4, 6), 2)),
        ("a single token: x of shape (3, 1, 8), num_heads=4", (randn(generator, 3, 1, 8), 4)),
        ("one head: x of shape (2, 3, 5), num_heads=1", (randn(generator, 2, 3, 5), 1)),
        ("head size 1: x of shape (2, 3, 4), num_heads=4", (randn(generator, 2, 3, 4), 4)),
        ("integer x of shape (2, 2, 6), num_heads=3",
         (torch.randint(0, 100, (2, 2, 6), generator=generator), 3)),
    ]
    for _ in range(5):
        heads, head_size = randint(generator, 1, 4), randint(generator, 1, 6)
        x = randn(generator, randint(generator, 1, 3), randint(generator, 1, 7), heads * head_size)
        cases.append((f"random x of shape {shape_text(x)}, num_heads={heads}", (x, heads)))
    return cases


def _merge_cases() -> list[LabelledArgs]:
    generator = seeded(45)
    cases: list[LabelledArgs] = [
        ("x = torch.arange(24.).view(1, 2, 3, 4) (1 sequence, 2 heads, 3 tokens, head size 4)",
         (_counting(1, 2, 3, 4),)),
        ("x of shape (2, 3, 5, 4) (3 heads, 5 tokens, head size 4)",
         (randn(generator, 2, 3, 5, 4),)),
        ("x of shape (1, 2, 4, 3) (2 heads, 4 tokens, head size 3)",
         (randn(generator, 1, 2, 4, 3),)),
        ("a single token: x of shape (3, 4, 1, 2)", (randn(generator, 3, 4, 1, 2),)),
        ("one head: x of shape (2, 1, 3, 5)", (randn(generator, 2, 1, 3, 5),)),
        ("head size 1: x of shape (2, 4, 3, 1)", (randn(generator, 2, 4, 3, 1),)),
        ("integer x of shape (2, 3, 2, 2)",
         (torch.randint(0, 100, (2, 3, 2, 2), generator=generator),)),
    ]
    for _ in range(5):
        x = randn(generator, *(randint(generator, 1, high) for high in (3, 4, 7, 6)))
        cases.append((f"random x of shape {shape_text(x)}", (x,)))
    return cases


@exercise(
    "ch04.split_heads",
    title="Split the channels into heads",
    hint="head h owns channels h*D to (h+1)*D - 1 of every token: x.view(B, T, H, D) splits "
    "the channels, then .transpose(1, 2) makes it (B, H, T, D)",
)
def check_split_heads(answer: object) -> None:
    run_cases(answer, reference_split_heads, _split_cases(), expect_tensor, mistakes=SPLIT_MISTAKES)


@exercise(
    "ch04.merge_heads",
    title="Merge the heads back",
    hint="undo split_heads: x.transpose(1, 2) gives (B, T, H, D), then .reshape(B, T, H * D) "
    "(a plain .view needs .contiguous() first) puts each token's heads side by side",
)
def check_merge_heads(answer: object) -> None:
    run_cases(answer, reference_merge_heads, _merge_cases(), expect_tensor, mistakes=MERGE_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch04.scaled_dot_product_attention


def _attention_with(
    scores_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights_of: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> Callable[..., torch.Tensor]:
    """A (possibly wrong) attention: ``weights_of(scores_of(q, k), mask) @ v``."""

    def attention(queries, keys, values, mask=None):
        return weights_of(scores_of(queries, keys), mask) @ values

    return attention


def _right_weights(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.softmax(scores, dim=-1)
    return reference_masked_softmax(scores, mask)


def _without_mask(mistake: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A masked-softmax mistake that behaves like the plain softmax when there is no mask."""
    return lambda scores, mask: (
        torch.softmax(scores, dim=-1) if mask is None else mistake(scores, mask)
    )


def _values_scale(queries, keys, values, mask=None):
    scores = _scores_without_scale(queries, keys) / math.sqrt(values.size(-1))
    return _right_weights(scores, mask) @ values


ATTENTION_MISTAKES: list[Mistake] = [
    *[
        Mistake(mistake.name, _attention_with(mistake.answer, _right_weights), mistake.hint)
        for mistake in SCORE_MISTAKES
    ],
    Mistake(
        "scores are divided by the square root of the values' size",
        _values_scale,
        "the scores are divided by the square root of the values' size: d is the size of the "
        "queries and keys (queries.shape[-1]), which may differ from the values'",
    ),
    *[
        Mistake(
            mistake.name,
            _attention_with(reference_attention_scores, _without_mask(mistake.answer)),
            mistake.hint,
        )
        for mistake in MASKING_MISTAKES
    ],
    Mistake(
        "weights are returned, not the output",
        lambda q, k, v, mask=None: _right_weights(reference_attention_scores(q, k), mask),
        "the weights are returned, not the output: multiply them by the values",
    ),
]


def _attention_cases() -> list[LabelledArgs]:
    generator = seeded(44)
    queries = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    keys = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 2.0, 1.0], [2.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    cases: list[LabelledArgs] = [
        ("3 tokens with the causal mask: queries and keys (3, 4), values (3, 2)",
         (queries, keys, values, causal_mask(3, 0))),
        ("the same 3 tokens, mask=None (every token sees every token)",
         (queries, keys, values, None)),
        ("batch 2, 4 heads, 6 tokens, d = 8, values of size 5, causal mask",
         (randn(generator, 2, 4, 6, 8), randn(generator, 2, 4, 6, 8),
          randn(generator, 2, 4, 6, 5), causal_mask(6, 0))),
        ("a single token: queries, keys and values (1, 1, 1, 4), mask [[True]]",
         (randn(generator, 1, 1, 1, 4), randn(generator, 1, 1, 1, 4),
          randn(generator, 1, 1, 1, 4), causal_mask(1, 0))),
        ("2 new queries after 4 cached keys: queries (1, 2, 2, 8), keys and values "
         "(1, 2, 6, 8), mask causal_mask(2, 4)",
         (randn(generator, 1, 2, 2, 8), randn(generator, 1, 2, 6, 8),
          randn(generator, 1, 2, 6, 8), causal_mask(2, 4))),
        ("float64: queries and keys (5, 3), values (5, 7), causal mask",
         (randn(generator, 5, 3).double(), randn(generator, 5, 3).double(),
          randn(generator, 5, 7).double(), causal_mask(5, 0))),
    ]
    for _ in range(6):
        batch, heads = randint(generator, 1, 2), randint(generator, 1, 3)
        n_queries, n_keys = randint(generator, 1, 6), randint(generator, 1, 6)
        head_size, value_size = randint(generator, 1, 9), randint(generator, 1, 9)
        queries = 2 * randn(generator, batch, heads, n_queries, head_size)
        keys = 2 * randn(generator, batch, heads, n_keys, head_size)
        values = randn(generator, batch, heads, n_keys, value_size)
        mask = random_mask(generator, n_queries, n_keys)
        cases.append((
            f"random queries {shape_text(queries)}, keys {shape_text(keys)}, "
            f"values {shape_text(values)} and a random mask ({n_queries}, {n_keys})",
            (queries, keys, values, mask),
        ))
    return cases


@exercise(
    "ch04.scaled_dot_product_attention",
    title="Scaled dot-product attention",
    hint="three steps: scores = queries @ keys.transpose(-2, -1) / sqrt(queries.shape[-1]); "
    "if there is a mask, scores.masked_fill(~mask, float('-inf')); then "
    "torch.softmax(scores, dim=-1) @ values",
)
def check_scaled_dot_product_attention(answer: object) -> None:
    run_cases(
        answer, reference_scaled_dot_product_attention, _attention_cases(), expect_tensor,
        mistakes=ATTENTION_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch04.entropy_vs_head_size: an experiment


def _mean_entropy(scores: torch.Tensor) -> float:
    """The entropy (nats) of softmax(scores) over the last dimension, averaged over the rest."""
    log_weights = torch.log_softmax(scores, dim=-1)
    return float(-(log_weights.exp() * log_weights).sum(dim=-1).mean())


def reference_entropy_vs_head_size(
    samples: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[tuple[float, float]], int | None]:
    """For each (queries (N, T, d), keys (N, S, d)): the mean entropy of the attention weights
    without and with the 1/sqrt(d) scale; then the first head size d whose unscaled entropy is
    below half the entropy of uniform attention, log(S) / 2 (None if there is none)."""
    entropies: list[tuple[float, float]] = []
    first_saturated = None
    for queries, keys in samples:
        head_size = queries.size(-1)
        scores = queries @ keys.transpose(-2, -1)
        unscaled, scaled = _mean_entropy(scores), _mean_entropy(scores / math.sqrt(head_size))
        entropies.append((unscaled, scaled))
        if first_saturated is None and unscaled < math.log(keys.size(-2)) / 2:
            first_saturated = head_size
    return entropies, first_saturated


def _entropy_mistake(
    entropy_of: Callable[[torch.Tensor], float],
    scale_of: Callable[[int], float] = math.sqrt,
    *,
    swapped: bool = False,
) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], tuple[list, int | None]]:
    """A wrong experiment: another entropy or scale, or the pair in the wrong order; the
    conclusion drawn from its own measurements, as a right one would."""

    def experiment(samples):
        entropies, first_saturated = [], None
        for queries, keys in samples:
            scores = queries @ keys.transpose(-2, -1)
            pair = (entropy_of(scores), entropy_of(scores / scale_of(queries.size(-1))))
            entropies.append(pair[::-1] if swapped else pair)
            if first_saturated is None and entropies[-1][0] < math.log(keys.size(-2)) / 2:
                first_saturated = queries.size(-1)
        return entropies, first_saturated

    return experiment


def _plain_entropy(scores: torch.Tensor) -> float:  # p log p: nan where p rounds to 0
    weights = torch.softmax(scores, dim=-1)
    return float(-(weights * weights.log()).sum(dim=-1).mean())


ENTROPY_MISTAKES: list[Mistake] = [
    Mistake(
        "0 log 0 is nan",
        _entropy_mistake(_plain_entropy),
        "a weight that rounds to 0 gives 0 * log(0) = 0 * -inf = nan: compute p log p with "
        "torch.special.entr(p) (which is -p log p, 0 at p = 0), torch.xlogy(p, p), or from "
        "torch.log_softmax, which never gives -inf here",
    ),
    Mistake(
        "entropy in bits",
        _entropy_mistake(lambda scores: _mean_entropy(scores) / math.log(2)),
        "measure the entropy in nats, with the natural logarithm (torch.log, log_softmax), not "
        "log2: the threshold log(S) / 2 is in nats too",
    ),
    Mistake(
        "scaled by d",
        _entropy_mistake(_mean_entropy, lambda head_size: head_size),
        "the scaled scores are divided by sqrt(d), the square root of the head size, not by d",
    ),
    Mistake(
        "softmax over the queries",
        _entropy_mistake(lambda scores: _mean_entropy(scores.transpose(-2, -1))),
        "each query's weights over the KEYS sum to 1: take the softmax and the entropy over the "
        "last dimension of queries @ keys^T (dim=-1)",
    ),
    Mistake(
        "sum over the queries",
        _entropy_mistake(lambda scores: _mean_entropy(scores) * scores[..., 0].numel()),
        "average the entropy over all the queries of all the samples (.mean()), do not sum it: "
        "the result must be comparable with log(S), the entropy of ONE uniform row",
    ),
    Mistake(
        "largest weight",
        _entropy_mistake(lambda scores: float(torch.softmax(scores, -1).amax(-1).mean())),
        "that is the mean largest weight, the figure's measure: this experiment measures the "
        "entropy, -sum(p * log p) over the keys, averaged over the queries",
    ),
    Mistake(
        "scaled and unscaled swapped",
        _entropy_mistake(_mean_entropy, swapped=True),
        "each pair is (unscaled entropy, scaled entropy), in that order",
    ),
]


def _first_saturated_of(samples: list[tuple[torch.Tensor, torch.Tensor]]):
    def conclude(entropies: list[tuple[float, float]]) -> int | None:
        for (queries, keys), (unscaled, _) in zip(samples, entropies, strict=True):
            if unscaled < math.log(keys.size(-2)) / 2:
                return queries.size(-1)
        return None

    return conclude


def _first_saturated_hint(samples):
    def hint(answer, derived, entropies) -> str:
        sizes = [queries.size(-1) for queries, _ in samples]
        if derived is not None and answer == sizes.index(derived) and answer != derived:
            return "return the head size d (queries.shape[-1]) itself, not its position in the list"
        if isinstance(answer, float):
            return "the head size is an int: queries.shape[-1]"
        return (
            "compute first_saturated from your own measurements, in the function: the head "
            "size of the FIRST sample (in the order given) whose UNSCALED entropy is below "
            "log(S) / 2, S the number of keys; None when there is none"
        )

    return hint


def _entropy_samples(
    generator: torch.Generator, head_sizes: list[int], queries: int, keys: int, batch: int = 6,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (randn(generator, batch, queries, size), randn(generator, batch, keys, size))
        for size in head_sizes
    ]


def _entropy_cases() -> list[tuple[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    generator = seeded(46)
    float64 = [(q.double(), k.double()) for q, k in _entropy_samples(generator, [2, 32], 3, 8)]
    return [
        ("head sizes 1, 4, 16, 64, 256, 1024: queries (6, 4, d), keys (6, 16, d)",
         _entropy_samples(generator, [1, 4, 16, 64, 256, 1024], 4, 16)),
        ("head sizes in another order, 256, 2, 64: queries (6, 3, d), keys (6, 12, d)",
         _entropy_samples(generator, [256, 2, 64], 3, 12)),
        ("small head sizes only, 1 and 2 (nothing saturates): queries (6, 5, d), keys (6, 4, d)",
         _entropy_samples(generator, [1, 2], 5, 4)),
        ("one large head size, 512, one query and 32 keys per sample",
         _entropy_samples(generator, [512], 1, 32)),
        ("float64 queries and keys, head sizes 2 and 32, 3 queries and 8 keys", float64),
    ]


@exercise(
    "ch04.entropy_vs_head_size",
    title="Experiment: attention entropy against the head size",
    hint="for each (queries, keys): scores = queries @ keys.transpose(-2, -1); the entropy of "
    "softmax(scores) and of softmax(scores / sqrt(d)) over the keys, -sum(p log p) computed "
    "with torch.special.entr or log_softmax, averaged over the queries, as Python floats; "
    "then the first d whose unscaled entropy is below log(S) / 2",
)
def check_entropy_vs_head_size(answer: object) -> None:
    for description, samples in _entropy_cases():
        sizes = [queries.size(-1) for queries, _ in samples]

        def label(path: tuple[int, ...], sizes: list[int] = sizes) -> str:
            if len(path) == 1:
                return f"the pair of head size {sizes[path[0]]}"
            kind = ("unscaled", "scaled")[path[1]] if path[1] < 2 else f"item {path[1]}"
            return f"the {kind} entropy of head size {sizes[path[0]]}"

        compare = functools.partial(
            expect_experiment, label=label, conclude=_first_saturated_of(samples),
            conclusion="first saturated head size",
            conclusion_hint=_first_saturated_hint(samples),
        )
        run_cases(
            answer, reference_entropy_vs_head_size, [(description, (samples,))], compare,
            mistakes=ENTROPY_MISTAKES,
        )
