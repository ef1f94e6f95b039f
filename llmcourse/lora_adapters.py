"""The adapter file: a model's LoRA matrices alone, in safetensors, and loading them back.

``save_adapter`` writes every layer's ``lora_a`` and ``lora_b`` with the settings that rebuild
them (rank, alpha, groups) in the file's metadata; ``load_adapter`` wraps the same layers of a
freshly loaded base model and fills them, after checking that every matrix fits its layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from llmcourse.errors import CheckpointError, ConfigError, MissingFileError
from llmcourse.lora import LoRALinear
from llmcourse.lora_models import (
    ParameterReport,
    lora_layers,
    lora_parameters,
    set_submodule,
    trainable_parameter_report,
)
from llmcourse.saving import atomic_file

ADAPTER_FORMAT = "llmcourse-lora"
ADAPTER_FORMAT_VERSION = "1"


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the adapters only (``lora_a``/``lora_b`` of every layer) to a safetensors file.

    Its metadata records each layer's rank, alpha and groups (``layers``), the layer names
    (``targets``) and, when every layer shares them, ``rank`` and ``alpha``. Returns the path.
    """
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA layers to save; call apply_lora(model, ...) first")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_a"] = layer.lora_a.detach().cpu().contiguous()
        tensors[f"{name}.lora_b"] = layer.lora_b.detach().cpu().contiguous()
    settings = {name: _layer_settings(layer) for name, layer in layers.items()}
    metadata = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_FORMAT_VERSION,
        "targets": json.dumps(list(layers)),
        "layers": json.dumps(settings),
    }
    for key in ("rank", "alpha"):
        values = {s[key] for s in settings.values()}
        if len(values) == 1:
            metadata[key] = json.dumps(values.pop())
    with atomic_file(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return Path(path)


def _layer_settings(layer: LoRALinear) -> dict[str, float]:
    return {"rank": layer.rank, "alpha": layer.alpha, "groups": layer.groups}


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> ParameterReport:
    """Load adapters saved by ``save_adapter`` into ``model``; returns the parameter report.

    A model without LoRA layers first gets the saved ones (same layers, rank, alpha, groups);
    a model with LoRA layers must have exactly the saved layers and settings.
    """
    path = Path(path)
    settings, tensors = _read_adapter_file(path)
    if not lora_layers(model):
        for name, layer_settings in settings.items():
            _wrap_one(model, name, layer_settings, path)
        model.requires_grad_(False)
        for parameter in lora_parameters(model):
            parameter.requires_grad_(True)
    layers = lora_layers(model)
    _check_adapter_fits(layers, settings, path)
    with torch.no_grad():
        for name, layer in layers.items():
            was_merged = layer.merged
            layer.unmerge()
            for key in ("lora_a", "lora_b"):
                saved, parameter = tensors[f"{name}.{key}"], getattr(layer, key)
                if saved.shape != parameter.shape:
                    raise CheckpointError(
                        f"{path}: {name}.{key} has shape {tuple(saved.shape)}, the model's has "
                        f"{tuple(parameter.shape)}; the adapter belongs to a model of another size"
                    )
                parameter.copy_(saved)
            if was_merged:
                layer.merge()
    return trainable_parameter_report(model)


def _read_adapter_file(path: Path) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise MissingFileError(
            f"no adapter file at {path}; save one with save_adapter(model, path)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    if metadata.get("format") != ADAPTER_FORMAT or "layers" not in metadata:
        raise CheckpointError(
            f"{path} is not a LoRA adapter written by save_adapter (its metadata has no "
            f"format={ADAPTER_FORMAT!r}); a whole-model checkpoint loads with load_checkpoint"
        )
    settings = json.loads(metadata["layers"])
    expected = {f"{name}.{key}" for name in settings for key in ("lora_a", "lora_b")}
    if set(tensors) != expected:
        raise CheckpointError(f"{path} is damaged: its tensors do not match its list of layers")
    return settings, tensors


def _wrap_one(model: nn.Module, name: str, settings: dict, path: Path) -> None:
    try:
        base = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(
            f"{path} has an adapter for {name}, which this model does not have; load it into "
            "a model of the architecture it was trained on"
        ) from None
    layer = LoRALinear(base, settings["rank"], settings["alpha"], groups=settings["groups"])
    set_submodule(model, name, layer)


def _check_adapter_fits(layers: dict[str, LoRALinear], settings: dict[str, dict], path: Path):
    missing = [name for name in settings if name not in layers]
    extra = [name for name in layers if name not in settings]
    if missing or extra:
        raise CheckpointError(
            f"{path} holds adapters for other layers than the model's LoRA layers "
            f"(in the file only: {missing or 'none'}; in the model only: {extra or 'none'}); "
            "apply LoRA with the targets used in training, or load into a model without LoRA"
        )
    for name, layer in layers.items():
        saved, ours = settings[name], _layer_settings(layer)
        if saved != ours:
            raise CheckpointError(
                f"{path}: the adapter of {name} was saved with {saved}, the model's has {ours}; "
                f"call apply_lora with rank={saved['rank']}, alpha={saved['alpha']}"
            )
