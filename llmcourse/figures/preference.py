"""Figures of section 7.4, preference tuning with DPO.

- ``dpo_training_figure``: two panels over the optimizer steps: the reward margin (how much more
  the policy, relative to the reference, prefers the chosen answer than the rejected one) with
  the share of pairs where it is positive; and the policy's log-probabilities of the chosen and
  the rejected answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.preference import DPOMetrics

CHOSEN_COLOUR, REJECTED_COLOUR, MARGIN_COLOUR = "#188038", "#d93025", "#1a73e8"


def _smoothed(values: Sequence[float], window: int) -> list[float]:
    """The mean of the last ``window`` values at each step (fewer at the start)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(values))]


def dpo_training_figure(metrics: DPOMetrics, *, window: int = 10,
                        title: str = "DPO training: reward margin and log-probabilities"
                        ) -> go.Figure:
    """The per-step metrics of ``train_dpo`` (each a mean over the batch's pairs), smoothed over
    ``window`` steps: the reward margin and the share of pairs it ranks right (left), the
    policy's summed log-probability of the chosen and of the rejected answers (right)."""
    if not metrics.steps:
        raise InputError("there are no DPO steps to draw: train for at least one step")
    values = metrics.values
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14,
                        subplot_titles=("reward margin", "log-probability of the answers"))
    steps = metrics.steps
    fig.add_trace(go.Scatter(x=steps, y=_smoothed(values["reward_margin"], window),
                             name="reward margin", line={"color": MARGIN_COLOUR}), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=_smoothed(values["reward_accuracy"], window),
                             name="pairs ranked right (share)",
                             line={"color": MARGIN_COLOUR, "dash": "dot"}), row=1, col=1)
    for name, key, colour in (("chosen answers", "chosen_log_prob", CHOSEN_COLOUR),
                              ("rejected answers", "rejected_log_prob", REJECTED_COLOUR)):
        fig.add_trace(go.Scatter(x=steps, y=_smoothed(values[key], window), name=name,
                                 line={"color": colour}), row=1, col=2)
    for subplot_title in fig.layout.annotations:  # above the run profile's label
        subplot_title.y += 0.08
    fig.update_layout(height=440, margin={"t": 120}, legend={"orientation": "h", "y": -0.25})
    layout_defaults(fig, title=title, x_title="optimizer step", y_title=None)
    fig.update_yaxes(title_text="margin, and share of pairs", row=1, col=1)
    fig.update_yaxes(title_text="log-probability (nats)", row=1, col=2)
    return fig
