"""DPO: the loss against the paper's formula in float64, log-probabilities of the response
tokens only, pairs from sampled answers, and a reference model that never changes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from llmcourse import instruction as inst
from llmcourse.errors import ConfigError, DataError, InputError
from llmcourse.model import GPT, GPTConfig
from llmcourse.preference import (
    DPOMetrics,
    DPOObjective,
    PreferencePair,
    build_preference_pairs,
    choose_pair,
    collate_pairs,
    dpo_loss,
    encode_pair,
    pair_loader,
    response_log_probs,
    train_dpo,
)
from llmcourse.story_instructions import rename_entry
from llmcourse.tokenizers import gpt2_tokenizer

TINY = GPTConfig(context_length=160, n_layer=1, n_head=2, n_embd=16)  # GPT-2's vocabulary


@pytest.fixture
def tokenizer(data_mirror):
    return gpt2_tokenizer()


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY)


def paper_dpo_loss(pc, pr, rc, rr, beta):
    """-log sigmoid(beta * ((pc - rc) - (pr - rr))), averaged, in float64 with math."""
    values = [-math.log(1.0 / (1.0 + math.exp(-beta * ((a - c) - (b - d)))))
              for a, b, c, d in zip(pc, pr, rc, rr, strict=True)]
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# The loss


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_is_the_papers_formula(beta: float):
    generator = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=generator, dtype=torch.float64) * 20 - 40
                      for _ in range(4))
    out = dpo_loss(pc, pr, rc, rr, beta)
    expected = paper_dpo_loss(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert torch.allclose(out.chosen_rewards, beta * (pc - rc))
    assert torch.allclose(out.rejected_rewards, beta * (pr - rr))


def test_dpo_loss_is_log_2_when_policy_equals_reference_and_falls_with_the_margin():
    logps = torch.tensor([-12.0, -30.0])
    assert dpo_loss(logps, logps, logps, logps).loss.item() == pytest.approx(math.log(2))
    better = dpo_loss(torch.tensor([-10.0]), torch.tensor([-40.0]),
                      torch.tensor([-12.0]), torch.tensor([-30.0]), beta=0.1)
    assert better.loss.item() < math.log(2)


def test_dpo_loss_is_stable_for_huge_margins_and_refuses_a_bad_beta():
    out = dpo_loss(torch.tensor([0.0]), torch.tensor([-1e6]), torch.tensor([0.0]),
                   torch.tensor([0.0]), beta=1.0)
    assert out.loss.item() == 0.0
    worst = dpo_loss(torch.tensor([-1e6]), torch.tensor([0.0]), torch.tensor([0.0]),
                     torch.tensor([0.0]), beta=1.0)
    assert worst.loss.item() == pytest.approx(1e6)
    with pytest.raises(ConfigError, match="beta must be positive"):
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.0)


def test_response_log_probs_sum_only_the_kept_targets():
    model = tiny_model().eval()
    inputs = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    targets = torch.tensor([[-100, -100, 8, 13], [-100, 11, 12, -100]])
    with torch.no_grad():
        got = response_log_probs(model, inputs, targets)
        log_probs = torch.log_softmax(model(inputs), dim=-1)
    expected = torch.stack([log_probs[0, 2, 8] + log_probs[0, 3, 13],
                            log_probs[1, 1, 11] + log_probs[1, 2, 12]])
    assert torch.allclose(got, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Pairs


ENTRY = rename_entry("Tim and Sue are friends.", "Tim", "Sam")


def test_choose_pair_takes_the_first_right_and_the_first_wrong_answer():
    pair = choose_pair(ENTRY, ["Tim and Sue are friends.", "Sam and Sue are friends.", "Sam"])
    assert pair == PreferencePair(ENTRY, "Sam and Sue are friends.", "Tim and Sue are friends.",
                                  chosen_is_reference=False)


def test_choose_pair_falls_back_on_the_reference_and_skips_all_right_samples():
    pair = choose_pair(ENTRY, ["Tim", "Sue"])
    assert (pair.chosen, pair.rejected, pair.chosen_is_reference) == (ENTRY["output"], "Tim", True)
    assert choose_pair(ENTRY, ["Sam and Sue are friends."] * 3) is None


def test_build_preference_pairs_is_seeded_and_needs_tasks(tokenizer):
    model = tiny_model()
    entries = [rename_entry(f"Tim saw {n} birds.", "Tim", "Max") for n in range(1, 6)]
    first = build_preference_pairs(model, tokenizer, entries, samples=3, max_new_tokens=6,
                                   seed=7, progress=False)
    again = build_preference_pairs(model, tokenizer, entries, samples=3, max_new_tokens=6,
                                   seed=7, progress=False)
    assert first == again and len(first) == 5  # a random model never renames right
    assert all(pair.chosen_is_reference for pair in first)
    book_entry = {"instruction": "Name a colour.", "input": "", "output": "Red."}
    with pytest.raises(DataError, match="story instructions"):
        build_preference_pairs(model, tokenizer, [book_entry], progress=False)


def test_collate_pairs_puts_chosen_rows_first_and_masks_the_prompt(tokenizer):
    pair = PreferencePair(ENTRY, "Sam and Sue are friends.", "Tim", False)
    chosen, rejected = encode_pair(tokenizer, pair)
    inputs, targets = collate_pairs([(chosen, rejected)], pad_id=tokenizer.eot_token)
    assert inputs.shape == targets.shape == (2, len(chosen.ids))
    assert inputs[0].tolist() == chosen.ids
    kept = [token for token in targets[1].tolist() if token != inst.IGNORE_INDEX]
    assert kept == rejected.ids[rejected.prompt_length:] + [tokenizer.eot_token]


def test_pair_loader_needs_a_full_batch(tokenizer):
    pair = PreferencePair(ENTRY, "Sam and Sue are friends.", "Tim", False)
    with pytest.raises(ConfigError, match="no full batch"):
        pair_loader([pair] * 3, tokenizer, batch_size=4)


# ---------------------------------------------------------------------------------------------
# Training


def test_train_dpo_moves_the_policy_and_never_the_reference(tokenizer):
    policy = tiny_model(1)
    reference = copy.deepcopy(policy)
    before = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    pairs = [PreferencePair(rename_entry(f"Tim has {n} cats.", "Tim", "Sam"),
                            f"Sam has {n} cats.", f"Tim has {n} cats.", False)
             for n in range(8)]
    loader = pair_loader(pairs, tokenizer, batch_size=4, max_length=160)
    history, metrics = train_dpo(policy, reference, loader, epochs=3, learning_rate=3e-3,
                                 beta=0.5, progress=False)
    assert len(history.steps) == 6 and metrics.steps == history.steps
    assert history.train_losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert metrics.values["reward_margin"][-1] > 0
    assert all(torch.equal(before[name], tensor) for name, tensor in reference.state_dict().items())
    assert not any(parameter.requires_grad for parameter in reference.parameters())
    assert not reference.training
    assert any(not torch.equal(before[name], tensor)
               for name, tensor in policy.state_dict().items())


def test_the_reference_must_be_a_separate_copy():
    model = tiny_model()
    with pytest.raises(InputError, match="separate"):
        DPOObjective(model, model)


def test_dpo_training_figure_draws_every_metric_smoothed():
    from llmcourse.figures.display import has_profile_label
    from llmcourse.figures.preference import InputError, dpo_training_figure

    metrics = DPOMetrics(objective=None, steps=[1, 2, 3], values={
        "reward_margin": [0.0, 0.2, 0.4], "reward_accuracy": [0.5, 1.0, 1.0],
        "chosen_log_prob": [-20.0, -21.0, -22.0], "rejected_log_prob": [-30.0, -33.0, -36.0]})
    fig = dpo_training_figure(metrics, window=2)
    assert [trace.name for trace in fig.data] == [
        "reward margin", "pairs ranked right (share)", "chosen answers", "rejected answers"]
    assert list(fig.data[0].y) == pytest.approx([0.0, 0.1, 0.3])
    assert fig.layout.yaxis.title.text and fig.layout.yaxis2.title.text
    assert has_profile_label(fig)
    with pytest.raises(InputError, match="no DPO steps"):
        dpo_training_figure(DPOMetrics(objective=None))
