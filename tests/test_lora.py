"""LoRA: exact behaviour at initialisation, merging, switching off, freezing, saving, parity with
peft on a GPT-2 checkpoint, and the book's parameter count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from llmcourse.classification import replace_head
from llmcourse.errors import CheckpointError, ConfigError, CourseError, MissingFileError
from llmcourse.gpt2_weights import load_gpt2
from llmcourse.lora import LoRALinear
from llmcourse.lora_adapters import load_adapter, save_adapter
from llmcourse.lora_models import (
    apply_lora,
    disable_adapters,
    lora_layers,
    lora_parameters,
    merge_lora,
    merged_state_dict,
    trainable_parameter_report,
)
from llmcourse.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=101, context_length=16, n_layer=2, n_head=2, n_embd=16)
TARGETS = ("c_attn", "c_proj", "c_fc")
CONFIG_PARAMETERS = 101 * 16 + 16 * 16 + 2 * 12 * 16**2 + 2 * 13 * 16 + 2 * 16  # tied head


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def token_ids(batch: int = 2, length: int = 9) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, CONFIG.vocab_size, (batch, length), generator=generator)


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def lora_gpt(seed: int = 0, **settings) -> GPT:
    model = tiny_gpt(seed)
    apply_lora(model, **{"rank": 4, "alpha": 8, "targets": TARGETS, **settings})
    randomize_adapters(model)
    return model


# ---------------------------------------------------------------------------------------------
# One layer


def test_layer_output_is_the_base_plus_the_scaled_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(6, 10)
    layer = LoRALinear(base, rank=3, alpha=6)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + 2.0 * (x @ layer.lora_a.T @ layer.lora_b.T)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_a.requires_grad and layer.lora_b.requires_grad


def test_grouped_adapter_equals_separate_adapters_on_each_output_slice():
    torch.manual_seed(0)
    base = nn.Linear(5, 12)
    layer = LoRALinear(base, rank=2, alpha=2, groups=3)
    assert layer.lora_a.shape == (6, 5) and layer.lora_b.shape == (12, 2)
    with torch.no_grad():
        layer.lora_b.normal_()
    a_slices = [layer.lora_a[2 * g : 2 * g + 2] for g in range(3)]  # each (rank, in)
    b_slices = [layer.lora_b[4 * g : 4 * g + 4] for g in range(3)]  # each (out / 3, rank)
    x = torch.randn(3, 5)
    updates = [x @ a.T @ b.T for a, b in zip(a_slices, b_slices, strict=True)]
    torch.testing.assert_close(layer(x), base(x) + torch.cat(updates, -1), rtol=0, atol=1e-6)
    delta = torch.cat([b @ a for a, b in zip(a_slices, b_slices, strict=True)])
    torch.testing.assert_close(layer.merged_weight(), base.weight + delta, rtol=0, atol=1e-6)


def test_dropout_applies_to_the_adapter_input_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), rank=2, alpha=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(64, 8)
    base = nn.functional.linear(x, layer.weight, layer.bias)
    torch.manual_seed(5)
    mask = nn.functional.dropout(torch.ones_like(x), 0.5)  # the mask the layer will draw
    torch.manual_seed(5)
    expected = base + (x * mask) @ layer.lora_a.T @ layer.lora_b.T
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    layer.eval()
    assert not torch.allclose(layer(x), expected)  # no dropout in evaluation mode


def test_layer_settings_are_checked():
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)
    with pytest.raises(ConfigError, match="groups must divide"):
        LoRALinear(nn.Linear(4, 5), rank=1, alpha=1, groups=3)
    with pytest.raises(ConfigError, match="already has a LoRA adapter"):
        LoRALinear(LoRALinear(nn.Linear(4, 4), rank=1, alpha=1), rank=1, alpha=1)


# ---------------------------------------------------------------------------------------------
# Whole models


def test_a_fresh_adapter_leaves_the_outputs_exactly_unchanged():
    model = tiny_gpt()
    before = model(token_ids())
    apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    assert torch.equal(model(token_ids()), before)
    for layer in lora_layers(model).values():
        assert torch.equal(layer.lora_b, torch.zeros_like(layer.lora_b))
        bound = 1 / layer.in_features**0.5  # Kaiming-uniform with a = sqrt(5), as in peft
        assert layer.lora_a.abs().max() <= bound and layer.lora_a.std() > bound / 3


def test_state_dict_keeps_the_base_names_and_adds_the_adapters():
    model = tiny_gpt()
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    adapters = {f"transformer.h.{i}.{layer}.{p}" for i in range(2) for p in ("lora_a", "lora_b")
                for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(model.state_dict()) == base_keys | adapters
    assert model.transformer.h[1].attn.c_attn.lora_a.shape == (4, 16)
    assert model.transformer.h[1].attn.c_attn.lora_b.shape == (48, 4)


def test_only_the_adapters_train():
    model = tiny_gpt()
    report = apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name in model.state_dict() if ".lora_" in name}
    per_layer = 4 * (16 + 48) + 4 * (16 + 16) + 4 * (16 + 64) + 4 * (64 + 16)
    assert report.trainable == 2 * per_layer
    assert report.total == CONFIG_PARAMETERS + 2 * per_layer
    assert report.percent == pytest.approx(100 * report.trainable / report.total)
    assert report.per_module["transformer.h.0.mlp.c_fc"] == (4 * 80, 16 * 64 + 64 + 4 * 80)
    assert "transformer.h.*.mlp.c_fc (x2): 640 of" in str(report)


def test_merged_outputs_match_and_unmerge_restores_the_weights():
    model = lora_gpt()
    weights = {name: p.clone() for name, p in model.named_parameters()}
    adapted = model(token_ids())
    for layer in lora_layers(model).values():
        layer.merge()
        layer.merge()  # merging twice adds the update once
    torch.testing.assert_close(model(token_ids()), adapted, rtol=0, atol=1e-6)
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight,
                           weights["transformer.h.0.attn.c_attn.weight"])
    for layer in lora_layers(model).values():
        layer.unmerge()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, weights[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(token_ids()), adapted, rtol=0, atol=1e-6)


def test_merge_lora_gives_plain_linear_layers_with_the_same_outputs():
    model = lora_gpt()
    adapted = model(token_ids())
    expected_state = merged_state_dict(model)
    merged = merge_lora(model)
    assert not lora_layers(merged)
    assert type(merged.transformer.h[0].mlp.c_fc) is nn.Linear
    assert set(merged.state_dict()) == set(expected_state)
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, expected_state[name]), name
    torch.testing.assert_close(merged(token_ids()), adapted, rtol=0, atol=1e-6)


def test_disabled_adapters_give_the_base_outputs():
    base_outputs = tiny_gpt()(token_ids())
    model = lora_gpt()
    adapted = model(token_ids())
    assert not torch.allclose(adapted, base_outputs, atol=1e-3)
    with disable_adapters(model):
        assert torch.equal(model(token_ids()), base_outputs)
    torch.testing.assert_close(model(token_ids()), adapted, rtol=0, atol=0)
    layer = model.transformer.h[0].attn.c_attn
    layer.merge()
    with disable_adapters(model):  # unmerged for the block, merged again after
        torch.testing.assert_close(model(token_ids()), base_outputs, rtol=0, atol=1e-6)
    assert layer.merged
    torch.testing.assert_close(model(token_ids()), adapted, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="unmerge"):
        layer.disabled = True


def test_targets_by_pattern_and_their_errors():
    model = tiny_gpt()
    apply_lora(model, rank=2, alpha=2, targets=("transformer.h.1.*c_proj",))
    assert list(lora_layers(model)) == ["transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"]
    with pytest.raises(ConfigError, match="already has a LoRA adapter"):
        apply_lora(model, rank=2, alpha=2, targets=("c_proj",))
    with pytest.raises(ConfigError, match="matches no module.*c_attn, c_fc, c_proj, lm_head"):
        apply_lora(tiny_gpt(), rank=2, alpha=2, targets=("q_proj",))
    with pytest.raises(ConfigError, match="CausalSelfAttention"):
        apply_lora(tiny_gpt(), rank=2, alpha=2, targets=("attn",))
    assert issubclass(ConfigError, CourseError) and issubclass(ConfigError, ValueError)


def test_a_tied_output_layer_is_untied_before_adaptation():
    model = tiny_gpt()
    embedding = model.transformer.wte.weight.clone()
    apply_lora(model, rank=2, alpha=2, targets=("lm_head",))
    randomize_adapters(model)
    assert model.lm_head.weight is not model.transformer.wte.weight
    merged = merge_lora(model)
    assert torch.equal(merged.transformer.wte.weight, embedding)
    assert not merged.config.tie_embeddings


def test_adapter_save_and_load_round_trip(tmp_path: Path):
    model = lora_gpt(separate_qkv=True)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as file:
        assert set(file.keys()) == {n for n in model.state_dict() if ".lora_" in n}
        metadata = file.metadata()
    assert json.loads(metadata["rank"]) == 4 and json.loads(metadata["alpha"]) == 8
    assert json.loads(metadata["targets"]) == list(lora_layers(model))
    # into a model without LoRA: the saved layers are wrapped first
    fresh = tiny_gpt()
    report = load_adapter(fresh, path)
    assert report.trainable == sum(p.numel() for p in lora_parameters(model))
    assert fresh.transformer.h[0].attn.c_attn.groups == 3
    assert torch.equal(fresh(token_ids()), model(token_ids()))
    # into a model with the same LoRA layers
    same = tiny_gpt()
    apply_lora(same, rank=4, alpha=8, targets=TARGETS, separate_qkv=True)
    load_adapter(same, path)
    assert torch.equal(same(token_ids()), model(token_ids()))


def test_loading_an_adapter_into_a_different_lora_model_fails_clearly(tmp_path: Path):
    path = save_adapter(lora_gpt(), tmp_path / "adapter.safetensors")
    other_rank = tiny_gpt()
    apply_lora(other_rank, rank=2, alpha=8, targets=TARGETS)
    with pytest.raises(CheckpointError, match="call apply_lora with rank=4, alpha=8"):
        load_adapter(other_rank, path)
    other_layers = tiny_gpt()
    apply_lora(other_layers, rank=4, alpha=8, targets=("c_attn",))
    with pytest.raises(CheckpointError, match="in the file only: .*mlp.c_fc"):
        load_adapter(other_layers, path)
    with pytest.raises(MissingFileError, match="no adapter file"):
        load_adapter(tiny_gpt(), tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="no LoRA layers to save"):
        save_adapter(tiny_gpt(), tmp_path / "none.safetensors")


# ---------------------------------------------------------------------------------------------
# Parity with peft, and the book's count


def test_matches_peft_on_a_gpt2_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    hf_config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=24, vocab_size=97,
                           bos_token_id=96, eos_token_id=96)
    reference = GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    reference.save_pretrained(tmp_path)
    peft_config = LoraConfig(r=4, lora_alpha=12, target_modules=list(TARGETS),
                             fan_in_fan_out=True, lora_dropout=0.0)
    reference = get_peft_model(reference, peft_config).eval()
    model = load_gpt2(tmp_path, quiet=True)
    apply_lora(model, rank=4, alpha=12, targets=TARGETS)
    generator = torch.Generator().manual_seed(7)
    adapted = 0
    with torch.no_grad():
        for name, module in reference.named_modules():
            if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                continue
            lora_a = module.lora_A["default"].weight  # (r, in)
            lora_b = module.lora_B["default"].weight  # (out, r)
            lora_a.copy_(torch.randn(lora_a.shape, generator=generator) * 0.2)
            lora_b.copy_(torch.randn(lora_b.shape, generator=generator) * 0.2)
            ours = model.get_submodule(name.removeprefix("base_model.model."))
            ours.lora_a.copy_(lora_a)
            ours.lora_b.copy_(lora_b)
            adapted += 1
        assert adapted == 8
        ids = torch.randint(0, 97, (2, 24), generator=generator)
        expected = reference(ids).logits
        with reference.disable_adapter():
            base_logits = reference(ids).logits
        assert not torch.allclose(expected, base_logits, atol=1e-2)  # the adapters matter
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=1e-5)
        reference.merge_adapter()
        merge_lora(model)
        torch.testing.assert_close(model(ids), reference(ids).logits, rtol=0, atol=1e-5)


def test_reproduces_the_books_lora_parameter_count():
    """The book replaces every nn.Linear of GPT-2 124M, the 768 -> 2 head included, by a rank-16
    LoRA layer: 2,666,528 trainable parameters. Its attention has separate 768 x 768 query,
    key and value layers; our fused c_attn with one adapter per projection is the same count:
    per block 4 x 16 x (768 + 768) for query, key, value and output projection
    + 2 x 16 x (768 + 3072) for the MLP = 221,184; x 12 = 2,654,208; plus 16 x (768 + 2)
    = 12,320 for the head."""
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("gpt2-small"))
    replace_head(model, num_classes=2)
    before = trainable_parameter_report(model)
    assert before.total == before.trainable == 124_441_346  # the book's count before LoRA
    targets = ("c_attn", "c_proj", "c_fc", "lm_head")
    report = apply_lora(model, rank=16, alpha=16, targets=targets, separate_qkv=True)
    assert report.trainable == 2_666_528
    assert report.total == 124_441_346 + 2_666_528
    with torch.device("meta"):
        fused = GPT(GPTConfig.preset("gpt2-small"))
    replace_head(fused, num_classes=2)
    fused_report = apply_lora(fused, rank=16, alpha=16, targets=targets)
    # one adapter on the fused (768 -> 2304) matrix: 16 x (768 + 2304) per block, as peft does
    assert fused_report.trainable == 2_666_528 - 12 * (3 * 16 * 1536 - 16 * 3072)
