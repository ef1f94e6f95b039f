"""The checkers of chapter 4 accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.exercises import check
from llmcourse.exercises.ch04_attention import (
    ENTROPY_MISTAKES,
    reference_attention_scores,
    reference_causal_mask,
    reference_entropy_vs_head_size,
    reference_masked_softmax,
    reference_merge_heads,
    reference_scaled_dot_product_attention,
    reference_split_heads,
)
from llmcourse.model import CausalSelfAttention, GPTConfig, causal_mask, explicit_attention


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


def assert_rejected(result, case, hint, status="failed"):
    assert result.status == status, result.summary
    assert case in result.message, result.message
    assert hint in result.hint, result.hint


# ----------------------------------------------------------------------------------------------
# The references agree with the package and with PyTorch


def test_reference_scores_by_hand():
    queries = torch.tensor([[1.0, 2.0, 0.0, 2.0]])  # d = 4: divide by 2
    keys = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    assert torch.equal(reference_attention_scores(queries, keys), torch.tensor([[2.5, 1.0]]))


def test_reference_causal_mask_is_the_package_mask():
    assert reference_causal_mask(3).tolist() == [
        [True, False, False], [True, True, False], [True, True, True],
    ]
    for size in (1, 2, 7):
        assert torch.equal(reference_causal_mask(size), causal_mask(size, 0))


def test_reference_masked_softmax_rows_sum_to_one_and_hide_masked_keys():
    scores = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(0))
    weights = reference_masked_softmax(scores, causal_mask(5, 0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    assert torch.all(weights[:, ~causal_mask(5, 0)] == 0)
    assert torch.equal(weights[:, 0, 0], torch.ones(2))


@pytest.mark.parametrize(("n_queries", "n_past"), [(1, 0), (6, 0), (3, 4), (1, 5)])
def test_reference_attention_matches_pytorch_and_the_package(n_queries, n_past):
    generator = torch.Generator().manual_seed(n_queries + 10 * n_past)
    n_keys = n_queries + n_past
    queries = torch.randn(2, 3, n_queries, 8, generator=generator)
    keys = torch.randn(2, 3, n_keys, 8, generator=generator)
    values = torch.randn(2, 3, n_keys, 8, generator=generator)
    mask = causal_mask(n_queries, n_past)
    ours = reference_scaled_dot_product_attention(queries, keys, values, mask)
    fused = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
    explicit, _ = explicit_attention(queries, keys, values, mask)
    torch.testing.assert_close(ours, fused, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, explicit, atol=1e-6, rtol=1e-5)
    unmasked = F.scaled_dot_product_attention(queries, keys, values)
    torch.testing.assert_close(
        reference_scaled_dot_product_attention(queries, keys, values), unmasked,
        atol=1e-6, rtol=1e-5,
    )


def test_reference_heads_rebuild_the_package_attention():
    torch.manual_seed(0)
    attention = CausalSelfAttention(GPTConfig(n_embd=12, n_head=3, context_length=8)).eval()
    x = torch.randn(2, 5, 12)
    queries, keys, values = attention.c_attn(x).split(12, dim=2)
    heads = [reference_split_heads(t, 3) for t in (queries, keys, values)]
    merged = reference_merge_heads(
        reference_scaled_dot_product_attention(*heads, reference_causal_mask(5))
    )
    expected = attention(x)
    torch.testing.assert_close(attention.c_proj(merged), expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(reference_merge_heads(reference_split_heads(x, 3)), x)


# ----------------------------------------------------------------------------------------------
# ch04.attention_scores


def scores_by_einsum(queries, keys):
    return torch.einsum("...td,...sd->...ts", queries, keys) / queries.shape[-1] ** 0.5


def scores_with_scaled_queries(queries, keys):
    return (queries / math.sqrt(queries.shape[-1])) @ keys.transpose(-2, -1)


def test_attention_scores_accepts_right_answers():
    for answer in (reference_attention_scores, scores_by_einsum, scores_with_scaled_queries):
        result = run("ch04.attention_scores", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 12


FIRST_SCORES = "queries of shape (3, 4) and keys of shape (5, 4)"


@pytest.mark.parametrize(
    ("mistake", "answer", "failing_case", "hint"),
    [
        ("no_scale", lambda q, k: q @ k.transpose(-2, -1), FIRST_SCORES,
         "the scores are not scaled: divide queries @ keys^T by sqrt(d)"),
        ("divided_by_d", lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1], FIRST_SCORES,
         "divide by the square root of d"),
        ("scaled_by_number_of_keys", lambda q, k: q @ k.transpose(-2, -1) / k.shape[-2] ** 0.5,
         FIRST_SCORES, "not the number of tokens"),
        ("keys_times_queries", lambda q, k: k @ q.transpose(-2, -1) / q.shape[-1] ** 0.5,
         FIRST_SCORES, "rows and columns are swapped"),
    ],
)
def test_attention_scores_rejects(mistake, answer, failing_case, hint):
    assert_rejected(run("ch04.attention_scores", answer), failing_case, hint)


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_attention_scores_reports_dot_T_on_a_batch():
    def transposed_with_T(queries, keys):  # right for matrices only
        return queries @ keys.T / math.sqrt(queries.shape[-1])

    result = run("ch04.attention_scores", transposed_with_T)
    assert result.status == "error"
    assert "queries and keys of shape (2, 6, 8)" in result.message


# ----------------------------------------------------------------------------------------------
# ch04.causal_mask


def mask_by_loops(num_tokens):
    mask = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    for query in range(num_tokens):
        for key in range(query + 1):
            mask[query, key] = True
    return mask


def mask_by_comparison(num_tokens):
    positions = torch.arange(num_tokens)
    return positions[None, :] <= positions[:, None]


def test_causal_mask_accepts_right_answers():
    for answer in (reference_causal_mask, mask_by_loops, mask_by_comparison):
        result = run("ch04.causal_mask", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 7


def bool_ones(size):
    return torch.ones(size, size, dtype=torch.bool)


@pytest.mark.parametrize(
    ("mistake", "answer", "detail", "hint"),
    [
        ("true_where_masked", lambda n: bool_ones(n).triu(diagonal=1),
         "at index (0, 0) expected True, got False", "the mask is inverted"),
        ("upper_triangle_sees_the_future", lambda n: bool_ones(n).triu(),
         "at index (0, 1) expected False, got True", "the mask lets tokens see the future"),
        ("diagonal_left_out", lambda n: bool_ones(n).tril(diagonal=-1),
         "at index (0, 0) expected True, got False", "the diagonal is missing"),
        ("float_mask", lambda n: torch.ones(n, n).tril(),
         "got a tensor of dtype torch.float32 but expected torch.bool",
         "return a bool tensor"),
        ("additive_mask", lambda n: torch.zeros(n, n).masked_fill(~bool_ones(n).tril(), -math.inf),
         "but expected torch.bool", "this is the additive form"),
    ],
)
def test_causal_mask_rejects(mistake, answer, detail, hint):
    result = run("ch04.causal_mask", answer)
    assert_rejected(result, "num_tokens=4", hint)
    assert detail in result.message, mistake


def test_causal_mask_without_a_known_mistake_gets_the_general_hint():
    result = run("ch04.causal_mask", lambda n: bool_ones(n))  # no mask at all
    assert_rejected(result, "num_tokens=4", "mask[i, j] (row i = query, column j = key)")


# ----------------------------------------------------------------------------------------------
# ch04.masked_softmax


def softmax_by_hand(scores, mask):
    exponentials = torch.exp(scores - scores.amax(dim=-1, keepdim=True)) * mask
    return exponentials / exponentials.sum(dim=-1, keepdim=True)


def masked_after_softmax_and_renormalised(scores, mask):
    weights = torch.softmax(scores, dim=-1) * mask
    return weights / weights.sum(dim=-1, keepdim=True)


def test_masked_softmax_accepts_right_answers():
    answers = (reference_masked_softmax, softmax_by_hand, masked_after_softmax_and_renormalised)
    for answer in answers:
        result = run("ch04.masked_softmax", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 13


FIRST_SOFTMAX = "4x4 scores with the causal mask of 4 tokens"


@pytest.mark.parametrize(
    ("mistake", "answer", "failing_case", "hint"),
    [
        ("masked_after_softmax_without_renormalising",
         lambda scores, mask: torch.softmax(scores, dim=-1) * mask, FIRST_SOFTMAX,
         "zeroed after the softmax without renormalising"),
        ("mask_the_wrong_way_round",
         lambda scores, mask: torch.softmax(scores.masked_fill(mask, -math.inf), dim=-1),
         FIRST_SOFTMAX, "the mask is used the wrong way round"),
        ("softmax_over_the_queries",
         lambda scores, mask: torch.softmax(scores.masked_fill(~mask, -math.inf), dim=0),
         FIRST_SOFTMAX, "the softmax runs over the wrong dimension"),
        ("masked_scores_set_to_zero",
         lambda scores, mask: torch.softmax(scores.masked_fill(~mask, 0.0), dim=-1),
         FIRST_SOFTMAX, "still gets weight exp(0) > 0"),
        ("mask_ignored", lambda scores, mask: torch.softmax(scores, dim=-1), FIRST_SOFTMAX,
         "the mask is ignored"),
        ("own_causal_mask",
         lambda scores, mask: reference_masked_softmax(
             scores, torch.ones_like(scores).tril().bool()),
         "2 new queries after 3 cached keys", "use the `mask` argument"),
        ("unstabilised_softmax",
         lambda scores, mask: (scores.exp() * mask) / (scores.exp() * mask).sum(-1, keepdim=True),
         "extreme scores", "subtract each row's largest score before exp"),
    ],
)
def test_masked_softmax_rejects(mistake, answer, failing_case, hint):
    assert_rejected(run("ch04.masked_softmax", answer), failing_case, hint)


def test_masked_softmax_over_dim_minus_two_is_caught_on_batched_scores():
    def over_dim_1(scores, mask):  # right for 2-d scores, wrong as soon as there is a batch
        return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=1)

    result = run("ch04.masked_softmax", over_dim_1)
    assert_rejected(result, "scores (2, 3, 6, 6)", "the softmax runs over the wrong dimension")


# ----------------------------------------------------------------------------------------------
# ch04.split_heads and ch04.merge_heads


def split_by_reshape_and_permute(x, num_heads):
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, num_heads, -1).permute(0, 2, 1, 3)


def split_by_chunks(x, num_heads):
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def test_split_heads_accepts_right_answers():
    answers = (reference_split_heads, split_by_reshape_and_permute, split_by_chunks)
    for answer in answers:
        result = run("ch04.split_heads", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 12


FIRST_SPLIT = "x = torch.arange(24.).view(1, 3, 8)"


@pytest.mark.parametrize(
    ("mistake", "answer", "hint"),
    [
        ("reshape_straight_to_heads",
         lambda x, h: x.reshape(x.shape[0], h, x.shape[1], x.shape[2] // h),
         "reshaped straight to (B, H, T, D)"),
        ("no_transpose", lambda x, h: x.view(x.shape[0], x.shape[1], h, -1),
         "the heads are still the third dimension"),
        ("strided_heads", lambda x, h: x.view(x.shape[0], x.shape[1], -1, h).permute(0, 3, 1, 2),
         "every head takes every H-th channel"),
    ],
)
def test_split_heads_rejects(mistake, answer, hint):
    assert_rejected(run("ch04.split_heads", answer), FIRST_SPLIT, hint)


def merge_by_permute_and_view(x):
    batch, heads, tokens, head_size = x.shape
    return x.permute(0, 2, 1, 3).contiguous().view(batch, tokens, heads * head_size)


def merge_by_cat(x):
    return torch.cat(x.unbind(dim=1), dim=-1)


def test_merge_heads_accepts_right_answers():
    for answer in (reference_merge_heads, merge_by_permute_and_view, merge_by_cat):
        result = run("ch04.merge_heads", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 12


FIRST_MERGE = "x = torch.arange(24.).view(1, 2, 3, 4)"


@pytest.mark.parametrize(
    ("mistake", "answer", "hint"),
    [
        ("reshape_straight_to_tokens",
         lambda x: x.reshape(x.shape[0], x.shape[2], -1),
         "reshaped straight from (B, H, T, D) to (B, T, C)"),
        ("channels_interleaved",
         lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1),
         "the channels come out in the order (D, H)"),
        ("only_transposed", lambda x: x.transpose(1, 2), "the heads were not merged"),
    ],
)
def test_merge_heads_rejects(mistake, answer, hint):
    assert_rejected(run("ch04.merge_heads", answer), FIRST_MERGE, hint)


def test_merge_heads_reports_view_of_a_transposed_tensor():
    def view_without_contiguous(x):
        return x.transpose(1, 2).view(x.shape[0], x.shape[2], -1)

    result = run("ch04.merge_heads", view_without_contiguous)
    assert result.status == "error"
    assert FIRST_MERGE in result.message
    assert "RuntimeError: view size is not compatible" in result.message


# ----------------------------------------------------------------------------------------------
# ch04.scaled_dot_product_attention


def attention_by_pytorch(queries, keys, values, mask=None):
    return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)


def attention_with_additive_mask(queries, keys, values, mask=None):
    scores = queries @ keys.transpose(-2, -1) / math.sqrt(keys.shape[-1])
    if mask is not None:
        scores = scores + torch.zeros(mask.shape, dtype=scores.dtype).masked_fill(~mask, -math.inf)
    return torch.softmax(scores, dim=-1) @ values


def test_scaled_dot_product_attention_accepts_right_answers():
    answers = (
        reference_scaled_dot_product_attention, attention_by_pytorch, attention_with_additive_mask,
    )
    for answer in answers:
        result = run("ch04.scaled_dot_product_attention", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 12


def attention_variant(scale=None, fill_where_allowed=False, dim=-1, after_softmax=False):
    """A wrong attention: another scale, the mask inverted, another softmax dimension, or the
    mask applied after the softmax without renormalising."""

    def answer(queries, keys, values, mask=None):
        d = queries.shape[-1] if scale is None else scale(queries, values)
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(d)
        if mask is not None and not after_softmax:
            scores = scores.masked_fill(mask if fill_where_allowed else ~mask, -math.inf)
        weights = torch.softmax(scores, dim=dim)
        if mask is not None and after_softmax:
            weights = weights * mask
        return weights @ values

    return answer


FIRST_ATTENTION = "3 tokens with the causal mask"


@pytest.mark.parametrize(
    ("mistake", "answer", "failing_case", "hint"),
    [
        ("no_scale", attention_variant(scale=lambda q, v: 1), FIRST_ATTENTION,
         "the scores are not scaled"),
        ("scaled_by_value_size", attention_variant(scale=lambda q, v: v.shape[-1]),
         FIRST_ATTENTION, "divided by the square root of the values' size"),
        ("mask_the_wrong_way_round", attention_variant(fill_where_allowed=True), FIRST_ATTENTION,
         "the mask is used the wrong way round"),
        ("softmax_over_the_queries", attention_variant(dim=-2), FIRST_ATTENTION,
         "the softmax runs over the wrong dimension"),
        ("masked_after_softmax_without_renormalising", attention_variant(after_softmax=True),
         FIRST_ATTENTION, "zeroed after the softmax without renormalising"),
        ("returns_the_weights",
         lambda q, k, v, mask=None: reference_masked_softmax(
             reference_attention_scores(q, k), mask),
         FIRST_ATTENTION, "the weights are returned, not the output"),
    ],
)
def test_scaled_dot_product_attention_rejects(mistake, answer, failing_case, hint):
    result = run("ch04.scaled_dot_product_attention", answer)
    assert_rejected(result, failing_case, hint)


def test_scaled_dot_product_attention_needs_mask_none_to_mean_no_mask():
    def always_causal(queries, keys, values, mask=None):
        causal = reference_causal_mask(queries.shape[-2]) if mask is None else mask
        return reference_scaled_dot_product_attention(queries, keys, values, causal)

    result = run("ch04.scaled_dot_product_attention", always_causal)
    assert result.status == "failed"
    assert "mask=None" in result.message


# ----------------------------------------------------------------------------------------------
# The fourth typical mistake of split_heads and merge_heads


def test_split_heads_rejects_tokens_after_the_head_size():
    def head_size_before_tokens(x, h):
        return x.view(x.shape[0], x.shape[1], h, -1).permute(0, 2, 3, 1)

    result = run("ch04.split_heads", head_size_before_tokens)
    assert_rejected(result, FIRST_SPLIT, "tokens before the head size")
    assert "got shape (1, 2, 4, 3) but expected (1, 2, 3, 4)" in result.message


def test_merge_heads_rejects_flattening_the_tokens_too():
    result = run("ch04.merge_heads", lambda x: x.transpose(1, 2).flatten(1))
    assert_rejected(result, FIRST_MERGE, "flattened together with the heads")
    assert "got shape (1, 24) but expected (1, 3, 8)" in result.message


# ----------------------------------------------------------------------------------------------
# ch04.entropy_vs_head_size, an experiment


def entropy_by_entr(samples):
    """Another right answer: softmax, then torch.special.entr, then a loop for the answer."""
    entropies = []
    for queries, keys in samples:
        scores = queries @ keys.mT
        weights = [torch.softmax(scores / scale, dim=-1)
                   for scale in (1.0, math.sqrt(queries.shape[-1]))]
        entropies.append(tuple(torch.special.entr(w).sum(-1).mean().item() for w in weights))
    first = None
    for (queries, keys), (unscaled, _) in zip(samples, entropies, strict=True):
        if unscaled < 0.5 * math.log(keys.shape[-2]):
            first = queries.shape[-1]
            break
    return entropies, first


def test_reference_entropy_of_uniform_and_saturated_attention():
    keys = torch.zeros(1, 8, 4)  # every score 0: uniform weights
    entropies, first = reference_entropy_vs_head_size([(torch.ones(1, 2, 4), keys)])
    assert entropies == [(pytest.approx(math.log(8)), pytest.approx(math.log(8)))]
    assert first is None
    peaked = torch.eye(4).unsqueeze(0) * 100  # each query matches one key far better
    entropies, first = reference_entropy_vs_head_size([(peaked, peaked)])
    assert entropies[0][0] < 1e-6 and first == 4


def test_entropy_vs_head_size_accepts_right_answers():
    for answer in (reference_entropy_vs_head_size, entropy_by_entr):
        result = run("ch04.entropy_vs_head_size", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 5


@pytest.mark.parametrize("mistake", ENTROPY_MISTAKES, ids=lambda mistake: mistake.name)
def test_entropy_vs_head_size_rejects_a_typical_mistake(mistake):
    result = run("ch04.entropy_vs_head_size", mistake.answer)
    assert result.status == "failed", result.summary
    assert result.hint == mistake.hint


def with_conclusion(conclude):
    return lambda samples: (entropy_by_entr(samples)[0], conclude(samples))


@pytest.mark.parametrize(
    ("name", "answer", "words"),
    [
        ("typed_in", with_conclusion(lambda samples: 8), "from your own measurements"),
        ("index_instead_of_size",
         with_conclusion(lambda samples: [q.shape[-1] for q, _ in samples].index(
             entropy_by_entr(samples)[1]) if entropy_by_entr(samples)[1] else None),
         "not its position in the list"),
        ("threshold_on_the_scaled_entropy",
         lambda samples: (entropy_by_entr(samples)[0], next(
             (q.shape[-1] for (q, k), pair in zip(samples, entropy_by_entr(samples)[0],
                                                  strict=True)
              if pair[1] < math.log(k.shape[-2]) / 2), None)),
         "UNSCALED entropy"),
        ("float_head_size",
         with_conclusion(lambda samples: float(entropy_by_entr(samples)[1] or 0) or None),
         "the head size is an int"),
    ],
)
def test_entropy_vs_head_size_checks_the_conclusion_against_the_measurements(name, answer, words):
    result = run("ch04.entropy_vs_head_size", answer)
    assert_rejected(result, "your measurements are right", words)


def test_entropy_vs_head_size_rejects_tensors_and_a_lone_list():
    def tensors(samples):
        entropies, first = entropy_by_entr(samples)
        return [tuple(torch.tensor(value) for value in pair) for pair in entropies], first

    assert_rejected(run("ch04.entropy_vs_head_size", tensors), "expected a float, got a tensor",
                    ".item()")
    assert_rejected(run("ch04.entropy_vs_head_size", lambda s: entropy_by_entr(s)[0]),
                    "expected a pair (measurements, first saturated head size)", "return a pair")
