"""Run profiles: the table is consistent, ``$LLMCOURSE_PROFILE`` selects one, bad names fail."""

from __future__ import annotations

import dataclasses

import pytest

from llmcourse import data_files, profiles
from llmcourse.errors import ConfigError, CourseError
from llmcourse.model import PRESETS
from llmcourse.profiles import PROFILE_ENV, current_profile, get_profile


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpt2"])
def test_each_profile_loads_with_settings_the_package_knows(name: str) -> None:
    profile = get_profile(name)
    assert profile.name == name
    assert profile.model_preset in PRESETS and profile.verdict_preset in PRESETS
    assert 0 < profile.context_length <= PRESETS[profile.model_preset].context_length
    assert data_files.get(profile.pretraining_corpus).name == profile.pretraining_corpus
    counts = [profile.pretrain_steps, profile.batch_size, profile.eval_batches,
              profile.verdict_epochs, profile.classification_epochs, profile.instruction_epochs]
    assert all(isinstance(count, int) and count > 0 for count in counts)
    assert 0 <= profile.pretrain_warmup_steps < profile.pretrain_steps
    assert 0 < profile.pretrain_learning_rate <= 1e-2
    for subset in (profile.corpus_characters, profile.classification_examples,
                   profile.instruction_examples):
        assert subset is None or subset > 0
    assert profile.instruction_data in ("stories", "book")


def test_profiles_have_the_agreed_models_and_verdict_runs() -> None:
    assert [(p.name, p.model_preset, p.verdict_preset, p.verdict_epochs, p.verdict_learning_rate)
            for p in profiles.PROFILES.values()] == [
        ("smoke", "course-tiny", "course-tiny", 1, 4e-4),
        ("cpu", "course-small", "course-small", 10, 2e-3),
        ("gpt2", "gpt2-small", "gpt2-small", 10, 4e-4),  # the book's experiment
    ]


def test_small_models_follow_story_instructions_and_gpt2_the_books() -> None:
    assert {p.name: p.instruction_data for p in profiles.PROFILES.values()} == {
        "smoke": "stories", "cpu": "stories", "gpt2": "book"}


def test_smoke_profile_is_a_small_subset_of_cpu() -> None:
    smoke, cpu = get_profile("smoke"), get_profile("cpu")
    assert smoke.pretrain_steps < cpu.pretrain_steps
    assert cpu.corpus_characters is None and smoke.corpus_characters == 50_000
    assert smoke.classification_examples == smoke.instruction_examples == 64
    assert cpu.classification_examples is None and cpu.instruction_examples is None


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("cpu").pretrain_steps = 1  # type: ignore[misc]


def test_environment_variable_selects_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "smoke")
    assert current_profile() is get_profile("smoke")
    monkeypatch.setenv(PROFILE_ENV, " gpt2 ")
    assert current_profile() is get_profile("gpt2")


@pytest.mark.parametrize("value", [None, ""])
def test_unset_or_empty_environment_variable_means_cpu(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(PROFILE_ENV, raising=False)
    else:
        monkeypatch.setenv(PROFILE_ENV, value)
    assert current_profile().name == "cpu"


def test_unknown_profile_in_environment_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "fast")
    with pytest.raises(ConfigError) as caught:
        current_profile()
    message = str(caught.value)
    assert "LLMCOURSE_PROFILE='fast'" in message
    assert "smoke, cpu, gpt2" in message
    assert isinstance(caught.value, CourseError) and isinstance(caught.value, ValueError)


def test_unknown_profile_name_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown run profile 'CPU'; choose one of: smoke"):
        get_profile("CPU")
