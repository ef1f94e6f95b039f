"""Chapter 4 figures and the attention explorer: heatmap traces, controls, weights of a text."""

from __future__ import annotations

import pytest
import torch

from llmcourse.errors import CourseError, InputError
from llmcourse.figures.attention import (
    ZERO_WIDTH_SPACE,
    attention_heatmap_figure,
    attention_matrix_figure,
    attention_panels_figure,
    distinct_labels,
    softmax_peak_probability,
    softmax_saturation_figure,
    stack_layers,
    text_attention,
)
from llmcourse.figures.display import has_profile_label
from llmcourse.model import GPT, GPTConfig, attention_weights
from llmcourse.tokenizers import gpt2_tokenizer
from llmcourse.widgets.attention_explorer import (
    attention_explorer,
    attention_table_html,
    weight_colour,
)

LABELS = ["Your", "·journey", "·starts", "·with"]


def causal_weights(layers: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Random causal attention weights (layers, heads, tokens, tokens): rows sum to 1."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, tokens, tokens, generator=generator)
    hidden = ~torch.ones(tokens, tokens, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, context_length=16, n_layer=2, n_head=3, n_embd=24))


# --- Inputs ------------------------------------------------------------------------------------


def test_stack_layers_accepts_a_tensor_and_the_list_of_attention_weights():
    weights = causal_weights(3, 2, 4)
    assert torch.equal(stack_layers(weights), weights)
    assert torch.equal(stack_layers(list(weights)), weights)
    assert torch.equal(stack_layers([layer[None] for layer in weights]), weights)
    assert stack_layers(weights.double()).dtype == torch.float32


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.rand(2, 3, 4, 5), "expected attention weights of shape (layers, heads, T, T)"),
        (torch.rand(3, 4, 4), "expected attention weights of shape"),
        ([torch.rand(2, 3, 4, 4)], "pick one sequence"),
        ([torch.rand(2, 4, 4), torch.rand(3, 4, 4)], "every layer must have the same shape"),
        ([], "expected one (H, T, T) tensor per layer"),
    ],
)
def test_stack_layers_rejects_other_shapes(weights, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stack_layers(weights)


def test_distinct_labels_keep_their_look():
    labels = ["the", "·cat", "the", "the", "·cat"]
    distinct = distinct_labels(labels)
    assert len(set(distinct)) == 5
    assert [label.replace(ZERO_WIDTH_SPACE, "") for label in distinct] == labels
    assert distinct[:2] == ["the", "·cat"]
    assert distinct[3] == "the" + 2 * ZERO_WIDTH_SPACE


# --- The heatmap over layers and heads ---------------------------------------------------------


def test_heatmap_has_one_trace_per_layer_and_head_with_its_weights():
    weights = causal_weights(2, 3, 4)
    fig = attention_heatmap_figure(weights, LABELS, title="Attention of a test model")
    assert len(fig.data) == 6
    for index, trace in enumerate(fig.data):
        layer, head = divmod(index, 3)
        assert trace.name == f"layer {layer}, head {head}"
        assert torch.equal(torch.tensor(trace.z), weights[layer, head])
        assert list(trace.x) == LABELS and list(trace.y) == LABELS
        assert trace.visible == (index == 0)
        assert (trace.zmin, trace.zmax) == (0.0, 1.0)
    assert fig.layout.title.text == "Attention of a test model"
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.xaxis.title.text == "key (attended to)"
    assert has_profile_label(fig)


def test_heatmap_slider_picks_the_head_and_dropdown_the_layer():
    fig = attention_heatmap_figure(causal_weights(2, 3, 4), LABELS)
    (slider,) = fig.layout.sliders
    assert [step.label for step in slider.steps] == ["0", "1", "2"]
    assert slider.steps[2].args[0]["visible"] == [False, False, True, False, False, False]
    (menu,) = fig.layout.updatemenus
    assert [button.label for button in menu.buttons] == ["layer 0", "layer 1"]
    data_update, layout_update = menu.buttons[1].args
    assert data_update["visible"] == [False, False, False, True, False, False]
    layer_1_slider = layout_update["sliders"][0]
    assert layer_1_slider["steps"][1]["args"][0]["visible"] == [False] * 4 + [True, False]
    assert layer_1_slider["currentvalue"]["prefix"] == "layer 1, head "


def test_heatmap_of_one_layer_has_no_layer_dropdown_and_repeated_tokens_stay_apart():
    labels = ["the", "·cat", "the"]
    fig = attention_heatmap_figure([causal_weights(1, 2, 3)[0]], labels)
    assert len(fig.data) == 2 and not fig.layout.updatemenus
    assert len(set(fig.data[0].x)) == 3


def test_heatmap_shows_values_only_for_short_sequences():
    short = attention_heatmap_figure(causal_weights(1, 1, 4), LABELS)
    assert short.data[0].texttemplate == "%{z:.2f}"
    long_labels = [f"t{i}" for i in range(20)]
    long = attention_heatmap_figure(causal_weights(1, 1, 20), long_labels)
    assert long.data[0].texttemplate is None


def test_heatmap_needs_one_label_per_token():
    with pytest.raises(InputError, match="got 3 token labels for attention over 4"):
        attention_heatmap_figure(causal_weights(1, 1, 4), LABELS[:3])


def test_panels_share_one_colour_bar_and_keep_their_matrices():
    before, after = causal_weights(2, 1, 4)[:, 0]
    fig = attention_panels_figure(
        [("no mask", before), ("causal mask", after)], LABELS, title="Before and after"
    )
    assert [note.text for note in fig.layout.annotations][:2] == ["no mask", "causal mask"]
    assert [trace.showscale for trace in fig.data] == [True, False]
    assert torch.equal(torch.tensor(fig.data[1].z), after)
    assert fig.layout.yaxis2.autorange == "reversed"
    assert fig.layout.yaxis.title.text == "query" and fig.layout.yaxis2.title.text is None
    assert [note.yshift for note in fig.layout.annotations][:2] == [22, 22]


def test_matrix_figure_draws_one_matrix_only():
    fig = attention_matrix_figure(causal_weights(1, 1, 4)[0, 0], LABELS, title="One head")
    assert len(fig.data) == 1
    with pytest.raises(InputError, match=r"one attention matrix \(T, T\)"):
        attention_matrix_figure(causal_weights(1, 1, 4)[0], LABELS, title="One head")


# --- Why the scores are scaled -----------------------------------------------------------------


def test_softmax_peak_probability_saturates_without_the_scale():
    dims = [1, 16, 1024]
    unscaled = softmax_peak_probability(dims, n_keys=8, trials=100, scaled=False)
    scaled = softmax_peak_probability(dims, n_keys=8, trials=100, scaled=True)
    assert unscaled[0] == pytest.approx(scaled[0])  # d = 1: sqrt(d) = 1
    assert unscaled == sorted(unscaled) and unscaled[-1] > 0.9
    assert max(scaled) < 0.5 and min(scaled) > 1 / 8
    assert softmax_peak_probability(dims, n_keys=8, trials=100, scaled=True) == scaled


def test_softmax_peak_probability_of_one_key_is_one():
    assert softmax_peak_probability([4], n_keys=1, trials=3, scaled=False) == [1.0]


def test_softmax_saturation_figure_has_two_labelled_curves():
    fig = softmax_saturation_figure(dims=(1, 4, 16), trials=20)
    assert [trace.name for trace in fig.data] == ["softmax(q·k)", "softmax(q·k / √d)"]
    assert list(fig.data[0].x) == [1, 4, 16]
    assert fig.layout.xaxis.type == "log"
    assert "(log scale)" in fig.layout.xaxis.title.text and has_profile_label(fig)


# --- Weights of a model on a text --------------------------------------------------------------


def test_text_attention_gives_the_tokens_and_the_model_weights(data_mirror, tiny_gpt):
    tokenizer = gpt2_tokenizer()
    labels, weights = text_attention(tiny_gpt, tokenizer, "Your journey starts with one step")
    assert labels == ["Your", "·journey", "·starts", "·with", "·one", "·step"]
    assert weights.shape == (2, 3, 6, 6)
    ids = torch.tensor([tokenizer.encode("Your journey starts with one step")])
    expected = attention_weights(tiny_gpt.eval(), ids)
    assert torch.equal(weights, torch.stack([layer[0] for layer in expected]))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 6))
    assert torch.all(weights.triu(diagonal=1) == 0)


def test_text_attention_cuts_long_texts_and_restores_the_mode(data_mirror, tiny_gpt):
    tiny_gpt.train()
    labels, weights = text_attention(tiny_gpt, gpt2_tokenizer(), "one two " * 20, max_tokens=5)
    assert tiny_gpt.training
    assert len(labels) == 5 and weights.shape[-1] == 5
    labels, _ = text_attention(tiny_gpt, gpt2_tokenizer(), "one two " * 20)
    assert len(labels) == tiny_gpt.config.context_length
    tiny_gpt.eval()


def test_text_attention_of_an_empty_text_says_what_to_do(data_mirror, tiny_gpt):
    with pytest.raises(CourseError, match="type at least one word"):
        text_attention(tiny_gpt, gpt2_tokenizer(), "")


# --- The live explorer -------------------------------------------------------------------------


def test_weight_colour_runs_from_white_to_dark_blue():
    assert weight_colour(0.0) == "rgb(247, 251, 255)"
    assert weight_colour(1.0) == "rgb(8, 48, 107)"
    assert weight_colour(0.5) == "rgb(107, 174, 214)"
    assert weight_colour(0.25) == "rgb(177, 212, 234)"
    assert weight_colour(1.5) == weight_colour(1.0) and weight_colour(-1) == weight_colour(0)


def test_attention_table_has_a_cell_per_pair_with_its_weight():
    matrix = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    table = attention_table_html(matrix, ["<|endoftext|>", "·b"], "a caption")
    assert table.count("<td") == 4
    assert 'title="query 1 ·b → key 0 &lt;|endoftext|&gt;: 0.250"' in table
    assert "<|endoftext|>" not in table
    with pytest.raises(InputError, match=r"expected a \(3, 3\) matrix"):
        attention_table_html(matrix, ["a", "b", "c"], "a caption")


def test_explorer_redraws_for_the_chosen_layer_head_and_text(data_mirror, tiny_gpt):
    explorer = attention_explorer(tiny_gpt, text="Your journey starts")
    text_box, pickers, heatmap = explorer.children
    layer_picker, head_picker = pickers.children
    labels, weights = text_attention(tiny_gpt, gpt2_tokenizer(), "Your journey starts")
    assert "layer 0, head 0: 3 tokens" in heatmap.value
    layer_picker.value, head_picker.value = 1, 2
    assert "layer 1, head 2: 3 tokens" in heatmap.value
    assert heatmap.value == attention_table_html(
        weights[1, 2], labels, "layer 1, head 2: 3 tokens"
    )
    text_box.value = ""
    assert "type at least one word" in heatmap.value
    text_box.value = " ".join(["one two"] * 20)
    assert "layer 1, head 2: 16 tokens (the first 16 of 40)" in heatmap.value
