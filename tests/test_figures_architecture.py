"""Chapter 5 figures: activation curves, gradient magnitudes, data-flow diagrams, model sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.figures.architecture import (
    Shortcut,
    Stage,
    activation_curves,
    activation_figure,
    block_stages,
    flow_diagram,
    gelu_approximation_figure,
    gpt_model_figure,
    gradient_magnitude_figure,
    model_size_figure,
    transformer_block_figure,
)
from llmcourse.figures.display import has_profile_label
from llmcourse.model import CausalSelfAttention, GPTConfig

SMALL = GPTConfig(vocab_size=100, context_length=16, n_layer=3, n_head=2, n_embd=8)


def annotation_texts(fig) -> list[str]:
    return [note.text for note in fig.layout.annotations]


# --- Activation functions -----------------------------------------------------------------------


def test_activation_curves_values_and_derivatives():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    curves = activation_curves(x)
    assert list(curves) == ["ReLU", "GELU (tanh approximation)", "GELU (exact, erf)"]
    relu, relu_slope = curves["ReLU"]
    assert relu.tolist() == [0.0, 0.0, 0.0, 0.5, 2.0]
    assert relu_slope.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    exact, exact_slope = curves["GELU (exact, erf)"]
    x64 = x.double()
    normal_cdf = 0.5 * (1 + torch.erf(x64 / math.sqrt(2)))
    normal_pdf = torch.exp(-(x64**2) / 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(exact, x64 * normal_cdf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exact_slope, normal_cdf + x64 * normal_pdf, rtol=1e-9, atol=1e-12)
    approximation, _ = curves["GELU (tanh approximation)"]
    assert 0 < (approximation - exact).abs().max() < 5e-4


def test_activation_figure_has_both_panels_labelled():
    fig = activation_figure(points=11)
    assert len(fig.data) == 6
    assert [trace.name for trace in fig.data if trace.showlegend] == [
        "ReLU", "GELU (tanh approximation)", "GELU (exact, erf)",
    ]
    relu_values, relu_slopes = fig.data[0], fig.data[1]
    assert relu_values.y[-1] == 4.0 and relu_slopes.y[-1] == 1.0
    assert fig.layout.title.text == "ReLU and GELU, and their slopes"
    assert fig.layout.xaxis.title.text == "input x" and fig.layout.xaxis2.title.text == "input x"
    assert fig.layout.yaxis.title.text == "f(x)" and fig.layout.yaxis2.title.text == "f'(x)"
    assert has_profile_label(fig)


def test_gelu_approximation_figure_marks_the_largest_gap():
    fig = gelu_approximation_figure(points=1201)
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    gap = F.gelu(x, approximate="tanh") - F.gelu(x)
    (trace,) = fig.data
    assert trace.y == pytest.approx(gap.tolist(), abs=1e-15)
    largest = int(gap.abs().argmax())
    label = f"largest gap: {float(gap[largest]):.2e} at x = {float(x[largest]):.2f}"
    assert label in annotation_texts(fig)
    assert abs(float(gap[largest])) == pytest.approx(4.73e-4, abs=1e-6)
    assert fig.layout.yaxis.title.text == "gelu_tanh(x) - gelu(x)"
    assert fig.layout.yaxis.exponentformat == "e"  # 4e-04, not 400µ


# --- Gradient magnitudes ------------------------------------------------------------------------


def test_gradient_magnitude_figure_one_line_per_network_on_a_log_scale():
    fig = gradient_magnitude_figure(
        {"without shortcuts": [1e-6, 1e-4, 1e-2], "with shortcuts": [0.2, 0.3, 1.5]}
    )
    assert [trace.name for trace in fig.data] == ["without shortcuts", "with shortcuts"]
    assert fig.data[0].x == (1, 2, 3)
    assert fig.data[1].y == (0.2, 0.3, 1.5)
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text == "layer (1 = nearest the input)"
    assert has_profile_label(fig)


def test_gradient_magnitude_figure_rejects_bad_input():
    with pytest.raises(ValueError, match="positive for a log scale"):
        gradient_magnitude_figure({"dead": [0.1, 0.0]})
    with pytest.raises(ValueError, match="at least one"):
        gradient_magnitude_figure({})


# --- Data-flow diagrams -------------------------------------------------------------------------


def test_block_stages_shapes_follow_the_block():
    stages = block_stages(SMALL, batch=2, tokens=5)
    assert [stage.kind for stage in stages].count("add") == 2
    shapes = [stage.shape for stage in stages]
    assert shapes[0] == "(2, 5, 8)"
    assert shapes.count("(2, 5, 32)") == 2  # after the expansion and after GELU
    assert shapes[-1] == ""


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_block_stages_count_the_attention_parameters_of_the_package(qkv_bias):
    config = GPTConfig(vocab_size=100, context_length=16, n_layer=1, n_head=2, n_embd=8,
                       qkv_bias=qkv_bias)
    attention = CausalSelfAttention(config)
    expected = sum(parameter.numel() for parameter in attention.parameters())
    hover = block_stages(config, 1, 3)[2].hover
    assert f"{expected:,} parameters" in hover


def test_transformer_block_figure_draws_boxes_arrows_and_two_shortcuts():
    fig = transformer_block_figure(GPTConfig(), batch=2, tokens=4)
    texts = annotation_texts(fig)
    assert texts.count("(2, 4, 3072)") == 2
    assert "causal multi-head attention (12 heads)" in texts
    assert texts.count("shortcut") == 2
    paths = [shape for shape in fig.layout.shapes if shape.type == "path"]
    circles = [shape for shape in fig.layout.shapes if shape.type == "circle"]
    boxes = [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert (len(paths), len(circles), len(boxes)) == (2, 2, 10)
    assert not fig.layout.xaxis.visible and not fig.layout.yaxis.visible
    assert "shapes for B = 2, T = 4" in fig.layout.title.text
    assert has_profile_label(fig)


def test_gpt_model_figure_ends_with_logits_over_the_vocabulary():
    fig = gpt_model_figure(SMALL, batch=3, tokens=7)
    texts = annotation_texts(fig)
    assert "(3, 7)" in texts  # the token ids
    assert "(3, 7, 100)" in texts  # the logits
    assert "3 × transformer block" in texts
    (hover_points,) = fig.data
    assert "tied: the token embedding matrix, reused" in hover_points.hovertext[-2]
    untied = gpt_model_figure(GPTConfig(vocab_size=100, context_length=16, n_layer=3, n_head=2,
                                        n_embd=8, tie_embeddings=False))
    assert "800 parameters" in untied.data[0].hovertext[-2]


def test_flow_diagram_rejects_bad_shortcuts():
    stages = [
        Stage("in", "(1,)", "input", "tensor"),
        Stage("layer", "(1,)", "a layer"),
        Stage("sum", "", "add", "add"),
    ]
    assert len(flow_diagram(stages, [Shortcut(0, 2)], title="ok").layout.shapes) == 4
    with pytest.raises(ValueError, match="later stage"):
        flow_diagram(stages, [Shortcut(2, 0)], title="backwards")
    with pytest.raises(ValueError, match="ends at an addition"):
        flow_diagram(stages, [Shortcut(0, 1)], title="not an addition")


# --- Model sizes --------------------------------------------------------------------------------


def test_model_size_figure_bars_match_the_counts():
    fig = model_size_figure(["gpt2-small", "gpt2-xl"])
    tied, untied, float32, bfloat16 = fig.data
    assert tied.x == ("gpt2-small", "gpt2-xl")
    assert tied.customdata == (124_439_808, 1_557_611_200)  # OpenAI's published sizes
    assert untied.customdata[0] - tied.customdata[0] == 50257 * 768
    assert float32.y == pytest.approx([4 * 124_439_808 / 1e9, 4 * 1_557_611_200 / 1e9])
    assert bfloat16.y == pytest.approx([2 * 124_439_808 / 1e9, 2 * 1_557_611_200 / 1e9])
    assert fig.layout.yaxis.title.text == "millions of parameters"
    assert fig.layout.yaxis2.title.text == "gigabytes (10⁹ bytes)"
    assert has_profile_label(fig)


def test_model_size_figure_rejects_unknown_presets():
    with pytest.raises(ValueError, match="unknown presets"):
        model_size_figure(["gpt2-small", "gpt5"])
