"""The checkers of chapter 7.0 (LoRA) accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.exercises import check
from llmcourse.exercises.ch07_lora import (
    COUNT_MISTAKES,
    DELTA_MISTAKES,
    FORWARD_MISTAKES,
    MERGE_MISTAKES,
    RANK_SWEEP_MISTAKES,
    _low_rank_task,
    drop_every_third_feature,
    reference_lora_delta,
    reference_lora_forward,
    reference_lora_param_count,
    reference_lora_rank_sweep,
    reference_merge_weight,
)
from llmcourse.lora import LoRALinear
from llmcourse.lora_models import apply_lora
from llmcourse.model import GPT, GPTConfig


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


def adapted_layer(n_in=5, n_out=4, rank=3, alpha=6.0, bias=True) -> LoRALinear:
    """A LoRALinear whose B is not zero (as after some training)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(n_in, n_out, bias=bias), rank=rank, alpha=alpha)
    with torch.no_grad():
        layer.lora_b.normal_()
    return layer


# ----------------------------------------------------------------------------------------------
# The references agree with the package


@pytest.mark.parametrize("bias", [True, False])
def test_reference_forward_equals_lora_linear(bias):
    layer = adapted_layer(bias=bias)
    x = torch.randn(2, 3, 5)
    got = reference_lora_forward(
        x, layer.weight, layer.bias, layer.lora_a, layer.lora_b, layer.alpha, nn.Identity()
    )
    torch.testing.assert_close(got, layer(x), rtol=1e-6, atol=1e-6)


def test_reference_delta_and_merge_equal_the_package():
    layer = adapted_layer()
    delta = reference_lora_delta(layer.lora_a, layer.lora_b, layer.alpha)
    torch.testing.assert_close(delta, layer.delta_weight(), rtol=1e-6, atol=1e-7)
    merged = reference_merge_weight(layer.weight, layer.lora_a, layer.lora_b, layer.alpha)
    torch.testing.assert_close(merged, layer.merged_weight(), rtol=1e-6, atol=1e-7)


def test_reference_delta_of_a_readable_case():
    a = torch.tensor([[1.0, 2.0]])  # rank 1, in 2
    b = torch.tensor([[3.0], [4.0]])  # out 2, rank 1
    expected = torch.tensor([[6.0, 12.0], [8.0, 16.0]])  # (alpha / rank = 2) * [[3, 6], [4, 8]]
    assert torch.equal(reference_lora_delta(a, b, 2.0), expected)


def test_reference_count_equals_apply_lora_on_a_gpt():
    config = GPTConfig(vocab_size=50, context_length=8, n_layer=3, n_head=2, n_embd=12)
    model = GPT(config)
    shapes = [
        tuple(module.weight.shape)
        for name, module in model.named_modules()
        if name.split(".")[-1] in ("c_attn", "c_proj", "c_fc")
    ]
    assert len(shapes) == 12
    report = apply_lora(model, rank=4, alpha=8)
    assert reference_lora_param_count(shapes, 4) == report.trainable


def test_reference_count_of_gpt2_small_at_rank_16():
    block = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
    # per block: 16 * (3072 + 1536 + 3840 + 3840) = 196,608; twelve blocks
    assert reference_lora_param_count(block * 12, 16) == 2_359_296


# ----------------------------------------------------------------------------------------------
# Every recognised mistake gets its own hint


@pytest.mark.parametrize(
    ("exercise_id", "mistake"),
    [("ch07.lora_delta", mistake) for mistake in DELTA_MISTAKES]
    + [("ch07.lora_forward", mistake) for mistake in FORWARD_MISTAKES]
    + [("ch07.lora_param_count", mistake) for mistake in COUNT_MISTAKES]
    + [("ch07.merge_weight", mistake) for mistake in MERGE_MISTAKES],
    ids=lambda value: getattr(value, "name", value),
)
def test_each_mistake_is_rejected_with_its_hint(exercise_id, mistake):
    result = run(exercise_id, mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


# ----------------------------------------------------------------------------------------------
# ch07.lora_delta


def test_lora_delta_accepts_right_answers():
    def with_einsum(lora_a, lora_b, alpha):
        return torch.einsum("or,ri->oi", lora_b, lora_a) * alpha / lora_a.size(0)

    assert run("ch07.lora_delta", reference_lora_delta).status == "passed"
    result = run("ch07.lora_delta", with_einsum)
    assert result.status == "passed"
    assert result.cases == 7


def test_lora_delta_names_the_missing_scale():
    result = run("ch07.lora_delta", lambda lora_a, lora_b, alpha: lora_b @ lora_a)
    assert result.status == "failed"
    assert "alpha=8" in result.message
    assert "at index (0, 0) expected 4, got 1" in result.message  # (8 / 2) * 1
    assert "without the scale" in result.hint


def test_lora_delta_not_attempted():
    def lora_delta(lora_a, lora_b, alpha):
        raise NotImplementedError

    assert run("ch07.lora_delta", lora_delta).status == "not attempted"


# ----------------------------------------------------------------------------------------------
# ch07.lora_forward


def learner_forward(x, weight, bias, lora_a, lora_b, alpha, dropout):
    out = F.linear(x, weight, bias)
    return out + (alpha / lora_a.shape[0]) * F.linear(F.linear(dropout(x), lora_a), lora_b)


def test_lora_forward_accepts_right_answers():
    assert run("ch07.lora_forward", reference_lora_forward).status == "passed"
    result = run("ch07.lora_forward", learner_forward)
    assert result.status == "passed"
    assert result.cases == 7


def test_lora_forward_rejects_a_and_b_in_the_wrong_order():
    def wrong_order(x, weight, bias, lora_a, lora_b, alpha, dropout):
        return F.linear(x, weight, bias) + alpha / lora_a.shape[0] * (dropout(x) @ lora_a @ lora_b)

    result = run("ch07.lora_forward", wrong_order)
    assert result.status == "error"
    assert "dropout=identity" in result.message  # names the input
    assert "cannot be multiplied" in result.message


def test_lora_forward_rejects_dropout_on_the_output_with_its_hint():
    def dropout_on_output(x, weight, bias, lora_a, lora_b, alpha, dropout):
        update = (x @ lora_a.T) @ lora_b.T
        return F.linear(x, weight, bias) + alpha / lora_a.shape[0] * dropout(update)

    result = run("ch07.lora_forward", dropout_on_output)
    assert result.status == "failed"
    assert "drop_every_third_feature" in result.message
    assert "adapter's INPUT" in result.hint


def test_lora_forward_requires_bias_none_to_work():
    def always_adds_bias(x, weight, bias, lora_a, lora_b, alpha, dropout):
        return learner_forward(x, weight, None, lora_a, lora_b, alpha, dropout) + bias

    result = run("ch07.lora_forward", always_adds_bias)
    assert result.status == "error"
    assert "bias=None" in result.message


def test_fixed_dropout_zeroes_every_third_feature_and_scales_the_rest():
    x = torch.ones(2, 5)
    expected = torch.tensor([[0.0, 1.5, 1.5, 0.0, 1.5]] * 2)
    assert torch.equal(drop_every_third_feature(x), expected)


# ----------------------------------------------------------------------------------------------
# ch07.lora_param_count


def test_lora_param_count_accepts_a_loop():
    def with_a_loop(shapes, rank):
        total = 0
        for n_out, n_in in shapes:
            total += rank * n_in + n_out * rank
        return total

    result = run("ch07.lora_param_count", with_a_loop)
    assert result.status == "passed"
    assert result.cases == 8


def test_lora_param_count_rejects_a_float():
    result = run("ch07.lora_param_count", lambda shapes, rank: float(
        reference_lora_param_count(shapes, rank)))
    assert result.status == "failed"
    assert "expected int 14, got float 14.0" in result.message


def test_lora_param_count_names_the_full_matrix_mistake():
    result = run("ch07.lora_param_count", lambda shapes, rank: sum(
        rank * i * o for o, i in shapes))
    assert result.status == "failed"
    assert "shapes=[(4, 3)], rank=2" in result.message
    assert "expected 14, got 24" in result.message
    assert "rank * (in + out)" in result.hint


# ----------------------------------------------------------------------------------------------
# ch07.merge_weight


def test_merge_weight_accepts_an_in_place_style_answer():
    def in_place(weight, lora_a, lora_b, alpha):
        merged = weight.clone()
        merged += alpha / lora_a.shape[0] * lora_b @ lora_a
        return merged

    result = run("ch07.merge_weight", in_place)
    assert result.status == "passed"
    assert result.cases == 5


def test_merge_weight_rejects_subtracting():
    def subtracted(weight, lora_a, lora_b, alpha):
        return weight - alpha / lora_a.shape[0] * lora_b @ lora_a

    result = run("ch07.merge_weight", subtracted)
    assert result.status == "failed"
    assert "unmerge" in result.hint


# ----------------------------------------------------------------------------------------------
# ch07.lora_rank_sweep: an experiment


def rank_sweep_with_own_adapters(base, inputs, targets, ranks, steps, lr):
    """Another right answer: its own A and B (not LoRALinear), started differently, the loss
    written out, the conclusion in a loop."""
    with torch.no_grad():
        frozen_outputs = base(inputs)
    frozen = ((frozen_outputs - targets) ** 2).mean().item()
    losses, trainable = {}, {}
    for rank in ranks:
        generator = torch.Generator().manual_seed(rank)
        lora_a = (0.1 * torch.randn(rank, base.in_features, generator=generator)).requires_grad_()
        lora_b = torch.zeros(base.out_features, rank, requires_grad=True)
        optimizer = torch.optim.Adam([lora_a, lora_b], lr=lr)
        for _ in range(steps):
            loss = ((frozen_outputs + inputs @ lora_a.T @ lora_b.T - targets) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses[rank] = ((frozen_outputs + inputs @ lora_a.T @ lora_b.T - targets) ** 2
                            ).mean().item()
        trainable[rank] = lora_a.numel() + lora_b.numel()
    enough = None
    for rank in sorted(losses):
        if losses[rank] <= frozen / 100:
            enough = rank
            break
    return {"frozen": frozen, "loss": losses, "trainable": trainable, "enough": enough}


def test_rank_sweep_accepts_the_reference_and_another_right_answer():
    assert run("ch07.lora_rank_sweep", reference_lora_rank_sweep).status == "passed"
    result = run("ch07.lora_rank_sweep", rank_sweep_with_own_adapters)
    assert result.status == "passed", result.message_with_hint


@pytest.mark.parametrize("mistake", RANK_SWEEP_MISTAKES, ids=lambda mistake: mistake.name)
def test_rank_sweep_rejects_a_typical_mistake_with_its_hint(mistake):
    result = run("ch07.lora_rank_sweep", mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


def with_conclusion(answer, conclusion):
    """``answer`` with its conclusion replaced by ``conclusion(result)``."""

    def replaced(*args):
        result = answer(*args)
        return {**result, "enough": conclusion(result)}

    return replaced


@pytest.mark.parametrize(
    "conclusion",
    [
        lambda result: 4,  # typed in from the notebook's run
        lambda result: min(result["loss"], key=result["loss"].get),  # the lowest loss
        lambda result: max(result["loss"]),  # the largest rank tried, enough or not
    ],
    ids=["typed_in", "lowest_loss", "largest_rank"],
)
def test_rank_sweep_rejects_a_conclusion_that_does_not_follow_from_the_numbers(conclusion):
    result = run("ch07.lora_rank_sweep", with_conclusion(reference_lora_rank_sweep, conclusion))
    assert result.status == "failed"
    assert "compute 'enough' from your measurements" in result.hint
    assert "frozen / 100" in result.hint


def test_rank_sweep_rejects_a_list_of_losses():
    def as_list(*args):
        result = reference_lora_rank_sweep(*args)
        return {**result, "loss": list(result["loss"].values())}

    result = run("ch07.lora_rank_sweep", as_list)
    assert result.status == "failed"
    assert "'loss': expected {1:" in result.message


def test_rank_sweep_reference_finds_the_rank_of_the_update():
    generator = torch.Generator().manual_seed(0)
    base, inputs, targets = _low_rank_task(generator, 8, 2, 64)
    result = reference_lora_rank_sweep(base, inputs, targets, [1, 2, 4], 100, 0.05)
    assert result["enough"] == 2
    assert result["trainable"] == {1: 16, 2: 32, 4: 64}
    assert result["loss"][1] > 0.2 * result["frozen"]
