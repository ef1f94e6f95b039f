"""Run profiles: how big every chapter's models, data and training runs are.

The environment variable ``LLMCOURSE_PROFILE`` picks one profile for a whole run, and this
module is the only place that reads it:

- ``smoke``: continuous integration. Tiny model, a few steps, small data subsets; each
  notebook runs in well under a minute.
- ``cpu`` (the default): a laptop without a GPU. A small GPT with the course tokenizer (a
  4,096-token BPE trained on the stories) pretrained on the TinyStories sample in about 20
  minutes on two cores, once, then cached. The committed notebook outputs are a run of this
  profile.
- ``gpt2``: OpenAI's GPT-2 (124M) sizes and settings, to reproduce the published numbers
  (needs the Hugging Face hub and, in practice, a GPU).

All values live in the one table ``PROFILES`` below; chapters read them through
``current_profile()`` and never branch on the profile's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llmcourse.errors import ConfigError

PROFILE_ENV = "LLMCOURSE_PROFILE"
DEFAULT_PROFILE = "cpu"


@dataclass(frozen=True)
class Profile:
    """The settings of one run profile.

    Sizes are counts of examples, steps or characters; ``None`` means "all of it".
    """

    name: str
    description: str
    model_preset: str  # a key of llmcourse.model.PRESETS: the course's own GPT
    course_tokenizer: str  # the course model's tokenizer: "gpt2" or "bpe-N" (llmcourse.pretraining)
    pretraining_corpus: str  # a data file name in llmcourse.data_files
    corpus_characters: int | None  # read this many characters of the corpus (None: all)
    pretrain_steps: int  # optimizer steps of the chapter-6 pretraining run
    pretrain_learning_rate: float  # its peak learning rate (linear warmup, cosine decay to 10%)
    pretrain_warmup_steps: int  # its warmup steps
    pretrain_dropout: float  # its dropout (the model trains on a small corpus for many epochs)
    batch_size: int  # sequences per optimizer step
    context_length: int  # tokens per training sequence (at most the model's context length)
    eval_batches: int  # batches averaged for each train/validation loss estimate
    verdict_preset: str  # the model of the chapter-6 experiment on "The Verdict"
    verdict_epochs: int  # its epochs
    verdict_learning_rate: float  # its constant learning rate (the book's is 4e-4)
    classification_epochs: int  # section 7.2 (spam classification) fine-tuning epochs
    classification_examples: int | None  # training examples used in 7.2 (None: all)
    instruction_epochs: int  # section 7.3 (instruction following) fine-tuning epochs
    instruction_examples: int | None  # training examples used in 7.3 (None: all)
    instruction_data: str  # default `finetune instruct --data`: "stories" (TinyStories) or "book"
    preference_instructions: int  # section 7.4: training instructions sampled for DPO pairs
    seed: int  # seed of every random number generator in a run


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            name="smoke",
            description="CI: tiny model, a few steps, data subsets; each notebook in seconds",
            model_preset="course-tiny",
            course_tokenizer="gpt2",
            pretraining_corpus="tinystories-2mib",
            corpus_characters=50_000,
            pretrain_steps=30,
            pretrain_learning_rate=3e-3,
            pretrain_warmup_steps=3,
            pretrain_dropout=0.0,
            batch_size=4,
            context_length=64,
            eval_batches=2,
            verdict_preset="course-tiny",
            verdict_epochs=1,
            verdict_learning_rate=4e-4,
            classification_epochs=1,
            classification_examples=64,
            instruction_epochs=1,
            instruction_examples=64,
            instruction_data="stories",
            preference_instructions=16,
            seed=123,
        ),
        Profile(
            name="cpu",
            description="a laptop without a GPU: a small GPT pretrained in about 20 minutes",
            model_preset="course-small",
            course_tokenizer="bpe-4096",
            pretraining_corpus="tinystories-2mib",
            corpus_characters=None,
            pretrain_steps=7600,
            pretrain_learning_rate=2e-3,
            pretrain_warmup_steps=200,
            pretrain_dropout=0.1,
            batch_size=4,
            context_length=128,
            eval_batches=10,
            verdict_preset="course-small",
            verdict_epochs=10,
            verdict_learning_rate=2e-3,
            classification_epochs=3,
            classification_examples=None,
            instruction_epochs=1,
            instruction_examples=None,
            instruction_data="stories",
            preference_instructions=600,
            seed=123,
        ),
        Profile(
            name="gpt2",
            description="OpenAI GPT-2 (124M) sizes and settings: reproduces the published numbers",
            model_preset="gpt2-small",
            course_tokenizer="gpt2",
            pretraining_corpus="tinystories-2mib",
            corpus_characters=None,
            pretrain_steps=3000,
            pretrain_learning_rate=6e-4,
            pretrain_warmup_steps=100,
            pretrain_dropout=0.0,
            batch_size=8,
            context_length=1024,
            eval_batches=10,
            verdict_preset="gpt2-small",
            verdict_epochs=10,
            verdict_learning_rate=4e-4,
            classification_epochs=5,
            classification_examples=None,
            instruction_epochs=2,
            instruction_examples=None,
            instruction_data="book",
            preference_instructions=600,
            seed=123,
        ),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (one of ``PROFILES``)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown run profile {name!r}; {_choices()}")
    return PROFILES[name]


def current_profile() -> Profile:
    """The profile named by ``$LLMCOURSE_PROFILE``; ``cpu`` when it is unset or empty."""
    name = os.environ.get(PROFILE_ENV, "").strip() or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ConfigError(f"{PROFILE_ENV}={name!r} is not a run profile; {_choices()}")
    return PROFILES[name]


def _choices() -> str:
    return (
        f"choose one of: {', '.join(PROFILES)} "
        f"(leave {PROFILE_ENV} unset for {DEFAULT_PROFILE!r})"
    )
