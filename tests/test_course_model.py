"""The course model: recipes from the profile table, a deterministic run, the cache, the command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from llmcourse import course_model as course
from llmcourse.checkpoints import load_model
from llmcourse.cli import main
from llmcourse.course_model import course_model
from llmcourse.data_files import CACHE_ENV
from llmcourse.errors import ConfigError, CourseError, MissingFileError
from llmcourse.evaluation import evaluate_loss
from llmcourse.generation import Sampling, generate_text
from llmcourse.model import GPT, GPTConfig
from llmcourse.pretraining import make_loaders, read_corpus
from llmcourse.profiles import get_profile
from llmcourse.sliding_window import split_text
from llmcourse.tokenizers import BPETokenizer

SMOKE = get_profile("smoke")
# The smoke profile cut to 3 steps on a little text: for the tests that train several times.
MICRO = dataclasses.replace(SMOKE, pretrain_steps=3, pretrain_warmup_steps=1,
                            corpus_characters=6_000)
SAMPLE_TOKENS = 8  # shorter samples than the real reports have, to keep the tests fast
REPORT_FIELDS = {
    "recipe_name", "recipe_hash", "profile", "recipe", "parameters", "non_embedding_parameters",
    "steps", "tokens_seen", "epochs", "train_loss", "val_loss", "val_perplexity", "wall_seconds",
    "tokens_per_second", "total_seconds", "total_cpu_seconds", "torch_threads", "torch_version",
    "finished_at", "evals", "step_losses", "samples", "validation_bits_per_byte",
    "validation_bytes_per_token", "vocab_size",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and a busy machine's second one only adds
    waiting); the tests compare runs made with the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def short_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(course, "SAMPLE_TOKENS", SAMPLE_TOKENS)


@pytest.fixture(scope="module")
def smoke_cache(
    one_thread: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, torch.nn.Module]:
    """A cache holding the smoke profile's course model (trained once for this module), and the
    model the first ``course_model`` call returned."""
    mirror = os.environ.get("LLMCOURSE_DATA_MIRROR")
    if not mirror or not Path(mirror).is_dir():
        pytest.skip("no data mirror: set LLMCOURSE_DATA_MIRROR to a copy of shared/data")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        patch.setattr(course, "SAMPLE_TOKENS", SAMPLE_TOKENS)
        model = course_model("smoke", train_if_missing=True)
    return cache, model


@pytest.fixture
def use_smoke_cache(smoke_cache, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache, _ = smoke_cache
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# ---------------------------------------------------------------------------------------------
# Recipes


def test_recipe_takes_every_value_from_the_profile_table() -> None:
    cpu = get_profile("cpu")
    recipe = course.recipe_for("cpu")
    run = recipe.run
    assert (recipe.name, recipe.profile) == (
        f"{cpu.model_preset}-{cpu.course_tokenizer}-tinystories-2mib", "cpu")
    assert run.tokenizer == cpu.course_tokenizer
    vocab_size = 50257 if cpu.course_tokenizer == "gpt2" else int(cpu.course_tokenizer[4:])
    assert run.model == GPTConfig.preset(cpu.model_preset, context_length=cpu.context_length,
                                         vocab_size=vocab_size, dropout=cpu.pretrain_dropout)
    assert (run.corpus, run.max_characters, run.batch_size) == (
        cpu.pretraining_corpus, cpu.corpus_characters, cpu.batch_size)
    training = run.training
    assert (training.max_steps, training.learning_rate, training.warmup_steps, training.seed) == (
        cpu.pretrain_steps, cpu.pretrain_learning_rate, cpu.pretrain_warmup_steps, cpu.seed)
    assert (training.min_lr_ratio, training.weight_decay, training.grad_clip) == (0.1, 0.1, 1.0)
    assert training.autocast_dtype is None
    assert recipe.tokens == cpu.pretrain_steps * cpu.batch_size * cpu.context_length


def test_profile_model_config_is_the_recipe_model_or_the_gpt2_size_loaded() -> None:
    cpu = course.profile_model_config("cpu")
    assert cpu == course.recipe_for("cpu").run.model
    assert (cpu.vocab_size, cpu.context_length) == (4096, get_profile("cpu").context_length)
    assert course.profile_model_config("gpt2") == GPTConfig.preset("gpt2-small")


def test_recipe_defaults_to_the_profile_of_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LLMCOURSE_PROFILE", "smoke")
    assert course.recipe_for() == course.recipe_for("smoke")
    assert course.recipe_for(SMOKE) == course.recipe_for("smoke")


def test_cache_directory_is_named_by_recipe_and_hash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    recipe = course.recipe_for("smoke")
    assert len(recipe.digest) == 12 and int(recipe.digest, 16) >= 0
    expected = (tmp_path / "models"
                / f"course-tiny-{SMOKE.course_tokenizer}-tinystories-2mib-{recipe.digest}")
    assert course.course_model_dir("smoke") == expected


@pytest.mark.parametrize(
    "change",
    [
        {"pretrain_steps": 31},
        {"pretrain_learning_rate": 2e-3},
        {"pretrain_warmup_steps": 4},
        {"seed": 124},
        {"batch_size": 5},
        {"context_length": 32},
        {"corpus_characters": 40_000},
        {"pretraining_corpus": "tinyshakespeare"},
        {"model_preset": "course-small", "context_length": 64},
        {"course_tokenizer": "bpe-600"},
        {"course_tokenizer": "bpe-700"},
    ],
)
def test_recipe_hash_changes_with_every_setting_that_changes_the_weights(change) -> None:
    changed = course.recipe_for(dataclasses.replace(SMOKE, **change))
    assert changed.digest != course.recipe_for(SMOKE).digest


def test_recipe_hash_ignores_evaluation_settings_and_is_stable() -> None:
    reevaluated = course.recipe_for(dataclasses.replace(SMOKE, eval_batches=7))
    assert reevaluated.digest == course.recipe_for("smoke").digest
    settings = course.recipe_for("smoke").settings()
    assert json.loads(json.dumps(settings)) == settings  # plain JSON values


def test_gpt2_profile_has_no_course_model_and_says_what_to_load() -> None:
    with pytest.raises(ConfigError) as caught:
        course.recipe_for("gpt2")
    assert "load_gpt2('gpt2-small')" in str(caught.value)
    assert isinstance(caught.value, CourseError)


# ---------------------------------------------------------------------------------------------
# Training and the cache


def test_smoke_model_is_trained_cached_and_reloads_identical_weights(use_smoke_cache, smoke_cache):
    _, trained = smoke_cache
    directory = course.course_model_dir("smoke")
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "model.safetensors", "report.json", "tokenizer.bpe.json"]
    assert [p.name for p in (use_smoke_cache / "models").iterdir()] == [directory.name]
    assert not trained.training
    assert same_weights(load_model(directory), trained)


def test_a_cached_model_loads_without_training(use_smoke_cache, smoke_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(course, "train_course_model", lambda *args, **kw: calls.append(args))
    loaded = course_model("smoke")
    assert calls == []
    assert same_weights(loaded, smoke_cache[1])
    assert not loaded.training


def test_report_holds_the_run_and_its_numbers_can_be_reproduced(use_smoke_cache, smoke_cache):
    report = course.course_model_report("smoke")
    saved = json.loads((course.course_model_dir("smoke") / "report.json").read_text())
    assert report == saved and set(report) == REPORT_FIELDS
    recipe = course.recipe_for("smoke")
    assert (report["recipe_name"], report["recipe_hash"], report["profile"]) == (
        recipe.name, recipe.digest, "smoke")
    assert report["recipe"] == recipe.settings()
    assert report["steps"] == len(report["step_losses"]) == SMOKE.pretrain_steps
    assert report["tokens_seen"] == recipe.tokens
    assert report["tokens_per_second"] == pytest.approx(
        report["tokens_seen"] / report["wall_seconds"], rel=1e-9)
    assert [record["step"] for record in report["evals"]] == [6, 12, 18, 24, 30]
    assert report["vocab_size"] == recipe.run.model.vocab_size
    assert report["val_loss"] < math.log(report["vocab_size"])  # better than a uniform guess
    assert report["val_perplexity"] == pytest.approx(math.exp(report["val_loss"]), rel=1e-12)

    model = smoke_cache[1]
    tokenizer = course.course_tokenizer("smoke")
    _, val_loader = make_loaders(recipe.run, tokenizer, progress=False)
    assert report["val_loss"] == pytest.approx(evaluate_loss(model, val_loader), abs=1e-6)
    val_text = split_text(read_corpus("tinystories-2mib", SMOKE.corpus_characters), 0.9)[1]
    bytes_per_token = len(val_text.encode("utf-8")) / len(tokenizer.encode(val_text,
                                                                         allowed_special="all"))
    assert report["validation_bytes_per_token"] == pytest.approx(bytes_per_token, rel=1e-12)
    assert report["validation_bits_per_byte"] == pytest.approx(
        report["val_loss"] / math.log(2) / bytes_per_token, rel=1e-12)
    greedy = [s for s in report["samples"] if s["decoding"] == "greedy"]
    assert [s["prompt"] for s in greedy] == list(course.SAMPLE_PROMPTS)
    assert len(report["samples"]) == 2 * len(course.SAMPLE_PROMPTS)
    first = generate_text(model, tokenizer, greedy[0]["prompt"], SAMPLE_TOKENS,
                          Sampling(eos_id=tokenizer.eot_token))
    assert greedy[0]["text"] == first


def test_missing_model_without_training_names_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(MissingFileError) as caught:
        course_model("smoke", train_if_missing=False)
    message = str(caught.value)
    assert "llmcourse course-model --profile smoke" in message
    assert str(course.course_model_dir("smoke")) in message
    assert isinstance(caught.value, CourseError) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(MissingFileError, match="llmcourse course-model"):
        course.course_model_report("smoke")
    assert not (tmp_path / "models").exists()


def test_a_file_where_the_model_goes_is_refused_before_training(tmp_path, monkeypatch,
                                                                capsys) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    directory = course.course_model_dir("smoke")
    directory.parent.mkdir(parents=True)
    directory.write_text("not a model")

    def refuse_to_train(*args, **kwargs):
        raise AssertionError("trained before checking where the model goes")

    monkeypatch.setattr(course, "train_course_model", refuse_to_train)
    assert main(["course-model", "--profile", "smoke"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot save the course model to {directory}: it exists and is a file; move "
        "the file away or choose another path\n")


def test_same_seed_gives_the_same_weights_in_fresh_caches(data_mirror, tmp_path, monkeypatch,
                                                          capsys) -> None:
    models = []
    for cache, profile in (("a", MICRO), ("b", MICRO), ("c", dataclasses.replace(MICRO, seed=7))):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / cache))
        torch.manual_seed(0)
        models.append(course_model(profile))
        after_training = torch.rand(3)
        torch.manual_seed(0)
        assert torch.equal(after_training, torch.rand(3)), "training moved torch's global RNG"
    assert same_weights(models[0], models[1])
    assert not same_weights(models[0], models[2])
    assert f"Training the course model course-tiny-{SMOKE.course_tokenizer}-tinystories-2mib-" in (
        capsys.readouterr().err)


def test_retrain_replaces_the_cached_model(use_smoke_cache, smoke_cache, monkeypatch):
    trained = smoke_cache[1]
    other = GPT(trained.config).eval()
    report = course.course_model_report("smoke")
    tokenizer = course.course_tokenizer("smoke")
    monkeypatch.setattr(course, "train_course_model", lambda profile: (other, tokenizer, report))
    try:
        assert same_weights(course_model("smoke", retrain=True), other)
        assert same_weights(course_model("smoke"), other)
        models = use_smoke_cache / "models"
        assert [p.name for p in models.iterdir()] == [course.course_model_dir("smoke").name]
    finally:  # put the smoke model back for the other tests
        course._publish(trained, tokenizer, report, course.course_model_dir("smoke"),
                        replace_existing=True)


def test_a_model_published_first_is_kept_by_a_later_writer(tmp_path) -> None:
    tokenizer = BPETokenizer.train("a little story about a cat. " * 20, 300)
    config = GPTConfig.preset("course-tiny", vocab_size=tokenizer.vocab_size)
    first, second = GPT(config).eval(), GPT(config).eval()
    target = tmp_path / "models" / "recipe-0123456789ab"
    course._publish(first, tokenizer, {"run": 1}, target, replace_existing=False)
    course._publish(second, tokenizer, {"run": 2}, target, replace_existing=False)
    assert same_weights(load_model(target), first)
    assert json.loads((target / "report.json").read_text()) == {"run": 1}
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging left


# ---------------------------------------------------------------------------------------------
# The command


def test_command_prints_the_report_and_samples(use_smoke_cache, capsys) -> None:
    assert main(["course-model", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    report = course.course_model_report("smoke")
    assert f"course model {report['recipe_name']}-{report['recipe_hash']} (profile smoke)" in out
    assert str(course.course_model_dir("smoke")) in out
    assert f"validation {report['val_loss']:.3f}" in out
    assert f"validation {report['validation_bits_per_byte']:.3f} bits per byte" in out
    assert f"{report['tokens_seen']:,} tokens" in out
    for sample in report["samples"]:  # the loaded model continues the prompts as trained
        text = (sample["prompt"] + sample["text"]).rstrip().replace("\n", "\n    ")
        assert f"[{sample['decoding']}] {text}\n" in out


def test_command_explains_a_profile_without_a_course_model(capsys) -> None:
    assert main(["course-model", "--profile", "gpt2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: profile 'gpt2' uses OpenAI's GPT-2 sizes")
    assert "Traceback" not in captured.err


def test_command_prints_the_report_as_json(use_smoke_cache, capsys) -> None:
    assert main(["course-model", "--profile", "smoke", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = course.course_model_report("smoke")
    assert printed["checkpoint"] == str(course.course_model_dir("smoke"))
    for key in ("validation_bits_per_byte", "wall_seconds", "tokens_per_second", "recipe"):
        assert printed[key] == report[key]
    assert printed["samples"] == report["samples"]  # the loaded model samples as it was saved
    assert len(printed["samples"]) == 2 * len(course.SAMPLE_PROMPTS)
