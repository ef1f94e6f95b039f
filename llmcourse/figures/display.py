"""Plotly figures for the course, shown the same way live in Jupyter and in the static book.

Every figure goes through :func:`show`. It displays one output with two representations:

* ``application/vnd.plotly.v1+json``: the figure itself, which JupyterLab, Notebook 7 and
  VS Code draw natively, with no plotly.js loaded by the page;
* ``text/html``: a ``<div>`` plus the ``Plotly.newPlot`` call, without plotly.js and without
  MathJax. The book picks this one and serves a single local ``plotly.min.js`` to every page,
  so the saved figures stay interactive (hover, zoom, sliders) with no kernel and no network.

The ``<div>`` id is derived from the figure's content, so running a notebook twice saves
the same output. :func:`layout_defaults` gives every figure a title, axis titles and a small
label naming the run profile that produced it; :func:`show` adds that label when missing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import display

from llmcourse.profiles import current_profile

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
PROFILE_LABEL_NAME = "llmcourse-profile"  # the ``name`` of the profile annotation
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

# How often each content digest was shown in this process: a figure shown twice gets two ids.
_times_shown: Counter[str] = Counter()


# ---------------------------------------------------------------------------------------------
# Labels


def label_profile(fig: go.Figure, profile: str | None = None) -> go.Figure:
    """Put ``profile: NAME`` in small grey type above the plot's top-right corner.

    Replaces an earlier profile label, so calling it again is harmless. ``profile`` defaults
    to the name of the current run profile (``$LLMCOURSE_PROFILE``). Returns ``fig`` (changed
    in place) for chaining.
    """
    name = profile or current_profile().name
    others = [note for note in fig.layout.annotations if note.name != PROFILE_LABEL_NAME]
    fig.layout.annotations = others
    fig.add_annotation(
        name=PROFILE_LABEL_NAME,
        text=f"profile: {name}",
        xref="paper",
        yref="paper",
        x=1.0,
        y=1.0,
        xanchor="right",
        yanchor="bottom",
        showarrow=False,
        font={"size": 11, "color": "grey"},
    )
    return fig


def has_profile_label(fig: go.Figure) -> bool:
    """Whether ``fig`` already carries the profile label of :func:`label_profile`."""
    return any(note.name == PROFILE_LABEL_NAME for note in fig.layout.annotations)


def layout_defaults(
    fig: go.Figure,
    *,
    title: str,
    x_title: str | None,
    y_title: str | None,
    profile: str | None = None,
) -> go.Figure:
    """Label ``fig``: a title, the title of every x and y axis, and the run profile.

    Pass ``x_title=None`` / ``y_title=None`` only for figures without such axes (a pie, a
    table). Axis titles apply to all subplots. Returns ``fig`` (changed in place).
    """
    if not title.strip():
        raise ValueError("a figure needs a non-empty title: say what it shows")
    fig.update_layout(title_text=title)
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return label_profile(fig, profile)


# ---------------------------------------------------------------------------------------------
# Display


@dataclass(frozen=True, repr=False)
class FigureOutput:
    """One figure as a Jupyter display object with a plotly JSON, an HTML and a text form."""

    figure_json: dict[str, Any]  # {"data": [...], "layout": {...}, "config": {...}}
    html: str  # <div> + Plotly.newPlot script; needs window.Plotly, loads nothing itself
    div_id: str
    summary: str  # one line for text-only front ends

    def _repr_mimebundle_(
        self, include: object = None, exclude: object = None
    ) -> dict[str, object]:
        return {
            PLOTLY_MIMETYPE: self.figure_json,
            "text/html": self.html,
            "text/plain": self.summary,
        }

    def __repr__(self) -> str:  # what a plain Python console prints
        return self.summary


def figure_output(fig: go.Figure) -> FigureOutput:
    """Prepare ``fig`` for display; adds the profile label (to a copy) when it has none.

    The div id is ``llmcourse-fig-`` plus 12 hex digits of the sha256 of the figure's JSON,
    with ``-2``, ``-3``... appended when the same figure is shown again in this process.
    """
    if not has_profile_label(fig):
        fig = label_profile(go.Figure(fig))
    figure_text = pio.to_json(fig, validate=False)
    digest = hashlib.sha256(figure_text.encode()).hexdigest()[:12]
    _times_shown[digest] += 1
    occurrence = _times_shown[digest]
    div_id = f"llmcourse-fig-{digest}" + (f"-{occurrence}" if occurrence > 1 else "")
    html = pio.to_html(
        fig,
        config=PLOTLY_CONFIG,
        include_plotlyjs=False,
        include_mathjax=False,
        full_html=False,
        validate=False,
        div_id=div_id,
        auto_play=False,  # figures with animation frames wait for the reader's slider
    )
    figure_json = json.loads(figure_text) | {"config": PLOTLY_CONFIG}
    title = fig.layout.title.text or "untitled"
    return FigureOutput(figure_json, html, div_id, f"<plotly figure: {title}>")


def show(fig: go.Figure) -> None:
    """Display ``fig``: interactive in Jupyter, and saved so the book shows it offline.

    Use it instead of ``fig.show()``, whose default output the book cannot display.
    """
    display(figure_output(fig))
