"""Checkers of chapter 6, pretraining: the loss, perplexity, temperature, top-k and a training
step.

Each checker runs hand-picked cases first (small inputs whose numbers can be read in the
failure message), then seeded random ones. When an answer is wrong, it is compared with the
typical wrong answers of the exercise (a missing log, a sum instead of a mean, multiplying by
the temperature...): a match replaces the exercise's general hint with one about that mistake.
The training step is checked differently: an optimizer that records the gradients it is asked
to apply shows whether the answer cleared, computed and applied them exactly once.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from llmcourse.exercises.core import (
    RETURNED_NONE_HINT,
    LabelledArgs,
    Mismatch,
    Mistake,
    exercise,
    expect_close,
    run_cases,
)
from llmcourse.exercises.inputs import expect_experiment, seeded, seeded_model, shape_text
from llmcourse.generation import Sampling, generate, top_k_filter
from llmcourse.model import GPT, GPTConfig

expect_float = functools.partial(expect_close, atol=1e-5, rtol=1e-5)

# The book's toy vocabulary and the logits of the token after "every effort moves you".
TOY_VOCABULARY = ("closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward",
                  "you")
TOY_LOGITS = (4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79)


# ----------------------------------------------------------------------------------------------
# ch06.cross_entropy


def reference_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability of the targets (B, T) under softmax(logits (B, T, V))."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _target_probabilities(logits: torch.Tensor, targets: torch.Tensor, dim: int = -1):
    probabilities = torch.softmax(logits, dim=dim)
    return probabilities.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


def _log_target_probabilities(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


SOFTMAX_DIMENSION_HINT = (
    "softmax must turn each position's V scores into probabilities: take it over the "
    "vocabulary, the LAST dimension (dim=-1), not over the batch or the positions"
)
CROSS_ENTROPY_MISTAKES = (
    Mistake(
        "unstabilised_softmax",
        lambda logits, targets: -(
            (logits.exp() / logits.exp().sum(dim=-1, keepdim=True)).log()
            .gather(-1, targets.unsqueeze(-1)).mean()
        ),
        "exp of a large logit overflows to inf (and inf / inf is nan): use torch.log_softmax, "
        "which subtracts each row's largest logit first",
    ),
    Mistake(
        "missing_log",
        lambda logits, targets: -_target_probabilities(logits, targets).mean(),
        "the loss is the mean of -log(probability of the target): take the log of the "
        "probabilities (torch.log_softmax or torch.log(softmax)) before averaging",
    ),
    Mistake(
        "missing_minus",
        lambda logits, targets: _log_target_probabilities(logits, targets).mean(),
        "log-probabilities are negative: the loss is their NEGATED mean, so that it is >= 0 "
        "and smaller when the targets are more likely",
    ),
    Mistake(
        "sum_instead_of_mean",
        lambda logits, targets: -_log_target_probabilities(logits, targets).sum(),
        "average over all B * T positions (.mean()), do not sum: the loss must not grow with "
        "the batch size or the sequence length",
    ),
    Mistake(
        "mean_over_batch_only",
        lambda logits, targets: -_log_target_probabilities(logits, targets).sum(-1).mean(),
        "average over every position of every sequence, not only over the sequences",
    ),
    Mistake(
        "probability_of_the_argmax",
        lambda logits, targets: -torch.log_softmax(logits, dim=-1).max(dim=-1).values.mean(),
        "use the probability the model gives the TARGET token (select it with "
        "gather(-1, targets.unsqueeze(-1)) or by indexing), not that of its most likely token",
    ),
    Mistake(
        "softmax_over_positions",
        lambda logits, targets: -torch.log(_target_probabilities(logits, targets, dim=1)).mean(),
        SOFTMAX_DIMENSION_HINT,
    ),
    Mistake(
        "softmax_over_batch",
        lambda logits, targets: -torch.log(_target_probabilities(logits, targets, dim=0)).mean(),
        SOFTMAX_DIMENSION_HINT,
    ),
    Mistake(
        "log2",
        lambda logits, targets: -_log_target_probabilities(logits, targets).mean() / math.log(2),
        "use the natural logarithm (torch.log, log_softmax): losses are in nats, as in "
        "F.cross_entropy",
    ),
)


def _cross_entropy_cases() -> list[LabelledArgs]:
    generator = seeded(61)
    toy = torch.tensor(TOY_LOGITS)
    cases: list[LabelledArgs] = [
        ("logits of shape (1, 2, 3) = [[[2., 1., 0.], [0., 0., 3.]]], targets [[1, 0]]",
         (torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]]), torch.tensor([[1, 0]]))),
        ("the toy vocabulary's logits for 'every effort moves you' (1, 1, 9), target 8 ('you')",
         (toy.view(1, 1, 9), torch.tensor([[8]]))),
        ("logits (2, 2, 4), two sequences of two positions, targets [[3, 0], [1, 2]]",
         (torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]],
                        [[0.0, -2.0, 1.0, 1.0], [3.0, 3.0, -3.0, 0.0]]]),
          torch.tensor([[3, 0], [1, 2]]))),
        ("extreme logits (1, 2, 3) = [[[1000., 0., -1000.], [-1000., 1000., 999.]]], targets "
         "[[0, 2]] (exp(1000) overflows)",
         (torch.tensor([[[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 999.0]]]),
          torch.tensor([[0, 2]]))),
    ]
    for batch, length, vocabulary, dtype in (
        (2, 3, 5, torch.float32), (3, 7, 50, torch.float32), (1, 16, 257, torch.float32),
        (4, 5, 11, torch.float64),
    ):
        logits = 3 * torch.randn(batch, length, vocabulary, generator=generator, dtype=dtype)
        targets = torch.randint(0, vocabulary, (batch, length), generator=generator)
        cases.append((
            f"random {dtype} logits of shape (B, T, V) = {(batch, length, vocabulary)} and "
            "random targets",
            (logits, targets),
        ))
    return cases


@exercise(
    "ch06.cross_entropy",
    title="Cross-entropy of next-token predictions",
    hint="softmax over the last dimension, pick each target's probability, take -log, and "
    "average over all B * T positions; return a tensor of shape ()",
)
def check_cross_entropy(answer: object) -> None:
    run_cases(
        answer, reference_cross_entropy, _cross_entropy_cases(), expect_float,
        mistakes=CROSS_ENTROPY_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch06.perplexity


def reference_perplexity(loss: float) -> float:
    """exp(loss) for a cross-entropy loss in nats per token."""
    return math.exp(loss)


def expect_number(got: object, expected: float, *, case: str, hint: str = "") -> None:
    """Raise ``Mismatch`` unless ``got`` is a real number (or a one-element tensor) within a
    relative 1e-6 of ``expected``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise Mismatch(case, expected, got, hint,
                       detail=f"expected a number, got {type(got).__name__} {got!r}")
    if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
        raise Mismatch(case, expected, got, hint, detail=f"expected {expected:.6g}, got {got:.6g}")


PERPLEXITY_MISTAKES = (
    Mistake(
        "power_of_two",
        lambda loss: 2.0**loss,
        "the loss is in nats (natural log), so its inverse is e ** loss (math.exp), not 2 ** loss",
    ),
    Mistake(
        "negative_exponent",
        lambda loss: math.exp(-loss),
        "exp(loss), not exp(-loss): a higher loss must give a higher perplexity",
    ),
    Mistake(
        "log_instead_of_exp",
        lambda loss: math.log(loss),
        "perplexity undoes the log of the loss: exponentiate (math.exp), do not take a log",
    ),
    Mistake(
        "inverse_loss",
        lambda loss: 1.0 / loss,
        "perplexity is exp(loss), the number of equally likely tokens the loss amounts to",
    ),
)


@exercise(
    "ch06.perplexity",
    title="Perplexity from the loss",
    hint="perplexity = exp(loss), with the loss in nats per token",
)
def check_perplexity(answer: object) -> None:
    cases: list[LabelledArgs] = [
        ("loss = math.log(50257), a model that gives every token the same probability",
         (math.log(50257),)),
        ("loss = 6.5", (6.5,)),
        ("loss = 2.302585 (ln 10)", (2.302585,)),
        ("loss = 0.5", (0.5,)),
        ("loss = 1.0", (1.0,)),
        ("loss = 0.0, a model that is always certain and right", (0.0,)),
    ]
    run_cases(answer, reference_perplexity, cases, expect_number, mistakes=PERPLEXITY_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch06.apply_temperature


def reference_apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (..., V) divided by the temperature (> 0)."""
    return logits / temperature


TEMPERATURE_MISTAKES = (
    Mistake(
        "multiplied",
        lambda logits, temperature: logits * temperature,
        "DIVIDE the logits by the temperature: a temperature below 1 must sharpen the "
        "distribution (larger logits), above 1 flatten it",
    ),
    Mistake(
        "softmax_before_scaling",
        lambda logits, temperature: torch.softmax(logits, dim=-1) / temperature,
        "scale the logits themselves; softmax comes after the temperature, when sampling "
        "(dividing probabilities by T does not change the distribution's shape)",
    ),
    Mistake(
        "returns_probabilities",
        lambda logits, temperature: torch.softmax(logits / temperature, dim=-1),
        "return the scaled LOGITS, not probabilities: the filters (top-k, top-p) and softmax "
        "come afterwards",
    ),
    Mistake(
        "subtracted",
        lambda logits, temperature: logits - temperature,
        "subtracting the same number from every logit changes nothing after softmax: divide "
        "by the temperature",
    ),
)


def _temperature_cases() -> list[LabelledArgs]:
    generator = seeded(62)
    toy = torch.tensor(TOY_LOGITS)
    cases: list[LabelledArgs] = [
        ("the toy logits [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], "
         "temperature 0.5", (toy, 0.5)),
        ("the toy logits, temperature 5.0", (toy, 5.0)),
        ("the toy logits, temperature 1.0 (unchanged)", (toy, 1.0)),
        ("logits [[1., 2., 3.], [0., 0., -4.]] of shape (2, 3), temperature 0.1",
         (torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -4.0]]), 0.1)),
    ]
    for shape, temperature, dtype in (((4, 50), 1.7, torch.float32), ((50257,), 0.8, torch.float32),
                                      ((2, 3, 10), 2.5, torch.float64)):
        logits = 4 * torch.randn(shape, generator=generator, dtype=dtype)
        cases.append((f"random {dtype} logits of shape {shape}, temperature {temperature}",
                      (logits, temperature)))
    return cases


@exercise(
    "ch06.apply_temperature",
    title="Temperature scaling",
    hint="return logits / temperature, a tensor of the logits' shape (no softmax here)",
)
def check_apply_temperature(answer: object) -> None:
    run_cases(
        answer, reference_apply_temperature, _temperature_cases(), expect_float,
        mistakes=TEMPERATURE_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch06.top_k_filter


def reference_top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest logits of each row (..., V) kept in place, the others set to -inf."""
    return top_k_filter(logits, k)


def expect_filtered_logits(
    got: object, expected: torch.Tensor, *, case: str, hint: str = ""
) -> None:
    """Raise ``Mismatch`` unless ``got`` removes (sets to -inf) exactly the logits ``expected``
    removes and keeps the others' values. (``expect_close`` alone would accept any value where
    -inf is expected: its relative tolerance is infinite there.)"""
    if (
        not isinstance(got, torch.Tensor)
        or got.shape != expected.shape
        or not got.dtype.is_floating_point
    ):
        expect_close(got, expected, case=case, hint=hint)  # says what is wrong with it
    removed, got_removed = expected == float("-inf"), got == float("-inf")
    differs = removed != got_removed
    if differs.any():
        index = tuple(int(i) for i in differs.nonzero()[0])

        def state(value: float) -> str:
            return "-inf (removed)" if value == float("-inf") else f"{value:.6g} (kept)"

        raise Mismatch(
            case, expected, got, hint,
            detail=f"{int(differs.sum())} of {differs.numel()} tokens are kept or removed "
            f"differently; at index {index} expected {state(float(expected[index]))}, got "
            f"{state(float(got[index]))}",
        )
    expect_close(got.masked_fill(removed, 0.0), expected.masked_fill(removed, 0.0),
                 atol=0.0, rtol=0.0, case=case, hint=hint)


def _fill_below(logits: torch.Tensor, threshold: torch.Tensor, value: float) -> torch.Tensor:
    return logits.masked_fill(logits < threshold, value)


def _kth_largest(logits: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    k = min(k, logits.size(dim))
    return logits.topk(k, dim=dim).values.narrow(dim, k - 1, 1)


def _sorted_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    ordered = logits.sort(dim=-1, descending=True).values
    positions = torch.arange(logits.size(-1), device=logits.device)
    return ordered.masked_fill(positions >= k, float("-inf"))


TOP_K_MISTAKES = (
    Mistake(
        "keeps_k_plus_one",
        lambda logits, k: _fill_below(logits, _kth_largest(logits, k + 1), float("-inf")),
        "keep exactly k tokens: the threshold is the k-th largest logit "
        "(logits.topk(k).values[..., -1:]), not the (k+1)-th",
    ),
    Mistake(
        "keeps_k_minus_one",
        lambda logits, k: logits.masked_fill(logits <= _kth_largest(logits, k), float("-inf")),
        "keep the logits that are >= the k-th largest: with > the k-th token itself is dropped",
    ),
    Mistake(
        "zero_instead_of_minus_inf",
        lambda logits, k: _fill_below(logits, _kth_largest(logits, k), 0.0),
        "set the removed logits to -inf (float('-inf')), not 0: softmax gives e^0 = 1 a "
        "probability above 0, so those tokens could still be drawn",
    ),
    Mistake(
        "keeps_smallest",
        lambda logits, k: logits.masked_fill(
            logits > -_kth_largest(-logits, k), float("-inf")),
        "keep the k LARGEST logits (sort descending, or topk's default largest=True)",
    ),
    Mistake(
        "returns_sorted_logits",
        _sorted_top_k,
        "keep every logit at its own position (its token id): mask the small ones with "
        "masked_fill or torch.where instead of returning them sorted",
    ),
    Mistake(
        "returns_top_k_values",
        lambda logits, k: logits.topk(min(k, logits.size(-1))).values,
        "return a tensor of the logits' shape, with -inf for the removed tokens, not just "
        "the k kept values",
    ),
    Mistake(
        "over_the_first_dimension",
        lambda logits, k: _fill_below(logits, _kth_largest(logits, k, dim=0), float("-inf")),
        "filter each row on its own: the k largest over the last dimension (dim=-1)",
    ),
)


def _top_k_cases() -> list[LabelledArgs]:
    generator = seeded(63)
    toy = torch.tensor(TOY_LOGITS)
    cases: list[LabelledArgs] = [
        ("the toy logits [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], k = 3",
         (toy, 3)),
        ("the toy logits, k = 1", (toy, 1)),
        ("the toy logits, k = 9 (every token)", (toy, 9)),
        ("negative logits [-3., -1., -2., -5.], k = 2",
         (torch.tensor([-3.0, -1.0, -2.0, -5.0]), 2)),
        ("two rows [[1., 5., 3., 2.], [9., 0., 8., 7.]] of shape (2, 4), k = 2",
         (torch.tensor([[1.0, 5.0, 3.0, 2.0], [9.0, 0.0, 8.0, 7.0]]), 2)),
    ]
    for shape, k, dtype in (((3, 20), 5, torch.float32), ((100,), 10, torch.float32),
                            ((2, 3, 12), 4, torch.float64), ((50257,), 50, torch.float32)):
        logits = torch.randn(shape, generator=generator, dtype=dtype)  # ties are unlikely
        cases.append((f"random {dtype} logits of shape {shape}, k = {k}", (logits, k)))
    return cases


@exercise(
    "ch06.top_k_filter",
    title="Top-k filtering",
    hint="find the k-th largest logit of each row (logits.topk(k, dim=-1).values[..., -1:]) "
    "and set every logit below it to float('-inf'); keep the shape and the order",
)
def check_top_k_filter(answer: object) -> None:
    run_cases(
        answer, reference_top_k_filter, _top_k_cases(), expect_filtered_logits,
        mistakes=TOP_K_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch06.train_step


def reference_train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]
) -> float:
    """One update: clear the gradients, compute the loss, backpropagate, step; returns the loss
    (before the update) as a float."""
    inputs, targets = batch
    optimizer.zero_grad()
    _, loss = model(inputs, targets)
    loss.backward()
    optimizer.step()
    return loss.item()


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps a copy of the gradients it is asked to apply at every ``step()``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], **options: Any):
        super().__init__(params, **options)
        self.gradients_at_step: list[list[torch.Tensor | None]] = []

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        parameters = [p for group in self.param_groups for p in group["params"]]
        self.gradients_at_step.append(
            [None if p.grad is None else p.grad.detach().clone() for p in parameters]
        )
        return super().step(closure)


TRAIN_STEP_CONFIG = GPTConfig(vocab_size=40, context_length=8, n_layer=1, n_head=2, n_embd=16)
TRAIN_STEP_OPTIONS = {"lr": 1e-2, "weight_decay": 0.1}
TRAIN_STEPS = 3


def _train_step_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = seeded(64)
    batches = []
    for _ in range(TRAIN_STEPS):
        ids = torch.randint(0, TRAIN_STEP_CONFIG.vocab_size, (2, 7), generator=generator)
        batches.append((ids[:, :-1], ids[:, 1:]))  # inputs and targets, each (2, 6)
    return batches


def train_step_models() -> tuple[GPT, GPT]:
    """Two identical tiny GPTs (no dropout), seeded without touching the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(66)
        model = GPT(TRAIN_STEP_CONFIG)
    return model, copy.deepcopy(model)


@dataclass
class TrainingRecord:
    """What a training step did over several batches: per step, what it returned, how often it
    called ``optimizer.step()`` and the gradients the last call applied; then the parameters."""

    returned: list[object] = field(default_factory=list)
    step_calls: list[int] = field(default_factory=list)
    applied_gradients: list[list[torch.Tensor | None]] = field(default_factory=list)
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)


def trained_with(step: object) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], Any]:
    """A function of the batches that runs ``step(model, optimizer, batch)`` on each, from the
    same tiny GPT and a fresh ``RecordingAdamW``, and returns its ``TrainingRecord``."""

    def train(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> TrainingRecord:
        if not callable(step):
            raise Mismatch(
                "the first batch", "a function", step,
                detail=f"expected a function to call, got {type(step).__name__}",
            )
        model, _ = train_step_models()
        optimizer = RecordingAdamW(model.parameters(), **TRAIN_STEP_OPTIONS)
        record = TrainingRecord()
        for batch in batches:
            calls_before = len(optimizer.gradients_at_step)
            record.returned.append(step(model, optimizer, batch))
            record.step_calls.append(len(optimizer.gradients_at_step) - calls_before)
            record.applied_gradients.append(
                optimizer.gradients_at_step[-1] if optimizer.gradients_at_step else []
            )
        record.parameters = {
            name: parameter.detach().clone() for name, parameter in model.named_parameters()
        }
        return record

    return train


def _gradients_close(got: list[torch.Tensor | None], expected: list[torch.Tensor]) -> bool:
    return len(got) == len(expected) and all(
        g is not None and torch.allclose(g, e, rtol=1e-4, atol=1e-6)
        for g, e in zip(got, expected, strict=True)
    )


def _gradient_hint(
    got: list[torch.Tensor | None],
    expected: list[torch.Tensor],
    previous: list[torch.Tensor] | None,
) -> str:
    """What went wrong, judged from the gradients the optimizer was asked to apply."""
    if all(g is None or not g.any() for g in got):
        return ("the gradients were empty when optimizer.step() ran: call loss.backward() "
                "before optimizer.step(), and optimizer.zero_grad() before loss.backward(), "
                "not between backward and step")
    if _gradients_close(got, [2 * e for e in expected]):
        return ("the gradients were twice the loss's gradients: loss.backward() ran twice "
                "(each call adds to .grad); call it once per step")
    if previous is not None and _gradients_close(got, [e + p for e, p in
                                                       zip(expected, previous, strict=True)]):
        return ("the gradients of the previous step were still there: backward() adds to "
                ".grad, so call optimizer.zero_grad() before loss.backward() in every step")
    return ("the gradients applied differ from those of this batch's loss: compute the loss as "
            "model(inputs, targets) returns it, and call backward() once on it")


def _expect_training(got: TrainingRecord, expected: TrainingRecord, *, case: str) -> None:
    """Compare two training records step by step: the calls of ``optimizer.step()``, the
    gradients they applied, the returned loss; then the parameters after the last step."""
    previous_gradients = None
    for number, expected_gradients in enumerate(expected.applied_gradients):
        step_case = f"step {number + 1} of {case}"
        _check_step_count(got.step_calls[number], step_case)
        applied = got.applied_gradients[number]
        if not _gradients_close(applied, expected_gradients):
            raise Mismatch(
                step_case, "this batch's gradients", "other gradients",
                _gradient_hint(applied, expected_gradients, previous_gradients),
                detail="optimizer.step() applied gradients that are not those of this "
                "batch's loss",
            )
        _check_returned_loss(got.returned[number], expected.returned[number], step_case)
        previous_gradients = expected_gradients
    for name, expected_parameter in expected.parameters.items():
        if not torch.allclose(got.parameters[name], expected_parameter, rtol=1e-5, atol=1e-6):
            raise Mismatch(
                case, expected_parameter, got.parameters[name], "change the parameters only "
                "through one optimizer.step() per call, after a single loss.backward()",
                detail=f"after the steps, parameter {name} differs from the reference update",
            )


@exercise(
    "ch06.train_step",
    title="One training step",
    hint="optimizer.zero_grad(); _, loss = model(inputs, targets); loss.backward(); "
    "optimizer.step(); return loss.item()",
)
def check_train_step(answer: object) -> None:
    batches = _train_step_batches()
    case = (f"{TRAIN_STEPS} steps with AdamW(lr=0.01, weight_decay=0.1) on a 1-layer GPT, "
            f"inputs and targets of shape {shape_text(batches[0][0])}")
    run_cases(
        trained_with(answer), trained_with(reference_train_step), [(case, (batches,))],
        _expect_training,
    )


def _check_step_count(count: int, case: str) -> None:
    if count == 0:
        raise Mismatch(
            case, "one optimizer.step()", "none", "call optimizer.step() after loss.backward(): "
            "it is what changes the parameters",
            detail="optimizer.step() was never called, so the parameters did not change",
        )
    if count > 1:
        raise Mismatch(
            case, "one optimizer.step()", f"{count} calls", "call optimizer.step() once per "
            "training step", detail=f"optimizer.step() was called {count} times in one step",
        )


def _check_returned_loss(got: object, expected: float, case: str) -> None:
    if got is None:
        raise Mismatch(case, expected, got, RETURNED_NONE_HINT,
                       detail=f"returned None but expected the loss {expected:.6g}")
    if isinstance(got, torch.Tensor):
        raise Mismatch(
            case, expected, got, "return loss.item(): a Python float, detached from the graph "
            "(keeping the tensor would keep the whole graph of the step in memory)",
            detail=f"expected a float, got a tensor of shape {shape_text(got)}",
        )
    expect_number(got, expected, case=case,
                  hint="return the loss computed in this step, before the update, as a float")


# ----------------------------------------------------------------------------------------------
# ch06.repetition_vs_temperature: an experiment


def repeated_fraction(ids: list[int], n: int) -> float:
    """The fraction of the (overlapping) n-grams of ``ids`` that repeat an earlier one:
    1 - distinct / all; 0.0 when ``ids`` has fewer than n tokens."""
    ngrams = [tuple(ids[start:start + n]) for start in range(len(ids) - n + 1)]
    return 1 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _sampled(model, prompt_ids, temperature, max_new_tokens, generator) -> list[int]:
    ids = generate(model, prompt_ids, max_new_tokens, Sampling(temperature, generator=generator))
    return ids[0, prompt_ids.size(1):].tolist()


def reference_repetition_vs_temperature(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    temperatures: list[float],
    max_new_tokens: int,
    n: int,
    seed: int,
) -> tuple[list[float], float]:
    """For each temperature, the fraction of repeated n-grams in the continuation of
    ``prompt_ids`` (1, T) sampled with a generator seeded with ``seed``; then the temperature
    that repeats least (the first one on a tie)."""
    repetition = []
    for temperature in temperatures:
        generator = torch.Generator().manual_seed(seed)
        new_ids = _sampled(model, prompt_ids, temperature, max_new_tokens, generator)
        repetition.append(repeated_fraction(new_ids, n))
    return repetition, temperatures[repetition.index(min(repetition))]


def _least_repetitive_of(temperatures: list[float]) -> Callable[[list[float]], float]:
    return lambda repetition: temperatures[repetition.index(min(repetition))]


def _repetition_mistake(
    fraction_of: Callable[[list[int], int], float] = repeated_fraction,
    *,
    with_prompt: bool = False,
    one_generator: bool = False,
):
    """A wrong experiment; it concludes from its own measurements as a right one would."""

    def experiment(model, prompt_ids, temperatures, max_new_tokens, n, seed):
        repetition, shared = [], torch.Generator().manual_seed(seed)
        for temperature in temperatures:
            generator = shared if one_generator else torch.Generator().manual_seed(seed)
            sampling = Sampling(temperature, generator=generator)
            ids = generate(model, prompt_ids, max_new_tokens, sampling)[0]
            tokens = ids.tolist() if with_prompt else ids[prompt_ids.size(1):].tolist()
            repetition.append(fraction_of(tokens, n))
        return repetition, _least_repetitive_of(temperatures)(repetition)

    return experiment


def _ngrams(ids: list[int], n: int, step: int = 1) -> list[tuple[int, ...]]:
    return [tuple(ids[start:start + n]) for start in range(0, len(ids) - n + 1, step)]


def _every_copy_of_a_repeat(ids: list[int], n: int) -> float:
    ngrams = _ngrams(ids, n)
    return sum(ngrams.count(g) > 1 for g in ngrams) / len(ngrams) if ngrams else 0.0


def _non_overlapping(ids: list[int], n: int) -> float:
    ngrams = _ngrams(ids, n, step=n)
    return 1 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


REPETITION_MISTAKES = (
    Mistake(
        "one_generator_for_all_temperatures",
        _repetition_mistake(one_generator=True),
        "seed a NEW generator for every temperature, torch.Generator().manual_seed(seed): with "
        "one generator for all, each temperature gets other random draws, and the comparison "
        "mixes the effect of the temperature with that of the luck of the draw",
    ),
    Mistake(
        "counts_the_prompt",
        _repetition_mistake(with_prompt=True),
        "measure the continuation only: generate returns the prompt followed by the new "
        "tokens, so drop the first prompt_ids.shape[1] of them",
    ),
    Mistake(
        "distinct_fraction",
        _repetition_mistake(lambda ids, n: 1 - repeated_fraction(ids, n) if len(ids) >= n
                            else 1.0),
        "that is the fraction of DISTINCT n-grams: the repeated fraction is 1 - distinct / all",
    ),
    Mistake(
        "every_copy_of_a_repeat",
        _repetition_mistake(_every_copy_of_a_repeat),
        "count only the n-grams that repeat an EARLIER one (1 - distinct / all): the first "
        "occurrence of an n-gram is not a repetition",
    ),
    Mistake(
        "non_overlapping_ngrams",
        _repetition_mistake(_non_overlapping),
        "take every n-gram, overlapping ones included: one starting at each position, "
        "ids[i:i + n] for i in range(len(ids) - n + 1)",
    ),
)


def _repetition_conclusion_hint(temperatures: list[float]):
    def hint(answer, derived, repetition) -> str:
        most = temperatures[repetition.index(max(repetition))]
        if answer == most and most != derived:
            return "that temperature repeats MOST: return the one with the smallest fraction"
        if answer in temperatures and answer != derived and repetition[
                temperatures.index(answer)] == min(repetition):
            return "on a tie, return the FIRST temperature (in the order given) with the " \
                   "smallest fraction, as repetition.index(min(repetition)) finds it"
        return ("compute least_repetitive from your own measurements, in the function: the "
                "temperature, from the list given, whose continuation has the smallest fraction "
                "of repeated n-grams")

    return hint


def sharp_tiny_gpt(vocab_size: int, seed: int) -> GPT:
    """A tiny seeded GPT whose weights are scaled up, so that its next-token distributions are
    far from uniform and the temperature changes what it samples."""
    config = GPTConfig(vocab_size=vocab_size, context_length=64, n_layer=1, n_head=2, n_embd=16)

    def build() -> GPT:
        model = GPT(config)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(40 if parameter.dim() > 1 else 1)
        return model

    return seeded_model(build, seed)


def _repetition_cases() -> list[LabelledArgs]:
    prompt = torch.tensor([[1, 2, 3]])
    model, other = sharp_tiny_gpt(12, 67), sharp_tiny_gpt(40, 68)
    return [
        ("a tiny GPT (12 tokens), prompt [[1, 2, 3]], temperatures [0.0, 0.5, 1.0, 2.0], "
         "24 new tokens, n=2, seed=0", (model, prompt, [0.0, 0.5, 1.0, 2.0], 24, 2, 0)),
        ("the same GPT, temperatures in another order [2.0, 0.0, 1.0], 30 new tokens, n=3, "
         "seed=5", (model, prompt, [2.0, 0.0, 1.0], 30, 3, 5)),
        ("another tiny GPT (40 tokens), prompt [[7]], temperatures [0.3, 0.8, 1.5, 3.0], "
         "30 new tokens, n=2, seed=1",
         (other, torch.tensor([[7]]), [0.3, 0.8, 1.5, 3.0], 30, 2, 1)),
        ("fewer new tokens than n: 2 new tokens, n=3, temperatures [1.0, 0.0] (no n-gram at "
         "all, a tie at 0.0)", (model, prompt, [1.0, 0.0], 2, 3, 0)),
    ]


@exercise(
    "ch06.repetition_vs_temperature",
    title="Experiment: repetition against temperature",
    time_limit=60.0,
    hint="for each temperature: generator = torch.Generator().manual_seed(seed); ids = "
    "generate(model, prompt_ids, max_new_tokens, Sampling(t, generator=generator)); keep the "
    "new tokens ids[0, prompt_ids.shape[1]:].tolist(); their n-grams ids[i:i + n]; the "
    "fraction 1 - distinct / all (0.0 without n-grams); then the temperature with the "
    "smallest fraction (the first on a tie)",
)
def check_repetition_vs_temperature(answer: object) -> None:
    for description, args in _repetition_cases():
        temperatures = args[2]
        compare = functools.partial(
            expect_experiment,
            label=lambda path, temperatures=temperatures: (
                f"the fraction at temperature {temperatures[path[0]]}" if path else
                "the fractions"),
            conclude=_least_repetitive_of(temperatures), conclusion="least repetitive temperature",
            conclusion_hint=_repetition_conclusion_hint(temperatures),
            rel_tol=1e-9, abs_tol=1e-12,
        )
        run_cases(
            answer, reference_repetition_vs_temperature, [(description, args)], compare,
            mistakes=REPETITION_MISTAKES,
            hint="seed a new generator with `seed` for each temperature, pass it to generate, "
            "and measure the new tokens only",
        )
