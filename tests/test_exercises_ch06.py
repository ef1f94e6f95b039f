"""The checkers of chapter 6 accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.evaluation import perplexity
from llmcourse.exercises import check
from llmcourse.exercises.ch06_pretraining import (
    CROSS_ENTROPY_MISTAKES,
    PERPLEXITY_MISTAKES,
    REPETITION_MISTAKES,
    TEMPERATURE_MISTAKES,
    TOP_K_MISTAKES,
    RecordingAdamW,
    reference_apply_temperature,
    reference_cross_entropy,
    reference_perplexity,
    reference_repetition_vs_temperature,
    reference_top_k_filter,
    reference_train_step,
    repeated_fraction,
    sharp_tiny_gpt,
    train_step_models,
)
from llmcourse.generation import Sampling, apply_temperature, stream_generate, top_k_filter


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


def assert_rejected(result, *hint_words, status="failed"):
    assert result.status == status, result.message
    text = f"{result.message} {result.hint}".lower()
    for word in hint_words:
        assert word.lower() in text, (word, text)


# ----------------------------------------------------------------------------------------------
# The references agree with PyTorch and the package


def test_reference_cross_entropy_by_hand():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    targets = torch.tensor([[1, 0]])
    first = -(1.0 - math.log(math.exp(2) + math.exp(1) + 1))  # -log softmax(...)[1]
    second = -(0.0 - math.log(2 + math.exp(3)))
    expected = torch.tensor((first + second) / 2)
    torch.testing.assert_close(reference_cross_entropy(logits, targets), expected)


def test_reference_cross_entropy_equals_the_model_loss():
    from llmcourse.model import GPT

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(
        reference_cross_entropy(logits, targets), GPT.loss(logits, targets), rtol=0, atol=0
    )


def test_reference_perplexity_matches_the_package():
    for loss in (0.0, 1.0, 6.5, math.log(50257)):
        assert reference_perplexity(loss) == pytest.approx(perplexity(loss), rel=1e-12)
    assert reference_perplexity(math.log(50257)) == pytest.approx(50257, rel=1e-9)


def test_reference_temperature_and_top_k_are_the_package_functions():
    logits = torch.tensor([[4.0, -1.0, 2.0, 0.5], [1.0, 3.0, -2.0, 0.0]])
    torch.testing.assert_close(reference_apply_temperature(logits, 0.5),
                               apply_temperature(logits, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(reference_top_k_filter(logits, 2), top_k_filter(logits, 2),
                               rtol=0, atol=0)
    inf = float("-inf")
    expected = torch.tensor([[4.0, inf, 2.0, inf], [1.0, 3.0, inf, inf]])
    assert torch.equal(reference_top_k_filter(logits, 2), expected)


# ----------------------------------------------------------------------------------------------
# ch06.cross_entropy


def test_cross_entropy_accepts_the_reference_and_a_hand_written_answer():
    assert run("ch06.cross_entropy", reference_cross_entropy).passed

    def by_hand(logits, targets):
        probabilities = torch.softmax(logits, dim=-1)
        target_probabilities = probabilities.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return -torch.log(target_probabilities).mean()

    assert run("ch06.cross_entropy", by_hand).passed


def mistake(mistakes, name):
    return next(m for m in mistakes if m.name == name)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("missing_log", ["take the log"]),
        ("missing_minus", ["negated"]),
        ("sum_instead_of_mean", [".mean()", "do not sum"]),
        ("probability_of_the_argmax", ["target token"]),
        ("softmax_over_positions", ["last dimension"]),
        ("softmax_over_batch", ["last dimension"]),
        ("log2", ["natural logarithm"]),
        ("unstabilised_softmax", ["extreme logits", "torch.log_softmax"]),
    ],
)
def test_cross_entropy_rejects_typical_mistakes(name, words):
    result = run("ch06.cross_entropy", mistake(CROSS_ENTROPY_MISTAKES, name).answer)
    assert_rejected(result, *words)


def test_cross_entropy_rejects_a_python_float():
    result = run("ch06.cross_entropy",
                 lambda logits, targets: F.cross_entropy(logits.flatten(0, 1),
                                                         targets.flatten()).item())
    assert_rejected(result, "expected a tensor")


# ----------------------------------------------------------------------------------------------
# ch06.perplexity


def test_perplexity_accepts_math_and_torch_answers():
    assert run("ch06.perplexity", math.exp).passed
    assert run("ch06.perplexity", lambda loss: torch.exp(torch.tensor(loss))).passed


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("power_of_two", ["not 2 ** loss"]),
        ("negative_exponent", ["not exp(-loss)"]),
        ("log_instead_of_exp", ["exponentiate"]),
        ("inverse_loss", ["equally likely"]),
    ],
)
def test_perplexity_rejects_typical_mistakes(name, words):
    result = run("ch06.perplexity", mistake(PERPLEXITY_MISTAKES, name).answer)
    assert_rejected(result, "50257", *words)


def test_perplexity_rejects_a_non_number():
    assert_rejected(run("ch06.perplexity", lambda loss: f"{math.exp(loss)}"), "expected a number")


# ----------------------------------------------------------------------------------------------
# ch06.apply_temperature


def test_apply_temperature_accepts_the_reference():
    assert run("ch06.apply_temperature", reference_apply_temperature).passed
    assert run("ch06.apply_temperature", lambda logits, t: logits * (1 / t)).passed


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("multiplied", ["divide"]),
        ("softmax_before_scaling", ["softmax comes after the temperature"]),
        ("returns_probabilities", ["scaled logits"]),
        ("subtracted", ["divide by the temperature"]),
    ],
)
def test_apply_temperature_rejects_typical_mistakes(name, words):
    result = run("ch06.apply_temperature", mistake(TEMPERATURE_MISTAKES, name).answer)
    assert_rejected(result, "temperature 0.5", *words)


# ----------------------------------------------------------------------------------------------
# ch06.top_k_filter


def test_top_k_filter_accepts_the_reference_and_a_scatter_answer():
    assert run("ch06.top_k_filter", reference_top_k_filter).passed

    def scatter(logits, k):
        values, indices = logits.topk(k, dim=-1)
        return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)

    assert run("ch06.top_k_filter", scatter).passed


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("keeps_k_plus_one", ["keep exactly k", "index (8,)"]),
        ("keeps_k_minus_one", [">= the k-th largest"]),
        ("zero_instead_of_minus_inf", ["not 0", "got 0 (kept)"]),
        ("keeps_smallest", ["largest"]),
        ("returns_sorted_logits", ["own position"]),
        ("returns_top_k_values", ["shape (3,)", "logits' shape"]),
        ("over_the_first_dimension", ["each row on its own", "two rows"]),
    ],
)
def test_top_k_filter_rejects_typical_mistakes(name, words):
    assert_rejected(run("ch06.top_k_filter", mistake(TOP_K_MISTAKES, name).answer), *words)


# ----------------------------------------------------------------------------------------------
# ch06.train_step


def forward_backward(model, batch):
    _, loss = model(*batch)
    loss.backward()
    return loss


def test_train_step_accepts_the_reference_and_zero_grad_at_the_end():
    assert run("ch06.train_step", reference_train_step).passed

    def zero_grad_last(model, optimizer, batch):
        loss = forward_backward(model, batch)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    assert run("ch06.train_step", zero_grad_last).passed


def test_train_step_rejects_forgetting_zero_grad():
    def accumulates(model, optimizer, batch):
        loss = forward_backward(model, batch)
        optimizer.step()
        return loss.item()

    assert_rejected(run("ch06.train_step", accumulates), "step 2 of 3", "zero_grad()",
                    "previous step")


def test_train_step_rejects_forgetting_the_optimizer_step():
    def no_step(model, optimizer, batch):
        optimizer.zero_grad()
        return forward_backward(model, batch).item()

    assert_rejected(run("ch06.train_step", no_step), "never called")


def test_train_step_rejects_backward_twice():
    def twice_retained(model, optimizer, batch):
        optimizer.zero_grad()
        _, loss = model(*batch)
        loss.backward(retain_graph=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    assert_rejected(run("ch06.train_step", twice_retained), "twice", "once per step")

    def twice(model, optimizer, batch):
        optimizer.zero_grad()
        loss = forward_backward(model, batch)
        loss.backward()
        optimizer.step()
        return loss.item()

    assert_rejected(run("ch06.train_step", twice), "backward through the graph a second time",
                    status="error")


def test_train_step_rejects_zero_grad_between_backward_and_step():
    def cleared(model, optimizer, batch):
        loss = forward_backward(model, batch)
        optimizer.zero_grad()
        optimizer.step()
        return loss.item()

    assert_rejected(run("ch06.train_step", cleared), "gradients were empty")


def test_train_step_rejects_two_optimizer_steps_and_a_tensor_loss():
    def two_steps(model, optimizer, batch):
        optimizer.zero_grad()
        loss = forward_backward(model, batch)
        optimizer.step()
        optimizer.step()
        return loss.item()

    assert_rejected(run("ch06.train_step", two_steps), "called 2 times")

    def returns_tensor(model, optimizer, batch):
        optimizer.zero_grad()
        loss = forward_backward(model, batch)
        optimizer.step()
        return loss

    assert_rejected(run("ch06.train_step", returns_tensor), "loss.item()")


def test_train_step_rejects_the_loss_after_the_update():
    def loss_after(model, optimizer, batch):
        optimizer.zero_grad()
        forward_backward(model, batch)
        optimizer.step()
        with torch.no_grad():
            return model(*batch)[1].item()

    assert_rejected(run("ch06.train_step", loss_after), "before the update")


def test_recording_optimizer_steps_like_adamw():
    model, twin = train_step_models()
    batch = (torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))
    recording = RecordingAdamW(model.parameters(), lr=0.01)
    plain = torch.optim.AdamW(twin.parameters(), lr=0.01)
    reference_train_step(model, recording, batch)
    reference_train_step(twin, plain, batch)
    assert len(recording.gradients_at_step) == 1
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    for grad, parameter in zip(recording.gradients_at_step[0], model.parameters(), strict=True):
        assert torch.equal(grad, parameter.grad)


# ----------------------------------------------------------------------------------------------
# ch06.repetition_vs_temperature, an experiment


def repetition_by_counting(model, prompt_ids, temperatures, max_new_tokens, n, seed):
    """Another right answer: stream_generate, a set of n-grams seen so far, sorted conclusion."""
    repetition = []
    for temperature in temperatures:
        generator = torch.Generator().manual_seed(seed)
        new_ids = list(stream_generate(model, prompt_ids, max_new_tokens,
                                       Sampling(temperature, generator=generator)))
        seen, repeats, total = set(), 0, 0
        for start in range(len(new_ids) - n + 1):
            ngram = tuple(new_ids[start:start + n])
            repeats += ngram in seen
            total += 1
            seen.add(ngram)
        repetition.append(repeats / total if total else 0.0)
    best = sorted(range(len(temperatures)), key=lambda i: (repetition[i], i))[0]
    return repetition, temperatures[best]


def test_repeated_fraction_by_hand():
    assert repeated_fraction([1, 2, 1, 2, 1], 2) == pytest.approx(0.5)  # 12 21 12 21: 2 of 4
    assert repeated_fraction([5, 5, 5, 5], 1) == pytest.approx(0.75)
    assert repeated_fraction([1, 2, 3], 3) == 0.0
    assert repeated_fraction([1, 2], 3) == 0.0


def test_reference_repetition_greedy_repeats_the_sharp_model_most():
    model = sharp_tiny_gpt(12, 67)
    repetition, least = reference_repetition_vs_temperature(
        model, torch.tensor([[1, 2, 3]]), [0.0, 2.0], 24, 2, 0)
    assert repetition[0] > repetition[1] and least == 2.0


def test_repetition_vs_temperature_accepts_right_answers():
    for answer in (reference_repetition_vs_temperature, repetition_by_counting):
        result = run("ch06.repetition_vs_temperature", answer)
        assert result.status == "passed", result.summary
        assert result.cases == 4


@pytest.mark.parametrize("mistake", REPETITION_MISTAKES, ids=lambda mistake: mistake.name)
def test_repetition_vs_temperature_rejects_a_typical_mistake(mistake):
    result = run("ch06.repetition_vs_temperature", mistake.answer)
    assert result.status == "failed", result.summary
    assert result.hint == mistake.hint


def with_temperature(choose):
    def answer(model, prompt_ids, temperatures, max_new_tokens, n, seed):
        repetition, _ = repetition_by_counting(model, prompt_ids, temperatures, max_new_tokens,
                                               n, seed)
        return repetition, choose(temperatures, repetition)

    return answer


@pytest.mark.parametrize(
    ("name", "answer", "words"),
    [
        ("typed_in_the_highest", with_temperature(lambda t, r: max(t)), "from the list given"),
        ("most_repetitive", with_temperature(lambda t, r: t[r.index(max(r))]), "repeats MOST"),
        ("last_on_a_tie",
         with_temperature(lambda t, r: t[len(r) - 1 - r[::-1].index(min(r))]), "the FIRST"),
        ("an_index", with_temperature(lambda t, r: r.index(min(r))), "from the list given"),
    ],
)
def test_repetition_vs_temperature_checks_the_conclusion(name, answer, words):
    result = run("ch06.repetition_vs_temperature", answer)
    assert_rejected(result, "your measurements are right", words)


def test_repetition_vs_temperature_rejects_an_unseeded_sampler():
    def unseeded(model, prompt_ids, temperatures, max_new_tokens, n, seed):
        return repetition_by_counting(model, prompt_ids, temperatures, max_new_tokens, n,
                                      seed + 1)

    assert_rejected(run("ch06.repetition_vs_temperature", unseeded), "expected",
                    "seed a new generator with `seed`")
