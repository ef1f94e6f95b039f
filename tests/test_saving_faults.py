"""Saves killed at each of their file-system steps.

Each save runs in a forked child that counts its file-system calls (renames, syncs, permission
changes, directory creation and removal, files opened for writing) and kills itself with
SIGKILL at call k, for k = 1, 2, ... until a save completes before reaching k. After every kill,
loading finds the previous complete state or the new one, never none and never a mix; the next
save then leaves no staging entry (``.tmp``, ``.new``, ``.old``) behind.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmcourse import instruction as inst
from llmcourse.checkpoints import load_checkpoint, save_checkpoint
from llmcourse.classification import Classifier, load_classifier, replace_head, save_classifier
from llmcourse.model import GPT, GPTConfig
from llmcourse.saving import write_json_atomic

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

TINY = GPTConfig(vocab_size=32, context_length=8, n_layer=1, n_head=2, n_embd=8)
MAX_STEPS = 200  # a save of these tiny models takes a few dozen steps; more means a loop


def tiny_model(seed: int, num_classes: int | None = None) -> GPT:
    torch.manual_seed(seed)
    model = GPT(TINY)
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    b_state = b.state_dict()
    return all(torch.equal(tensor, b_state[name]) for name, tensor in a.state_dict().items())


def _die_at_step(k: int) -> None:
    """Make the k-th file-system call of this process kill it with SIGKILL."""
    count = 0

    def counted(function: Callable) -> Callable:
        def step(*args, **kwargs):
            nonlocal count
            count += 1
            if count == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return step

    real_open = builtins.open

    def open_for_writing_counts(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            return counted(real_open)(file, mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    for name in ("replace", "rename", "fsync", "chmod", "mkdir", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))
    shutil.rmtree = counted(shutil.rmtree)
    builtins.open = io.open = open_for_writing_counts


def save_killed_at(k: int, save: Callable[[], None]) -> bool:
    """Run ``save`` in a child process killed at its k-th file-system call; returns whether
    the save completed first."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            _die_at_step(k)
            save()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return False
    assert os.WEXITSTATUS(status) == 0, "the save failed in the child (see its traceback)"
    return True


def kill_at_every_step(
    tmp_path: Path,
    save_old: Callable[[Path], None],
    save_new: Callable[[Path], None],
    loaded_state: Callable[[Path], str],
) -> list[str]:
    """For k = 1, 2, ...: save the old state, kill the new save at step k, and record which
    state loads ("old" or "new"; ``loaded_state`` raises on a mix); then check that a later
    save of the old state leaves no staging entry. Returns the states seen, one per k (the
    last: the save that completed)."""
    seen = []
    for k in range(1, MAX_STEPS):
        root = tmp_path / f"k{k}"
        root.mkdir()
        save_old(root / "out")
        completed = save_killed_at(k, lambda root=root: save_new(root / "out"))
        seen.append(loaded_state(root / "out"))
        save_old(root / "out")
        staging_entries = list(root.rglob(".*"))
        assert sorted(os.listdir(root)) == ["out"] and not staging_entries, f"step {k}"
        assert loaded_state(root / "out") == "old"
        if completed:
            return seen
    raise AssertionError(f"the save did not complete within {MAX_STEPS} file-system steps")


def assert_old_then_new(seen: list[str]) -> None:
    """Early kills keep the old state, late ones publish the new one, and nothing else."""
    assert seen[-1] == "new" and seen[0] == "old", seen
    switch = seen.index("new")
    assert seen[switch:] == ["new"] * (len(seen) - switch), seen


def test_a_killed_checkpoint_save_leaves_the_old_or_the_new_checkpoint(tmp_path: Path) -> None:
    models = {"old": tiny_model(0), "new": tiny_model(1)}

    def saver(state: str) -> Callable[[Path], None]:
        return lambda out: save_checkpoint(out, models[state], training_state={"run": state})

    def loaded_state(out: Path) -> str:
        checkpoint = load_checkpoint(out)
        state = checkpoint.training_state["run"]
        assert same_weights(checkpoint.model, models[state]), f"{state} state, other weights"
        return state

    assert_old_then_new(kill_at_every_step(tmp_path, saver("old"), saver("new"), loaded_state))


def test_a_killed_classifier_save_leaves_the_old_or_the_new_classifier(tmp_path: Path) -> None:
    classifiers = {
        "old": Classifier(tiny_model(0, num_classes=2), max_length=5),
        "new": Classifier(tiny_model(1, num_classes=2), max_length=7),
    }
    state_of_length = {5: "old", 7: "new"}

    def saver(state: str) -> Callable[[Path], None]:
        return lambda out: save_classifier(out, classifiers[state])

    def loaded_state(out: Path) -> str:
        loaded = load_classifier(out)
        state = state_of_length[loaded.max_length]
        assert same_weights(loaded.model, classifiers[state].model), f"{state} settings only"
        return state

    assert_old_then_new(kill_at_every_step(tmp_path, saver("old"), saver("new"), loaded_state))


def test_a_killed_instruction_run_never_pairs_a_model_with_another_runs_answers(
    tmp_path: Path,
) -> None:
    models = {"old": tiny_model(0), "new": tiny_model(1)}
    formats = {"old": "alpaca", "new": "phi3"}

    def saver(state: str) -> Callable[[Path], None]:
        def save(out: Path) -> None:  # as `finetune instruct` does: model, answers, scores
            inst.save_instruction_model(out, models[state], formats[state], {"run": state})
            inst.save_responses(out / inst.RESPONSES_FILE, [{"run": state}])
            write_json_atomic(out / inst.SCORES_FILE, {"run": state})
        return save

    def loaded_state(out: Path) -> str:
        loaded = inst.load_instruction_model(out)
        state = loaded.settings["run"]
        assert loaded.prompt_format.name == formats[state]
        assert same_weights(loaded.model, models[state])
        written = sorted(path.name for path in out.iterdir() if not path.name.startswith("."))
        assert written in (  # the answers come after the model, the scores after the answers
            ["instruction.json", "model"],
            ["instruction.json", "model", inst.RESPONSES_FILE],
            ["instruction.json", "model", inst.RESPONSES_FILE, inst.SCORES_FILE],
        ), written
        for name in written[2:]:
            assert (out / name).read_text().count(f'"run": "{state}"') == 1, name
        if state == "old":
            assert len(written) == 4  # the old run had finished
        return state

    assert_old_then_new(kill_at_every_step(tmp_path, saver("old"), saver("new"), loaded_state))
