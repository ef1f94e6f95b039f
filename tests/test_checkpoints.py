"""Checkpoints: safetensors weights with tied matrices, safe training state, atomic writes and
clear errors for missing, damaged or inconsistent checkpoints."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import llmcourse.checkpoints as checkpoints
from llmcourse.checkpoints import load_checkpoint, load_model, save_checkpoint
from llmcourse.errors import CheckpointError, CourseError, MissingFileError
from llmcourse.model import GPT, GPTConfig
from llmcourse.schedules import warmup_cosine_scheduler
from llmcourse.tokenizers import BPETokenizer

TINY = GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)


def make_model(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def trained_optimizer(model: GPT) -> tuple[torch.optim.Optimizer, object]:
    """An AdamW and scheduler that have taken two steps, so they carry real state."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    inputs = torch.arange(12).view(2, 6)
    for _ in range(2):
        _, loss = model(inputs, (inputs + 1) % TINY.vocab_size)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_round_trip_keeps_weights_and_reties_the_embedding(tmp_path: Path) -> None:
    model = make_model()
    optimizer, scheduler = trained_optimizer(model)
    training_state = {"step": 2, "losses": [4.1, 4.0], "note": "tiny"}
    save_checkpoint(tmp_path / "run", model, optimizer, scheduler, training_state)

    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert sorted(os.listdir(tmp_path / "run")) == [
        "config.json",
        "model.safetensors",
        "training_state.pt",
    ]
    with safe_open(tmp_path / "run" / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == asdict(TINY)

    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.model.config == TINY
    assert_same_weights(loaded.model, model)
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    assert loaded.model.training
    assert loaded.training_state == training_state
    assert loaded.scheduler_state == scheduler.state_dict()
    saved_moments = loaded.optimizer_state["state"][0]["exp_avg"]
    assert torch.equal(saved_moments, optimizer.state_dict()["state"][0]["exp_avg"])


def test_untied_output_layer_is_saved_separately(tmp_path: Path) -> None:
    config = GPTConfig(**{**asdict(TINY), "tie_embeddings": False})
    model = make_model(config=config)
    save_checkpoint(tmp_path / "untied", model)
    with safe_open(tmp_path / "untied" / "model.safetensors", framework="pt") as weights:
        assert "lm_head.weight" in set(weights.keys())
    loaded = load_model(tmp_path / "untied")
    assert_same_weights(loaded, model)
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight


def test_training_state_loads_with_weights_only(tmp_path: Path) -> None:
    model = make_model()
    optimizer, scheduler = trained_optimizer(model)
    state = {"rng": torch.get_rng_state(), "history": {"losses": [1.5], "evals": [{"step": 1}]}}
    save_checkpoint(tmp_path / "run", model, optimizer, scheduler, state)
    raw = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    assert torch.equal(raw["training"]["rng"], state["rng"])
    assert raw["training"]["history"] == state["history"]

    fresh_model = make_model(seed=1)
    fresh_optimizer = torch.optim.AdamW(fresh_model.parameters(), lr=1e-3)
    fresh_optimizer.load_state_dict(raw["optimizer"])
    for key in ("exp_avg", "exp_avg_sq"):
        expected = optimizer.state_dict()["state"][3][key]
        assert torch.equal(fresh_optimizer.state_dict()["state"][3][key], expected)


def test_model_only_checkpoint_for_inference(tmp_path: Path) -> None:
    model = make_model()
    save_checkpoint(tmp_path / "final", model)
    assert not (tmp_path / "final" / "training_state.pt").exists()
    loaded = load_checkpoint(tmp_path / "final")
    assert loaded.optimizer_state is None and loaded.training_state is None

    random_state = torch.get_rng_state()
    inference_model = load_model(tmp_path / "final")
    assert torch.equal(torch.get_rng_state(), random_state)  # loading draws no random numbers
    assert not inference_model.training
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(inference_model(ids), model.eval()(ids))


def test_loading_for_use_drops_the_training_runs_dropout(tmp_path: Path) -> None:
    """load_model gives a model without dropout (fine-tuning starts from none); load_checkpoint
    keeps the saved dropout, so resuming continues the same run."""
    save_checkpoint(tmp_path / "final", make_model())
    assert load_model(tmp_path / "final").config.dropout == 0.0
    assert load_model(tmp_path / "final").train().transformer.drop.p == 0.0
    assert load_checkpoint(tmp_path / "final").model.config.dropout == TINY.dropout


def test_saving_again_replaces_the_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model(seed=0))
    newer = make_model(seed=1)
    save_checkpoint(tmp_path / "run", newer)
    assert_same_weights(load_model(tmp_path / "run"), newer)
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_failure_while_writing_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_model(seed=0)
    save_checkpoint(tmp_path / "run", old, training_state={"step": 1})

    def crash_midway(obj: object, path: os.PathLike[str]) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "run", make_model(seed=1), training_state={"step": 2})

    assert sorted(os.listdir(tmp_path)) == ["run"]  # no temporary directory left behind
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path / "run")
    assert_same_weights(loaded.model, old)
    assert loaded.training_state == {"step": 1}


def test_a_failure_while_swapping_restores_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_model(seed=0)
    save_checkpoint(tmp_path / "run", old)
    real_replace = os.replace

    def refuse_to_publish(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        if Path(source).name.endswith(".tmp"):
            raise OSError("interrupted")
        real_replace(source, target)

    monkeypatch.setattr(checkpoints.os, "replace", refuse_to_publish)
    with pytest.raises(OSError, match="interrupted"):
        save_checkpoint(tmp_path / "run", make_model(seed=1))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert_same_weights(load_model(tmp_path / "run"), old)


def test_will_not_overwrite_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="notes.txt"):
        save_checkpoint(tmp_path / "results", make_model())
    assert (tmp_path / "results" / "notes.txt").read_text() == "keep me"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_checkpoint(tmp_path / "a_file", make_model())


def test_missing_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no checkpoint directory") as error:
        load_checkpoint(tmp_path / "nowhere")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, CourseError)

    save_checkpoint(tmp_path / "run", make_model())
    (tmp_path / "run" / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="has no model.safetensors"):
        load_model(tmp_path / "run")


def test_truncated_weights_give_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model())
    weights = tmp_path / "run" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*damaged"):
        load_checkpoint(tmp_path / "run")


def test_damaged_training_state_gives_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model(), training_state={"step": 3})
    state = tmp_path / "run" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="training_state.pt could not be read safely"):
        load_checkpoint(tmp_path / "run")


class NotAllowedInACheckpoint:
    """An arbitrary class: unpickling it could run code, so weights_only loading refuses it."""


def test_training_state_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model(), training_state={"x": NotAllowedInACheckpoint()})
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_checkpoint(tmp_path / "run")


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_config_wider_than_the_weights_names_the_tensor(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model())
    edit_config(tmp_path / "run", n_embd=64)
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "run")
    message = str(error.value)
    assert (
        "wrong shapes: 'transformer.wte.weight' has shape (64, 32) but the config expects "
        "(64, 64), 'transformer.wpe.weight' has shape (16, 32) but the config expects (16, 64)"
        in message
    )
    assert "(and 24 more)" in message  # 28 tensors differ; the message stays short


def test_config_deeper_than_the_weights_names_the_missing_tensors(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model())
    edit_config(tmp_path / "run", n_layer=3)
    with pytest.raises(
        CheckpointError, match=r"missing tensors: 'transformer\.h\.2\.ln_1\.weight'"
    ):
        load_model(tmp_path / "run")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"n_embd": 32, "colour": "red"}', "does not know: \\['colour'\\]"),
        ('{"n_embd": 30, "n_head": 4}', "invalid GPTConfig.*divisible"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, match: str) -> None:
    save_checkpoint(tmp_path / "run", make_model())
    (tmp_path / "run" / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "run")


def test_an_edit_of_the_config_that_keeps_every_shape_is_found(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", make_model())
    edit_config(tmp_path / "run", n_head=4)  # 32 dims: 4 heads of 8 fit every tensor shape
    message = (r"config.json was edited after saving: n_head: saved 2, now 4 \(in .*run\); the "
               r"weights belong to the saved values: restore them, or save the model again")
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "run")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "run")
    edit_config(tmp_path / "run", n_head=2, dropout=0.0)  # restored; dropout may change
    assert load_model(tmp_path / "run").config.n_head == 2


def test_weights_saved_without_the_config_load_unchecked(tmp_path: Path) -> None:
    model = make_model()
    save_checkpoint(tmp_path / "run", model)
    weights = tmp_path / "run" / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # as older checkpoints
    edit_config(tmp_path / "run", n_head=4)
    assert load_model(tmp_path / "run").config.n_head == 4


def test_every_file_of_a_checkpoint_follows_the_umask(tmp_path: Path) -> None:
    tokenizer = BPETokenizer.train("abcabcab abcab", 258, progress=False).to_tiktoken()
    model = make_model(config=replace(TINY, vocab_size=tokenizer.n_vocab))
    optimizer = torch.optim.AdamW(model.parameters())
    old_umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "run", model, optimizer, None, {"step": 2},
                        tokenizer=tokenizer)
    finally:
        os.umask(old_umask)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in (tmp_path / "run").iterdir()}
    assert modes == {name: "0o644" for name in checkpoints.CHECKPOINT_FILES}
    assert oct((tmp_path / "run").stat().st_mode & 0o777) == "0o755"
