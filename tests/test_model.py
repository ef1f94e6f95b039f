from __future__ import annotations

import math

import pytest
import torch

from llmcourse.errors import ConfigError, CourseError, InputError
from llmcourse.model import (
    GPT,
    PRESETS,
    CausalSelfAttention,
    GPTConfig,
    attention_weights,
    causal_mask,
    count_parameters,
    explicit_attention,
    memory_bytes,
)

TINY = GPTConfig(vocab_size=97, context_length=16, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


def test_forward_shapes_and_loss(tiny_model):
    ids = torch.randint(0, 97, (3, 11))
    logits = tiny_model(ids)
    assert logits.shape == (3, 11, 97)
    logits_again, loss = tiny_model(ids, ids)
    assert torch.equal(logits, logits_again)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids.reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_last_only_gives_the_last_positions_logits(tiny_model):
    ids = torch.randint(0, 97, (3, 11))
    last = tiny_model(ids, last_only=True)
    assert last.shape == (3, 1, 97)
    torch.testing.assert_close(last, tiny_model(ids)[:, -1:], rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="no loss"):
        tiny_model(ids, ids, last_only=True)


def test_untrained_loss_is_near_log_vocab(tiny_model):
    ids, targets = torch.randint(0, 97, (2, 8, 16))
    _, loss = tiny_model(ids, targets)
    assert abs(loss.item() - math.log(97)) < 0.1


def test_targets_minus_100_are_ignored(tiny_model):
    ids = torch.randint(0, 97, (1, 6))
    targets = ids.clone()
    targets[0, 3:] = -100
    logits, loss = tiny_model(ids, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, :3], ids[0, :3])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_future_tokens_do_not_change_earlier_logits(tiny_model):
    ids = torch.randint(0, 97, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 97
    a, b = tiny_model(ids), tiny_model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_explicit_attention_path_equals_fused(tiny_model):
    attention = tiny_model.transformer.h[0].attn
    x = torch.randn(2, 16, TINY.n_embd)
    explicit, weights = attention.explicit_forward(x)
    torch.testing.assert_close(explicit, attention(x), rtol=0, atol=1e-5)
    assert weights.shape == (2, TINY.n_head, 16, 16)


def test_attention_weights_are_each_layers_softmax_of_its_input(tiny_model):
    ids = torch.randint(0, 97, (2, 16))
    weights = attention_weights(tiny_model, ids)
    assert len(weights) == TINY.n_layer
    # layer 0 by hand: its input is ln_1 of the embeddings
    x = tiny_model.transformer.h[0].ln_1(
        tiny_model.transformer.wte(ids) + tiny_model.transformer.wpe(torch.arange(16))
    )
    q, k, _ = tiny_model.transformer.h[0].attn.c_attn(x).split(TINY.n_embd, dim=2)
    q, k = (t.view(2, 16, TINY.n_head, -1).transpose(1, 2) for t in (q, k))
    scores = q @ k.transpose(-2, -1) / math.sqrt(TINY.n_embd // TINY.n_head)
    future = torch.triu(torch.ones(16, 16, dtype=torch.bool), diagonal=1)
    expected = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    torch.testing.assert_close(weights[0], expected, rtol=0, atol=1e-6)
    for layer_weights in weights:
        assert layer_weights.shape == (2, TINY.n_head, 16, 16)
        torch.testing.assert_close(layer_weights.sum(-1), torch.ones(2, 4, 16))
        assert (layer_weights[..., future] == 0).all()  # no weight on future positions
    assert not any(attention._forward_hooks for attention in tiny_model.modules())


def test_explicit_attention_matches_hand_computation():
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out, weights = explicit_attention(q, k, v, causal_mask(2, 0))
    # Row 0 sees key 0 only; row 1 scores (0, 1) / sqrt(2) over keys 0 and 1.
    w1 = torch.softmax(torch.tensor([0.0, 1.0]) / math.sqrt(2), dim=0)
    assert torch.allclose(weights[0, 0], torch.tensor([[1.0, 0.0], w1.tolist()]))
    assert torch.allclose(out[0, 0, 1], w1[0] * v[0, 0, 0] + w1[1] * v[0, 0, 1])


def test_causal_mask_with_past_positions():
    mask = causal_mask(2, 3)
    assert mask.tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_attention_with_dropout_in_training_is_random_and_off_in_eval():
    torch.manual_seed(0)
    attention = CausalSelfAttention(GPTConfig(n_embd=16, n_head=2, dropout=0.5))
    x = torch.randn(1, 5, 16)
    attention.train()
    assert not torch.equal(attention(x)[0], attention(x)[0])
    attention.eval()
    assert torch.equal(attention(x)[0], attention(x)[0])


def test_sequence_longer_than_context_is_rejected(tiny_model):
    with pytest.raises(InputError, match="longer than the model's context of 16") as error:
        tiny_model(torch.zeros(1, 17, dtype=torch.long))
    assert isinstance(error.value, CourseError)


@pytest.mark.parametrize("bad", [-1, 97, 50256])
def test_token_ids_outside_the_vocabulary_are_rejected(tiny_model, bad):
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(InputError, match=r"\[0, 96\]"):
        tiny_model(ids)


def test_wrong_input_rank_and_dtype_are_rejected(tiny_model):
    with pytest.raises(InputError, match="unsqueeze"):
        tiny_model(torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="integer"):
        tiny_model(torch.tensor([[1.0, 2.0]]))


def test_mismatched_targets_are_rejected(tiny_model):
    with pytest.raises(InputError, match="targets must have the shape"):
        tiny_model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_tied_embeddings_share_storage():
    model = GPT(TINY)
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = GPT(GPTConfig(**{**TINY.__dict__, "tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_formula_matches_the_built_model(name):
    config = PRESETS[name]
    if config.n_layer > 12:  # building the large presets costs gigabytes; a 2-layer copy checks it
        config = GPTConfig.preset(name, n_layer=2)
    for tie in (True, False):
        variant = GPTConfig.preset(name, n_layer=config.n_layer, tie_embeddings=tie)
        with torch.device("meta"):
            model = GPT(variant)
        assert model.num_parameters() == count_parameters(variant)


def test_gpt2_sizes():
    assert count_parameters(PRESETS["gpt2-small"]) == 124_439_808
    untied = GPTConfig.preset("gpt2-small", tie_embeddings=False)
    assert count_parameters(untied) == 163_037_184  # + 50257 x 768 for the separate output layer
    assert count_parameters(PRESETS["gpt2-medium"]) == 354_823_168
    assert count_parameters(PRESETS["gpt2-large"]) == 774_030_080
    assert count_parameters(PRESETS["gpt2-xl"]) == 1_557_611_200


def test_non_embedding_count_and_memory():
    model = GPT(TINY)
    embeddings = 97 * 32 + 16 * 32
    assert model.num_parameters(non_embedding=True) == model.num_parameters() - embeddings
    assert memory_bytes(1000) == 4000
    assert memory_bytes(1000, torch.bfloat16) == 2000


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="positive integer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.0)
    with pytest.raises(CourseError, match="gpt2-small"):
        GPTConfig.preset("gpt3")
    with pytest.raises(CourseError, match="no field"):
        GPTConfig.preset("gpt2-small", n_layers=3)
    assert GPTConfig.preset("gpt2-small", context_length=256).context_length == 256
    assert PRESETS["gpt2-small"].head_dim == 64


def test_residual_projection_init_is_scaled():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("course-small"))
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"context_length": 0}, "context_length must be a positive integer"),
        ({"dropout": 1.5}, r"dropout must be a probability in \[0, 1\), got 1.5"),
        ({"dropout": float("nan")}, "dropout must be a probability"),
        ({"dropout": "0.1"}, "dropout must be a probability"),
    ],
)
def test_config_errors_are_course_errors_and_value_errors(fields, match):
    with pytest.raises(ConfigError, match=match) as error:
        GPTConfig(**fields)
    assert isinstance(error.value, CourseError) and isinstance(error.value, ValueError)


@pytest.mark.parametrize("bad", [97, 50256, -1, -101])
def test_targets_outside_the_vocabulary_are_rejected(tiny_model, bad):
    ids = torch.tensor([[1, 2, 3]])
    targets = torch.tensor([[2, bad, -100]])
    with pytest.raises(InputError, match=rf"in \[0, 96\] or -100 \(ignored\), got {bad} "):
        tiny_model(ids, targets)


def test_targets_must_be_long_integers(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(InputError, match="int64"):
        tiny_model(ids, ids.float())


def test_one_position_without_gradients_reads_a_current_copy_of_the_output_matrix(tiny_model):
    ids = torch.randint(0, 97, (3, 5))
    with torch.no_grad():
        hidden = tiny_model.transformer.ln_f(torch.randn(3, 1, TINY.n_embd))
        torch.testing.assert_close(
            tiny_model._output_layer(hidden), tiny_model.lm_head(hidden), rtol=0, atol=1e-6
        )
        first = tiny_model(ids, last_only=True)
        tiny_model.lm_head.weight.add_(0.5)  # a training step changes the tied matrix in place
        after = tiny_model(ids, last_only=True)
    torch.testing.assert_close(after, tiny_model(ids)[:, -1:], rtol=0, atol=1e-5)
    assert not torch.allclose(first, after)
    assert tiny_model._transposed_head is not None
    tiny_model.eval()  # generation's end: the copy is freed
    assert tiny_model._transposed_head is None


def test_input_checks_read_no_values_from_an_accelerator():
    """On a device other than the CPU, the id checks must not wait for the device. Meta
    tensors hold no values: reading one (min, max, any, item) would raise."""
    model = GPT(TINY)
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    model.check_input(ids)
    model.check_targets(ids, ids)
    with pytest.raises(InputError, match="longer than the model's context"):
        model.check_input(torch.zeros(1, 17, dtype=torch.long, device="meta"))
