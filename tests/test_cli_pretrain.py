from __future__ import annotations

import pytest
import torch

from llmcourse.checkpoints import load_checkpoint, load_model
from llmcourse.cli import main
from llmcourse.errors import CourseError
from llmcourse.model import GPTConfig
from llmcourse.pretraining import PretrainingRun, pretrain, read_corpus
from llmcourse.training import TrainingConfig

TINY = GPTConfig(context_length=16, n_layer=1, n_head=2, n_embd=16)


def tiny_run(steps: int, **training: object) -> PretrainingRun:
    config = TrainingConfig(max_steps=steps, eval_every=3, eval_batches=2, progress=False,
                            **training)
    return PretrainingRun("the-verdict", TINY, batch_size=2, max_characters=4000,
                          training=config)


def test_pretrain_writes_a_loadable_checkpoint_and_learns(data_mirror, tmp_path):
    model, history = pretrain(tiny_run(6, learning_rate=1e-2), tmp_path / "run")
    assert history.steps == [1, 2, 3, 4, 5, 6]
    assert history.train_losses[-1] < history.train_losses[0]
    assert history.tokens_seen == 6 * 2 * 16
    reloaded = load_model(tmp_path / "run")
    ids = torch.randint(0, TINY.vocab_size, (1, 16))
    torch.testing.assert_close(reloaded(ids), model.eval()(ids), rtol=0, atol=0)


class StopAfter:
    """A callback that interrupts training after a given step, like a killed process."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, state) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_with_the_uninterrupted_losses(data_mirror, tmp_path):
    _, full = pretrain(tiny_run(6), tmp_path / "full")
    cut = tmp_path / "cut"
    run = tiny_run(6, checkpoint_every=3, checkpoint_dir=cut)
    with pytest.raises(KeyboardInterrupt):
        pretrain(run, cut, callbacks=(StopAfter(5),))
    assert load_checkpoint(cut).training_state is not None  # the step-3 checkpoint survived
    _, resumed = pretrain(run, cut, resume=True)
    assert resumed.train_losses == full.train_losses


def test_the_command_trains_and_resumes(data_mirror, tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["pretrain", "the-verdict", "--out", str(out), "--preset", "course-tiny",
            "--context-length", "16", "--steps", "2", "--batch-size", "2",
            "--max-characters", "3000", "--eval-every", "1", "--eval-batches", "1"]
    assert main(argv) == 0
    assert "step 2: train loss" in capsys.readouterr().out
    assert main([*argv[:-6], "--steps", "2", "--batch-size", "2", "--max-characters", "3000",
                 "--eval-batches", "1", "--resume"]) == 0
    assert load_model(out).config.context_length == 16


def test_resume_without_a_checkpoint_and_a_missing_corpus_fail_clearly(tmp_path, capsys):
    argv = ["pretrain", "the-verdict", "--out", str(tmp_path / "none"), "--steps", "1", "--resume"]
    assert main(argv) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(CourseError, match="neither a data file"):
        read_corpus(str(tmp_path / "missing.txt"))


def test_a_local_text_file_is_a_corpus(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("Once upon a time. " * 10, encoding="utf-8")
    assert read_corpus(str(path), max_characters=9) == "Once upon"
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(CourseError, match="not UTF-8"):
        read_corpus(str(path))
