"""The checkers of chapter 5 accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.exercises import check
from llmcourse.exercises.ch05_gpt_architecture import (
    BLOCK_MISTAKES,
    COUNT_MISTAKES,
    EMBEDDING_SHARE_MISTAKES,
    GELU_MISTAKES,
    GREEDY_MISTAKES,
    LAYER_NORM_MISTAKES,
    random_block_parts,
    reference_block_forward,
    reference_count_parameters,
    reference_embedding_share,
    reference_gelu_tanh,
    reference_greedy_next_token,
    reference_layer_norm,
)
from llmcourse.generation import Sampling, sample_next_token
from llmcourse.model import GPT, MLP, Block, GPTConfig


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


# ----------------------------------------------------------------------------------------------
# The references agree with PyTorch and with the package


def test_reference_layer_norm_equals_nn_layer_norm():
    torch.manual_seed(0)
    norm = nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 3 * torch.randn(2, 5, 6) + 1
    got = reference_layer_norm(x, norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(got, norm(x), rtol=1e-6, atol=1e-6)


def test_reference_layer_norm_of_a_readable_row():
    got = reference_layer_norm(torch.tensor([[2.0, 4.0, 6.0, 8.0]]), torch.ones(4), torch.zeros(4))
    expected = torch.tensor([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(5 + 1e-5)  # mean 5, variance 5
    torch.testing.assert_close(got[0], expected, rtol=1e-6, atol=1e-7)


def test_reference_gelu_is_the_tanh_approximation_of_the_package_mlp():
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    torch.testing.assert_close(
        reference_gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=1e-12, atol=1e-12
    )
    mlp = MLP(GPTConfig(n_embd=4, n_head=1))
    torch.testing.assert_close(reference_gelu_tanh(x), mlp.gelu(x), rtol=1e-12, atol=1e-12)
    assert (reference_gelu_tanh(x) - F.gelu(x)).abs().max() > 4e-4  # not the exact GELU


def test_reference_block_forward_equals_the_package_block():
    config = GPTConfig(vocab_size=16, context_length=8, n_layer=1, n_head=2, n_embd=8)
    torch.manual_seed(0)
    block = Block(config).eval()
    x = torch.randn(2, 5, 8)
    expected = block(x)
    got = reference_block_forward(x, block.ln_1, block.attn, block.ln_2, block.mlp)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_random_block_parts_are_seeded_and_leave_the_global_generator_alone():
    config = GPTConfig(vocab_size=16, context_length=8, n_layer=1, n_head=2, n_embd=8)
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    first, second = random_block_parts(config, 7), random_block_parts(config, 7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for part_a, part_b in zip(first, second, strict=True):
        for a, b in zip(part_a.parameters(), part_b.parameters(), strict=True):
            assert torch.equal(a, b)
    ln_1, _, ln_2, _ = first
    assert not torch.equal(ln_1.weight, ln_2.weight)  # distinct, so swapping them shows


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(vocab_size=10, context_length=4, n_layer=1, n_head=1, n_embd=2),
        GPTConfig(vocab_size=97, context_length=16, n_layer=3, n_head=2, n_embd=12,
                  qkv_bias=False),
        GPTConfig(vocab_size=50, context_length=9, n_layer=2, n_head=4, n_embd=8,
                  tie_embeddings=False),
    ],
)
def test_reference_count_equals_the_model(config):
    assert reference_count_parameters(config) == GPT(config).num_parameters()


def test_reference_count_of_gpt2_small_is_the_published_one():
    assert reference_count_parameters(GPTConfig()) == 124_439_808  # OpenAI's GPT-2 small


def test_reference_greedy_equals_the_package_sampler_at_temperature_zero():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    expected = sample_next_token(logits[:, -1, :], Sampling(temperature=0))
    assert torch.equal(reference_greedy_next_token(logits), expected)
    assert reference_greedy_next_token(logits).dtype == torch.int64


# ----------------------------------------------------------------------------------------------
# Every recognised mistake gets its own hint


@pytest.mark.parametrize(
    ("exercise_id", "mistake"),
    [("ch05.layer_norm", mistake) for mistake in LAYER_NORM_MISTAKES]
    + [("ch05.gelu_tanh", mistake) for mistake in GELU_MISTAKES]
    + [("ch05.block_forward", mistake) for mistake in BLOCK_MISTAKES]
    + [("ch05.count_parameters", mistake) for mistake in COUNT_MISTAKES]
    + [("ch05.greedy_next_token", mistake) for mistake in GREEDY_MISTAKES]
    + [("ch05.embedding_share", mistake) for mistake in EMBEDDING_SHARE_MISTAKES],
    ids=lambda value: getattr(value, "name", value),
)
def test_each_mistake_is_rejected_with_its_hint(exercise_id, mistake):
    result = run(exercise_id, mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


# ----------------------------------------------------------------------------------------------
# ch05.layer_norm


def learner_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def test_layer_norm_accepts_right_answers():
    def functional(x, weight, bias, eps=1e-5):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    assert run("ch05.layer_norm", reference_layer_norm).status == "passed"
    result = run("ch05.layer_norm", learner_layer_norm)
    assert result.status == "passed"
    assert result.cases == 10
    assert run("ch05.layer_norm", functional).status == "passed"


def unbiased_variance(x, weight, bias, eps=1e-5):
    mean, variance = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def eps_outside_sqrt(x, weight, bias, eps=1e-5):
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps) * weight + bias


def no_eps(x, weight, bias, eps=1e-5):
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True, unbiased=False)
    return (x - mean) / std * weight + bias


def over_the_batch(x, weight, bias, eps=1e-5):
    mean, variance = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def no_scale_or_shift(x, weight, bias, eps=1e-5):
    return learner_layer_norm(x, 1.0, 0.0, eps)


def fixed_eps(x, weight, bias, eps=1e-5):
    return learner_layer_norm(x, weight, bias)


@pytest.mark.parametrize(
    ("answer", "case", "detail", "hint"),
    [
        (unbiased_variance, "x=tensor([[2., 4., 6., 8.]])",
         "at index (0, 0) expected -1.34164, got -1.16189", "divides by C - 1"),
        (eps_outside_sqrt, "(a tiny variance, 2e-6)",
         "at index (0, 1) expected 0.57735, got 1.40428", "eps goes inside the square root"),
        (no_eps, "a constant row", "expected 1, got nan", "divide 0 by 0 (NaN)"),
        (over_the_batch, "x=tensor([[2., 4., 6., 8.]])", "expected -1.34164, got 0",
         "the LAST dimension"),
        (no_scale_or_shift, "weight=[2.0, -1.0, 0.5, 1.0]", "expected -1.68328, got -1.34164",
         "scale by weight and shift by bias"),
        (fixed_eps, "eps=1.0 (a large eps)", "expected -1, got -1.34164",
         "use the eps passed to your function"),
    ],
)
def test_layer_norm_rejects(answer, case, detail, hint):
    result = run("ch05.layer_norm", answer)
    assert result.status == "failed", answer.__name__
    assert case in result.message
    assert detail in result.message
    assert hint in result.hint


def test_layer_norm_reports_an_answer_for_two_dimensions_only():
    def two_dimensions_only(x, weight, bias, eps=1e-5):
        mean = x.mean(dim=1, keepdim=True)  # the last dimension only for a (B, C) input
        variance = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(variance + eps) * weight + bias

    result = run("ch05.layer_norm", two_dimensions_only)
    assert result.status in ("failed", "error")
    assert "of shape (6,)" in result.message


# ----------------------------------------------------------------------------------------------
# ch05.gelu_tanh


def learner_gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def test_gelu_accepts_right_answers():
    assert run("ch05.gelu_tanh", reference_gelu_tanh).status == "passed"
    assert run("ch05.gelu_tanh", learner_gelu).status == "passed"
    result = run("ch05.gelu_tanh", lambda x: F.gelu(x, approximate="tanh"))
    assert result.status == "passed"
    assert result.cases == 7


@pytest.mark.parametrize(
    ("mistake", "answer", "hint"),
    [
        ("exact_erf", lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), "the exact GELU"),
        ("torch_exact", lambda x: F.gelu(x), "the exact GELU"),
        ("relu", lambda x: x.clamp(min=0), "that is ReLU"),
        ("wrong_constant",
         lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.44715 * x**3))),
         "0.044715"),
        ("no_sqrt",
         lambda x: 0.5 * x * (1 + torch.tanh(2 / math.pi * (x + 0.044715 * x**3))),
         "square root of 2 / pi"),
        ("no_half",
         lambda x: x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
         "the factor 0.5 is missing"),
    ],
)
def test_gelu_rejects(mistake, answer, hint):
    result = run("ch05.gelu_tanh", answer)
    assert result.status == "failed", mistake
    assert "x=tensor([-3., -2., -1., -0.5, 0., 0.5, 1., 2., 3.])" in result.message
    assert "(tolerance: atol=1e-06, rtol=1e-06)" in result.message
    assert hint in result.hint


def test_gelu_rejects_a_tanh_that_overflows():
    def tanh_from_exp(x):
        z = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        tanh = (torch.exp(2 * z) - 1) / (torch.exp(2 * z) + 1)  # inf / inf for large z
        return 0.5 * x * (1 + tanh)

    result = run("ch05.gelu_tanh", tanh_from_exp)
    assert result.status == "failed"
    assert "large inputs" in result.message
    assert "got nan" in result.message


def test_gelu_rejects_a_float32_result_for_a_float64_input():
    result = run("ch05.gelu_tanh", lambda x: learner_gelu(x.float()))
    assert result.status == "failed"
    assert "got a tensor of dtype torch.float32 but expected torch.float64" in result.message


# ----------------------------------------------------------------------------------------------
# ch05.block_forward


def test_block_forward_accepts_right_answers():
    def learner(x, ln_1, attention, ln_2, mlp):
        h = attention(ln_1(x))
        x = x + h
        return x + mlp(ln_2(x))

    assert run("ch05.block_forward", reference_block_forward).status == "passed"
    result = run("ch05.block_forward", learner)
    assert result.status == "passed"
    assert result.cases == 7


def post_norm(x, ln_1, attention, ln_2, mlp):
    x = ln_1(x + attention(x))
    return ln_2(x + mlp(x))


def without_shortcuts(x, ln_1, attention, ln_2, mlp):
    return mlp(ln_2(attention(ln_1(x))))


def shortcut_of_normalised(x, ln_1, attention, ln_2, mlp):
    x = ln_1(x)
    x = x + attention(x)
    x = ln_2(x)
    return x + mlp(x)


def one_norm_for_both(x, ln_1, attention, ln_2, mlp):
    x = x + attention(ln_1(x))
    return x + mlp(ln_1(x))


def parallel(x, ln_1, attention, ln_2, mlp):
    return x + attention(ln_1(x)) + mlp(ln_2(x))


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (post_norm, "post-norm"),
        (without_shortcuts, "add each sub-layer's output to its input"),
        (shortcut_of_normalised, "the shortcut carries the un-normalised x"),
        (parallel, "reads the output of the attention step"),
        (one_norm_for_both, "pre-norm with two shortcuts"),  # the exercise's general hint
    ],
)
def test_block_forward_rejects(answer, hint):
    result = run("ch05.block_forward", answer)
    assert result.status == "failed", answer.__name__
    assert "x of shape (B, T, C) = (1, 3, 8), the parts of a block with 2 heads" in (
        result.message
    )
    assert hint in result.hint


def test_block_forward_rejects_adding_into_the_callers_x():
    def adds_in_place(x, ln_1, attention, ln_2, mlp):
        x += attention(ln_1(x))
        x += mlp(ln_2(x))
        return x

    result = run("ch05.block_forward", adds_in_place)
    assert result.status == "failed"
    assert result.hint == "your function changed its argument `x` in place; work on a copy"


def test_block_forward_reports_a_tuple_result():
    def returns_weights_too(x, ln_1, attention, ln_2, mlp):
        return reference_block_forward(x, ln_1, attention, ln_2, mlp), None

    result = run("ch05.block_forward", returns_weights_too)
    assert result.status == "failed"
    assert "expected a tensor, got tuple" in result.message


def test_block_forward_check_leaves_the_global_generator_alone():
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    run("ch05.block_forward", reference_block_forward)
    assert torch.equal(torch.random.get_rng_state(), state)


# ----------------------------------------------------------------------------------------------
# ch05.count_parameters


def learner_count(config):
    C, V = config.n_embd, config.vocab_size
    qkv = C * 3 * C + (3 * C if config.qkv_bias else 0)
    block = qkv + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * 2 * C
    output = 0 if config.tie_embeddings else V * C
    return V * C + config.context_length * C + config.n_layer * block + 2 * C + output


def test_count_parameters_accepts_right_answers():
    assert run("ch05.count_parameters", reference_count_parameters).status == "passed"
    result = run("ch05.count_parameters", learner_count)
    assert result.status == "passed"
    assert result.cases == 15
    as_tensor = run("ch05.count_parameters", lambda c: torch.tensor(learner_count(c)))
    assert as_tensor.status == "passed"


@pytest.mark.parametrize(
    ("mistake", "answer", "detail", "hint"),
    [
        ("counts_tied_output", lambda c: learner_count(replace(c, tie_embeddings=False)),
         "expected 124439808, got 163037184", "count its vocab_size x n_embd weights once"),
        ("forgets_biases",
         lambda c: learner_count(c) - c.n_layer * (6 * c.n_embd + 3 * c.n_embd * c.qkv_bias),
         "expected 124439808, got 124356864", "every linear layer of a block has a bias"),
        ("forgets_layer_norms",
         lambda c: learner_count(c) - (2 * c.n_layer + 1) * 2 * c.n_embd,
         "expected 124439808, got 124401408", "two LayerNorms"),
        ("forgets_positions", lambda c: learner_count(c) - c.context_length * c.n_embd,
         "expected 124439808, got 123653376", "position embedding table"),
        ("always_qkv_bias", lambda c: learner_count(replace(c, qkv_bias=True)),
         "a tiny model without qkv bias", "only when config.qkv_bias is True"),
        ("never_an_output_layer", lambda c: learner_count(replace(c, tie_embeddings=True)),
         "a tiny untied model", "the output layer has its own"),
        ("float_result", lambda c: float(learner_count(c)), "got float 124439808.0", ""),
    ],
)
def test_count_parameters_rejects(mistake, answer, detail, hint):
    result = run("ch05.count_parameters", answer)
    assert result.status == "failed", mistake
    assert detail in result.message
    assert hint in result.hint


# ----------------------------------------------------------------------------------------------
# ch05.greedy_next_token


def test_greedy_next_token_accepts_right_answers():
    def via_softmax(logits):
        return torch.softmax(logits[:, -1], dim=-1).argmax(dim=-1)

    def via_max(logits):
        return logits.select(1, logits.shape[1] - 1).max(dim=-1).indices

    assert run("ch05.greedy_next_token", reference_greedy_next_token).status == "passed"
    result = run("ch05.greedy_next_token", via_softmax)
    assert result.status == "passed"
    assert result.cases == 10
    assert run("ch05.greedy_next_token", via_max).status == "passed"


@pytest.mark.parametrize(
    ("mistake", "answer", "detail", "hint"),
    [
        ("first_position", lambda logits: logits[:, 0].argmax(-1),
         "expected 3, got 1", "use logits[:, -1, :]"),
        ("argmax_over_positions", lambda logits: logits[:, :, :].argmax(1),
         "got shape (1, 5) but expected (1,)", "over the vocabulary"),
        ("argmax_over_the_wrong_dim", lambda logits: logits[:, -1].argmax(0),
         "got shape (5,) but expected (1,)", "one token per sequence"),
        ("keepdim", lambda logits: logits[:, -1].argmax(-1, keepdim=True),
         "got shape (1, 1) but expected (1,)", "shape (B,)"),
        ("flattened_argmax", lambda logits: logits[:, -1].argmax(),
         "got shape () but expected (1,)", "keep the last position's logits"),
        ("float_ids", lambda logits: logits[:, -1].argmax(-1).float(),
         "got a tensor of dtype torch.float32", ""),
    ],
)
def test_greedy_next_token_rejects(mistake, answer, detail, hint):
    result = run("ch05.greedy_next_token", answer)
    assert result.status == "failed", mistake
    assert "logits of shape (1, 3, 5) [[[0.1, 2.0, -1.0, 0.5, 0.0]" in result.message
    assert detail in result.message
    assert hint in result.hint


def test_greedy_next_token_rejects_sampling():
    def softmax_and_sample(logits):
        probabilities = torch.softmax(logits[:, -1], dim=-1)
        return torch.multinomial(probabilities, num_samples=1).squeeze(-1)

    torch.manual_seed(0)
    result = run("ch05.greedy_next_token", softmax_and_sample)
    assert result.status == "failed"
    assert "samples at random" in result.hint


def test_greedy_next_token_not_attempted_and_error():
    def not_yet(logits):
        raise NotImplementedError

    def crashes(logits):
        return logits[:, -1].argmax(dim=3)

    assert run("ch05.greedy_next_token", not_yet).status == "not attempted"
    result = run("ch05.greedy_next_token", crashes)
    assert result.status == "error"
    assert "logits of shape (1, 3, 5)" in result.message


# ----------------------------------------------------------------------------------------------
# ch05.embedding_share, an experiment


def share_by_names(configs):
    """Another right answer: real (CPU) models, parameters picked by name, a loop to conclude."""
    shares = []
    for config in configs:
        model = GPT(config)
        named = dict(model.named_parameters())  # a tied tensor is listed once
        tables = sum(p.numel() for name, p in named.items() if ".wte." in name or ".wpe." in name)
        shares.append(tables / sum(p.numel() for p in named.values()))
    first = None
    for index, share in enumerate(shares):
        if share < 0.5:
            first = index
            break
    return shares, first


def share_by_formula(configs):
    """Also right: the embedding tables' sizes from the fields, the total from the formula."""
    shares = [
        (c.vocab_size + c.context_length) * c.n_embd / reference_count_parameters(c)
        for c in configs
    ]
    return shares, next((i for i, share in enumerate(shares) if share < 0.5), None)


def test_reference_embedding_share_of_gpt2_small():
    shares, first = reference_embedding_share([GPTConfig.preset("gpt2-small")])
    assert shares == [pytest.approx((50257 + 1024) * 768 / 124439808)]
    assert first == 0


def test_embedding_share_accepts_right_answers():
    for answer in (reference_embedding_share, share_by_names, share_by_formula):
        result = run("ch05.embedding_share", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 5


def with_share_conclusion(conclude):
    return lambda configs: (share_by_formula(configs)[0], conclude(configs))


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (with_share_conclusion(lambda configs: 2), "from your own measurements"),
        (with_share_conclusion(lambda configs: next(
            (i for i, s in enumerate(share_by_formula(configs)[0]) if s > 0.5), None)),
         "LESS than half"),
        (with_share_conclusion(lambda configs: configs[share_by_formula(configs)[1]]
                               if share_by_formula(configs)[1] is not None else None),
         "not the configuration"),
        (with_share_conclusion(lambda configs: None), "the FIRST configuration"),
    ],
)
def test_embedding_share_checks_the_conclusion_against_the_measurements(answer, words):
    result = run("ch05.embedding_share", answer)
    assert result.status == "failed", result.summary
    assert "your measurements are right" in result.message
    assert words in result.hint


def test_embedding_share_rejects_a_tuple_of_three_and_tensors():
    result = run("ch05.embedding_share", lambda configs: (*share_by_formula(configs), 0))
    assert result.status == "failed"
    assert "expected a pair (measurements, first model below one half)" in result.message
    result = run("ch05.embedding_share", lambda configs: (
        [torch.tensor(share) for share in share_by_formula(configs)[0]],
        share_by_formula(configs)[1]))
    assert result.status == "failed"
    assert "float(tensor)" in result.hint
