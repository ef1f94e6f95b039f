"""The checkers of the appendix on multi-process training accept right answers and reject the
typical wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcourse.errors import ConfigError
from llmcourse.exercises import check
from llmcourse.exercises.ch08_scaling import (
    GRADIENT_NOISE_MISTAKES,
    MeanOfRows,
    reference_allreduce_mean,
    reference_gradient_noise,
    reference_per_process_batch,
)


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


# ----------------------------------------------------------------------------------------------
# The references


def test_reference_per_process_batch_divides_or_refuses():
    assert reference_per_process_batch(64, 8) == 8
    assert reference_per_process_batch(8, 1) == 8
    with pytest.raises(ValueError, match="multiple of 2"):
        reference_per_process_batch(9, 2)
    with pytest.raises(ConfigError, match=">= 1"):
        reference_per_process_batch(0, 2)


def test_reference_allreduce_mean_gives_every_rank_the_same_mean():
    result = reference_allreduce_mean([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])])
    assert len(result) == 2
    assert all(torch.equal(tensor, torch.tensor([2.0, 4.0])) for tensor in result)
    assert result[0] is not result[1]


# ----------------------------------------------------------------------------------------------
# ch08.per_process_batch


def learner_per_process_batch(global_batch_size, world_size):
    if global_batch_size <= 0:
        raise ValueError("the global batch is empty")
    if global_batch_size % world_size != 0:
        raise ValueError(f"{global_batch_size} is not a multiple of {world_size}")
    return global_batch_size // world_size


def test_per_process_batch_accepts_right_answers():
    assert run("ch08.per_process_batch", reference_per_process_batch).status == "passed"
    result = run("ch08.per_process_batch", learner_per_process_batch)
    assert result.status == "passed"
    assert result.cases >= 40


def test_per_process_batch_rejects_a_floor_division_without_check():
    result = run("ch08.per_process_batch", lambda global_batch_size, world_size:
                 global_batch_size // world_size)
    assert result.status == "failed"
    assert "global_batch_size = 9, world_size = 2" in result.message
    assert "expected a ValueError (a global batch of 9 examples does not split evenly" in (
        result.message
    )
    assert result.message.endswith("but it returned 4")
    assert "raise ValueError instead of rounding" in result.hint


def test_per_process_batch_rejects_true_division():
    def true_division(global_batch_size, world_size):
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError("bad batch")
        return global_batch_size / world_size

    result = run("ch08.per_process_batch", true_division)
    assert result.status == "failed"
    assert "expected int 8, got float 8.0" in result.message
    assert "integer division //" in result.hint


def test_per_process_batch_rejects_a_missing_check_of_the_empty_batch():
    def no_empty_check(global_batch_size, world_size):
        if global_batch_size % world_size:
            raise ValueError("not a multiple")
        return global_batch_size // world_size

    result = run("ch08.per_process_batch", no_empty_check)
    assert result.status == "failed"
    assert "global_batch_size = 0, world_size = 2" in result.message
    assert "expected a ValueError (the global batch size must be >= 1, got 0), but it " in (
        result.message
    )
    assert "global_batch_size < 1" in result.hint


def test_per_process_batch_rejects_an_assertion_instead_of_a_value_error():
    def asserts(global_batch_size, world_size):
        assert global_batch_size > 0 and global_batch_size % world_size == 0
        return global_batch_size // world_size

    result = run("ch08.per_process_batch", asserts)
    assert result.status == "failed"
    assert "it raised AssertionError" in result.message


def test_per_process_batch_rejects_swapped_arguments():
    def swapped(global_batch_size, world_size):
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError("bad batch")
        return world_size // global_batch_size

    result = run("ch08.per_process_batch", swapped)
    assert result.status == "failed"
    assert "global_batch_size = 8, world_size = 1: expected 8, got 0" in result.message
    assert "not the inverse" in result.hint


def test_per_process_batch_not_attempted():
    def stub(global_batch_size, world_size):
        raise NotImplementedError

    assert run("ch08.per_process_batch", stub).status == "not attempted"


# ----------------------------------------------------------------------------------------------
# ch08.allreduce_mean


def learner_allreduce_mean(gradients):
    total = torch.zeros_like(gradients[0])
    for gradient in gradients:
        total += gradient
    mean = total / len(gradients)
    return [mean for _ in gradients]


def test_allreduce_mean_accepts_right_answers():
    assert run("ch08.allreduce_mean", reference_allreduce_mean).status == "passed"
    result = run("ch08.allreduce_mean", learner_allreduce_mean)
    assert result.status == "passed"
    assert result.cases >= 14


def test_allreduce_mean_rejects_a_sum_without_division():
    result = run("ch08.allreduce_mean", lambda gradients: [sum(gradients) for _ in gradients])
    assert result.status == "failed"
    assert "2 rank(s)" in result.message and "expected 2, got 4" in result.message
    assert "divide the sum by len(gradients)" in result.hint


def test_allreduce_mean_rejects_the_local_gradients():
    result = run("ch08.allreduce_mean", lambda gradients: list(gradients))
    assert result.status == "failed"
    assert "expected 2, got 1" in result.message
    assert "average over ALL ranks" in result.hint


def test_allreduce_mean_rejects_a_mean_over_each_gradient_elements():
    result = run("ch08.allreduce_mean",
                 lambda gradients: [g.mean().expand_as(g).clone() for g in gradients])
    assert result.status == "failed"
    assert "4 rank(s)" in result.message and "got -0.25" in result.message
    assert "not over the elements of each gradient" in result.hint


def test_allreduce_mean_rejects_a_single_tensor():
    result = run("ch08.allreduce_mean", lambda gradients: torch.stack(gradients).mean(dim=0))
    assert result.status == "failed"
    assert "expected a list of 2 tensors (one per rank), got Tensor" in result.message
    assert "one tensor per rank" in result.hint


def test_allreduce_mean_rejects_results_that_differ_between_ranks():
    def rank_dependent_order(gradients):  # each rank sums in its own order: rounding differs
        results = []
        for rank in range(len(gradients)):
            order = gradients[rank:] + gradients[:rank]
            total = order[0].clone()
            for gradient in order[1:]:
                total = total + gradient
            results.append(total / len(gradients))
        return results

    result = run("ch08.allreduce_mean", rank_dependent_order)
    assert result.status == "failed"
    assert "differs from rank 0's" in result.message
    assert "exactly the same gradient" in result.hint


def test_allreduce_mean_rejects_too_few_tensors():
    result = run("ch08.allreduce_mean", lambda gradients: reference_allreduce_mean(gradients)[:1])
    assert result.status == "failed"
    assert "expected 2 tensors (one per rank), got 1" in result.message


# ----------------------------------------------------------------------------------------------
# ch08.gradient_noise, an experiment


def noise_with_numpy(gradient_of, num_examples, batch_sizes):
    """Another right answer: batches by integer division, numpy's mean and polyfit."""
    full = gradient_of(range(num_examples))
    noise = []
    for size in batch_sizes:
        distances = [
            torch.sum((gradient_of(range(i * size, (i + 1) * size)) - full) ** 2).item()
            for i in range(num_examples // size)
        ]
        noise.append(float(np.mean(distances)))
    return noise, float(np.polyfit(np.log(batch_sizes), np.log(noise), 1)[0])


def test_reference_gradient_noise_of_independent_examples_falls_as_one_over_b():
    rows = torch.randn(4096, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise, exponent = reference_gradient_noise(MeanOfRows(rows), 4096, [1, 2, 4, 8])
    assert noise[0] == pytest.approx(3.0, rel=0.1)  # three unit variances
    assert exponent == pytest.approx(-1.0, abs=0.05)


def test_gradient_noise_accepts_right_answers():
    for answer in (reference_gradient_noise, noise_with_numpy):
        result = run("ch08.gradient_noise", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 4


@pytest.mark.parametrize("mistake", GRADIENT_NOISE_MISTAKES, ids=lambda mistake: mistake.name)
def test_gradient_noise_rejects_a_typical_mistake(mistake):
    result = run("ch08.gradient_noise", mistake.answer)
    assert result.status == "failed", result.summary
    assert result.hint == mistake.hint


def with_exponent(choose):
    def answer(gradient_of, num_examples, batch_sizes):
        noise, _ = noise_with_numpy(gradient_of, num_examples, batch_sizes)
        return noise, choose(batch_sizes, noise)

    return answer


def endpoints(sizes, noise):
    return (math.log(noise[-1]) - math.log(noise[0])) / (math.log(sizes[-1]) - math.log(sizes[0]))


@pytest.mark.parametrize(
    ("name", "answer", "words"),
    [
        ("typed_in_minus_one", with_exponent(lambda sizes, noise: -1.0),
         "from your own measurements"),
        ("through_the_endpoints", with_exponent(endpoints), "not through the first and the last"),
        ("axes_swapped",
         with_exponent(lambda sizes, noise: float(np.polyfit(np.log(noise), np.log(sizes), 1)[0])),
         "log(B) is x"),
        ("an_int", with_exponent(lambda sizes, noise: round(endpoints(sizes, noise))),
         "least-squares slope"),
    ],
)
def test_gradient_noise_checks_the_exponent_against_the_measurements(name, answer, words):
    result = run("ch08.gradient_noise", answer)
    assert result.status == "failed", result.summary
    assert "your measurements are right" in result.message
    assert words in result.hint


def test_gradient_noise_rejects_tensors():
    def tensors(gradient_of, num_examples, batch_sizes):
        noise, exponent = noise_with_numpy(gradient_of, num_examples, batch_sizes)
        return [torch.tensor(value) for value in noise], exponent

    result = run("ch08.gradient_noise", tensors)
    assert result.status == "failed"
    assert "expected a float, got a tensor" in result.message
