"""Chapter 7 figures (LoRA sizes, data, training, evaluation) and the live spam widget."""

from __future__ import annotations

import pytest
import torch

from llmcourse.classification import (
    AccuracyRecord,
    Classifier,
    classification_logits,
    encode_message,
    pad,
    replace_head,
)
from llmcourse.errors import InputError
from llmcourse.figures.display import has_profile_label
from llmcourse.figures.finetuning import (
    CLASS_COLOURS,
    TRAINING_STATE_BYTES_PER_PARAMETER,
    StrategyResult,
    confusion_matrix_figure,
    lora_parameter_counts,
    lora_rank_figure,
    strategy_comparison_figure,
    training_curves_figure,
)
from llmcourse.figures.tokenization import token_length_figure
from llmcourse.lora_models import DEFAULT_TARGETS
from llmcourse.model import GPT, GPTConfig
from llmcourse.tokenizers import gpt2_tokenizer
from llmcourse.training import EvalRecord, TrainingHistory
from llmcourse.widgets.spam_classifier import (
    positive_probability,
    probability_html,
    spam_classifier_widget,
)

SMALL = GPTConfig(vocab_size=40, context_length=16, n_layer=2, n_head=2, n_embd=8)


def test_lora_parameter_counts_per_rank():
    # per block and rank: c_attn 8 + 24, attn c_proj 8 + 8, c_fc 8 + 32, mlp c_proj 32 + 8
    counts = lora_parameter_counts(SMALL, [1, 4])
    assert counts == {1: 2 * 128, 4: 4 * 2 * 128}


def test_lora_parameter_counts_with_separate_qkv_and_a_classification_head():
    counts = lora_parameter_counts(
        SMALL, [2], targets=(*DEFAULT_TARGETS, "lm_head"), separate_qkv=True, num_classes=3
    )
    # c_attn gets three A matrices (3 x 8 inputs instead of 8): + 16 per block and rank;
    # the (3, 8) head adds 8 + 3 per rank
    assert counts == {2: 2 * (2 * 128 + 2 * 16) + 2 * 11}


def test_gpt2_small_rank_16_is_the_books_number():
    counts = lora_parameter_counts(
        GPTConfig.preset("gpt2-small"), [16], targets=(*DEFAULT_TARGETS, "lm_head"),
        separate_qkv=True, num_classes=2,
    )
    assert counts == {16: 2_666_528}


def test_lora_rank_figure_values_and_shares():
    fig = lora_rank_figure({4: 400, 1: 100}, full_parameters=10_000, model_name="a toy")
    lora, full, lora_memory, full_memory = fig.data
    assert list(lora.x) == [1, 4] and list(lora.y) == [100, 400]
    assert list(lora.text) == ["1.00%", "4.00%"]
    assert list(full.y) == [10_000, 10_000]
    bytes_each = TRAINING_STATE_BYTES_PER_PARAMETER
    assert list(lora_memory.y) == pytest.approx([100 * bytes_each / 1e6, 400 * bytes_each / 1e6])
    assert list(full_memory.y) == pytest.approx([10_000 * bytes_each / 1e6] * 2)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis2.title.text == "gradients + AdamW state, MB (log scale)"
    assert "a toy" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "LoRA rank r"
    assert has_profile_label(fig)


def test_token_length_figure_one_histogram_per_class_and_the_padded_length():
    fig = token_length_figure({"not spam": [3, 5, 9], "spam": [20, 30]}, 30,
                              limit_label="padded length", items="messages",
                              colours=CLASS_COLOURS)
    assert [trace.name for trace in fig.data] == [
        "not spam (3 messages, mean 6)", "spam (2 messages, mean 25)"]
    assert fig.data[1].marker.color == CLASS_COLOURS["spam"]
    assert fig.layout.annotations[0].text == "padded length: 30"
    assert list(fig.data[1].x) == [20, 30]
    assert fig.layout.shapes[0].x0 == 30
    assert list(fig.layout.xaxis.range) == [0, 35]
    assert fig.layout.xaxis.title.text == "tokens per message"
    assert has_profile_label(fig)


def test_training_curves_figure_places_losses_by_step_and_accuracies_by_epoch():
    history = TrainingHistory(
        steps=[1, 2, 3, 4],
        train_losses=[0.7, 0.6, 0.5, 0.4],
        learning_rates=[1e-3] * 4,
        evals=[EvalRecord(2, 32, 0.6, 0.65, 1e-3), EvalRecord(4, 64, 0.4, 0.5, 1e-3)],
    )
    accuracies = [AccuracyRecord(1, 2, 0.6, 0.5), AccuracyRecord(2, 4, 0.875, 0.75)]
    fig = training_curves_figure(history, accuracies, title="fine-tuning")
    steps, train_loss, val_loss, train_accuracy, val_accuracy = fig.data
    assert list(steps.x) == [1, 2, 3, 4] and list(steps.y) == [0.7, 0.6, 0.5, 0.4]
    assert list(train_loss.x) == [2, 4] and list(train_loss.y) == [0.6, 0.4]
    assert list(val_loss.y) == [0.65, 0.5]
    assert list(train_accuracy.x) == [1, 2]
    assert list(train_accuracy.y) == [60.0, 87.5] and list(val_accuracy.y) == [50.0, 75.0]
    assert fig.layout.title.text == "fine-tuning"
    assert fig.layout.xaxis.title.text == "optimizer step"
    assert fig.layout.xaxis2.title.text == "epoch"


def test_training_curves_figure_without_evaluations_or_accuracies():
    history = TrainingHistory(steps=[1], train_losses=[0.9], learning_rates=[1e-3])
    fig = training_curves_figure(history, title="short")
    assert list(fig.data[0].x) == [1]
    assert list(fig.data[1].x) == [] and list(fig.data[3].x) == []


def test_confusion_matrix_figure_counts_and_row_shares():
    fig = confusion_matrix_figure([[3, 1], [0, 4]])
    heatmap = fig.data[0]
    assert [list(row) for row in heatmap.z] == [[3, 1], [0, 4]]
    assert list(heatmap.y) == ["true not spam", "true spam"]
    assert list(heatmap.x) == ["predicted not spam", "predicted spam"]
    assert [list(row) for row in heatmap.customdata] == [[75.0, 25.0], [0.0, 100.0]]
    assert fig.layout.yaxis.title.text == "true class"
    with pytest.raises(InputError, match="must be 2 x 2"):
        confusion_matrix_figure([[1, 2, 3]])
    three = confusion_matrix_figure([[1, 0, 0], [0, 2, 0], [0, 0, 3]], ("a", "b", "c"))
    assert list(three.data[0].y) == ["true a", "true b", "true c"]


def test_strategy_comparison_figure_bars():
    results = [
        StrategyResult("head only", 514, 2.25, 0.8, 0.75),
        StrategyResult("LoRA", 80_000, 30.5, 0.95, 0.955),
    ]
    fig = strategy_comparison_figure(results, title="strategies")
    parameters, seconds, accuracy, balanced = fig.data
    assert list(parameters.x) == ["head only", "LoRA"] and list(parameters.y) == [514, 80_000]
    assert list(seconds.text) == ["2.2 s", "30 s"]
    assert list(accuracy.y) == [80.0, 95.0]
    assert list(balanced.y) == pytest.approx([75.0, 95.5])
    assert fig.layout.yaxis.type == "log"
    assert has_profile_label(fig)


# --- The live widget ----------------------------------------------------------------------------


def tiny_classifier() -> Classifier:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=16, n_layer=1, n_head=2, n_embd=8))
    replace_head(model, 2)
    return Classifier(model.eval(), max_length=8)


def test_positive_probability_is_the_softmax_of_the_spam_logit():
    classifier = tiny_classifier()
    text = "Win a prize now"
    probability = positive_probability(classifier, text)
    ids = torch.tensor([pad(encode_message(gpt2_tokenizer(), text), 8, 50256)])
    with torch.no_grad():
        logits = classification_logits(classifier.model, ids)
    assert probability == pytest.approx(torch.softmax(logits, -1)[0, 1].item(), abs=1e-6)


def test_probability_html_verdict_and_bar():
    spam = probability_html(0.9, ("not spam", "spam"))
    assert "<b style=\"color: #d93025;\">spam</b>" in spam and "90.0%" in spam
    assert "width: 90.0%" in spam
    ham = probability_html(0.2, ("not spam", "spam"))
    assert ">not spam</b>" in ham and "20.0%" in ham
    with pytest.raises(ValueError, match="lies in"):
        probability_html(1.5, ("not spam", "spam"))


def test_spam_widget_updates_as_the_text_changes():
    classifier = tiny_classifier()
    widget = spam_classifier_widget(classifier, examples=("first message", "second one"))
    chooser, text_box, result = widget.children
    assert text_box.value == "first message"
    first = positive_probability(classifier, "first message")
    assert f"{100 * first:.1f}%" in result.value
    chooser.value = "second one"
    assert text_box.value == "second one"
    second = positive_probability(classifier, "second one")
    assert f"{100 * second:.1f}%" in result.value
    text_box.value = "   "
    assert "type a message" in result.value
    text_box.value = " ".join(["word"] * 12)
    assert "only the first 8 are read" in result.value


def test_positive_probability_needs_a_two_class_classifier():
    classifier = tiny_classifier()
    replace_head(classifier.model, 3)
    classifier.class_names = ("a", "b", "c")
    with pytest.raises(InputError, match="two-class classifier"):
        positive_probability(classifier, "hello")
