"""The checkers of section 7.4 (preference tuning) accept right answers and reject the typical
wrong ones with their hints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.exercises import check
from llmcourse.exercises.ch07_preference import (
    DPO_MISTAKES,
    DPO_SHIFT_MISTAKES,
    PICK_MISTAKES,
    UNSTABLE_HINT,
    reference_dpo_loss,
    reference_dpo_shift,
    reference_pick_answers,
)


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


@pytest.mark.parametrize(
    ("exercise_id", "mistake"),
    [("ch07.dpo_loss", mistake) for mistake in DPO_MISTAKES]
    + [("ch07.pick_answers", mistake) for mistake in PICK_MISTAKES],
    ids=lambda value: getattr(value, "name", value),
)
def test_each_mistake_is_rejected_with_its_hint(exercise_id, mistake):
    result = run(exercise_id, mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


def test_an_unstable_log_of_sigmoid_gets_the_stability_hint():
    def naive(pc, pr, rc, rr, beta):
        return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()

    result = run("ch07.dpo_loss", naive)
    assert (result.status, result.hint) == ("failed", UNSTABLE_HINT)


def test_reference_dpo_loss_is_log_2_when_policy_equals_reference():
    logps = torch.tensor([-5.0, -9.0])
    assert reference_dpo_loss(logps, logps - 1, logps, logps - 1, 0.1).item() == \
        pytest.approx(math.log(2))


def test_dpo_loss_accepts_other_right_answers():
    def with_softplus(pc, pr, rc, rr, beta):
        return F.softplus(-beta * ((pc - pr) - (rc - rr))).mean()

    def with_rewards(pc, pr, rc, rr, beta):
        chosen, rejected = beta * (pc - rc), beta * (pr - rr)
        return torch.mean(-F.logsigmoid(chosen - rejected))

    for answer in (reference_dpo_loss, with_softplus, with_rewards):
        assert run("ch07.dpo_loss", answer).status == "passed"


def test_pick_answers_accepts_another_right_answer_and_reads_the_reference():
    def by_index(samples, met, reference):
        if all(met):
            return None
        chosen = samples[met.index(True)] if True in met else reference
        return chosen, samples[met.index(False)]

    assert run("ch07.pick_answers", by_index).status == "passed"
    assert reference_pick_answers(["a", "b"], [False, False], "ref") == ("ref", "a")
    assert reference_pick_answers(["a"], [True], "ref") is None


def test_not_attempted_answers_are_reported_so():
    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("ch07.dpo_loss", "ch07.pick_answers", "ch07.dpo_shift"):
        assert run(exercise_id, stub).status == "not attempted"


# ----------------------------------------------------------------------------------------------
# ch07.dpo_shift: an experiment


def dpo_shift_by_pairs(policy, reference, pairs, pad_id):
    """Another right answer: one answer at a time, its log-probabilities summed over the
    positions after the prompt (the end token included) by hand."""

    def answer_log_prob(model, item):
        ids = torch.tensor([list(item.ids) + [pad_id]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids[:, :-1])[0], dim=-1)
        targets = ids[0, 1:]
        picked = log_probs[torch.arange(len(targets)), targets]
        return picked[item.prompt_length - 1:].sum().item()

    chosen, rejected = [], []
    for chosen_item, rejected_item in pairs:
        chosen.append(answer_log_prob(policy, chosen_item) - answer_log_prob(reference,
                                                                             chosen_item))
        rejected.append(answer_log_prob(policy, rejected_item)
                        - answer_log_prob(reference, rejected_item))
    chosen_change, rejected_change = sum(chosen) / len(chosen), sum(rejected) / len(rejected)
    return {
        "chosen_change": chosen_change,
        "rejected_change": rejected_change,
        "reward_accuracy": sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs),
        "margin_from": "chosen" if chosen_change > -rejected_change else "rejected",
    }


def test_dpo_shift_accepts_the_reference_and_another_right_answer():
    assert run("ch07.dpo_shift", reference_dpo_shift).passed
    result = run("ch07.dpo_shift", dpo_shift_by_pairs)
    assert result.status == "passed", result.message_with_hint


@pytest.mark.parametrize("mistake", DPO_SHIFT_MISTAKES, ids=lambda mistake: mistake.name)
def test_dpo_shift_rejects_a_typical_mistake_with_its_hint(mistake):
    result = run("ch07.dpo_shift", mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


@pytest.mark.parametrize(
    "conclusion",
    [lambda result: "rejected",
     lambda result: "chosen" if result["chosen_change"] > result["rejected_change"]
     else "rejected"],
    ids=["typed_in", "compares_the_changes_not_the_fall"],
)
def test_dpo_shift_rejects_a_conclusion_not_drawn_from_the_changes(conclusion):
    def answer(policy, reference, pairs, pad_id):
        result = reference_dpo_shift(policy, reference, pairs, pad_id)
        return {**result, "margin_from": conclusion(result)}

    result = run("ch07.dpo_shift", answer)
    assert result.status == "failed"
    assert "compute 'margin_from' from your measurements" in result.hint
    assert "chosen_change > -rejected_change" in result.hint
