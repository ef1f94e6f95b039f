"""Checkpoints: save a model, and everything needed to resume its training, to a directory.

A checkpoint directory holds:

- ``config.json``: the model's ``GPTConfig`` as JSON;
- ``tokenizer.bpe.json``: the tokenizer the model was trained with (``llmcourse.tokenizers.files``);
- ``model.safetensors``: the weights. A matrix shared by two modules (GPT-2 ties the output layer
  to the token embedding) is stored once, under its first name, ``transformer.wte.weight``;
  ``GPT(config)`` ties it again on load. Its metadata holds the config the weights were saved
  with, so that an edit of ``config.json`` that changes no tensor shape (``n_head``) is found;
- ``training_state.pt`` (optional): optimizer and scheduler state plus the training loop's own
  state (position in the data, history, random number generator states). It holds only tensors,
  dicts, lists, tuples, numbers and strings, so it loads with ``torch.load(weights_only=True)``.

Nothing here unpickles arbitrary objects. A checkpoint is written by ``llmcourse.saving``'s
staged directory swap: a crash while saving leaves the previous checkpoint or the new one, and
every loader first finishes a swap that a crash interrupted (``saving.recover``).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from llmcourse.errors import CheckpointError, CourseError, MissingFileError
from llmcourse.model import GPT, GPTConfig
from llmcourse.saving import check_destination, recover, staged_directory
from llmcourse.tokenizers.files import (
    TOKENIZER_FILE,
    SavableTokenizer,
    check_vocab_fits,
    save_tokenizer,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINT_FILES = (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, TRAINING_STATE_FILE)
TRAINING_STATE_VERSION = 1
CONFIG_METADATA_KEY = "gpt_config"  # the GPTConfig as JSON, in the weights' safetensors metadata
TRAINING_ONLY_FIELDS = ("dropout",)  # GPTConfig fields that a loader may change


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and, when the checkpoint has them, the training states.

    ``optimizer_state`` and ``scheduler_state`` are ``state_dict()``s to pass to
    ``load_state_dict``; ``training_state`` is the dict given to ``save_checkpoint``.
    """

    model: GPT
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    training_state: dict[str, Any] | None = None


def save_checkpoint(
    path_dir: str | os.PathLike[str],
    model: GPT,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    training_state: dict[str, Any] | None = None,
    *,
    tokenizer: SavableTokenizer | None = None,
) -> Path:
    """Write ``model`` (and any training state given) as a checkpoint directory; returns its path.

    ``tokenizer`` (a ``BPETokenizer`` or a ``tiktoken.Encoding``) is stored beside the config,
    so that every loader encodes text the way the model was trained; it must fit the model's
    vocabulary. An existing checkpoint at ``path_dir`` is replaced only once the new one is
    complete. A directory holding anything other than checkpoint files is never overwritten.
    """
    target = Path(path_dir)
    check_destination(target, what="a checkpoint", own_names=CHECKPOINT_FILES,
                      error=CheckpointError)
    if tokenizer is not None:
        check_vocab_fits(tokenizer, model.config.vocab_size, where=f"saving to {target}")
    with staged_directory(target) as staging:
        write_checkpoint_files(staging, model, optimizer, scheduler, training_state,
                               tokenizer=tokenizer)
    return target


def write_checkpoint_files(
    directory: Path,
    model: GPT,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    training_state: dict[str, Any] | None = None,
    *,
    tokenizer: SavableTokenizer | None = None,
) -> None:
    """Write the files of a checkpoint into the existing ``directory``, not atomically: a
    staging directory of ``llmcourse.saving.staged_directory`` (``save_checkpoint`` is the
    crash-safe way to save)."""
    write_config(directory / CONFIG_FILE, model.config)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    save_file(unique_tensors(model.state_dict()), directory / WEIGHTS_FILE,
              metadata=weights_metadata(model))
    if optimizer is not None or scheduler is not None or training_state is not None:
        state = {
            "version": TRAINING_STATE_VERSION,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "training": training_state,
        }
        torch.save(state, directory / TRAINING_STATE_FILE)


def load_checkpoint(
    path_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint``: the model (in training mode, on
    ``device``) and, if present, the optimizer, scheduler and training-loop states (on the CPU;
    ``optimizer.load_state_dict`` moves them to the parameters' device)."""
    directory = _checkpoint_directory(path_dir)
    model = _read_model(directory)
    model.to(device)
    state_path = directory / TRAINING_STATE_FILE
    if not state_path.is_file():
        return Checkpoint(model)
    state = _read_training_state(state_path)
    return Checkpoint(model, state["optimizer"], state["scheduler"], state["training"])


def load_model(path_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> GPT:
    """The model of a checkpoint, in evaluation mode, ready for generation or fine-tuning.

    Its dropout is 0, whatever the checkpoint trained with: dropout belongs to a training run,
    so fine-tuning starts without it, as from OpenAI's weights (``load_checkpoint`` keeps it, to
    resume the run that saved it)."""
    directory = _checkpoint_directory(path_dir)
    return _read_model(directory, keep_dropout=False).to(device).eval()


def _read_model(directory: Path, *, keep_dropout: bool = True) -> GPT:
    """The model of a checkpoint directory: its config (with dropout 0 unless
    ``keep_dropout``), its weights (every name and shape checked), and the config checked
    against the one saved with the weights."""
    config = read_config(directory)
    model = _model_for_loading(config if keep_dropout else replace(config, dropout=0.0))
    load_weights(model, directory / WEIGHTS_FILE)
    check_config_unchanged(directory, config)
    return model


def weights_metadata(model: GPT) -> dict[str, str]:
    """The safetensors metadata saved with a model's weights: the format, and the model's
    ``GPTConfig`` as JSON, which ``check_config_unchanged`` compares with ``config.json``."""
    return {"format": "pt", CONFIG_METADATA_KEY: json.dumps(asdict(model.config), sort_keys=True)}


def check_config_unchanged(
    directory: Path, config: GPTConfig, *, error: type[CourseError] = CheckpointError
) -> None:
    """Raise ``error`` naming every field in which ``config`` (read from ``directory``'s
    ``config.json``) differs from the config saved in the weights' metadata. An edit that
    changes no tensor shape (``n_head``, ``qkv_bias`` ...) is found only this way.
    ``dropout`` may change: it belongs to a training run, not to the weights. Weights saved
    without that metadata (older checkpoints) are not checked."""
    try:
        with safe_open(directory / WEIGHTS_FILE, "pt") as weights:
            saved_text = (weights.metadata() or {}).get(CONFIG_METADATA_KEY)
    except SafetensorError:
        return  # loading the weights reports the damage
    if saved_text is None:
        return
    saved, current = json.loads(saved_text), asdict(config)
    changed = [f"{name}: saved {saved.get(name)!r}, now {value!r}"
               for name, value in current.items()
               if name not in TRAINING_ONLY_FIELDS and saved.get(name) != value]
    if changed:
        raise error(
            f"{CONFIG_FILE} was edited after saving: {'; '.join(changed)} (in {directory}); the "
            "weights belong to the saved values: restore them, or save the model again"
        )


def _model_for_loading(config: GPTConfig) -> GPT:
    """``GPT(config)`` whose weights are about to be overwritten; its random initialisation
    leaves torch's global random number generator as it was."""
    with torch.random.fork_rng(devices=[]):
        return GPT(config)


def read_config(directory: str | os.PathLike[str]) -> GPTConfig:
    """The ``GPTConfig`` stored in ``directory/config.json``."""
    path = Path(directory) / CONFIG_FILE
    _require_file(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is damaged") from error
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object of GPTConfig fields")
    unknown = sorted(set(values) - {field.name for field in fields(GPTConfig)})
    if unknown:
        raise CheckpointError(f"{path} has fields GPTConfig does not know: {unknown}")
    try:
        return GPTConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an invalid GPTConfig: {error}") from error


def unique_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with each shared tensor kept once, under its first name, on the CPU.

    safetensors refuses tensors that share memory; a tied matrix appears in the state dict under
    two names (``transformer.wte.weight`` and ``lm_head.weight``) but is one tensor.
    """
    unique: dict[str, torch.Tensor] = {}
    seen_addresses: set[int] = set()
    for name, tensor in state.items():
        if tensor.numel() and tensor.data_ptr() in seen_addresses:
            continue
        seen_addresses.add(tensor.data_ptr())
        unique[name] = tensor.detach().cpu().contiguous()
    return unique


def load_weights(model: GPT, path: str | os.PathLike[str]) -> None:
    """Copy the weights of a safetensors file into ``model``, checking every name and shape."""
    path = Path(path)
    _require_file(path)
    try:
        saved = load_file(path)
    except SafetensorError as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); the checkpoint is damaged: "
            "save it again or use another checkpoint"
        ) from error
    expected = unique_tensors(model.state_dict())
    _check_weights_match(saved, expected, path)
    targets = model.state_dict()
    with torch.no_grad():
        for name, tensor in saved.items():
            targets[name].copy_(tensor)


def _check_weights_match(
    saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path
) -> None:
    """Raise ``CheckpointError`` naming the first few missing, unexpected or misshapen tensors
    (in the model's own order, token embedding first)."""
    missing = [repr(name) for name in expected if name not in saved]
    unexpected = [repr(name) for name in saved if name not in expected]
    misshapen = [
        f"{name!r} has shape {tuple(saved[name].shape)} but the config expects "
        f"{tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in saved and saved[name].shape != tensor.shape
    ]
    problems = [
        f"{label}: {_first_few(items)}"
        for label, items in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("wrong shapes", misshapen),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {path} do not fit the model described by {CONFIG_FILE} (was it "
            f"edited, or copied from another checkpoint?); " + "; ".join(problems)
        )


def _first_few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (and {len(items) - limit} more)"


def _read_training_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} could not be read safely ({error}); the file is damaged or was not written "
            "by save_checkpoint"
        ) from error
    if not isinstance(state, dict) or state.get("version") != TRAINING_STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a training state of version {TRAINING_STATE_VERSION} (found {found})"
        )
    return state


def _checkpoint_directory(path_dir: str | os.PathLike[str]) -> Path:
    directory = Path(path_dir)
    recover(directory)
    if not directory.is_dir():
        raise MissingFileError(
            f"no checkpoint directory at {directory}; pass the directory save_checkpoint wrote "
            f"(it holds {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    return directory


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MissingFileError(
            f"{path.parent} has no {path.name}: a checkpoint directory holds {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (and {TRAINING_STATE_FILE} to resume training)"
        )


def write_config(path: Path, config: GPTConfig) -> None:
    """Write ``config`` as the JSON ``config.json`` of a checkpoint (``read_config`` reads it)."""
    path.write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
