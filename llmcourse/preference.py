"""Preference tuning with DPO (direct preference optimization, Rafailov et al., 2023).

After instruction fine-tuning a model answers in the right form, but not always rightly. With the
story instructions, whose answers a program can check (``llmcourse.story_instructions``), the
model's own samples show what it should do more of and less of:

1. ``build_preference_pairs``: for each training instruction, sample a few answers from the
   instruction-tuned model. A sample that meets the task's criterion is *chosen*, one that does
   not is *rejected*; when no sample meets it, the reference answer is chosen. An instruction
   without a rejected sample (every sample is right) gives no pair.
2. ``dpo_loss``: for a pair, the policy's log-probability of each answer (its response tokens
   only, ``response_log_probs``) minus that of a frozen copy, the *reference* model. The loss
   ``-log sigmoid(beta * ((chosen - chosen_ref) - (rejected - rejected_ref)))`` raises the chosen
   answer's probability relative to the rejected one's, measured against the reference, so the
   policy cannot win by changing everything at once; ``beta`` sets how far it may drift.
3. ``train_dpo``: the course's training loop (``llmcourse.training.train``) on a ``DPOObjective``,
   a module that holds the policy and the frozen reference and returns the DPO loss of a batch
   of pairs. ``DPOMetrics`` records, per step, the reward margin and the log-probabilities of the
   chosen and rejected answers.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from llmcourse.errors import ConfigError, DataError, InputError
from llmcourse.generation import Sampling, generate
from llmcourse.instruction import (
    IGNORE_INDEX,
    PromptFormat,
    TokenizedEntry,
    collate,
    encode_entry,
    extract_response,
    generation_prompt,
)
from llmcourse.model import GPT
from llmcourse.model_state import model_device
from llmcourse.story_instructions import criterion_met
from llmcourse.tokenizers import Tokenizer
from llmcourse.tokenizers.files import end_of_text_id
from llmcourse.training import StepState, TrainingHistory, fine_tuning_config, train


@dataclass(frozen=True)
class PreferencePair:
    """An instruction (``entry``, with its ``task``) and two answers to it: ``chosen`` meets the
    task's criterion (or is the reference answer, ``chosen_is_reference``), ``rejected`` does
    not."""

    entry: dict[str, str]
    chosen: str
    rejected: str
    chosen_is_reference: bool


# ---------------------------------------------------------------------------------------------
# Pairs from the model's own samples


def sample_responses(
    model: GPT, tokenizer: Tokenizer, entry: Mapping[str, str], samples: int,
    sampling: Sampling, *, max_new_tokens: int = 64,
    prompt_format: str | PromptFormat = "alpaca",
) -> list[str]:
    """``samples`` answers of ``model`` to ``entry``, sampled together as one batch with
    ``sampling`` (its end token is the tokenizer's ``<|endoftext|>``)."""
    eos_id = end_of_text_id(tokenizer)
    prompt = generation_prompt(tokenizer, entry, prompt_format, model.config.context_length)
    device = model_device(model)
    idx = torch.tensor([prompt] * samples, device=device)  # (samples, T)
    out = generate(model, idx, max_new_tokens, replace(sampling, eos_id=eos_id))
    answers = []
    for row in out[:, len(prompt):].tolist():
        ids = row[:row.index(eos_id)] if eos_id in row else row
        answers.append(extract_response(tokenizer.decode(ids), prompt_format))
    return answers


def choose_pair(entry: Mapping[str, str], samples: Sequence[str]) -> PreferencePair | None:
    """The pair of ``entry`` from its sampled answers (``pick_answers`` with the task's
    criterion); None when every sample meets the criterion."""
    met = [criterion_met(entry, sample) for sample in samples]
    picked = pick_answers(samples, met, entry["output"])
    if picked is None:
        return None
    chosen, rejected = picked
    return PreferencePair(dict(entry), chosen, rejected,
                          chosen_is_reference=not any(met))


def pick_answers(samples: Sequence[str], met: Sequence[bool], reference: str
                 ) -> tuple[str, str] | None:
    """(chosen, rejected) from sampled answers and whether each meets the criterion: the first
    answer that meets it (else ``reference``, the reference answer) and the first that does
    not; None when every answer meets it (there is nothing to reject)."""
    if len(samples) != len(met):
        raise InputError(f"{len(samples)} samples but {len(met)} criterion results")
    rejected = next((sample for sample, ok in zip(samples, met, strict=True) if not ok), None)
    if rejected is None:
        return None
    chosen = next((sample for sample, ok in zip(samples, met, strict=True) if ok), reference)
    return chosen, rejected


def build_preference_pairs(
    model: GPT, tokenizer: Tokenizer, entries: Sequence[Mapping[str, str]], *,
    samples: int = 4, max_new_tokens: int = 64, temperature: float = 1.0,
    top_k: int | None = 40, prompt_format: str | PromptFormat = "alpaca", seed: int = 123,
    progress: bool = True,
) -> list[PreferencePair]:
    """Preference pairs of ``entries`` (story instructions) from ``samples`` sampled answers of
    ``model`` each (see ``choose_pair``), in the order of the entries."""
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}")
    if not all("task" in entry for entry in entries):
        raise DataError(
            "preference pairs need entries with a task whose criterion can be checked: use the "
            "story instructions (llmcourse.story_instructions)"
        )
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    sampling = Sampling(temperature=temperature, top_k=top_k, generator=generator)
    pairs = []
    for entry in tqdm(entries, desc="sampling answers", unit="entry", disable=not progress):
        answers = sample_responses(model, tokenizer, entry, samples, sampling,
                                   max_new_tokens=max_new_tokens, prompt_format=prompt_format)
        pair = choose_pair(entry, answers)
        if pair is not None:
            pairs.append(pair)
    return pairs


# ---------------------------------------------------------------------------------------------
# The loss


class DPOOutput(NamedTuple):
    """The mean DPO loss of a batch of pairs, and each pair's implicit rewards (B,):
    ``beta * (policy - reference)`` log-probability of the chosen and of the rejected answer."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float = 0.1,
) -> DPOOutput:
    """The DPO loss of B pairs from the log-probabilities (B,) of each answer under the policy
    and the reference: ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``, averaged."""
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return DPOOutput(loss, chosen_rewards.detach(), rejected_rewards.detach())


def response_log_probs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                       ) -> torch.Tensor:
    """Each row's summed log-probability (B,) of its targets that are not ``IGNORE_INDEX``
    (the response and its end token, in a batch collated with ``mask_prompt=True``)."""
    logits = model(inputs)  # (B, T, V)
    kept = targets != IGNORE_INDEX  # (B, T)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T)
    return (picked * kept).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# Batches and training


def encode_pair(tokenizer: Tokenizer, pair: PreferencePair,
                prompt_format: str | PromptFormat = "alpaca"
                ) -> tuple[TokenizedEntry, TokenizedEntry]:
    """The token ids of the pair's chosen and rejected texts (same prompt, two answers)."""
    return tuple(encode_entry(tokenizer, {**pair.entry, "output": answer}, prompt_format)
                 for answer in (pair.chosen, pair.rejected))


def collate_pairs(items: Sequence[tuple[TokenizedEntry, TokenizedEntry]], *, pad_id: int,
                  max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (2B, L) of B pairs: the B chosen texts, then the B rejected ones, with
    the prompts and the padding masked (``collate`` with ``mask_prompt=True``)."""
    rows = [chosen for chosen, _ in items] + [rejected for _, rejected in items]
    return collate(rows, pad_id=pad_id, max_length=max_length, mask_prompt=True)


def pair_loader(pairs: Sequence[PreferencePair], tokenizer: Tokenizer, *, batch_size: int = 8,
                max_length: int | None = None, prompt_format: str | PromptFormat = "alpaca",
                shuffle: bool = True, seed: int = 123) -> DataLoader:
    """Batches of ``collate_pairs`` (shuffled with its own seeded generator when ``shuffle``)."""
    if len(pairs) < batch_size:
        raise ConfigError(
            f"{len(pairs)} preference pairs make no full batch of {batch_size}: sample more "
            "instructions or use a smaller batch"
        )
    items = [encode_pair(tokenizer, pair, prompt_format) for pair in pairs]
    collate_fn = partial(collate_pairs, pad_id=end_of_text_id(tokenizer), max_length=max_length)
    return DataLoader(items, batch_size, shuffle=shuffle, drop_last=shuffle,
                      generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn)


# What DPOMetrics records after every step: the mean reward margin (chosen minus rejected, in
# nats times beta), the fraction of pairs whose margin is positive, and the policy's mean
# summed log-probability of the chosen and of the rejected responses.
METRICS = ("reward_margin", "reward_accuracy", "chosen_log_prob", "rejected_log_prob")


class DPOObjective(nn.Module):
    """The policy and a frozen reference; ``forward(inputs, targets)`` of a ``collate_pairs``
    batch returns ``(None, loss)``, the DPO loss, as ``llmcourse.training.train`` expects of a
    model. The reference never trains: its parameters need no gradient and it stays in eval
    mode. ``last`` holds the latest batch's ``METRICS`` as one tensor."""

    def __init__(self, policy: GPT, reference: GPT, beta: float = 0.1) -> None:
        super().__init__()
        if policy is reference:
            raise InputError("the reference must be a separate, frozen copy of the policy")
        self.policy, self.reference, self.beta = policy, reference, beta
        self.reference.requires_grad_(False)
        self.reference.eval()
        self.last: torch.Tensor | None = None  # the latest batch's METRICS, in that order

    def train(self, mode: bool = True) -> DPOObjective:
        self.policy.train(mode)
        self.training = mode
        return self

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[None, torch.Tensor]:
        pairs = inputs.shape[0] // 2
        policy = response_log_probs(self.policy, inputs, targets)  # (2B,)
        with torch.no_grad():
            reference = response_log_probs(self.reference, inputs, targets)
        out = dpo_loss(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:],
                       self.beta)
        margin = (out.chosen_rewards - out.rejected_rewards).detach()
        # kept on the model's device: DPOMetrics reads all four with one transfer per step
        self.last = torch.stack([
            margin.mean(), (margin > 0).float().mean(),
            policy[:pairs].detach().mean(), policy[pairs:].detach().mean(),
        ])
        return None, out.loss


@dataclass
class DPOMetrics:
    """A training callback that keeps the ``DPOObjective``'s metrics after every step."""

    objective: DPOObjective
    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def on_step(self, state: StepState) -> None:
        if self.objective.last is None:
            return
        self.steps.append(state.step)
        for name, value in zip(METRICS, self.objective.last.tolist(), strict=True):
            self.values.setdefault(name, []).append(value)


def train_dpo(
    policy: GPT, reference: GPT, train_loader: DataLoader, val_loader: DataLoader | None = None,
    *, beta: float = 0.1, epochs: int = 1, callbacks: Iterable[object] = (), **settings: Any,
) -> tuple[TrainingHistory, DPOMetrics]:
    """Train ``policy`` with DPO against the frozen ``reference`` on ``pair_loader`` batches,
    with the course's loop and ``training.fine_tuning_config`` (AdamW at a constant learning
    rate of 5e-5), except: no weight decay, gradients clipped to norm 1, the losses measured
    every 20 steps. ``settings`` override any ``TrainingConfig`` field. Returns the history
    (its losses are DPO losses) and the per-step ``DPOMetrics``."""
    objective = DPOObjective(policy, reference, beta)
    metrics = DPOMetrics(objective)
    dpo_settings = dict(weight_decay=0.0, grad_clip=1.0, eval_every=20)
    config = fine_tuning_config(epochs, **{**dpo_settings, **settings})
    history = train(objective, train_loader, val_loader, config,
                    callbacks=[metrics, *callbacks])
    return history, metrics


def subsample(entries: Sequence[Mapping[str, str]], count: int, seed: int = 123
              ) -> list[Mapping[str, str]]:
    """``count`` entries drawn without replacement (all of them when there are fewer)."""
    entries = list(entries)
    return random.Random(seed).sample(entries, min(count, len(entries)))
