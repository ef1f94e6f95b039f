"""Figures of chapter 7, fine-tuning: LoRA's size, the spam data, training, evaluation.

- ``lora_parameter_counts`` and ``lora_rank_figure``: trainable parameters and training memory
  of LoRA adapters by rank, against full fine-tuning.
- ``training_curves_figure``: the losses during fine-tuning and the accuracies after each epoch.
- ``confusion_matrix_figure``: true against predicted classes, as a heatmap of counts.
- ``strategy_comparison_figure``: what trains, how long it takes and how well it classifies,
  for several fine-tuning strategies side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from llmcourse.classification import CLASS_NAMES, AccuracyRecord, replace_head
from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.lora_models import DEFAULT_TARGETS, apply_lora
from llmcourse.model import GPT, GPTConfig
from llmcourse.training import TrainingHistory

# Training keeps, for every trainable float32 number, its gradient and AdamW's two moving
# averages: 3 x 4 bytes on top of the weights themselves.
TRAINING_STATE_BYTES_PER_PARAMETER = 3 * 4
MEGABYTE = 1e6  # bytes

LORA_COLOUR = "#1a73e8"
FULL_COLOUR = "#d93025"
CLASS_COLOURS = {"not spam": "#188038", "spam": "#d93025"}
TRAIN_COLOUR = "#1a73e8"
VALIDATION_COLOUR = "#f29900"
STEP_COLOUR = "#c7d6f5"
STRATEGY_COLOURS = ("#5f6368", "#1a73e8", "#188038", "#9334e6", "#f29900")


# ----------------------------------------------------------------------------------------------
# LoRA parameters by rank


def lora_parameter_counts(
    config: GPTConfig,
    ranks: Sequence[int],
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    separate_qkv: bool = False,
    num_classes: int | None = None,
) -> dict[int, int]:
    """Trainable parameters of LoRA adapters on a GPT of ``config``, for each rank.

    The model is built on the meta device (shapes only, no memory); with ``num_classes`` its
    output layer is first replaced by a classification head (``replace_head``). ``targets`` and
    ``separate_qkv`` are those of ``apply_lora``. Returns {rank: trainable parameters}.
    """
    counts = {}
    for rank in ranks:
        with torch.device("meta"):
            model = GPT(config)
        if num_classes is not None:
            replace_head(model, num_classes)
        counts[rank] = apply_lora(
            model, rank, alpha=rank, targets=targets, separate_qkv=separate_qkv
        ).trainable
    return counts


def lora_rank_figure(
    counts: Mapping[int, int], full_parameters: int, *, model_name: str = "the model"
) -> go.Figure:
    """Two panels against the LoRA rank (log scale): trainable parameters, and the training
    memory they need (gradients and AdamW state, ``TRAINING_STATE_BYTES_PER_PARAMETER`` bytes
    each); full fine-tuning of ``full_parameters`` is the dashed line in both."""
    ranks = sorted(counts)
    trainable = [counts[rank] for rank in ranks]
    shares = [100 * count / full_parameters for count in trainable]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12)
    panels = (
        (trainable, full_parameters, "%{y:,} parameters"),
        ([c * TRAINING_STATE_BYTES_PER_PARAMETER / MEGABYTE for c in trainable],
         full_parameters * TRAINING_STATE_BYTES_PER_PARAMETER / MEGABYTE, "%{y:,.1f} MB"),
    )
    for column, (values, full_value, value_format) in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(
            x=ranks, y=values, mode="lines+markers+text", name="LoRA adapters",
            legendgroup="lora", showlegend=column == 1,
            text=[f"{share:.2f}%" for share in shares], textposition="top center",
            line={"color": LORA_COLOUR, "width": 2.5}, marker={"size": 8},
            customdata=shares,
            hovertemplate="rank %{x}<br>" + value_format
            + "<br>%{customdata:.2f}% of full fine-tuning<extra></extra>",
        ), row=1, col=column)
        fig.add_trace(go.Scatter(
            x=[ranks[0], ranks[-1]], y=[full_value, full_value], mode="lines",
            name=f"full fine-tuning of {model_name}", legendgroup="full",
            showlegend=column == 1, line={"color": FULL_COLOUR, "dash": "dash", "width": 2},
            hovertemplate="full fine-tuning<br>" + value_format + "<extra></extra>",
        ), row=1, col=column)
    padded_range = [math.log10(ranks[0]) - 0.15, math.log10(ranks[-1]) + 0.15]
    fig.update_xaxes(
        type="log", tickvals=ranks, ticktext=[str(rank) for rank in ranks], range=padded_range
    )
    fig.update_yaxes(type="log")
    fig.update_layout(height=440, legend={"orientation": "h", "y": -0.25})
    layout_defaults(
        fig, title=f"LoRA on {model_name}: what trains, by rank (labels: % of full fine-tuning)",
        x_title="LoRA rank r", y_title=None,
    )
    fig.update_yaxes(title_text="trainable parameters (log scale)", row=1, col=1)
    fig.update_yaxes(title_text="gradients + AdamW state, MB (log scale)", row=1, col=2)
    return fig


# ----------------------------------------------------------------------------------------------
# The data


# ----------------------------------------------------------------------------------------------
# Training


def training_curves_figure(
    history: TrainingHistory, accuracies: Sequence[AccuracyRecord] = (), *, title: str
) -> go.Figure:
    """Left: the loss of every training step (light) and the periodic estimates of the training
    and validation losses, against optimizer steps. Right: training and validation accuracy
    after each epoch (the ``records`` of an ``EpochAccuracy`` callback)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12)
    fig.add_trace(go.Scatter(
        x=history.steps, y=history.train_losses,
        mode="lines", name="loss of each training batch", line={"color": STEP_COLOUR},
        hovertemplate="step %{x}<br>batch loss %{y:.3f}<extra></extra>",
    ), row=1, col=1)
    steps = [record.step for record in history.evals]
    for name, colour, values in (
        ("training", TRAIN_COLOUR, [record.train_loss for record in history.evals]),
        ("validation", VALIDATION_COLOUR, [record.val_loss for record in history.evals]),
    ):
        fig.add_trace(go.Scatter(
            x=steps, y=values, mode="lines+markers", name=f"{name} loss (estimate)",
            line={"color": colour, "width": 2.5},
            hovertemplate="step %{x}<br>" + name + " loss %{y:.3f}<extra></extra>",
        ), row=1, col=1)
    epochs = [record.epoch for record in accuracies]
    for name, colour, values in (
        ("training", TRAIN_COLOUR, [record.train_accuracy for record in accuracies]),
        ("validation", VALIDATION_COLOUR, [record.val_accuracy for record in accuracies]),
    ):
        fig.add_trace(go.Scatter(
            x=epochs, y=[100 * value for value in values], mode="lines+markers",
            name=f"{name} accuracy", line={"color": colour, "width": 2.5, "dash": "dot"},
            hovertemplate="epoch %{x}<br>" + name + " accuracy %{y:.1f}%<extra></extra>",
        ), row=1, col=2)
    fig.update_layout(height=440, legend={"orientation": "h", "y": -0.25})
    layout_defaults(fig, title=title, x_title=None, y_title=None)
    fig.update_xaxes(title_text="optimizer step", row=1, col=1)
    fig.update_yaxes(title_text="cross-entropy loss (nats per message)", row=1, col=1)
    fig.update_xaxes(title_text="epoch", tickvals=epochs, row=1, col=2)
    fig.update_yaxes(title_text="accuracy after each epoch (%)", row=1, col=2)
    return fig


# ----------------------------------------------------------------------------------------------
# Evaluation


def confusion_matrix_figure(
    confusion: Sequence[Sequence[int]],
    class_names: Sequence[str] = CLASS_NAMES,
    *,
    title: str = "Confusion matrix on the test set",
) -> go.Figure:
    """A heatmap of ``confusion[true][predicted]`` counts, true classes as rows (top to bottom)
    and predictions as columns; hovering a cell gives its share of the true class's examples."""
    names = list(class_names)
    counts = [list(row) for row in confusion]
    if len(counts) != len(names) or any(len(row) != len(names) for row in counts):
        raise InputError(
            f"the confusion matrix must be {len(names)} x {len(names)} for the classes {names} "
            f"(one row per true class, one column per prediction), got {counts}; pass "
            "class_names with one name per row"
        )
    shares = [[100 * count / sum(row) if sum(row) else 0.0 for count in row] for row in counts]
    fig = go.Figure(go.Heatmap(
        z=counts, x=[f"predicted {name}" for name in names], y=[f"true {name}" for name in names],
        text=[[str(count) for count in row] for row in counts], texttemplate="%{text}",
        textfont={"size": 18}, customdata=shares, colorscale="Blues", showscale=False,
        hovertemplate="%{y}, %{x}: %{z} messages<br>%{customdata:.1f}% of the %{y} ones"
        "<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=380, width=520)
    return layout_defaults(fig, title=title, x_title="prediction", y_title="true class")


@dataclass(frozen=True)
class StrategyResult:
    """One fine-tuning strategy's outcome: what trained, for how long, how well it does."""

    name: str
    trainable: int  # trainable parameters
    seconds: float  # wall-clock time of the fine-tuning run
    test_accuracy: float  # in [0, 1]
    balanced_accuracy: float  # in [0, 1], on the test set


def strategy_comparison_figure(results: Sequence[StrategyResult], *, title: str) -> go.Figure:
    """Three panels of bars, one bar per strategy: trainable parameters (log scale), wall-clock
    time of fine-tuning, and test accuracy (plain and balanced)."""
    names = [result.name for result in results]
    colours = [STRATEGY_COLOURS[i % len(STRATEGY_COLOURS)] for i in range(len(results))]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09)
    fig.add_trace(go.Bar(
        x=names, y=[result.trainable for result in results], marker={"color": colours},
        text=[f"{result.trainable:,}" for result in results], textposition="outside",
        showlegend=False, hovertemplate="%{x}: %{y:,} trainable parameters<extra></extra>",
    ), row=1, col=1)
    fig.add_trace(go.Bar(
        x=names, y=[result.seconds for result in results], marker={"color": colours},
        text=[_seconds(result.seconds) for result in results], textposition="outside",
        showlegend=False, hovertemplate="%{x}: %{y:.1f} s<extra></extra>",
    ), row=1, col=2)
    for name, pattern, values in (
        ("accuracy", "", [result.test_accuracy for result in results]),
        ("balanced accuracy", "/", [result.balanced_accuracy for result in results]),
    ):
        fig.add_trace(go.Bar(
            x=names, y=[100 * value for value in values], name=f"test {name}",
            marker={"color": colours, "pattern": {"shape": pattern}},
            text=[f"{100 * value:.1f}%" for value in values], textposition="outside",
            hovertemplate="%{x}: " + name + " %{y:.2f}%<extra></extra>",
        ), row=1, col=3)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 110], row=1, col=3)
    fig.update_layout(
        height=460, barmode="group", legend={"orientation": "h", "y": -0.2},
        uniformtext={"minsize": 9, "mode": "hide"},
    )
    layout_defaults(fig, title=title, x_title=None, y_title=None)
    fig.update_yaxes(title_text="trainable parameters (log scale)", row=1, col=1)
    fig.update_yaxes(title_text="fine-tuning time (seconds)", row=1, col=2)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=3)
    return fig


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
