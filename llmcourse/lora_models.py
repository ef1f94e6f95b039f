"""LoRA on a whole model: which layers get adapters, what trains, turning them off, merging.

``apply_lora`` wraps the linear layers whose names match the targets (GPT-2's ``c_attn``,
``c_proj`` and ``c_fc`` by default) in ``LoRALinear`` and freezes everything else;
``trainable_parameter_report`` counts what trains; ``disable_adapters`` runs the model as it was
before fine-tuning; ``merge_lora`` folds every adapter into its weight. A LoRA-wrapped output
layer that shared its matrix with the token embedding gets its own copy (the model's config then
says ``tie_embeddings=False``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

import torch
from torch import nn

from llmcourse.errors import ConfigError
from llmcourse.lora import LoRALinear

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # GPT-2's attention and MLP linear layers


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
        set_submodule(model, name, LoRALinear(base, rank, alpha, dropout, groups))
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


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
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
        set_submodule(model, name, plain)
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


