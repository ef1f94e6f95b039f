"""Checkers of section 7.4, preference tuning with DPO: the DPO loss from log-probabilities, and
the choice of a (chosen, rejected) pair from sampled answers.

Each runs hand-picked cases (equal policy and reference, huge margins that overflow a naive
``log(sigmoid(x))``, a single pair, answers that all pass or all fail), and a wrong answer that
matches a typical mistake gets a hint about it. The references are the package's own functions
(``llmcourse.preference``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.exercises.core import (
    LabelledArgs,
    Mistake,
    exercise,
    expect_close,
    expect_equal,
    run_cases,
)
from llmcourse.exercises.inputs import measurement_compare, randint, seeded
from llmcourse.instruction import IGNORE_INDEX, TokenizedEntry, collate
from llmcourse.model import GPT, GPTConfig
from llmcourse.preference import collate_pairs, dpo_loss, pick_answers, response_log_probs

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


# ----------------------------------------------------------------------------------------------
# ch07.dpo_shift: an experiment, where the reward margin comes from

Pairs = list[tuple[TokenizedEntry, TokenizedEntry]]  # (chosen, rejected) token ids of each pair


def _margin_from(result: dict) -> str:
    """"chosen" when the chosen answers rose more than the rejected ones fell, else
    "rejected"."""
    return "chosen" if result["chosen_change"] > -result["rejected_change"] else "rejected"


def _summed_log_probs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                      per_token: bool = False) -> torch.Tensor:
    with torch.no_grad():
        total = response_log_probs(model, inputs, targets)
    if per_token:
        total = total / (targets != IGNORE_INDEX).sum(dim=1)
    return total


def _dpo_shift(policy: nn.Module, reference: nn.Module, pairs: Pairs, pad_id: int, *,
               mask_prompt: bool = True, per_token: bool = False, sign: float = 1.0,
               interleaved: bool = False) -> dict:
    """The measurement of ``reference_dpo_shift``, with one thing done wrong on request."""
    if mask_prompt:
        inputs, targets = collate_pairs(pairs, pad_id=pad_id)
    else:
        rows = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
        inputs, targets = collate(rows, pad_id=pad_id)
    change = sign * (_summed_log_probs(policy, inputs, targets, per_token=per_token)
                     - _summed_log_probs(reference, inputs, targets, per_token=per_token))
    if interleaved:
        chosen, rejected = change[0::2], change[1::2]
    else:
        chosen, rejected = change[:len(pairs)], change[len(pairs):]
    result = {
        "chosen_change": chosen.mean().item(),
        "rejected_change": rejected.mean().item(),
        "reward_accuracy": (chosen > rejected).float().mean().item(),
    }
    result["margin_from"] = _margin_from(result)
    return result


def reference_dpo_shift(policy: nn.Module, reference: nn.Module, pairs: Pairs, pad_id: int
                        ) -> dict:
    """How the policy moved away from the reference on preference pairs: each answer's summed
    log-probability (its response tokens and end token, the prompt masked: ``collate_pairs``
    and ``response_log_probs``) under the policy minus under the reference. Returns
    ``{"chosen_change": mean change of the chosen answers, "rejected_change": that of the
    rejected ones, "reward_accuracy": fraction of pairs whose chosen answer changed more than
    its rejected one, "margin_from": "chosen" when chosen_change > -rejected_change (the chosen
    rose more than the rejected fell), else "rejected"}``."""
    return _dpo_shift(policy, reference, pairs, pad_id)


DPO_SHIFT_MISTAKES = (
    Mistake(
        "prompt_counted",
        lambda policy, reference, pairs, pad_id: _dpo_shift(policy, reference, pairs, pad_id,
                                                            mask_prompt=False),
        "count the answers' tokens only: mask the prompt (collate_pairs does), as the DPO loss "
        "does; the prompt is the same in both answers of a pair",
    ),
    Mistake(
        "mean_per_token",
        lambda policy, reference, pairs, pad_id: _dpo_shift(policy, reference, pairs, pad_id,
                                                            per_token=True),
        "use each answer's SUMMED log-probability (response_log_probs), as the DPO loss does, "
        "not its mean per token",
    ),
    Mistake(
        "reference_minus_policy",
        lambda policy, reference, pairs, pad_id: _dpo_shift(policy, reference, pairs, pad_id,
                                                            sign=-1.0),
        "the change is policy minus reference: positive when the trained policy makes the "
        "answer more likely",
    ),
    Mistake(
        "pairs_interleaved",
        lambda policy, reference, pairs, pad_id: _dpo_shift(policy, reference, pairs, pad_id,
                                                            interleaved=True),
        "collate_pairs puts the B chosen answers first, then the B rejected ones: split the "
        "rows as [:B] and [B:], not every other row",
    ),
)


class ShiftedLogits(nn.Module):
    """A stand-in for a policy that has moved away from its reference: ``model``'s logits plus
    ``offsets[ids]``, a fixed (V,) row of offsets chosen by the current token."""

    def __init__(self, model: nn.Module, offsets: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("offsets", offsets)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids) + self.offsets[ids]


def _dpo_shift_case(seed: int, generator: torch.Generator, chosen_up: float,
                    rejected_down: float) -> tuple:
    """A random 1-layer GPT as the reference, and a policy that, after a token of a chosen
    answer (40 to 49), adds ``chosen_up`` to the logits of those tokens, and after a token of
    a rejected answer (50 to 59), subtracts ``rejected_down`` from theirs (and after a prompt
    token raises the prompt tokens by 0.5); 4 pairs with prompts of tokens 10 to 39."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = GPT(GPTConfig(vocab_size=64, context_length=32, n_layer=1, n_head=2,
                                  n_embd=16))
    reference.eval()
    offsets = torch.zeros(64, 64)
    offsets[40:50, 40:50] += chosen_up
    offsets[50:60, 50:60] -= rejected_down
    offsets[10:40, 10:40] += 0.5  # a drift on the prompts, which the measurement must skip
    policy = ShiftedLogits(copy.deepcopy(reference), offsets).eval()
    pairs = []
    for _ in range(4):
        prompt = torch.randint(10, 40, (randint(generator, 3, 8),), generator=generator).tolist()
        chosen = torch.randint(40, 50, (randint(generator, 2, 6),), generator=generator).tolist()
        rejected = torch.randint(50, 60, (randint(generator, 2, 6),),
                                 generator=generator).tolist()
        pairs.append((TokenizedEntry(prompt + chosen, len(prompt)),
                      TokenizedEntry(prompt + rejected, len(prompt))))
    return policy, reference, pairs, 63


def _dpo_shift_cases() -> list[LabelledArgs]:
    generator = seeded(82)
    return [
        ("4 pairs (pad_id=63), a policy that made the chosen answers more likely (its logits "
         "raised by 2 within a chosen answer) and left the rejected ones alone",
         _dpo_shift_case(1, generator, 2.0, 0.0)),
        ("4 pairs (pad_id=63), a policy that made the rejected answers less likely (logits "
         "lowered by 2 within a rejected answer) and left the chosen ones alone",
         _dpo_shift_case(2, generator, 0.0, 2.0)),
        ("4 pairs (pad_id=63), a policy that did both (chosen raised by 1.5, rejected lowered "
         "by 1)", _dpo_shift_case(3, generator, 1.5, 1.0)),
    ]


@exercise(
    "ch07.dpo_shift",
    title="Experiment: did DPO raise the chosen answers or lower the rejected ones?",
    hint="inputs, targets = collate_pairs(pairs, pad_id=pad_id); change = "
    "response_log_probs(policy, ...) - response_log_probs(reference, ...); the first "
    "len(pairs) rows are the chosen answers, the rest the rejected ones",
    time_limit=60.0,
)
def check_dpo_shift(answer: object) -> None:
    compare = measurement_compare(
        "margin_from", _margin_from,
        '"chosen" when chosen_change > -rejected_change, else "rejected"',
        atol=1e-4, rtol=1e-4,
    )
    run_cases(answer, reference_dpo_shift, _dpo_shift_cases(), compare,
              mistakes=DPO_SHIFT_MISTAKES)
