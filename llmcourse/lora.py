"""Low-rank adaptation (LoRA): fine-tune a large frozen linear layer through a small update.

A linear layer computes ``y = x W^T + b`` with ``W`` of shape (out, in). LoRA freezes ``W`` and
learns the update as a product of two thin matrices,

    y = x W^T + b + scaling * dropout(x) A^T B^T,   A: (rank, in), B: (out, rank),

with ``scaling = alpha / rank``. ``A`` starts random (Kaiming-uniform, as in peft) and ``B`` at
zero, so training starts from exactly the pretrained model. A rank-16 adapter on a 768 x 2304
matrix trains 16 * (768 + 2304) = 49,152 numbers instead of 1,769,472.

``LoRALinear`` is an ``nn.Linear`` that keeps the wrapped layer's ``weight`` and ``bias`` under
their own names, so ``transformer.h.0.attn.c_attn.weight`` keeps its name and pretrained weights
still load by name; the adapter adds ``lora_a`` and ``lora_b`` beside them. After training,
``merge_lora`` folds ``scaling * B A`` into ``W`` and gives back plain ``nn.Linear`` layers:
a model exactly as fast as the original.

The LoRA paper, peft, this module and, since September 2025, the book's code scale by
``alpha / rank``: the same ``alpha`` and ``rank`` give the same update, so the book's
``alpha=16, rank=16`` (a scale of 1) is ``alpha=16, rank=16`` here. The book's appendix as first
published multiplied by ``alpha`` alone: there ``alpha=16, rank=16`` is a scale of 16, that is
``alpha=256, rank=16`` here; the two conventions give the same scale only at rank 1. Parameter
counts are the same either way.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from llmcourse.errors import CheckpointError, ConfigError, MissingFileError
from llmcourse.saving import atomic_file

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")
ADAPTER_FORMAT = "llmcourse-lora"
ADAPTER_FORMAT_VERSION = "1"


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update.

    ``base``'s ``weight`` (out, in) and ``bias`` (out,) become this layer's own (the same tensors,
    frozen); the adapter adds ``lora_a`` (groups * rank, in) and ``lora_b`` (out, rank).

    ``groups`` > 1 splits the output into that many equal slices, each with its own ``A``: an
    adapter on GPT-2's fused query/key/value matrix with ``groups=3`` is exactly three separate
    adapters on three (in, in) projections, as a model with separate query, key and value
    layers (the book's) would get.

    ``disabled`` switches the adapter off (the base layer's output alone); ``merge()`` folds the
    update into ``weight`` and ``unmerge()`` takes it out again.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, groups: int = 1
    ):
        _check_settings(base, rank, alpha, dropout, groups)
        weight = base.weight
        super().__init__(
            base.in_features, base.out_features, bias=base.bias is not None,
            device="meta", dtype=weight.dtype,
        )
        self.weight = weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.groups = groups
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Parameter(
            torch.empty(groups * rank, self.in_features, device=weight.device, dtype=weight.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(self.out_features, rank, device=weight.device, dtype=weight.dtype)
        )
        # As peft (and nn.Linear): uniform in +-1/sqrt(in), since the fan-in of A is `in`.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.merged = False
        self._disabled = False

    @property
    def disabled(self) -> bool:
        """Whether the adapter is switched off (the layer computes ``x W^T + b`` only)."""
        return self._disabled

    @disabled.setter
    def disabled(self, value: bool) -> None:
        if value and self.merged:
            raise ConfigError(
                "cannot disable a merged adapter: its update is inside the weight; call "
                "unmerge() first (disable_adapters(model) does this for you)"
            )
        self._disabled = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        result = F.linear(x, self.weight, self.bias)
        if self.merged or self._disabled:
            return result
        return result + self.scaling * self.adapter_output(self.lora_dropout(x))

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled update ``x A^T B^T`` (per output group): (..., in) -> (..., out)."""
        hidden = x @ self.lora_a.T  # (..., groups * rank)
        if self.groups == 1:
            return hidden @ self.lora_b.T
        hidden = hidden.unflatten(-1, (self.groups, self.rank))  # (..., G, rank)
        b = self.lora_b.view(self.groups, self.out_features // self.groups, self.rank)
        return torch.einsum("...gr,gor->...go", hidden, b).flatten(-2)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B A`` as a (out, in) matrix added to ``weight``."""
        a = self.lora_a.view(self.groups, self.rank, self.in_features)
        b = self.lora_b.view(self.groups, self.out_features // self.groups, self.rank)
        return self.scaling * (b @ a).reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to ``weight`` (in place); the adapter then costs nothing per token."""
        if self.merged:
            return
        if self._disabled:
            raise ConfigError("cannot merge a disabled adapter; set disabled = False first")
        self.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of ``weight`` again (equal to before ``merge`` up to rounding)."""
        if not self.merged:
            return
        self.weight -= self.delta_weight()
        self.merged = False

    def merged_weight(self) -> torch.Tensor:
        """``weight`` with the update in it, without changing the layer (a new tensor)."""
        with torch.no_grad():
            return self.weight.clone() if self.merged else self.weight + self.delta_weight()

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}{groups}"


def _check_settings(base: nn.Module, rank: int, alpha: float, dropout: float, groups: int) -> None:
    if isinstance(base, LoRALinear):
        raise ConfigError("this layer already has a LoRA adapter; apply LoRA once per layer")
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"LoRA wraps nn.Linear layers, got {type(base).__name__}")
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    if alpha <= 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
    if groups < 1 or base.out_features % groups:
        raise ConfigError(
            f"groups must divide the layer's {base.out_features} outputs, got {groups}"
        )


# ---------------------------------------------------------------------------------------------
# Whole models


@dataclass
class ParameterReport:
    """How many parameters a model has and how many of them train.

    ``per_module`` maps the name of each module that owns parameters directly to
    (trainable, total) counts. A tied matrix counts once, for the module listed first.
    """

    total: int
    trainable: int
    per_module: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def percent(self) -> float:
        """Trainable parameters as a percentage of all parameters."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        share = f"{self.trainable:,} of {self.total:,} parameters ({self.percent:.2f}%)"
        lines = [f"trainable: {share}"]
        for pattern, (layers, trainable, total) in self._grouped().items():
            if trainable:
                count = f" (x{layers})" if layers > 1 else ""
                lines.append(f"  {pattern}{count}: {trainable:,} of {total:,}")
        return "\n".join(lines)

    def _grouped(self) -> dict[str, tuple[int, int, int]]:
        """Modules that differ only in their layer index (``h.0``, ``h.1``...) as one row:
        (number of modules, trainable, total)."""
        groups: dict[str, tuple[int, int, int]] = {}
        for name, (trainable, total) in self.per_module.items():
            pattern = re.sub(r"\.\d+\.", ".*.", name)
            layers, trainable_sum, total_sum = groups.get(pattern, (0, 0, 0))
            groups[pattern] = (layers + 1, trainable_sum + trainable, total_sum + total)
        return groups


def trainable_parameter_report(model: nn.Module) -> ParameterReport:
    """Count all and trainable parameters of ``model``, per module (see ``ParameterReport``)."""
    per_module: dict[str, tuple[int, int]] = {}
    for name, parameter in model.named_parameters():
        owner = name.rpartition(".")[0]
        trainable, total = per_module.get(owner, (0, 0))
        count = parameter.numel()
        per_module[owner] = (trainable + (count if parameter.requires_grad else 0), total + count)
    return ParameterReport(
        total=sum(total for _, total in per_module.values()),
        trainable=sum(trainable for trainable, _ in per_module.values()),
        per_module=per_module,
    )


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
    *,
    separate_qkv: bool = False,
) -> ParameterReport:
    """Wrap the linear layers named by ``targets`` in ``LoRALinear`` and freeze everything else.

    A target matches a module whose full name equals it or ends with ``"." + target``
    (``"c_proj"`` matches the attention and the MLP projection of every block), or that it
    matches as a shell-style pattern (``"transformer.h.1[01].*"``). ``lm_head`` (or a
    classification head in its place) can be a target too. ``separate_qkv`` gives the fused
    query/key/value layers (``c_attn``) one adapter per projection (``groups=3``).

    A targeted layer whose weight is shared with another module (GPT-2's output layer is tied to
    the token embedding) gets its own copy first, so merging changes only that layer.
    Returns the parameter report after the change: only the adapters train.
    """
    if isinstance(targets, str):
        targets = (targets,)
    chosen = _matching_linear_layers(model, targets)
    if not chosen:
        raise ConfigError(f"no layer of the model matches the targets {list(targets)}")
    model.requires_grad_(False)
    shared = _shared_parameter_ids(model)
    for name in chosen:
        base = model.get_submodule(name)
        if id(base.weight) in shared:
            base.weight = nn.Parameter(base.weight.detach().clone())
        groups = 3 if separate_qkv and name.split(".")[-1] == "c_attn" else 1
        _set_submodule(model, name, LoRALinear(base, rank, alpha, dropout, groups))
    return trainable_parameter_report(model)


def _matching_linear_layers(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the modules the targets match; every target must match, and only linear layers."""
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear_names:
        raise ConfigError("the model has no nn.Linear layers for LoRA to adapt")
    chosen: list[str] = []
    for target in targets:
        matches = [
            (name, module)
            for name, module in model.named_modules()
            if name and (name == target or name.endswith("." + target) or fnmatchcase(name, target))
        ]
        if not matches:
            leaf_names = sorted({name.split(".")[-1] for name in linear_names})
            raise ConfigError(
                f"target {target!r} matches no module; the model's linear layers are called "
                f"{', '.join(leaf_names)} (full names like {linear_names[0]!r})"
            )
        for name, module in matches:
            if isinstance(module, LoRALinear):
                raise ConfigError(f"{name} already has a LoRA adapter; apply LoRA once per layer")
            if not isinstance(module, nn.Linear):
                raise ConfigError(
                    f"target {target!r} matches {name}, a {type(module).__name__}; LoRA wraps "
                    "nn.Linear layers only: name the linear layers inside it"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that appear under more than one name (tied weights)."""
    seen: set[int] = set()
    shared: set[int] = set()
    for _, parameter in model.named_parameters(remove_duplicate=False):
        (shared if id(parameter) in seen else seen).add(id(parameter))
    return shared


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's ``LoRALinear`` layers by module name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' matrices (``lora_a``, ``lora_b`` of every layer), in model order."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_a, layer.lora_b)]


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Inside the block the model computes its base outputs; merged adapters are unmerged for
    the block and merged again after it."""
    layers = list(lora_layers(model).values())
    before = [(layer.merged, layer.disabled) for layer in layers]
    for layer in layers:
        layer.unmerge()
        layer.disabled = True
    try:
        yield
    finally:
        for layer, (merged, disabled) in zip(layers, before, strict=True):
            layer.disabled = disabled
            if merged:
                layer.merge()


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by a plain ``nn.Linear`` holding the merged weight.

    Changes ``model`` in place and returns it. The merged layers are frozen like their bases
    (``model.requires_grad_(True)`` makes everything trainable again). If an output layer was
    untied from the token embedding by ``apply_lora``, a GPT's config says so afterwards
    (``tie_embeddings=False``), so checkpoints store both matrices.
    """
    for name, layer in lora_layers(model).items():
        plain = nn.Linear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
        )
        plain.weight = nn.Parameter(layer.merged_weight(), requires_grad=False)
        plain.bias = layer.bias
        _set_submodule(model, name, plain)
    _record_untied_output_layer(model)
    return model


def _record_untied_output_layer(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    head, transformer = getattr(model, "lm_head", None), getattr(model, "transformer", None)
    if config is None or head is None or transformer is None or not config.tie_embeddings:
        return
    if head.weight is not transformer.wte.weight and head.out_features == config.vocab_size:
        model.config = replace(config, tie_embeddings=False)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``merge_lora(model)`` would have, computed without changing ``model``."""
    layers = lora_layers(model)
    adapter_keys = {f"{name}.{p}" for name in layers for p in ("lora_a", "lora_b")}
    state = {k: v for k, v in model.state_dict().items() if k not in adapter_keys}
    for name, layer in layers.items():
        state[f"{name}.weight"] = layer.merged_weight()
    return state


# ---------------------------------------------------------------------------------------------
# Saving and loading adapters


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
    _set_submodule(model, name, layer)


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
