"""A live training dashboard for Jupyter: loss curves and a status line that update while
``llmcourse.training.train`` runs.

Pass the dashboard to the loop as a callback::

    dashboard = TrainingDashboard(redraw_every=5)
    display(dashboard)
    history = train(model, train_loader, val_loader, config, callbacks=[dashboard])

The status line changes after every step; the plot (``loss_curves_figure`` of what has been
seen so far) is redrawn every ``redraw_every`` steps, after every evaluation and at the end.
The plot lives in an ``ipywidgets.Output``, so it needs a running kernel to update; the static
book shows its last state at most.
"""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

from llmcourse.figures.display import figure_output
from llmcourse.figures.training import loss_curves_figure
from llmcourse.training import EvalRecord, StepState, TrainingCallback, TrainingHistory


class TrainingDashboard(TrainingCallback):
    """A status line and live loss curves, fed by the training loop's callbacks."""

    def __init__(self, *, redraw_every: int = 5, title: str = "Training and validation loss"):
        if redraw_every < 1:
            raise ValueError(f"redraw_every must be at least 1 step, got {redraw_every}")
        self.redraw_every = redraw_every
        self.title = title
        self.history = TrainingHistory()
        self.last_step: StepState | None = None
        self.finished = False
        self.status = widgets.HTML("<i>waiting for the first training step...</i>")
        self.plot = widgets.Output()
        self.widget = widgets.VBox([self.status, self.plot])

    def on_step(self, state: StepState) -> None:
        tokens = state.tokens_seen - self.history.tokens_seen
        self.history.record_step(state.loss, state.lr, tokens)
        self.history.elapsed_seconds = state.elapsed_seconds
        self.last_step = state
        self.status.value = self.status_html()
        if state.step % self.redraw_every == 0:
            self.redraw()

    def on_eval(self, record: EvalRecord) -> None:
        self.history.evals.append(record)
        self.status.value = self.status_html()
        self.redraw()

    def on_end(self, history: TrainingHistory) -> None:
        self.history = history
        self.finished = True
        self.status.value = self.status_html()
        self.redraw()

    def status_html(self) -> str:
        """One line: step, epoch, losses, learning rate, speed and time so far."""
        state = self.last_step
        if state is None:
            return "<i>waiting for the first training step...</i>"
        parts = [
            f"<b>{'done' if self.finished else 'training'}</b>",
            f"step {state.step}/{state.total_steps}",
            f"epoch {state.epoch + 1}",
            f"batch loss {state.loss:.3f}",
        ]
        if self.history.evals:
            last = self.history.evals[-1]
            parts.append(f"train loss {last.train_loss:.3f} (step {last.step})")
            if last.val_loss is not None:
                parts.append(f"validation loss {last.val_loss:.3f}")
        parts += [
            f"lr {state.lr:.2e}",
            f"{self.history.tokens_per_second:,.0f} tokens/s",
            f"{_minutes_seconds(self.history.elapsed_seconds)} elapsed",
        ]
        return " · ".join(parts)

    def figure(self) -> go.Figure:
        """The loss curves of everything seen so far."""
        return loss_curves_figure(self.history, title=self.title)

    def redraw(self) -> None:
        """Replace the plot with the current loss curves."""
        if not self.history.steps:
            return
        with self.plot:
            self.plot.clear_output(wait=True)
            display(figure_output(self.figure()))

    def _ipython_display_(self) -> None:
        display(self.widget)


def _minutes_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"
