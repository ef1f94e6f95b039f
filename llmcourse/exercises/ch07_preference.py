"""Checkers of section 7.4, preference tuning with DPO: the DPO loss from log-probabilities, and
the choice of a (chosen, rejected) pair from sampled answers.

Each runs hand-picked cases (equal policy and reference, huge margins that overflow a naive
``log(sigmoid(x))``, a single pair, answers that all pass or all fail), and a wrong answer that
matches a typical mistake gets a hint about it. The references are the package's own functions
(``llmcourse.preference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from llmcourse.exercises.core import (
    LabelledArgs,
    Mistake,
    exercise,
    expect_close,
    expect_equal,
    run_cases,
)
from llmcourse.preference import dpo_loss, pick_answers

# ----------------------------------------------------------------------------------------------
# ch07.dpo_loss


def reference_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                       reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """The mean DPO loss of the pairs (a 0-dim tensor)."""
    return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                    beta).loss


def _margin(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


DPO_MISTAKES = (
    Mistake(
        "no_reference",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(),
        "subtract the reference model's log-probabilities: the reward of an answer is "
        "beta * (policy - reference), not the policy's log-probability alone",
    ),
    Mistake(
        "sign_flipped",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(-_margin(pc, pr, rc, rr, beta)).mean(),
        "the chosen answer's reward comes first: -log sigmoid(beta * ((pc - rc) - (pr - rr)))",
    ),
    Mistake(
        "beta_outside",
        lambda pc, pr, rc, rr, beta: -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean(),
        "beta multiplies the margin INSIDE the sigmoid, not the loss",
    ),
    Mistake(
        "sum_not_mean",
        lambda pc, pr, rc, rr, beta: -F.logsigmoid(_margin(pc, pr, rc, rr, beta)).sum(),
        "average the loss over the pairs (.mean()), as the cross-entropy does over tokens",
    ),
)
UNSTABLE_HINT = ("log(sigmoid(x)) overflows to -inf for a very negative x: use F.logsigmoid, "
                 "which computes the same value stably")


def _unstable_answer(pc, pr, rc, rr, beta):
    return -torch.log(torch.sigmoid(_margin(pc, pr, rc, rr, beta))).mean()


def _probe_stability(answer) -> str:
    """The stability hint when the answer turns a huge negative margin into inf or nan."""
    try:
        value = answer(torch.tensor([-2000.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                       torch.tensor([0.0]), 1.0)
    except Exception:  # the case runner reports errors itself
        return ""
    if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
        return UNSTABLE_HINT
    return ""


def _dpo_cases() -> list[LabelledArgs]:
    generator = torch.Generator().manual_seed(0)
    random = [torch.randn(4, generator=generator) * 5 - 30 for _ in range(4)]
    same = torch.tensor([-12.0, -20.0, -7.5])
    cases = [
        ("4 random pairs, beta=0.1", (*random, 0.1)),
        ("4 random pairs, beta=0.5", (*random, 0.5)),
        ("policy equal to the reference (the loss is log 2)", (same, same - 3, same, same - 3,
                                                               0.1)),
        ("one pair whose chosen answer gained", (torch.tensor([-10.0]), torch.tensor([-40.0]),
                                                 torch.tensor([-12.0]), torch.tensor([-30.0]),
                                                 0.2)),
        ("a huge negative margin", (torch.tensor([-2000.0]), torch.tensor([0.0]),
                                    torch.tensor([0.0]), torch.tensor([0.0]), 1.0)),
    ]
    return cases


def _expect_loss(got: object, expected: torch.Tensor, *, case: str, hint: str = "") -> None:
    expect_close(got, expected, atol=1e-5, rtol=1e-5, case=case, hint=hint)


@exercise(
    "ch07.dpo_loss",
    title="The DPO loss",
    hint="margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - "
    "reference_rejected)); loss = -F.logsigmoid(margin).mean()",
)
def check_dpo_loss(answer: object) -> None:
    run_cases(
        answer, reference_dpo_loss, _dpo_cases(), _expect_loss,
        mistakes=DPO_MISTAKES, probe=_probe_stability,
    )


# ----------------------------------------------------------------------------------------------
# ch07.pick_answers


def reference_pick_answers(samples: list[str], met: list[bool], reference: str
                           ) -> tuple[str, str] | None:
    """(chosen, rejected), or None when every sample meets the criterion."""
    return pick_answers(samples, met, reference)


def _first(samples: Sequence[str], met: Sequence[bool], wanted: bool) -> str | None:
    return next((sample for sample, ok in zip(samples, met, strict=True) if ok == wanted), None)


PICK_MISTAKES = (
    Mistake(
        "pair_without_rejected",
        lambda samples, met, reference: (_first(samples, met, True) or reference,
                                         _first(samples, met, False)),
        "when every sample meets the criterion there is nothing to reject: return None",
    ),
    Mistake(
        "always_reference",
        lambda samples, met, reference: None if all(met) else (reference,
                                                               _first(samples, met, False)),
        "prefer the model's OWN right answer as chosen; the reference answer is the fallback "
        "when no sample is right",
    ),
    Mistake(
        "swapped",
        lambda samples, met, reference: None if all(met) else (
            _first(samples, met, False), _first(samples, met, True) or reference),
        "chosen is the answer that MEETS the criterion, rejected the one that does not",
    ),
    Mistake(
        "last_not_first",
        lambda samples, met, reference: None if all(met) else (
            _first(samples[::-1], met[::-1], True) or reference,
            _first(samples[::-1], met[::-1], False)),
        "take the FIRST right and the FIRST wrong sample, in the order they were sampled",
    ),
)


def _pick_cases() -> list[LabelledArgs]:
    triples = [
        (["Tom", "Sam", "Sam!"], [False, True, True], "Sam"),
        (["a story", "another"], [False, False], "The reference story."),
        (["Lily", "Lily"], [True, True], "Lily"),
        (["x", "y", "z", "w"], [True, False, True, False], "ref"),
        (["only"], [False], "ref"),
        (["first wrong", "right", "second wrong"], [False, True, False], "ref"),
    ]
    return [(f"samples={samples!r}, met={met!r}, reference={reference!r}",
             (samples, met, reference)) for samples, met, reference in triples]


@exercise(
    "ch07.pick_answers",
    title="Choose a preference pair from sampled answers",
    hint="rejected = the first sample whose criterion is not met (None if there is none: "
    "return None); chosen = the first sample whose criterion is met, else the reference",
)
def check_pick_answers(answer: object) -> None:
    run_cases(answer, reference_pick_answers, _pick_cases(), expect_equal, mistakes=PICK_MISTAKES)
