"""Checkers of chapter 5, the GPT architecture: layer norm, GELU, the block, sizes, greedy choice.

Each checker runs hand-picked cases first (small inputs whose numbers can be read in the
failure message), then seeded random ones. When an answer is wrong, it is also compared with
the typical wrong answers of the exercise (an unbiased variance, the exact GELU, a post-norm
block...): a match replaces the exercise's general hint with one about that very mistake.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from llmcourse.exercises.core import (
    LabelledArgs,
    Mistake,
    exercise,
    expect_close,
    expect_equal,
    run_cases,
)
from llmcourse.exercises.inputs import expect_experiment, randint, seeded
from llmcourse.model import GPT, Block, GPTConfig, count_parameters

expect_float = functools.partial(expect_close, atol=1e-5, rtol=1e-5)
GELU_TOLERANCE = 1e-6  # far below the 4.7e-4 between the tanh approximation and the exact GELU


# ----------------------------------------------------------------------------------------------
# ch05.layer_norm


def reference_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Normalise ``x`` (..., C) over its last dimension, then scale by ``weight`` (C,) and shift
    by ``bias`` (C,). The variance is the biased one (divided by C), as in GPT-2 and PyTorch."""
    mean = x.mean(dim=-1, keepdim=True)
    variance = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def _normalised(
    x: torch.Tensor, eps: float, *, dim: int | None = -1, unbiased: bool = False
) -> torch.Tensor:
    """(x - mean) / sqrt(variance + eps) over ``dim`` (None: over all elements)."""
    dims = tuple(range(x.dim())) if dim is None else dim
    mean = x.mean(dim=dims, keepdim=True)
    variance = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(variance + eps)


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.var(dim=-1, keepdim=True, unbiased=False).sqrt()


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=-1, keepdim=True)


WRONG_DIMENSION_HINT = (
    "normalise each vector over its features, the LAST dimension (dim=-1, keepdim=True), not "
    "over an earlier dimension (the batch or the positions)"
)
LAYER_NORM_MISTAKES = (
    Mistake(
        "unbiased_variance",
        lambda x, w, b, eps=1e-5: _normalised(x, eps, unbiased=True) * w + b,
        "your variance divides by C - 1 (torch.var's default, the unbiased estimate); layer "
        "normalization divides by C: use x.var(dim=-1, keepdim=True, unbiased=False)",
    ),
    Mistake(
        "eps_outside_sqrt",
        lambda x, w, b, eps=1e-5: _centred(x) / (_std(x) + eps) * w + b,
        "eps goes inside the square root: divide by sqrt(variance + eps), not by "
        "sqrt(variance) + eps (they differ when the variance is small)",
    ),
    Mistake(
        "ignores_eps_argument",
        lambda x, w, b, eps=1e-5: _normalised(x, 1e-5) * w + b,
        "use the eps passed to your function, not a constant 1e-5",
    ),
    Mistake(
        "no_eps",
        lambda x, w, b, eps=1e-5: _centred(x) / _std(x) * w + b,
        "a row whose values are all equal has variance 0: without eps you divide 0 by 0 (NaN). "
        "Divide by sqrt(variance + eps)",
    ),
    Mistake(
        "over_the_first_dimension",
        lambda x, w, b, eps=1e-5: _normalised(x, eps, dim=0) * w + b,
        WRONG_DIMENSION_HINT,
    ),
    Mistake(
        "over_the_positions",
        lambda x, w, b, eps=1e-5: _normalised(x, eps, dim=-2) * w + b,
        WRONG_DIMENSION_HINT,
    ),
    Mistake(
        "over_all_elements",
        lambda x, w, b, eps=1e-5: _normalised(x, eps, dim=None) * w + b,
        "take the mean and variance of each vector separately, over the last dimension "
        "(dim=-1, keepdim=True), not one mean and variance of the whole tensor",
    ),
    Mistake(
        "no_scale_no_shift",
        lambda x, w, b, eps=1e-5: _normalised(x, eps),
        "after normalising, scale by weight and shift by bias: normalised * weight + bias",
    ),
    Mistake(
        "no_scale",
        lambda x, w, b, eps=1e-5: _normalised(x, eps) + b,
        "multiply the normalised values by weight before adding bias",
    ),
    Mistake(
        "no_shift",
        lambda x, w, b, eps=1e-5: _normalised(x, eps) * w,
        "add bias after scaling by weight",
    ),
    Mistake(
        "scale_and_shift_swapped",
        lambda x, w, b, eps=1e-5: _normalised(x, eps) * b + w,
        "weight multiplies and bias adds: normalised * weight + bias",
    ),
)


def _layer_norm_cases() -> list[LabelledArgs]:
    ones, zeros = torch.ones(4), torch.zeros(4)
    weight, bias = torch.tensor([2.0, -1.0, 0.5, 1.0]), torch.tensor([1.0, 0.0, -1.0, 10.0])
    generator = seeded(51)
    cases: list[LabelledArgs] = [
        ("x=tensor([[2., 4., 6., 8.]]), weight=ones(4), bias=zeros(4), eps=1e-5",
         (torch.tensor([[2.0, 4.0, 6.0, 8.0]]), ones, zeros, 1e-5)),
        (f"x=tensor([[2., 4., 6., 8.], [1., 1., 1., 5.]]), weight={weight.tolist()}, "
         f"bias={bias.tolist()}, eps=1e-5",
         (torch.tensor([[2.0, 4.0, 6.0, 8.0], [1.0, 1.0, 1.0, 5.0]]), weight, bias, 1e-5)),
        ("a constant row x=tensor([[3., 3., 3., 3.]]) (variance 0), weight=ones(4), "
         f"bias={bias.tolist()}, eps=1e-5",
         (torch.full((1, 4), 3.0), ones, bias, 1e-5)),
        ("x=tensor([[0.001, 0.003, -0.001, 0.001]]) (a tiny variance, 2e-6), weight=ones(4), "
         "bias=zeros(4), eps=1e-5",
         (torch.tensor([[0.001, 0.003, -0.001, 0.001]]), ones, zeros, 1e-5)),
        ("x=tensor([[0., 1., 2., 3.]]), weight=ones(4), bias=zeros(4), eps=1.0 (a large eps)",
         (torch.tensor([[0.0, 1.0, 2.0, 3.0]]), ones, zeros, 1.0)),
        ("a single vector x=tensor([5., -1., 2., 0., 4., 2.]) of shape (6,), weight=ones(6), "
         "bias=zeros(6), eps=1e-5",
         (torch.tensor([5.0, -1.0, 2.0, 0.0, 4.0, 2.0]), torch.ones(6), torch.zeros(6), 1e-5)),
    ]
    for dtype in (torch.float32, torch.float32, torch.float32, torch.float64):
        shape = (randint(generator, 1, 3), randint(generator, 2, 6), randint(generator, 2, 16))
        x = 3 * torch.randn(shape, generator=generator, dtype=dtype) + 1
        width = shape[-1]
        weight = torch.randn(width, generator=generator, dtype=dtype)
        bias = torch.randn(width, generator=generator, dtype=dtype)
        eps = [1e-5, 1e-6, 0.1][randint(generator, 0, 2)]
        cases.append((
            f"a random {dtype} x of shape (B, T, C) = {shape}, random weight and bias, eps={eps}",
            (x, weight, bias, eps),
        ))
    return cases


@exercise(
    "ch05.layer_norm",
    title="Layer normalization",
    hint="over the last dimension (dim=-1, keepdim=True): subtract the mean, divide by "
    "sqrt(variance + eps) with the biased variance (unbiased=False), then * weight + bias",
)
def check_layer_norm(answer: object) -> None:
    run_cases(
        answer, reference_layer_norm, _layer_norm_cases(), expect_float,
        mistakes=LAYER_NORM_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch05.gelu_tanh


def reference_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_like(x: torch.Tensor, *, scale: float, cubic: float, half: float = 0.5, one: float = 1):
    return half * x * (one + torch.tanh(scale * (x + cubic * x**3)))


SQRT_2_OVER_PI = math.sqrt(2 / math.pi)

GELU_MISTAKES = (
    Mistake(
        "exact_erf_gelu",
        lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "that is the exact GELU, x * Phi(x) with erf. This exercise asks for the tanh "
        "approximation that GPT-2 uses (it differs by up to 4.7e-4): "
        "0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))",
    ),
    Mistake(
        "relu",
        lambda x: torch.relu(x),
        "that is ReLU, max(0, x); GELU is smooth and slightly negative for x < 0: "
        "0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))",
    ),
    Mistake(
        "sigmoid_approximation",
        lambda x: x * torch.sigmoid(1.702 * x),
        "x * sigmoid(1.702 x) is another, cruder approximation; use the tanh one: "
        "0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))",
    ),
    Mistake(
        "no_square_root",
        lambda x: _gelu_like(x, scale=2 / math.pi, cubic=0.044715),
        "the factor in front is the square root of 2 / pi (about 0.7979), not 2 / pi",
    ),
    Mistake(
        "no_scale_factor",
        lambda x: _gelu_like(x, scale=1.0, cubic=0.044715),
        "multiply (x + 0.044715 * x**3) by sqrt(2 / pi) before the tanh",
    ),
    Mistake(
        "no_cubic_term",
        lambda x: _gelu_like(x, scale=SQRT_2_OVER_PI, cubic=0.0),
        "inside the tanh goes x + 0.044715 * x**3: the cubic term is missing",
    ),
    Mistake(
        "cubic_constant_0.44715",
        lambda x: _gelu_like(x, scale=SQRT_2_OVER_PI, cubic=0.44715),
        "the constant of the cubic term is 0.044715 (one more zero after the point)",
    ),
    Mistake(
        "no_one_half",
        lambda x: _gelu_like(x, scale=SQRT_2_OVER_PI, cubic=0.044715, half=1.0),
        "the result is 0.5 * x * (1 + tanh(...)): the factor 0.5 is missing",
    ),
    Mistake(
        "no_one_plus",
        lambda x: _gelu_like(x, scale=SQRT_2_OVER_PI, cubic=0.044715, one=0.0),
        "the result is 0.5 * x * (1 + tanh(...)): the '1 +' is missing",
    ),
)


def _gelu_cases() -> list[LabelledArgs]:
    generator = seeded(52)
    cases: list[LabelledArgs] = [
        ("x=tensor([-3., -2., -1., -0.5, 0., 0.5, 1., 2., 3.])",
         (torch.tensor([-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]),)),
        ("x=tensor([1.5, 2.7, 4.0]) (where the tanh approximation and the exact GELU differ most)",
         (torch.tensor([1.5, 2.7, 4.0]),)),
        ("large inputs x=tensor([-50., -10., 10., 50.]) (the tanh saturates: use torch.tanh)",
         (torch.tensor([-50.0, -10.0, 10.0, 50.0]),)),
        ("a float64 x=tensor([-2.5, -0.1, 0.1, 0.7, 2.5], dtype=torch.float64)",
         (torch.tensor([-2.5, -0.1, 0.1, 0.7, 2.5], dtype=torch.float64),)),
    ]
    for dtype in (torch.float32, torch.float32, torch.float64):
        shape = (randint(generator, 1, 3), randint(generator, 1, 5), randint(generator, 1, 12))
        x = 3 * torch.randn(shape, generator=generator, dtype=dtype)
        cases.append((f"a random {dtype} x of shape {shape}", (x,)))
    return cases


@exercise(
    "ch05.gelu_tanh",
    title="GELU, the tanh approximation",
    hint="0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), "
    "element-wise, keeping x's shape and dtype",
)
def check_gelu_tanh(answer: object) -> None:
    compare = functools.partial(expect_close, atol=GELU_TOLERANCE, rtol=GELU_TOLERANCE)
    run_cases(answer, reference_gelu_tanh, _gelu_cases(), compare, mistakes=GELU_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch05.block_forward


def reference_block_forward(
    x: torch.Tensor,
    ln_1: nn.Module,
    attention: nn.Module,
    ln_2: nn.Module,
    mlp: nn.Module,
) -> torch.Tensor:
    """A pre-norm transformer block on ``x`` (B, T, C): a shortcut around each sub-layer."""
    x = x + attention(ln_1(x))
    return x + mlp(ln_2(x))


def _post_norm(x, ln_1, attention, ln_2, mlp):
    x = ln_1(x + attention(x))
    return ln_2(x + mlp(x))


def _no_shortcuts(x, ln_1, attention, ln_2, mlp):
    return mlp(ln_2(attention(ln_1(x))))


def _no_second_shortcut(x, ln_1, attention, ln_2, mlp):
    return mlp(ln_2(x + attention(ln_1(x))))


def _no_first_shortcut(x, ln_1, attention, ln_2, mlp):
    x = attention(ln_1(x))
    return x + mlp(ln_2(x))


def _shortcut_from_the_normalised_x(x, ln_1, attention, ln_2, mlp):
    x = ln_1(x)
    x = x + attention(x)
    x = ln_2(x)
    return x + mlp(x)


def _layer_norms_swapped(x, ln_1, attention, ln_2, mlp):
    return reference_block_forward(x, ln_2, attention, ln_1, mlp)


def _parallel_sub_layers(x, ln_1, attention, ln_2, mlp):
    return x + attention(ln_1(x)) + mlp(ln_2(x))


BLOCK_MISTAKES = (
    Mistake(
        "post_norm", _post_norm,
        "that is the original transformer's post-norm order, ln(x + sublayer(x)). GPT-2 "
        "normalises BEFORE each sub-layer and adds its output to the un-normalised x: "
        "x = x + attention(ln_1(x)), then x = x + mlp(ln_2(x))",
    ),
    Mistake(
        "no_shortcuts", _no_shortcuts,
        "add each sub-layer's output to its input (the shortcut): x = x + attention(ln_1(x)), "
        "then x = x + mlp(ln_2(x))",
    ),
    Mistake(
        "no_second_shortcut", _no_second_shortcut,
        "the feed-forward network needs its own shortcut too: x = x + mlp(ln_2(x))",
    ),
    Mistake(
        "no_first_shortcut", _no_first_shortcut,
        "attention needs its own shortcut too: x = x + attention(ln_1(x))",
    ),
    Mistake(
        "shortcut_from_the_normalised_x", _shortcut_from_the_normalised_x,
        "the shortcut carries the un-normalised x: x = x + attention(ln_1(x)), not "
        "x = ln_1(x) followed by x = x + attention(x)",
    ),
    Mistake(
        "layer_norms_swapped", _layer_norms_swapped,
        "ln_1 goes before attention and ln_2 before the feed-forward network",
    ),
    Mistake(
        "parallel_sub_layers", _parallel_sub_layers,
        "the feed-forward network reads the output of the attention step: compute "
        "x = x + attention(ln_1(x)) first, then x = x + mlp(ln_2(x)) from that new x",
    ),
)


@contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block, and leave the caller's state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_block_parts(config: GPTConfig, seed: int) -> tuple[nn.Module, ...]:
    """(ln_1, attention, ln_2, mlp) of a package ``Block`` with random weights, in eval mode.

    The layer norms get random scales and shifts, so that using one for the other shows."""
    with _global_seed(seed), torch.no_grad():
        block = Block(config).eval()
        for norm in (block.ln_1, block.ln_2):
            norm.weight.copy_(1 + 0.5 * torch.randn_like(norm.weight))
            norm.bias.normal_(std=0.5)
    return block.ln_1, block.attn, block.ln_2, block.mlp


def _block_case(config: GPTConfig, batch: int, tokens: int, seed: int, label: str) -> LabelledArgs:
    generator = seeded(seed)
    x = torch.randn(batch, tokens, config.n_embd, generator=generator)
    description = (
        f"{label}x of shape (B, T, C) = ({batch}, {tokens}, {config.n_embd}), the parts of a "
        f"block with {config.n_head} heads"
    )
    return description, (x, *random_block_parts(config, seed))


@functools.cache
def _block_cases() -> tuple[LabelledArgs, ...]:
    """Built once: every call of an answer gets deep copies of these modules and inputs."""
    generator = seeded(53)
    small = GPTConfig(vocab_size=16, context_length=8, n_layer=1, n_head=2, n_embd=8)
    cases = [
        _block_case(small, 1, 3, 530, ""),
        _block_case(small, 1, 1, 531, "one token: "),
        _block_case(small, 2, 8, 532, "a batch of 2, "),
    ]
    for seed in range(533, 537):
        n_head = randint(generator, 1, 4)
        config = GPTConfig(
            vocab_size=16, context_length=16, n_layer=1, n_head=n_head,
            n_embd=n_head * randint(generator, 1, 6),
            qkv_bias=bool(randint(generator, 0, 1)),
        )
        batch, tokens = randint(generator, 1, 3), randint(generator, 1, 16)
        cases.append(_block_case(config, batch, tokens, seed, "random: "))
    return tuple(cases)


@exercise(
    "ch05.block_forward",
    title="The transformer block's forward pass",
    hint="pre-norm with two shortcuts: x = x + attention(ln_1(x)), then x = x + mlp(ln_2(x))",
)
def check_block_forward(answer: object) -> None:
    with torch.no_grad():
        run_cases(
            answer, reference_block_forward, _block_cases(), expect_float, mistakes=BLOCK_MISTAKES,
        )


# ----------------------------------------------------------------------------------------------
# ch05.count_parameters


def reference_count_parameters(config: GPTConfig) -> int:
    """The number of parameters of ``GPT(config)`` (the package's ``count_parameters``)."""
    return count_parameters(config)


def _count_without(
    config: GPTConfig,
    *,
    biases: bool = True,
    qkv_bias: bool | None = None,
    block_norms: bool = True,
    final_norm: bool = True,
    norm_bias: bool = True,
    positions: bool = True,
    output: bool | None = None,
) -> int:
    """A parameter count that leaves out (or adds) one kind of parameter: a wrong answer."""
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    qkv_bias = config.qkv_bias if qkv_bias is None else qkv_bias
    output = not config.tie_embeddings if output is None else output
    norm = 2 * C if norm_bias else C
    attention = 4 * C * C + biases * ((3 * C if qkv_bias else 0) + C)
    mlp = 8 * C * C + biases * 5 * C
    per_layer = attention + mlp + block_norms * 2 * norm
    embeddings = V * C + positions * config.context_length * C
    return embeddings + L * per_layer + final_norm * norm + output * V * C


COUNT_MISTAKES = (
    Mistake(
        "counts_the_tied_output_layer",
        lambda c: _count_without(c, output=True),
        "with tie_embeddings=True the output layer reuses the token embedding matrix: count "
        "its vocab_size x n_embd weights once, not twice",
    ),
    Mistake(
        "ignores_an_untied_output_layer",
        lambda c: _count_without(c, output=False),
        "with tie_embeddings=False the output layer has its own n_embd x vocab_size weights "
        "(no bias): add them",
    ),
    Mistake(
        "forgets_the_biases",
        lambda c: _count_without(c, biases=False),
        "every linear layer of a block has a bias (the query/key/value one only when "
        "qkv_bias is True): attention adds 3C + C, the feed-forward network 4C + C",
    ),
    Mistake(
        "ignores_qkv_bias",
        lambda c: _count_without(c, qkv_bias=not c.qkv_bias),
        "the query/key/value projection has a bias of 3 * n_embd numbers only when "
        "config.qkv_bias is True",
    ),
    Mistake(
        "forgets_the_layer_norms",
        lambda c: _count_without(c, block_norms=False, final_norm=False),
        "each block has two LayerNorms and the model one more at the end (ln_f); each has a "
        "weight and a bias of n_embd numbers",
    ),
    Mistake(
        "forgets_the_block_layer_norms",
        lambda c: _count_without(c, block_norms=False),
        "each block has two LayerNorms (ln_1 and ln_2), each with 2 * n_embd parameters",
    ),
    Mistake(
        "forgets_the_final_layer_norm",
        lambda c: _count_without(c, final_norm=False),
        "after the last block comes one more LayerNorm (ln_f): 2 * n_embd parameters",
    ),
    Mistake(
        "layer_norms_without_bias",
        lambda c: _count_without(c, norm_bias=False),
        "a LayerNorm has a scale (weight) AND a shift (bias), n_embd numbers each",
    ),
    Mistake(
        "forgets_the_position_embeddings",
        lambda c: _count_without(c, positions=False),
        "add the position embedding table: context_length x n_embd",
    ),
)


def _count_case(config: GPTConfig, label: str = "") -> LabelledArgs:
    fields = (
        f"vocab_size={config.vocab_size}, context_length={config.context_length}, "
        f"n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
        f"qkv_bias={config.qkv_bias}, tie_embeddings={config.tie_embeddings}"
    )
    return (f"{label}GPTConfig({fields})", (config,))


def _count_cases() -> list[LabelledArgs]:
    gpt2_small = GPTConfig()
    tiny = GPTConfig(vocab_size=10, context_length=4, n_layer=1, n_head=1, n_embd=2)
    cases = [
        _count_case(gpt2_small, "GPT-2 small: "),
        _count_case(tiny, "a tiny model: "),
        _count_case(replace(tiny, n_layer=3), "a tiny model with 3 layers: "),
        _count_case(replace(tiny, tie_embeddings=False), "a tiny untied model: "),
        _count_case(replace(gpt2_small, tie_embeddings=False), "GPT-2 small, untied: "),
        _count_case(replace(tiny, qkv_bias=False), "a tiny model without qkv bias: "),
        _count_case(GPTConfig(n_layer=48, n_head=25, n_embd=1600), "GPT-2 XL: "),
    ]
    generator = seeded(54)
    for _ in range(8):
        n_head = randint(generator, 1, 8)
        config = GPTConfig(
            vocab_size=randint(generator, 2, 60000),
            context_length=randint(generator, 1, 2048),
            n_layer=randint(generator, 1, 48),
            n_head=n_head,
            n_embd=n_head * randint(generator, 1, 128),
            qkv_bias=bool(randint(generator, 0, 1)),
            tie_embeddings=bool(randint(generator, 0, 1)),
        )
        cases.append(_count_case(config, "random: "))
    return cases


def _expect_count(got: object, expected: int, *, case: str, hint: str = "") -> None:
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got)
    expect_equal(got, expected, case=case, hint=hint)


@exercise(
    "ch05.count_parameters",
    title="Count a GPT's parameters",
    hint="add the embeddings (vocab_size x C tokens, context_length x C positions), n_layer "
    "blocks (attention: C x 3C + C x C weights plus biases; feed-forward: C x 4C + 4C x C "
    "plus biases; two LayerNorms of 2C), the final LayerNorm, and the output layer (C x "
    "vocab_size, no bias) only when it is not tied",
)
def check_count_parameters(answer: object) -> None:
    run_cases(
        answer, reference_count_parameters, _count_cases(), _expect_count, mistakes=COUNT_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch05.greedy_next_token


def reference_greedy_next_token(logits: torch.Tensor) -> torch.Tensor:
    """The most likely next token (B,) int64 after each sequence, from logits (B, T, V)."""
    return logits[:, -1, :].argmax(dim=-1)


GREEDY_MISTAKES = (
    Mistake(
        "first_position",
        lambda logits: logits[:, 0, :].argmax(dim=-1),
        "the next token follows the LAST position: use logits[:, -1, :], not logits[:, 0, :]",
    ),
    Mistake(
        "argmax_over_positions",
        lambda logits: logits.argmax(dim=1),
        "take the argmax over the vocabulary (the last dimension) of the last position's "
        "logits: logits[:, -1, :].argmax(dim=-1)",
    ),
    Mistake(
        "argmax_over_the_batch",
        lambda logits: logits[:, -1, :].argmax(dim=0),
        "take the argmax over the vocabulary (dim=-1), one token per sequence of the batch",
    ),
    Mistake(
        "keeps_the_dimension",
        lambda logits: logits[:, -1, :].argmax(dim=-1, keepdim=True),
        "return one id per sequence, shape (B,): drop keepdim=True (or squeeze the last "
        "dimension)",
    ),
    Mistake(
        "argmax_of_all_positions",
        lambda logits: logits.argmax(dim=-1),
        "only the last position predicts the next token: take logits[:, -1, :] first, so the "
        "result has shape (B,), not (B, T)",
    ),
    Mistake(
        "argmin",
        lambda logits: logits[:, -1, :].argmin(dim=-1),
        "the most likely token has the LARGEST logit: argmax, not argmin",
    ),
)


def _greedy_cases() -> list[LabelledArgs]:
    generator = seeded(55)
    readable = [[
        [0.1, 2.0, -1.0, 0.5, 0.0],
        [1.5, 0.2, 0.3, -0.4, 0.9],
        [-0.3, 0.1, 0.4, 3.2, 1.0],
    ]]
    batch = [
        [[0.0, 1.0, 5.0, 2.0], [4.0, 0.5, 0.0, 1.0]],
        [[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.5]],
    ]
    cases: list[LabelledArgs] = [
        (f"logits of shape (1, 3, 5) {readable}", (torch.tensor(readable),)),
        (f"a batch of 2 sequences, logits of shape (2, 2, 4) {batch}", (torch.tensor(batch),)),
        ("negative logits of shape (1, 1, 4): [[[-5., -2., -7., -3.]]]",
         (torch.tensor([[[-5.0, -2.0, -7.0, -3.0]]]),)),
        ("logits of shape (3, 4, 6) whose largest value is at the first position",
         (_largest_at_first_position(generator),)),
        ("nearly uniform logits of shape (4, 2, 1000) (every token has a similar probability)",
         (0.01 * torch.randn(4, 2, 1000, generator=generator),)),
        ("float64 logits of shape (2, 3, 50257), GPT-2's vocabulary",
         (torch.randn(2, 3, 50257, generator=generator, dtype=torch.float64),)),
    ]
    for _ in range(4):
        shape = (randint(generator, 1, 4), randint(generator, 1, 6), randint(generator, 2, 80))
        logits = torch.randn(shape, generator=generator)
        cases.append((f"random logits of shape {shape}", (logits,)))
    return cases


def _largest_at_first_position(generator: torch.Generator) -> torch.Tensor:
    logits = torch.randn(3, 4, 6, generator=generator)
    logits[:, 0, 2] = 10.0  # the first position's favourite is not the last one's
    return logits


@exercise(
    "ch05.greedy_next_token",
    title="Greedy choice of the next token",
    hint="keep the last position's logits, logits[:, -1, :] of shape (B, V), and return their "
    "argmax over the vocabulary (dim=-1): one int64 id per sequence, shape (B,)",
)
def check_greedy_next_token(answer: object) -> None:
    run_cases(
        answer, reference_greedy_next_token, _greedy_cases(), expect_equal,
        mistakes=GREEDY_MISTAKES, probe=_samples_at_random,
    )


def _samples_at_random(answer: Callable[..., Any]) -> str:
    """A hint when ``answer`` picks different tokens from the same flat logits, twice."""
    flat_logits = torch.zeros(8, 1, 1000)
    first, second = answer(flat_logits.clone()), answer(flat_logits.clone())
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        if first.shape != second.shape or not torch.equal(first, second):
            return (
                "your function picks different tokens from the same logits: it samples at "
                "random. Greedy decoding is deterministic: take the argmax of the logits"
            )
    return ""


# ----------------------------------------------------------------------------------------------
# ch05.embedding_share: an experiment


def _on_meta(config: GPTConfig) -> GPT:
    """GPT(config) on the meta device: every shape, no memory, no time."""
    with torch.device("meta"):
        return GPT(config)


def _share_experiment(
    share_of: Callable[[GPT], float],
    first_of: Callable[[list[float]], int | None] | None = None,
) -> Callable[[list[GPTConfig]], tuple[list[float], int | None]]:
    """An experiment measuring ``share_of(model)`` for each configuration, then concluding with
    ``first_of`` (by default: the first share below one half)."""

    def experiment(configs: list[GPTConfig]) -> tuple[list[float], int | None]:
        shares = [share_of(_on_meta(config)) for config in configs]
        return shares, (first_of or _first_below_half)(shares)

    return experiment


def _first_below_half(shares: list[float]) -> int | None:
    return next((index for index, share in enumerate(shares) if share < 0.5), None)


def _embedding_parameters(model: GPT) -> int:
    return model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()


def reference_embedding_share(configs: list[GPTConfig]) -> tuple[list[float], int | None]:
    """For each configuration, the fraction of GPT(config)'s distinct parameters that sit in
    the token and position embedding tables; then the index of the first model whose
    embeddings hold less than half of its parameters (None if there is none)."""
    return _share_experiment(lambda model: _embedding_parameters(model) / model.num_parameters())(
        configs
    )


def _every_tensor(model: GPT) -> int:
    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


EMBEDDING_SHARE_MISTAKES = (
    Mistake(
        "counts_the_tied_matrix_twice",
        _share_experiment(lambda model: _embedding_parameters(model) / _every_tensor(model)),
        "with tied embeddings the output layer IS the token embedding matrix: count every "
        "distinct parameter once (model.parameters() or num_parameters() do; "
        "named_parameters(remove_duplicate=False) does not)",
    ),
    Mistake(
        "forgets_the_position_embeddings",
        _share_experiment(lambda model: model.transformer.wte.weight.numel()
                          / model.num_parameters()),
        "the embeddings are the token table (wte) AND the position table (wpe)",
    ),
    Mistake(
        "share_of_the_rest",
        _share_experiment(lambda model: 1 - _embedding_parameters(model) / model.num_parameters()),
        "that is the share of everything BUT the embeddings: divide the embedding tables' "
        "parameters by all the parameters",
    ),
    Mistake(
        "ratio_to_the_rest",
        _share_experiment(lambda model: _embedding_parameters(model)
                          / (model.num_parameters() - _embedding_parameters(model))),
        "divide by ALL the parameters (embeddings included), not by the others: a share is "
        "between 0 and 1",
    ),
    Mistake(
        "counts_the_output_layer_as_an_embedding",
        _share_experiment(lambda model: (
            _embedding_parameters(model)
            + (0 if model.config.tie_embeddings else model.lm_head.weight.numel())
        ) / model.num_parameters()),
        "an untied output layer (lm_head) is not an embedding table: count wte and wpe only",
    ),
    Mistake(
        "percent",
        _share_experiment(
            lambda model: 100 * _embedding_parameters(model) / model.num_parameters(),
            lambda shares: next((i for i, share in enumerate(shares) if share < 50), None),
        ),
        "return fractions between 0 and 1, not percentages",
    ),
)


def _share_conclusion_hint(answer, derived, shares) -> str:
    above = next((index for index, share in enumerate(shares) if share > 0.5), None)
    if answer == above:
        return "the index of the first model whose embeddings hold LESS than half (share < 0.5)"
    if isinstance(answer, GPTConfig):
        return "return the index of that configuration in the list (an int), not the configuration"
    return (
        "compute first_below_half from your own measurements, in the function: the position in "
        "the list of the FIRST configuration whose share is below 0.5, or None when there is none"
    )


def _share_cases() -> list[tuple[str, list[GPTConfig]]]:
    def small(vocab_size: int, n_layer: int, n_embd: int, **fields: Any) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, context_length=32, n_layer=n_layer, n_head=2,
                         n_embd=n_embd, **fields)

    return [
        ("vocab_size 2000, context_length 32, widths 8, 16, 32, 64 with 1, 2, 4, 8 layers",
         [small(2000, 1, 8), small(2000, 2, 16), small(2000, 4, 32), small(2000, 8, 64)]),
        ("the same models from the largest to the smallest",
         [small(2000, 8, 64), small(2000, 4, 32), small(2000, 2, 16), small(2000, 1, 8)]),
        ("untied output layers: vocab_size 500, 2 layers, widths 16 and 48",
         [small(500, 2, 16, tie_embeddings=False), small(500, 2, 48, tie_embeddings=False)]),
        ("a large vocabulary, then a small one: vocab_size 8000 and 50, 3 layers of width 16",
         [small(8000, 3, 16), small(50, 3, 16)]),
        ("one model with a large vocabulary: vocab_size 8000, 1 layer of width 16",
         [small(8000, 1, 16)]),
    ]


@exercise(
    "ch05.embedding_share",
    title="Experiment: where the parameters sit as the model grows",
    hint="for each configuration build GPT(config) (on the meta device: with "
    "torch.device('meta'): ...), divide wte.weight.numel() + wpe.weight.numel() by "
    "model.num_parameters(); then the index of the first share below 0.5, or None",
)
def check_embedding_share(answer: object) -> None:
    for description, configs in _share_cases():
        compare = functools.partial(
            expect_experiment,
            label=lambda path: f"the share of model {path[0]}" if path else "the shares",
            conclude=_first_below_half, conclusion="first model below one half",
            conclusion_hint=_share_conclusion_hint, rel_tol=1e-9, abs_tol=1e-12,
        )
        run_cases(
            answer, reference_embedding_share, [(description, (configs,))], compare,
            mistakes=EMBEDDING_SHARE_MISTAKES,
        )
