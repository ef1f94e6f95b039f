"""The course's own pretrained GPT: one fixed recipe per run profile, trained once, then cached.

Later chapters start from a pretrained model. In the ``smoke`` and ``cpu`` profiles that model is
the course's own small GPT pretrained on the TinyStories sample, with the **course tokenizer**: a
byte-level BPE trained by chapter 1's ``BPETokenizer.train`` on the same stories (4,096 tokens in
the cpu profile). A small vocabulary makes the output layer, most of a small GPT's work with
GPT-2's 50,257 tokens, cheap. The model is made by this module from a fixed seed and recipe:

>>> from llmcourse.course_model import course_model
>>> model = course_model()  # doctest: +SKIP

The first call trains it (minutes for ``cpu``, seconds for ``smoke``) and saves it; every later
call loads it from the cache. ``llmcourse course-model`` does the same from a shell and prints the
training report.

The cache directory is ``<cache root>/models/<recipe name>-<recipe hash>``: the hash covers every
setting that decides the weights (model shape, data file and its sha256, batch size, optimizer,
schedule, steps, seed), so a changed recipe never loads a stale model. It holds the checkpoint
(``config.json``, ``tokenizer.bpe.json`` and ``model.safetensors``) and ``report.json`` (the
recipe, losses and bits per byte, tokens, time, throughput and sample generations).
``course_tokenizer()`` gives the tokenizer saved with it.

The same recipe gives the same weights on every run on one machine: the seed fixes the
initialisation, the batch order and dropout. Other machines, torch versions or thread counts can
round differently, so their weights agree only closely.

Concurrent use: the directory is written by ``llmcourse.saving.staged_directory``, so a reader
never sees half a model, and a crash while publishing is repaired by the next lookup. Two
processes that both find the model missing both train it; the first to finish publishes its
directory and the other keeps that one and drops its own copy.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tiktoken
import torch

from llmcourse import data_files
from llmcourse.checkpoints import CHECKPOINT_FILES, load_model, write_checkpoint_files
from llmcourse.errors import ConfigError, MissingFileError
from llmcourse.evaluation import bits_per_byte, bytes_per_token_of, evaluate_loss, perplexity
from llmcourse.generation import Sampling, generate_text
from llmcourse.model import GPT, GPTConfig, count_parameters
from llmcourse.model_state import model_device
from llmcourse.pretraining import (
    TOKENIZER_TRAINER_VERSION,
    TRAINED_TOKENIZER,
    PretrainingRun,
    make_loaders,
    run_tokenizer,
)
from llmcourse.profiles import Profile, current_profile, get_profile
from llmcourse.saving import check_destination, recover, staged_directory
from llmcourse.tokenizers import GPT2_VOCAB_SIZE
from llmcourse.tokenizers.files import TOKENIZER_FILE, end_of_text_id, load_tokenizer
from llmcourse.training import TrainingConfig, train

REPORT_FILE = "report.json"
# Bump when the code that trains the model changes its result, so old caches are not used.
RECIPE_VERSION = 2
EVALUATIONS_PER_RUN = 5  # loss estimates during training (the last one after the final step)
SAMPLE_PROMPTS = ("Once upon a time", "One day, a little girl named Lily", "The dog")
SAMPLE_TOKENS = 60  # new tokens per sample at most (a story's end token stops it earlier)
SAMPLE_TOP_K = 40
SAMPLE_TEMPERATURE = 0.8
# Float32 FLOP/s that training sustains on a 2-core laptop CPU, for the time estimate only: the
# cpu recipe (6 x 4.24M parameters x 3.89M tokens = 99 TFLOP, dropout 0.1) trained in 19.4
# minutes on two idle cores of this course's reference machine, 85 GFLOP/s.
LAPTOP_TRAINING_FLOPS = 85e9


@dataclass(frozen=True)
class CourseModelRecipe:
    """Everything that decides the course model's weights, plus how to evaluate it.

    ``name`` is the model preset and corpus (``course-small-tinystories-2mib``); ``run`` is the
    pretraining run (model, data, optimizer, schedule, steps, seed); ``profile`` is the run
    profile the recipe comes from (it does not enter the hash).
    """

    name: str
    profile: str
    run: PretrainingRun

    def settings(self) -> dict[str, Any]:
        """The settings that decide the weights, as plain JSON values."""
        run = self.run
        return {
            "version": RECIPE_VERSION,
            "model": asdict(run.model),
            "tokenizer": run.tokenizer,
            "tokenizer_trainer": TOKENIZER_TRAINER_VERSION,
            "corpus": run.corpus,
            "corpus_sha256": data_files.get(run.corpus).sha256,
            "max_characters": run.max_characters,
            "val_fraction": run.val_fraction,
            "batch_size": run.batch_size,
            "training": run.training.run_settings(),
        }

    @property
    def digest(self) -> str:
        """A short hash (12 hex digits) of ``settings()``."""
        canonical = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]

    @property
    def directory_name(self) -> str:
        return f"{self.name}-{self.digest}"

    @property
    def tokens(self) -> int:
        """Training tokens: steps x batch size x context length."""
        run = self.run
        return run.training.max_steps * run.batch_size * run.model.context_length

    def estimated_minutes(self) -> float:
        """Rough training time on a 2-core laptop CPU: 6 FLOPs per parameter and token
        (forward and backward), at ``LAPTOP_TRAINING_FLOPS``."""
        flops = 6 * count_parameters(self.run.model) * self.tokens
        return flops / LAPTOP_TRAINING_FLOPS / 60


def recipe_for(profile: str | Profile | None = None) -> CourseModelRecipe:
    """The course model's recipe in a run profile (default: ``$LLMCOURSE_PROFILE``).

    Every value comes from the profile table in ``llmcourse.profiles``: model preset, context
    length, corpus and how much of it, batch size, steps, learning rate, warmup and seed.
    """
    profile = _profile(profile)
    if not profile.model_preset.startswith("course-"):
        raise ConfigError(
            f"profile {profile.name!r} uses OpenAI's GPT-2 sizes ({profile.model_preset}) and "
            f"starts from OpenAI's weights: load them with "
            f"llmcourse.gpt2_weights.load_gpt2({profile.model_preset!r}). The course's own model "
            "exists for the profiles whose model preset is course-tiny or course-small"
        )
    steps = profile.pretrain_steps
    training = TrainingConfig(
        learning_rate=profile.pretrain_learning_rate,
        max_steps=steps,
        warmup_steps=profile.pretrain_warmup_steps,
        min_lr_ratio=0.1,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_every=max(1, steps // EVALUATIONS_PER_RUN),
        eval_batches=profile.eval_batches,
        seed=profile.seed,
    )
    run = PretrainingRun(
        corpus=profile.pretraining_corpus,
        model=GPTConfig.preset(
            profile.model_preset,
            context_length=profile.context_length,
            vocab_size=_vocab_size(profile.course_tokenizer),
            dropout=profile.pretrain_dropout,
        ),
        tokenizer=profile.course_tokenizer,
        batch_size=profile.batch_size,
        max_characters=profile.corpus_characters,
        training=training,
    )
    name = f"{profile.model_preset}-{profile.course_tokenizer}-{profile.pretraining_corpus}"
    return CourseModelRecipe(name=name, profile=profile.name, run=run)


def profile_model_config(profile: str | Profile | None = None) -> GPTConfig:
    """The GPT configuration a run profile works with: the course model's (its recipe, with the
    course tokenizer's vocabulary and the profile's context length) where the profile trains its
    own model, else the OpenAI GPT-2 size whose weights it loads."""
    profile = _profile(profile)
    if profile.model_preset.startswith("course-"):
        return recipe_for(profile).run.model
    return GPTConfig.preset(profile.model_preset)


def _vocab_size(tokenizer: str) -> int:
    """The number of tokens of a course tokenizer spec: N for ``bpe-N``, GPT-2's for gpt2."""
    if match := TRAINED_TOKENIZER.fullmatch(tokenizer):
        return int(match[1])
    if tokenizer == "gpt2":
        return GPT2_VOCAB_SIZE
    raise ConfigError(f"course tokenizer {tokenizer!r} must be 'gpt2' or 'bpe-N'")


def course_model_dir(profile: str | Profile | None = None) -> Path:
    """Where the course model of ``profile`` is (or will be) cached."""
    return data_files.cache_root() / "models" / recipe_for(profile).directory_name


def _cached_model_dir(profile: str | Profile | None) -> Path:
    """``course_model_dir(profile)``, after repairing a publication a crash interrupted."""
    directory = course_model_dir(profile)
    recover(directory)
    return directory


def train_course_model(
    profile: str | Profile | None = None, *, progress: bool = True
) -> tuple[GPT, tiktoken.Encoding, dict[str, Any]]:
    """Train the course model of ``profile`` from scratch (the model is neither read from nor
    written to the cache; its tokenizer and tokenized corpus are cached). Returns the model, in
    eval mode, its tokenizer and its report (see ``course_model_report``).

    Torch's global random number generator is left as it was."""
    start, start_cpu = time.perf_counter(), time.process_time()
    recipe = recipe_for(profile)
    run = replace(recipe.run, training=replace(recipe.run.training, progress=progress))
    tokenizer = run_tokenizer(run, progress=progress)
    train_loader, val_loader = make_loaders(run, tokenizer, progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.training.seed)
        model = GPT(run.model)
        history = train(model, train_loader, val_loader, run.training, tokenizer=tokenizer)
    val_loss = evaluate_loss(model, val_loader)  # every validation batch, not an estimate
    val_bytes_per_token = bytes_per_token_of(val_loader)
    model.eval()
    report = {
        "recipe_name": recipe.name,
        "recipe_hash": recipe.digest,
        "profile": recipe.profile,
        "recipe": recipe.settings(),
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "steps": len(history.steps),
        "tokens_seen": history.tokens_seen,
        "epochs": len(history.steps) / len(train_loader),
        "train_loss": history.evals[-1].train_loss,
        "val_loss": val_loss,
        "val_perplexity": perplexity(val_loss),
        "validation_bits_per_byte": bits_per_byte(val_loss, val_bytes_per_token),
        "validation_bytes_per_token": val_bytes_per_token,
        "vocab_size": tokenizer.n_vocab,
        "wall_seconds": history.elapsed_seconds,
        "tokens_per_second": history.tokens_per_second,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "evals": [asdict(record) for record in history.evals],
        "step_losses": history.train_losses,
        "samples": sample_generations(model, tokenizer, seed=run.training.seed),
    }
    # all of it (data, training, evaluation, samples); CPU time summed over threads
    report["total_seconds"] = time.perf_counter() - start
    report["total_cpu_seconds"] = time.process_time() - start_cpu
    return model, tokenizer, report


def sample_generations(
    model: GPT, tokenizer: tiktoken.Encoding, *, seed: int
) -> list[dict[str, str]]:
    """Continue each of ``SAMPLE_PROMPTS`` greedily and by top-k sampling (seeded); returns
    ``{"prompt", "decoding", "text"}`` records, ``text`` without the prompt."""
    end_id = end_of_text_id(tokenizer)
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    decodings = {
        "greedy": Sampling(eos_id=end_id),
        f"top-k {SAMPLE_TOP_K}, temperature {SAMPLE_TEMPERATURE}": Sampling(
            SAMPLE_TEMPERATURE, SAMPLE_TOP_K, eos_id=end_id, generator=generator
        ),
    }
    return [
        {
            "prompt": prompt,
            "decoding": decoding,
            "text": generate_text(model, tokenizer, prompt, SAMPLE_TOKENS, sampling),
        }
        for decoding, sampling in decodings.items()
        for prompt in SAMPLE_PROMPTS
    ]


def course_model(
    profile: str | Profile | None = None,
    *,
    train_if_missing: bool = True,
    retrain: bool = False,
    device: str | torch.device = "cpu",
) -> GPT:
    """The course's pretrained GPT for ``profile`` (default: ``$LLMCOURSE_PROFILE``), in eval
    mode on ``device``.

    Loaded from the cache; when it is not there it is trained first (on the CPU) and saved, unless
    ``train_if_missing`` is False, which raises ``MissingFileError`` instead.
    ``retrain`` trains it again and replaces the cached copy.
    """
    recipe = recipe_for(profile)
    directory = _cached_model_dir(profile)
    if retrain or not directory.is_dir():
        if not (train_if_missing or retrain):
            raise MissingFileError(
                f"the course model of profile {recipe.profile!r} is not in the cache "
                f"({directory}); train it with `llmcourse course-model --profile "
                f"{recipe.profile}` (about {_duration(recipe)} on a 2-core laptop CPU), or call "
                "course_model() with train_if_missing=True"
            )
        check_destination(directory, what="the course model", own_names=(
            *CHECKPOINT_FILES, REPORT_FILE))
        print(
            f"Training the course model {recipe.directory_name} (profile {recipe.profile!r}: "
            f"{recipe.run.training.max_steps} steps, {recipe.tokens:,} tokens); this takes "
            f"about {_duration(recipe)} on a 2-core laptop CPU, once: later calls load it from "
            f"{directory}",
            file=sys.stderr,
            flush=True,
        )
        model, tokenizer, report = train_course_model(profile)
        _publish(model, tokenizer, report, directory, replace_existing=retrain)
    return load_model(directory, device=device)


def course_tokenizer(profile: str | Profile | None = None) -> tiktoken.Encoding:
    """The tokenizer of the course model of ``profile``: the one saved with the cached model,
    else the course tokenizer its recipe names (trained on first use and cached)."""
    directory = _cached_model_dir(profile)
    recipe = recipe_for(profile)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(directory, vocab_size=recipe.run.model.vocab_size)
    return run_tokenizer(recipe.run)


def course_model_report(profile: str | Profile | None = None) -> dict[str, Any]:
    """The report saved with the cached course model of ``profile``: ``recipe`` (the settings
    that decide the weights), ``train_loss`` and ``val_loss`` (nats per token, after the last
    step; the validation loss over the whole held-out text), ``validation_bits_per_byte`` (that
    loss in bits per byte of text, comparable across tokenizers), ``tokens_seen``,
    ``wall_seconds``, ``tokens_per_second``, ``evals`` and ``step_losses`` (the loss curve) and
    ``samples`` (greedy and top-k continuations of a few prompts)."""
    path = _cached_model_dir(profile) / REPORT_FILE
    if not path.is_file():
        raise MissingFileError(
            f"no course model report at {path}: the model is not cached yet; run "
            f"`llmcourse course-model --profile {recipe_for(profile).profile}`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _profile(profile: str | Profile | None) -> Profile:
    if profile is None:
        return current_profile()
    return profile if isinstance(profile, Profile) else get_profile(profile)


def _duration(recipe: CourseModelRecipe) -> str:
    minutes = recipe.estimated_minutes()
    return f"{minutes:.0f} minutes" if minutes >= 1.5 else "a minute or less"


def _publish(
    model: GPT,
    tokenizer: tiktoken.Encoding,
    report: dict[str, Any],
    target: Path,
    *,
    replace_existing: bool,
) -> None:
    """Write checkpoint and report as the directory ``target`` (a staged swap). An existing
    ``target`` is kept (another process published the same recipe first) unless
    ``replace_existing``."""
    with staged_directory(target, keep_existing=not replace_existing) as staging:
        write_checkpoint_files(staging, model, tokenizer=tokenizer)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
