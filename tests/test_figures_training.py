"""Chapter 6 figures and widgets: loss curves, learning rate, gradient norms, next-token
distributions, the training dashboard and the decoding explorer."""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse.errors import InputError
from llmcourse.figures.display import has_profile_label
from llmcourse.figures.training import (
    OTHER_TOKENS,
    gradient_norm_figure,
    learning_rate_figure,
    loss_curves_figure,
    next_token_figure,
    next_token_logits,
    next_token_probabilities,
    shown_tokens,
)
from llmcourse.generation import Sampling
from llmcourse.model import GPT, GPTConfig
from llmcourse.schedules import warmup_cosine_lr
from llmcourse.training import EvalRecord, StepState, TrainingHistory
from llmcourse.widgets.decoding_explorer import DecodingExplorer
from llmcourse.widgets.training_dashboard import TrainingDashboard

VOCABULARY = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
LOGITS = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])


def small_history() -> TrainingHistory:
    history = TrainingHistory()
    for loss in (10.0, 9.0, 8.0, 7.5):
        history.record_step(loss, lr=1e-3, tokens=512)
    history.evals = [
        EvalRecord(step=2, tokens_seen=1024, train_loss=8.5, val_loss=8.8, lr=1e-3),
        EvalRecord(step=4, tokens_seen=2048, train_loss=7.0, val_loss=9.1, lr=1e-3),
    ]
    return history


def labelled(fig, title_word: str) -> None:
    assert title_word in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert has_profile_label(fig)


# ----------------------------------------------------------------------------------------------
# Loss curves


def test_loss_curves_show_batches_evaluations_and_the_best_validation_loss():
    fig = loss_curves_figure(small_history())
    labelled(fig, "loss")
    names = [trace.name for trace in fig.data]
    assert names == ["training loss of each batch", "training loss", "validation loss",
                     "lowest validation loss"]
    batches, train, val, best = fig.data
    assert list(batches.x) == [1, 2, 3, 4] and list(batches.y) == [10.0, 9.0, 8.0, 7.5]
    assert list(train.x) == [2, 4] and list(train.y) == [8.5, 7.0]
    assert list(val.y) == [8.8, 9.1]
    assert list(best.x) == [2] and list(best.y) == [8.8]  # the minimum, not the last


def test_loss_curves_dropdown_switches_the_x_axis_to_tokens():
    fig = loss_curves_figure(small_history())
    steps_button, tokens_button = fig.layout.updatemenus[0].buttons
    assert steps_button.args[1] == {"xaxis.title.text": "optimizer step"}
    assert tokens_button.args[1] == {"xaxis.title.text": "tokens seen"}
    token_xs = tokens_button.args[0]["x"]
    assert token_xs[0] == [512.0, 1024.0, 1536.0, 2048.0]  # 512 tokens per step
    assert token_xs[1] == [1024, 2048] and token_xs[3] == [1024]
    assert steps_button.args[0]["x"][1] == [2, 4]


def test_loss_curves_without_validation_or_steps():
    history = small_history()
    history.evals = [EvalRecord(step=4, tokens_seen=2048, train_loss=7.0, val_loss=None, lr=0.1)]
    fig = loss_curves_figure(history)
    assert [trace.name for trace in fig.data][-1] == "validation loss"
    assert list(fig.data[-1].y) == []
    with pytest.raises(InputError, match="no steps"):
        loss_curves_figure(TrainingHistory())


# ----------------------------------------------------------------------------------------------
# Learning rate and gradient norms


def test_learning_rate_figure_plots_the_schedule_and_the_recorded_rates():
    settings = dict(max_lr=1e-3, warmup_steps=3, total_steps=10, min_lr=1e-4)
    recorded = [0.5, 0.25]
    fig = learning_rate_figure(**settings, recorded=recorded)
    labelled(fig, "Learning rate")
    schedule, used = fig.data
    assert list(schedule.x) == list(range(10))
    assert list(schedule.y) == [warmup_cosine_lr(s, **settings) for s in range(10)]
    assert schedule.y[0] == pytest.approx(1e-3 / 3) and schedule.y[2] == pytest.approx(1e-3)
    assert list(used.x) == [0, 1] and list(used.y) == recorded
    warmup = [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert len(warmup) == 1 and (warmup[0].x0, warmup[0].x1) == (-0.5, 2.5)


def test_learning_rate_figure_without_warmup_has_no_shading():
    fig = learning_rate_figure(max_lr=1.0, warmup_steps=0, total_steps=4, min_lr=0.0)
    assert len(fig.data) == 1
    assert not [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert list(fig.data[0].y) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                 0.5 * (1 + math.cos(3 * math.pi / 4))])


def test_gradient_norm_figure_lines_and_threshold():
    fig = gradient_norm_figure([3.0, 0.5, 1.5], [1.0, 0.5, 1.0], max_norm=1.0)
    labelled(fig, "gradient norm")
    before, after = fig.data
    assert list(before.x) == [1, 2, 3] and list(before.y) == [3.0, 0.5, 1.5]
    assert list(after.y) == [1.0, 0.5, 1.0]
    assert [shape.y0 for shape in fig.layout.shapes if shape.type == "line"] == [1.0]
    with pytest.raises(InputError, match="3 norms before clipping but 2 after"):
        gradient_norm_figure([1.0, 2.0, 3.0], [1.0, 1.0], max_norm=1.0)


# ----------------------------------------------------------------------------------------------
# Next-token distributions


def test_next_token_probabilities_greedy_temperature_and_filters():
    greedy = next_token_probabilities(LOGITS, Sampling(temperature=0))
    assert greedy.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    warm = next_token_probabilities(LOGITS, Sampling(2.0))
    torch.testing.assert_close(warm, torch.softmax(LOGITS / 2, 0))
    top_2 = next_token_probabilities(LOGITS, Sampling(1.0, top_k=2))
    e_forward, e_toward = math.exp(6.75), math.exp(6.28)
    assert top_2[3].item() == pytest.approx(e_forward / (e_forward + e_toward), rel=1e-6)
    assert top_2.nonzero().flatten().tolist() == [3, 7]
    # softmax(LOGITS): forward 0.572, toward 0.358 (together 0.930), closer 0.061...
    def kept(top_p: float) -> list[int]:
        probabilities = next_token_probabilities(LOGITS, Sampling(1.0, top_p=top_p))
        return probabilities.nonzero().flatten().tolist()

    assert kept(0.9) == [3, 7]
    assert kept(0.95) == [0, 3, 7]
    with pytest.raises(InputError, match=r"\(V,\)"):
        next_token_probabilities(LOGITS.view(1, 9))


def test_shown_tokens_with_a_list_or_a_function():
    ids, names = shown_tokens(LOGITS, VOCABULARY, max_bars=3)
    assert ids == [3, 7, 0] and names == ["forward", "toward", "closer"]
    ids, names = shown_tokens(LOGITS, lambda token: f"#{token}", max_bars=2)
    assert names == ["#3", "#7"]
    with pytest.raises(InputError, match="8 labels for 9 logits"):
        shown_tokens(LOGITS, VOCABULARY[:8], max_bars=3)


def test_next_token_figure_frames_slider_and_dropdown():
    temperatures = (0.0, 0.5, 1.0, 5.0)
    fig = next_token_figure(LOGITS, VOCABULARY, temperatures=temperatures, top_k=3, top_p=0.9)
    labelled(fig, "Next-token")
    assert [trace.visible for trace in fig.data] == [True, False, False]
    assert [frame.name for frame in fig.frames] == ["0 (greedy)", "0.5", "1", "5"]
    slider = fig.layout.sliders[0]
    assert slider.active == 2  # temperature 1 shown first
    assert [list(step.args[0]) for step in slider.steps] == [[f.name] for f in fig.frames]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["no filter", "top-k, k = 3", "top-p, p = 0.9"]
    assert buttons[1].args[0] == {"visible": [False, True, False]}
    order = [3, 7, 0, 8, 4, 1, 5, 6, 2]  # by decreasing logit
    assert list(fig.data[0].x) == [VOCABULARY[i] for i in order]
    for frame, temperature in zip(fig.frames, temperatures, strict=True):
        for trace, options in zip(frame.data, ({}, {"top_k": 3}, {"top_p": 0.9}), strict=True):
            expected = next_token_probabilities(LOGITS, Sampling(temperature, **options))[order]
            assert list(trace.y) == pytest.approx(expected.tolist(), abs=1e-7)
    hot_top_k = fig.frames[3].data[1].y
    assert sum(y > 0 for y in hot_top_k) == 3 and sum(hot_top_k) == pytest.approx(1.0)


def test_next_token_figure_groups_the_other_tokens_of_a_large_vocabulary():
    logits = torch.arange(20, dtype=torch.float32)
    fig = next_token_figure(logits, [f"t{i}" for i in range(20)], temperatures=(1.0,),
                            max_bars=4)
    assert list(fig.data[0].x) == ["t19", "t18", "t17", "t16", OTHER_TOKENS]
    probabilities = torch.softmax(logits, 0)
    expected_rest = 1 - probabilities[16:].sum().item()
    assert fig.data[0].y[-1] == pytest.approx(expected_rest, abs=1e-6)
    assert sum(fig.data[0].y) == pytest.approx(1.0)


def test_next_token_logits_are_the_last_position_in_eval_mode():
    class Letters:
        def encode(self, text):
            return [ord(c) - ord("a") for c in text]

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=26, context_length=4, n_layer=1, n_head=1, n_embd=8,
                       dropout=0.5)
    model = GPT(config).train()
    logits = next_token_logits(model, Letters(), "abcdef")  # longer than the context
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = model(torch.tensor([[2, 3, 4, 5]]))[0, -1]
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Widgets


def step_state(step: int, loss: float, tokens: int) -> StepState:
    return StepState(step=step, total_steps=4, epoch=0, loss=loss, lr=1e-3, tokens_seen=tokens,
                     elapsed_seconds=2.0 * step)


def test_training_dashboard_follows_the_callbacks(capsys):
    dashboard = TrainingDashboard(redraw_every=2)
    assert "waiting" in dashboard.status.value
    dashboard.on_step(step_state(1, 10.0, 512))
    dashboard.on_step(step_state(2, 9.0, 1024))
    dashboard.on_eval(EvalRecord(step=2, tokens_seen=1024, train_loss=8.5, val_loss=8.8, lr=1e-3))
    status = dashboard.status.value
    assert "step 2/4" in status and "batch loss 9.000" in status
    assert "validation loss 8.800" in status and "256 tokens/s" in status  # 1024 tokens in 4 s
    fig = dashboard.figure()
    assert list(fig.data[0].y) == [10.0, 9.0] and list(fig.data[2].y) == [8.8]
    history = small_history()
    dashboard.on_end(history)
    assert dashboard.history is history and "done" in dashboard.status.value
    with pytest.raises(ValueError, match="redraw_every"):
        TrainingDashboard(redraw_every=0)


def test_training_dashboard_as_a_callback_of_train():
    from llmcourse.training import TrainingConfig, train

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=16, context_length=4, n_layer=1, n_head=1, n_embd=8)
    batches = [(torch.randint(0, 16, (2, 4)), torch.randint(0, 16, (2, 4))) for _ in range(3)]
    dashboard = TrainingDashboard(redraw_every=100)
    history = train(GPT(config), batches, batches,
                    TrainingConfig(max_steps=3, eval_every=2, progress=False),
                    callbacks=[dashboard])
    assert dashboard.finished and dashboard.history is history
    assert [record.step for record in dashboard.history.evals] == [2, 3]


def test_decoding_explorer_sliders_change_the_distribution():
    explorer = DecodingExplorer(LOGITS, VOCABULARY, max_bars=4, samples=50)
    assert explorer.settings() == Sampling(1.0)
    assert "9 of 9 tokens can be drawn" in explorer.chart.value
    assert explorer.chart.value.count("<tr>") == 5  # 4 tokens + all the others
    explorer.top_k.value = 2
    assert explorer.settings().top_k == 2
    assert "2 of 9 tokens can be drawn" in explorer.chart.value
    assert set(explorer.draw()) <= {"forward", "toward"}
    assert "forward" in explorer.drawn.value
    explorer.temperature.value = 0.0
    assert "greedy" in explorer.chart.value and explorer.drawn.value == ""
    assert explorer.draw() == ["forward"] * 50
    explorer.temperature.value, explorer.top_k.value, explorer.top_p.value = 1.0, 0, 0.95
    assert explorer.settings() == Sampling(1.0, top_p=0.95)
    assert "3 of 9 tokens can be drawn" in explorer.chart.value


def test_decoding_explorer_for_a_prompt_labels_tokens_with_the_tokenizer():
    class Letters:
        def encode(self, text):
            return [ord(c) - ord("a") for c in text]

        def decode(self, ids):
            return "".join(chr(i + ord("a")) for i in ids)

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=26, context_length=8, n_layer=1, n_head=1, n_embd=8))
    explorer = DecodingExplorer.for_prompt(model, Letters(), "abc", max_bars=3)
    top = next_token_logits(model, Letters(), "abc").topk(3).indices.tolist()
    assert explorer.names == [repr(Letters().decode([token])) for token in top]
