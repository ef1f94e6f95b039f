"""OpenAI's GPT-2 weights in the course's ``GPT``, and the course's models in GPT-2's file layout.

A GPT-2 checkpoint as published on the Hugging Face hub is a directory with ``config.json`` and
``model.safetensors``. Its tensors carry the names of our parameters
(``transformer.h.0.attn.c_attn.weight`` ...), in some files without the ``transformer.`` prefix.
GPT-2's linear layers are ``Conv1D`` modules that store their weight as (in, out), the transpose
of ``nn.Linear``'s (out, in). Weights are read with safetensors, never unpickled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import huggingface_hub
import tiktoken
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from llmcourse.checkpoints import load_model
from llmcourse.errors import CheckpointError, MissingFileError
from llmcourse.model import GPT, PRESETS, GPTConfig
from llmcourse.saving import check_destination, recover, staged_directory
from llmcourse.tokenizers.files import check_vocab_fits, load_tokenizer
from llmcourse.tokenizers.gpt2 import gpt2_tokenizer

GPT2_MODELS: dict[str, str] = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# Every name load_gpt2 downloads: the course's names, the hub's short name "gpt2", the repo ids.
HUB_REPOS: dict[str, str] = {**GPT2_MODELS, "gpt2": GPT2_MODELS["gpt2-small"]}
HUB_REPOS.update({repo: repo for repo in GPT2_MODELS.values()})

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The weights of GPT-2's Conv1D layers, stored (in, out).
CONV1D_WEIGHTS = (
    "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"
)
# Old checkpoints also store each layer's causal mask, a buffer and not a parameter.
MASK_BUFFER = re.compile(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)")
# The settings of GPT2Config that our GPT hard-codes, with the only value it supports.
FIXED_SETTINGS: dict[str, Any] = {
    "model_type": "gpt2",
    "activation_function": "gelu_new",  # GELU, tanh approximation
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
}


SHOWN = 5  # tensors named per kind of mismatch


def _mismatch_error(
    path: Path,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
) -> CheckpointError:
    """The error for a checkpoint whose tensors do not match the model its config describes:
    one line that names the missing, unexpected and wrongly shaped tensors (the first few of
    each kind)."""
    missing = [f"{n} {expected[n]}" for n in expected if n not in found]
    unexpected = [f"{n} {found[n]}" for n in found if n not in expected]
    wrong_shape = [f"{n} expected {expected[n]}, found {found[n]}"
                   for n in expected if n in found and found[n] != expected[n]]
    kinds = [
        f"{kind}: {'; '.join(names[:SHOWN])}"
        + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
        for kind, names in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong_shape))
        if names
    ]
    advice = "check that config.json belongs to these weights"
    if "lm_head.weight" in found and "lm_head.weight" not in expected:
        advice += ' (an lm_head.weight unlike wte needs "tie_word_embeddings": false there)'
    return CheckpointError(
        f"{path} does not fit the model its config describes (shapes as stored, Conv1D "
        f"weights as (in, out)): {'; '.join(kinds)}; {advice}"
    )


def gpt_config_from_hf(hf_config: Mapping[str, Any]) -> GPTConfig:
    """Our ``GPTConfig`` for the fields of a hub ``config.json`` (dropout 0: for inference)."""
    problems = [
        f"{name} is {hf_config[name]!r}, the course's GPT supports only {value!r}"
        for name, value in FIXED_SETTINGS.items()
        if hf_config.get(name, value) != value
    ]
    required = ["vocab_size", "n_embd", "n_layer", "n_head"]
    problems += [f"field {name!r} is missing" for name in required if name not in hf_config]
    context_length = hf_config.get("n_positions", hf_config.get("n_ctx"))
    if context_length is None:
        problems.append("field 'n_positions' (or 'n_ctx') is missing")
    n_inner = hf_config.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf_config.get("n_embd", 0):
        problems.append(f"n_inner is {n_inner}, the course's GPT supports only 4 * n_embd")
    if problems:
        raise CheckpointError("; ".join(problems))
    try:
        return GPTConfig(
            vocab_size=hf_config["vocab_size"],
            context_length=context_length,
            n_layer=hf_config["n_layer"],
            n_head=hf_config["n_head"],
            n_embd=hf_config["n_embd"],
            dropout=0.0,
            qkv_bias=True,
            tie_embeddings=hf_config.get("tie_word_embeddings", True),
        )
    except ValueError as error:
        raise CheckpointError(str(error)) from None


def hf_config_from_gpt(config: GPTConfig) -> dict[str, Any]:
    """The hub ``config.json`` fields (``transformers.GPT2Config``) of a model with ``config``."""
    end_of_text = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"],
        **FIXED_SETTINGS,
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "attn_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "resid_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
    }


def load_gpt2(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    quiet: bool = False,
) -> GPT:
    """A ``GPT`` (in eval mode) holding the weights of a GPT-2 checkpoint in the hub's layout.

    ``name_or_path`` is a directory with ``config.json`` and ``model.safetensors``, a
    ``.safetensors`` file (its config is the ``config.json`` beside it, or inferred from the
    tensor shapes for OpenAI's four sizes), or a name from ``GPT2_MODELS`` ("gpt2", or a hub repo
    id) to download into ``cache_dir`` (default: the hub's cache). Tensors are copied one at a
    time into the ``dtype`` parameters on ``device``; ``quiet`` hides the progress bar.
    """
    weights_path, config_path = _locate(name_or_path, cache_dir)
    try:
        checkpoint = safe_open(str(weights_path), framework="pt", device="cpu")
    except SafetensorError as error:
        raise CheckpointError(
            f"{weights_path} is not a valid safetensors file ({error}). A file cut short by an "
            "interrupted download reads like this: download it again (pickled .bin/.pt "
            "checkpoints are never read)"
        ) from None
    with checkpoint:
        keys = _our_names(checkpoint.keys(), weights_path)
        shapes = {name: tuple(checkpoint.get_slice(key).get_shape()) for name, key in keys.items()}
        config = _read_config(config_path) if config_path else _infer_config(shapes, weights_path)
        with torch.device("meta"):  # parameters with shapes but no memory and no random init
            model = GPT(config)
        if config.tie_embeddings and _is_copy_of_token_table(checkpoint, keys, shapes):
            del shapes["lm_head.weight"]
        expected = {name: _stored_shape(name, p) for name, p in model.named_parameters()}
        if shapes != expected:
            raise _mismatch_error(weights_path, expected, shapes)
        model = _allocate(model, dtype, device)
        with torch.no_grad():
            for name, parameter in tqdm(list(model.named_parameters()), desc=weights_path.name,
                                        unit="tensor", disable=quiet):
                tensor = checkpoint.get_tensor(keys[name])
                parameter.copy_(tensor.T if name.endswith(CONV1D_WEIGHTS) else tensor)
    return model.eval()


def save_gpt2_format(model: GPT, directory: str | Path) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` in the hub's GPT-2 layout.

    ``transformers.GPT2LMHeadModel.from_pretrained(directory)`` and ``load_gpt2(directory)``
    read the result. GPT-2 always has a query/key/value bias, so a model without one gets zeros.
    An earlier model in ``directory`` is replaced by a staged swap (``llmcourse.saving``); a
    directory holding other files is refused. Returns the directory."""
    directory = Path(directory)
    check_destination(directory, what="a GPT-2 checkpoint", own_names=(CONFIG_FILE, WEIGHTS_FILE),
                      error=CheckpointError)
    tensors = {}
    for name, parameter in model.named_parameters():  # a tied lm_head is not listed again
        tensor = parameter.detach().cpu()
        tensors[name] = (tensor.T if name.endswith(CONV1D_WEIGHTS) else tensor).contiguous()
    if not model.config.qkv_bias:
        zeros = torch.zeros(3 * model.config.n_embd, dtype=model.transformer.wte.weight.dtype)
        for layer in range(model.config.n_layer):
            tensors[f"transformer.h.{layer}.attn.c_attn.bias"] = zeros.clone()
    hf_config = hf_config_from_gpt(model.config)
    with staged_directory(directory) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory


def _locate(name_or_path: str | Path, cache_dir: str | Path | None) -> tuple[Path, Path | None]:
    """The weights file and its config.json (None when there is none) for a path or hub name."""
    path = Path(name_or_path).expanduser()
    recover(path)  # a save_gpt2_format that a crash interrupted
    if path.is_dir():
        weights_path = path / WEIGHTS_FILE
        if not weights_path.is_file():
            raise MissingFileError(
                f"{path} has no {WEIGHTS_FILE}; GPT-2 weights are read from safetensors files "
                "only (pickled .bin files are never loaded, for safety)"
            )
    elif path.is_file():
        weights_path = path
    elif str(name_or_path) in HUB_REPOS:
        repo_id = HUB_REPOS[str(name_or_path)]
        config_path = _download(repo_id, CONFIG_FILE, cache_dir)
        return _download(repo_id, WEIGHTS_FILE, cache_dir), config_path
    else:
        raise MissingFileError(
            f"{str(name_or_path)!r} is no file or directory and no GPT-2 model name; give a "
            f"directory with {CONFIG_FILE} and {WEIGHTS_FILE}, a .safetensors file, or one of: "
            + ", ".join(HUB_REPOS)
        )
    config_path = weights_path.with_name(CONFIG_FILE)
    return weights_path, config_path if config_path.is_file() else None


def _download(repo_id: str, filename: str, cache_dir: str | Path | None) -> Path:
    """The local path of ``filename`` from hub repo ``repo_id``, downloaded unless cached."""
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except OSError as error:  # the hub's errors (not cached while offline, HTTP) are OSErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MissingFileError(
            f"could not get {filename} of {repo_id} from the Hugging Face hub "
            f"({type(error).__name__}: {reason}). The first download needs network access; "
            f"later loads use the cache. Without network, copy {CONFIG_FILE} and {WEIGHTS_FILE} "
            "of that repo into a directory and call load_gpt2('path/to/that/directory')."
        ) from error


def _read_config(path: Path) -> GPTConfig:
    try:
        return gpt_config_from_hf(json.loads(path.read_text()))
    except (json.JSONDecodeError, CheckpointError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def _our_names(keys: Iterable[str], path: Path) -> dict[str, str]:
    """Map our parameter names to the checkpoint's keys, leaving out the causal-mask buffers."""
    names: dict[str, str] = {}
    for key in keys:
        if MASK_BUFFER.fullmatch(key):
            continue
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name in names:
            raise CheckpointError(f"{path} holds both {names[name]!r} and {key!r}")
        names[name] = key
    return names


def _infer_config(shapes: Mapping[str, tuple[int, ...]], path: Path) -> GPTConfig:
    """The config of a checkpoint without config.json: only OpenAI's sizes fix the head count."""
    if "transformer.wte.weight" not in shapes or "transformer.wpe.weight" not in shapes:
        raise CheckpointError(f"{path} has no wte/wpe embedding tables: not a GPT-2 model")
    vocab_size, n_embd = shapes["transformer.wte.weight"]
    context_length = shapes["transformer.wpe.weight"][0]
    layers = [int(m[1]) for n in shapes if (m := re.match(r"transformer\.h\.(\d+)\.", n))]
    n_layer = max(layers, default=-1) + 1
    for preset in (PRESETS[name] for name in GPT2_MODELS):
        if (preset.n_embd, preset.n_layer) == (n_embd, n_layer):
            tied = "lm_head.weight" not in shapes
            return replace(preset, vocab_size=vocab_size, context_length=context_length,
                           tie_embeddings=tied)
    raise CheckpointError(
        f"{path} has no {CONFIG_FILE} beside it. Its shapes give n_embd={n_embd}, "
        f"n_layer={n_layer}, vocab_size={vocab_size}, context_length={context_length}, but not "
        f"the number of attention heads (n_head): put the {CONFIG_FILE} that came with these "
        "weights in the same directory"
    )


def _allocate(model: GPT, dtype: torch.dtype, device: str | torch.device) -> GPT:
    """Give a ``meta`` model uninitialised ``dtype`` parameters on ``device``."""
    model = model.to(dtype=dtype).to_empty(device=device)
    if model.config.tie_embeddings:  # to_empty gave each module its own tensor: share it again
        model.lm_head.weight = model.transformer.wte.weight
    return model


def _is_copy_of_token_table(checkpoint: Any, keys: Mapping[str, str], shapes: Mapping) -> bool:
    """Whether the checkpoint stores an ``lm_head.weight`` equal to the token embedding table."""
    head, table = "lm_head.weight", "transformer.wte.weight"
    if head not in shapes or table not in shapes or shapes[head] != shapes[table]:
        return False
    return torch.equal(checkpoint.get_tensor(keys[head]), checkpoint.get_tensor(keys[table]))


def _stored_shape(name: str, parameter: torch.Tensor) -> tuple[int, ...]:
    """The shape of parameter ``name`` in the hub's layout: Conv1D weights are (in, out)."""
    shape = tuple(parameter.shape)
    return shape[::-1] if name.endswith(CONV1D_WEIGHTS) else shape


def load_any(source: str | Path, *, device: str | torch.device = "cpu") -> GPT:
    """A model for inference from any source the course knows, in eval mode.

    ``source`` is a checkpoint directory written by ``llmcourse`` training
    (``llmcourse.checkpoints``), a GPT-2 checkpoint in the hub's layout (directory or
    ``.safetensors`` file), or a GPT-2 name such as ``"gpt2"`` or ``"gpt2-medium"``.
    """
    config_path = Path(source) / "config.json"
    if config_path.is_file() and '"model_type"' not in config_path.read_text(errors="replace"):
        return load_model(source, device=device)  # the course's own checkpoint format
    return load_gpt2(source, device=device)


def load_model_and_tokenizer(
    source: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[GPT, tiktoken.Encoding]:
    """``load_any(source)`` and the tokenizer that goes with it: the one saved in the checkpoint
    directory, else GPT-2's (OpenAI's checkpoints, and course checkpoints saved before they
    carried a tokenizer). A tokenizer that does not fit the model raises
    ``CheckpointError``."""
    model = load_any(source, device=device)
    path = Path(source).expanduser()
    if path.is_dir() or path.is_file():
        directory = path if path.is_dir() else path.parent
        tokenizer = load_tokenizer(directory, vocab_size=model.config.vocab_size)
    else:  # a GPT-2 name from the hub
        tokenizer = gpt2_tokenizer()
        check_vocab_fits(tokenizer, model.config.vocab_size, where=str(source))
    return model, tokenizer
