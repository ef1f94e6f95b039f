"""Loading GPT-2 checkpoints in the hub's layout: parity with transformers' GPT2LMHeadModel on
tiny random checkpoints of the same format, the error cases, and saving in that layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from llmcourse.errors import CheckpointError, CourseError, MissingFileError
from llmcourse.gpt2_weights import load_gpt2, save_gpt2_format
from llmcourse.model import GPT, GPTConfig

ODD_SHAPES = [
    dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=211),
    dict(n_layer=3, n_head=3, n_embd=48, n_positions=37, vocab_size=50),  # 3 heads x 16 dims
    dict(n_layer=1, n_head=1, n_embd=8, n_positions=24, vocab_size=101),
]


def tiny_hf_model(seed: int = 0, **shape: int) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel whose every parameter (biases and LayerNorms too) is non-trivial,
    so that a swapped, untransposed or skipped tensor changes the logits."""
    torch.manual_seed(seed)
    vocab_size = shape.get("vocab_size", 97)
    config = GPT2Config(**shape, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            is_gain = ".ln_" in name and name.endswith("weight")
            parameter.copy_(torch.randn_like(parameter) * 0.2 + (1.0 if is_gain else 0.0))
    return model


def saved_hf_model(directory: Path, **shape: int) -> GPT2LMHeadModel:
    model = tiny_hf_model(**shape)
    model.save_pretrained(directory)
    return model


def greedy(forward, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Append ``new_tokens`` argmax tokens to ids (B, T); ``forward`` maps ids to logits."""
    for _ in range(new_tokens):
        next_ids = forward(ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_ids], dim=1)
    return ids


def random_ids(vocab_size: int, length: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def assert_same_logits(model: GPT, reference: GPT2LMHeadModel, length: int | None = None) -> None:
    vocab_size, context = reference.config.vocab_size, reference.config.n_positions
    ids = random_ids(vocab_size, length or context)
    torch.testing.assert_close(model(ids), reference(ids).logits, rtol=0, atol=1e-5)


def shape_id(shape: dict) -> str:
    return "L{n_layer}H{n_head}C{n_embd}".format(**shape)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=shape_id)
@torch.no_grad()
def test_matches_transformers_logits_and_greedy_tokens(tmp_path: Path, shape: dict) -> None:
    reference = saved_hf_model(tmp_path, **shape)
    model = load_gpt2(tmp_path, quiet=True)

    assert model.config == GPTConfig(
        vocab_size=shape["vocab_size"], context_length=shape["n_positions"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0,
        qkv_bias=True, tie_embeddings=True,
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.training
    assert_same_logits(model, reference)  # every position of the context
    prompt = random_ids(shape["vocab_size"], 4)
    expected = greedy(lambda ids: reference(ids).logits, prompt, 20)
    torch.testing.assert_close(greedy(model, prompt, 20), expected, rtol=0, atol=0)


def test_weights_file_with_config_beside_it(tmp_path: Path) -> None:
    reference = saved_hf_model(tmp_path, **ODD_SHAPES[1])
    assert_same_logits(load_gpt2(tmp_path / "model.safetensors", quiet=True), reference)


def test_hub_file_layout_without_prefix_and_with_mask_buffers(tmp_path: Path) -> None:
    """openai-community/gpt2's file: keys without 'transformer.', plus the causal-mask buffers
    and an lm_head equal to wte that older conversions carry."""
    reference = saved_hf_model(tmp_path / "prefixed", **ODD_SHAPES[0])
    tensors = load_file(tmp_path / "prefixed" / "model.safetensors")
    hub_layout = {key.removeprefix("transformer."): tensor for key, tensor in tensors.items()}
    context = ODD_SHAPES[0]["n_positions"]
    for layer in range(ODD_SHAPES[0]["n_layer"]):
        hub_layout[f"h.{layer}.attn.bias"] = torch.ones(1, 1, context, context).tril()
        hub_layout[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    hub_layout["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    (tmp_path / "hub").mkdir()
    save_file(hub_layout, tmp_path / "hub" / "model.safetensors", metadata={"format": "pt"})
    config_text = (tmp_path / "prefixed" / "config.json").read_text()
    (tmp_path / "hub" / "config.json").write_text(config_text)

    model = load_gpt2(tmp_path / "hub", quiet=True)

    assert model.lm_head.weight is model.transformer.wte.weight
    assert_same_logits(model, reference)


def test_dtype_and_device_of_the_parameters(tmp_path: Path) -> None:
    reference = saved_hf_model(tmp_path, **ODD_SHAPES[2])
    model = load_gpt2(tmp_path, dtype=torch.bfloat16, device="cpu", quiet=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    c_fc = reference.transformer.h[0].mlp.c_fc.weight  # (in, out) in GPT-2's Conv1D
    loaded = model.transformer.h[0].mlp.c_fc.weight
    torch.testing.assert_close(loaded, c_fc.T.bfloat16(), rtol=0, atol=0)


def test_mismatched_tensors_are_all_named_in_one_error(tmp_path: Path) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[0])
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    tensors["transformer.h.2.ln_1.weight"] = torch.ones(64)
    tensors["transformer.wpe.weight"] = torch.zeros(100, 64)
    save_file(tensors, tmp_path / "model.safetensors")

    with pytest.raises(CheckpointError) as caught:
        load_gpt2(tmp_path, quiet=True)

    error = caught.value
    assert isinstance(error, CourseError) and isinstance(error, ValueError)
    assert str(error) == (
        f"{tmp_path / 'model.safetensors'} does not fit the model its config describes (shapes "
        "as stored, Conv1D weights as (in, out)): missing: transformer.h.1.mlp.c_fc.bias (256,); "
        "unexpected: transformer.h.2.ln_1.weight (64,); wrong shape: transformer.wpe.weight "
        "expected (128, 64), found (100, 64); check that config.json belongs to these weights"
    )


def test_many_mismatched_tensors_are_counted_on_one_line(tmp_path: Path) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[0])
    tensors = load_file(tmp_path / "model.safetensors")
    for index in range(7):
        tensors[f"transformer.h.9.extra_{index}"] = torch.ones(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as caught:
        load_gpt2(tmp_path, quiet=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "transformer.h.9.extra_4 (2,) and 2 more;" in message
    assert "extra_5" not in message


def test_weight_in_linear_orientation_is_a_shape_mismatch(
    tmp_path: Path,
) -> None:
    """An (out, in) c_fc weight written by mistake has the transposed shape: a mismatch."""
    saved_hf_model(tmp_path, **ODD_SHAPES[0])
    tensors = load_file(tmp_path / "model.safetensors")
    key = "transformer.h.0.mlp.c_fc.weight"
    tensors[key] = tensors[key].T.contiguous()
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"expected \(64, 256\), found \(256, 64\)"):
        load_gpt2(tmp_path, quiet=True)


def test_lm_head_that_differs_from_tied_table_is_unexpected(tmp_path: Path) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[2])
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as caught:
        load_gpt2(tmp_path, quiet=True)
    assert "unexpected: lm_head.weight (101, 8);" in str(caught.value)
    assert str(caught.value).endswith(
        '(an lm_head.weight unlike wte needs "tie_word_embeddings": false there)')


def test_truncated_weights_file_is_named(tmp_path: Path) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[2])
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="download it again") as caught:
        load_gpt2(tmp_path, quiet=True)
    assert str(weights) in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("activation_function", "relu"),
        ("layer_norm_epsilon", 1e-6),
        ("n_inner", 100),
        ("model_type", "gpt_neo"),
        ("scale_attn_by_inverse_layer_idx", True),
    ],
)
def test_config_the_model_cannot_run_is_refused(tmp_path: Path, field: str, value: object) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[0])
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{field} is {value!r}") as caught:
        load_gpt2(tmp_path, quiet=True)
    assert "config.json" in str(caught.value)


def test_config_with_missing_fields_is_refused(tmp_path: Path) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[0])
    config = json.loads((tmp_path / "config.json").read_text())
    del config["n_head"], config["n_positions"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as caught:
        load_gpt2(tmp_path, quiet=True)
    assert "'n_head' is missing" in str(caught.value)
    assert "'n_positions' (or 'n_ctx') is missing" in str(caught.value)


def test_old_config_with_n_ctx_only(tmp_path: Path) -> None:
    reference = saved_hf_model(tmp_path, **ODD_SHAPES[1])
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_ctx"] = config.pop("n_positions")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_gpt2(tmp_path, quiet=True)
    assert model.config.context_length == ODD_SHAPES[1]["n_positions"]
    assert_same_logits(model, reference)


def test_without_config_the_head_count_cannot_be_guessed(tmp_path: Path) -> None:
    saved_hf_model(tmp_path, **ODD_SHAPES[0])
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError) as caught:
        load_gpt2(tmp_path / "model.safetensors", quiet=True)
    message = str(caught.value)
    assert "n_embd=64, n_layer=2, vocab_size=211, context_length=128" in message
    assert "n_head" in message and "config.json" in message


def test_without_config_openai_sizes_are_recognised(tmp_path: Path) -> None:
    """GPT-2 small's layer shapes (12 layers of 768) fix its 12 heads; vocab and context come
    from the tables. Written without a random init: only the shapes matter here."""
    config = GPTConfig.preset("gpt2-small", vocab_size=7, context_length=5)
    with torch.device("meta"):
        model = GPT(config).to(torch.bfloat16)  # half the bytes of float32 to write and read
    model = model.to_empty(device="cpu")
    model.lm_head.weight = model.transformer.wte.weight
    save_gpt2_format(model, tmp_path)
    (tmp_path / "config.json").unlink()
    assert load_gpt2(tmp_path / "model.safetensors", quiet=True).config == config


def test_directory_without_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(MissingFileError, match="has no model.safetensors"):
        load_gpt2(tmp_path, quiet=True)


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="gpt2-small, gpt2-medium") as caught:
        load_gpt2(str(tmp_path / "nowhere"))
    assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize("name", ["gpt2", "gpt2-small", "openai-community/gpt2"])
def test_hub_names_download_config_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    reference = saved_hf_model(tmp_path / "files", **ODD_SHAPES[1])
    calls = []

    def fake_download(repo_id: str, filename: str, *, cache_dir=None, **kwargs) -> str:
        calls.append((repo_id, filename, cache_dir))
        return str(tmp_path / "files" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_gpt2(name, cache_dir=tmp_path / "cache", quiet=True)

    assert sorted(calls) == [
        ("openai-community/gpt2", "config.json", tmp_path / "cache"),
        ("openai-community/gpt2", "model.safetensors", tmp_path / "cache"),
    ]
    assert_same_logits(model, reference)


def test_hub_name_offline_and_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(repo_id: str, filename: str, **kwargs) -> str:
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(MissingFileError) as caught:
        load_gpt2("gpt2-medium")
    message = str(caught.value)
    assert "openai-community/gpt2-medium" in message and "config.json" in message
    assert "network" in message and "load_gpt2('path/to/that/directory')" in message
    assert "LocalEntryNotFoundError" in message


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(vocab_size=61, context_length=19, n_layer=2, n_head=2, n_embd=32),
        GPTConfig(vocab_size=61, context_length=19, n_layer=2, n_head=4, n_embd=32,
                  qkv_bias=False, tie_embeddings=False),
    ],
    ids=["tied", "untied-no-qkv-bias"],
)
@torch.no_grad()
def test_saved_model_loads_in_transformers(tmp_path: Path, config: GPTConfig) -> None:
    torch.manual_seed(3)
    model = GPT(config).eval()
    for parameter in model.parameters():
        parameter.add_(torch.randn_like(parameter) * 0.1)  # non-zero biases, LayerNorms not 1
    save_gpt2_format(model, tmp_path)

    reference = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_same_logits(model, reference)
    reloaded = load_gpt2(tmp_path, quiet=True)
    assert reloaded.config == replace(config, qkv_bias=True)
    assert_same_logits(reloaded, reference)


def test_saved_layout_is_the_hub_layout(tmp_path: Path) -> None:
    """The same tensor names and (in, out) shapes as transformers' own save_pretrained."""
    shape = ODD_SHAPES[0]
    saved_hf_model(tmp_path / "hf", **shape)
    config = GPTConfig(vocab_size=shape["vocab_size"], context_length=shape["n_positions"],
                       n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"])
    save_gpt2_format(GPT(config), tmp_path / "ours")

    def layout(directory: Path) -> dict[str, list[int]]:
        with safe_open(directory / "model.safetensors", framework="pt") as file:
            return {key: file.get_slice(key).get_shape() for key in file.keys()}

    assert layout(tmp_path / "ours") == layout(tmp_path / "hf")
