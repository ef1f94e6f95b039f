from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from llmcourse import training
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


def last_line(error: str) -> str:
    """The message a command printed last on standard error, after any progress bar (which
    ends its line before the message); no traceback may come with it."""
    assert "Traceback" not in error and error.endswith("\n")
    return error.rstrip("\n").split("\n")[-1]


def one_line_error(capsys) -> str:
    """The message of a command that failed with a one-line error and printed nothing else."""
    captured = capsys.readouterr()
    assert captured.out == ""
    message = last_line(captured.err)
    assert message.startswith("error: ") and "\r" not in message, captured.err
    return message.removeprefix("error: ")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--context-length", "0", "--context-length must be at least 1, got 0"),
        ("--dropout", "1.5", r"--dropout must lie in [0, 1) (the probability of dropping an "
                             "activation), got 1.5"),
        ("--dropout", "nan", "--dropout must lie in [0, 1)"),
        ("--val-fraction", "0", "--val-fraction must lie in (0, 1) (the share of the corpus "
                                "held out for validation, such as 0.1), got 0.0"),
        ("--val-fraction", "1.5", "--val-fraction must lie in (0, 1)"),
        ("--max-characters", "-10", "--max-characters must be at least 1, got -10"),
        ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
        ("--lr", "nan", "--lr must be a positive number, got nan"),
        ("--weight-decay", "-0.1", "--weight-decay must be 0 or a positive number, got -0.1"),
        ("--checkpoint-every", "0", "--checkpoint-every must be at least 1, got 0"),
    ],
)
def test_out_of_range_options_fail_before_any_work(tmp_path, capsys, option, value, message):
    out = tmp_path / "out"
    # a corpus that does not exist: the options are refused before it is looked for
    argv = ["pretrain", str(tmp_path / "missing.txt"), "--out", str(out), "--steps", "1",
            option, value]
    assert main(argv) == 2
    assert one_line_error(capsys).startswith(message)
    assert not out.exists()


def test_pretraining_run_checks_its_fields():
    with pytest.raises(CourseError, match="val_fraction must lie strictly between 0 and 1"):
        PretrainingRun("the-verdict", TINY, val_fraction=1.0)
    with pytest.raises(CourseError, match="max_characters must be None .* got -10"):
        PretrainingRun("the-verdict", TINY, max_characters=-10)
    with pytest.raises(CourseError, match="batch_size must be a whole number"):
        PretrainingRun("the-verdict", TINY, batch_size=0)


TINY_ARGV = ["--preset", "course-tiny", "--context-length", "16", "--batch-size", "2",
             "--max-characters", "3000", "--eval-every", "100", "--eval-batches", "1"]


def test_running_out_of_memory_is_a_one_line_error_with_an_estimate(
    data_mirror, tmp_path, capsys, monkeypatch
):
    def refuse(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 "
                                     "has a total capacity of 79.10 GiB of which 1.2 GiB is free.")

    monkeypatch.setattr(training, "train_step", refuse)
    argv = ["pretrain", "the-verdict", "--out", str(tmp_path / "out"), "--steps", "2", *TINY_ARGV]
    assert main(argv) == 2
    message = one_line_error(capsys)
    assert message.startswith("out of memory on cpu in a training step (it asked for 20.00 GiB "
                              "more): a batch of 2 sequences of 16 tokens needs about ")
    assert "AdamW state" in message and "by a rough estimate" in message
    assert message.endswith("lower the batch size (--batch-size) or the context length "
                            "(--context-length): the activations grow with both")


class InterruptAt:
    """A stand-in for ``train_step`` that presses Ctrl-C at the given call."""

    def __init__(self, call: int):
        self.call, self.calls = call, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt
        return REAL_TRAIN_STEP(*args, **kwargs)


REAL_TRAIN_STEP = training.train_step


def test_ctrl_c_names_the_last_checkpoint_and_the_command_that_resumes(
    data_mirror, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    argv = ["pretrain", "the-verdict", "--out", str(out), "--steps", "4", "--checkpoint-every",
            "2", *TINY_ARGV]
    monkeypatch.setattr(training, "train_step", InterruptAt(4))
    assert main(argv) == 130
    error = last_line(capsys.readouterr().err)
    assert error.startswith(f"interrupted after step 3 of 4; the last checkpoint, of step 2, is "
                            f"in {out}. Continue the run with: llmcourse pretrain the-verdict ")
    command = shlex.split(error.split("Continue the run with: ")[1])
    assert command == ["llmcourse", *argv, "--resume"]
    monkeypatch.setattr(training, "train_step", REAL_TRAIN_STEP)
    assert main(command[1:]) == 0  # the printed command continues the run to its end
    assert "step 4: train loss" in capsys.readouterr().out


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(
    data_mirror, tmp_path, capsys, monkeypatch
):
    argv = ["pretrain", "the-verdict", "--out", str(tmp_path / "out"), "--steps", "3", *TINY_ARGV]
    monkeypatch.setattr(training, "train_step", InterruptAt(2))
    assert main(argv) == 130
    error = last_line(capsys.readouterr().err)
    assert error.startswith("interrupted after step 1 of 3, before the run's first checkpoint "
                            "(this run saves only after its last step; add --checkpoint-every N "
                            "to save every N steps); nothing to resume. Start again with: ")
    assert shlex.split(error.split("Start again with: ")[1]) == ["llmcourse", *argv]


# ---------------------------------------------------------------------------------------------
# The output directory is checked before any work


def refuse_work(*args, **kwargs):
    raise AssertionError("the command started working before it checked --out")


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda out: out.write_text("x"), "cannot save a checkpoint to {out}: it exists and is "
                                          "a file; move the file away or choose another path"),
        (lambda out: (out.mkdir(), (out / "notes.txt").write_text("x")),
         "will not write a checkpoint into {out}: it holds files that are not part of a "
         "checkpoint (notes.txt); choose an empty or new directory"),
    ],
)
def test_an_unusable_out_fails_before_any_work(tmp_path, capsys, monkeypatch, make_out, message):
    out = tmp_path / "out"
    make_out(out)
    monkeypatch.setattr("llmcourse.cli.pretrain.run_tokenizer", refuse_work)
    assert main(["pretrain", "the-verdict", "--out", str(out), "--steps", "1", *TINY_ARGV]) == 2
    assert one_line_error(capsys) == message.format(out=out)


def test_a_finished_run_is_replaced_only_with_overwrite(data_mirror, tmp_path, capsys,
                                                         monkeypatch):
    out = tmp_path / "out"
    argv = ["pretrain", "the-verdict", "--out", str(out), *TINY_ARGV]
    assert main([*argv, "--steps", "3"]) == 0
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr("llmcourse.cli.pretrain.run_tokenizer", refuse_work)
        assert main([*argv, "--steps", "1"]) == 2
    assert one_line_error(capsys) == (
        f"{out} already holds a checkpoint; pass --resume to continue its run or --overwrite "
        "to replace it, or choose another --out")
    assert len(load_checkpoint(out).training_state["history"]["steps"]) == 3
    assert main([*argv, "--steps", "1", "--overwrite"]) == 0
    assert len(load_checkpoint(out).training_state["history"]["steps"]) == 1
    with pytest.raises(SystemExit):  # argparse: the two exclude each other
        main([*argv, "--steps", "1", "--overwrite", "--resume"])


# ---------------------------------------------------------------------------------------------
# --resume continues only the same run


def test_resume_names_every_setting_that_differs_from_the_checkpointed_run(data_mirror, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    argv = ["pretrain", "the-verdict", "--out", str(out), "--steps", "2", *TINY_ARGV]
    assert main(argv) == 0
    saved = load_checkpoint(out).training_state["run"]
    assert saved["val_fraction"] == 0.1 and saved["max_characters"] == 3000
    assert saved["tokens"].endswith(": 676 + 78 tokens")  # GPT-2 tokens of 2700 + 300 chars
    capsys.readouterr()
    assert main([*argv, "--resume", "--val-fraction", "0.2", "--max-characters", "2500"]) == 2
    message = last_line(capsys.readouterr().err)
    assert message.startswith(f"error: cannot resume from {out}: this run differs from the "
                              "checkpointed one (max_characters: saved 3000, now 2500; tokens: "
                              f"saved {saved['tokens']!r}, now ")
    assert message.endswith("; val_fraction: saved 0.1, now 0.2); resume with the checkpointed "
                            "run's settings and data, or start a new run (--overwrite, or "
                            "another --out)")
    corpus = tmp_path / "verdict.txt"  # the same text, another corpus name
    corpus.write_text(read_corpus("the-verdict", 3000), encoding="utf-8")
    assert main([argv[0], str(corpus), *argv[2:], "--resume"]) == 2
    assert f"(corpus: saved 'the-verdict', now '{corpus}'); " in capsys.readouterr().err


def test_a_checkpoint_without_run_settings_resumes_with_a_note(data_mirror, tmp_path, capsys,
                                                               monkeypatch):
    out = tmp_path / "out"
    argv = ["pretrain", "the-verdict", "--out", str(out), "--steps", "2", "--checkpoint-every",
            "1", *TINY_ARGV]
    with monkeypatch.context() as patched:
        patched.setattr(training, "train_step", InterruptAt(2))
        assert main(argv) == 130  # after the checkpoint of step 1
    state_path = out / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["training"]["run"]  # as checkpoints were saved before run settings were
    torch.save(state, state_path)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert (f"note: {out} was saved without a fingerprint of its data and run settings (an "
            "older checkpoint); resuming without checking them\n") in capsys.readouterr().err
    assert load_checkpoint(out).training_state["history"]["steps"] == [1, 2]


def test_resume_finishes_a_checkpoint_swap_that_a_kill_interrupted(data_mirror, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    argv = ["pretrain", "the-verdict", "--out", str(out), "--steps", "2", *TINY_ARGV]
    assert main(argv) == 0
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    tag = f"{int(finished.stdout)}-ab12"  # a writer killed after step 3 of the swap
    shutil.copytree(out, tmp_path / f".out.{tag}.new")
    out.rename(tmp_path / f".out.{tag}.old")
    assert main([*argv, "--resume"]) == 0
    assert "step 2: train loss" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
