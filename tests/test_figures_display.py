"""The plotly display helper: one output that JupyterLab and the static book both draw."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from llmcourse.figures import display
from llmcourse.profiles import PROFILE_ENV

FIGURE_SCRIPT = """
import plotly.graph_objects as go
from llmcourse.figures.display import figure_output
fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[3.5, 1.25, 0.5], name="loss"))
fig.update_layout(title_text="Loss per step")
print(figure_output(fig).div_id)
"""


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts like a new kernel: no figure shown yet, default profile."""
    monkeypatch.setattr(display, "_times_shown", Counter())
    monkeypatch.delenv(PROFILE_ENV, raising=False)


def loss_figure() -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[3.5, 1.25, 0.5], name="loss"))
    fig.update_layout(title_text="Loss per step")
    return fig


def test_bundle_has_plotly_json_html_and_text() -> None:
    output = display.figure_output(loss_figure())
    bundle = output._repr_mimebundle_()

    assert set(bundle) == {display.PLOTLY_MIMETYPE, "text/html", "text/plain"}
    figure_json = bundle[display.PLOTLY_MIMETYPE]
    assert figure_json["data"][0]["y"] == [3.5, 1.25, 0.5]
    assert figure_json["layout"]["title"]["text"] == "Loss per step"
    assert figure_json["config"] == {"displaylogo": False, "responsive": True}
    json.dumps(figure_json)  # a notebook stores it as JSON
    assert bundle["text/plain"] == "<plotly figure: Loss per step>"


def test_html_is_a_div_that_loads_nothing_from_the_network() -> None:
    output = display.figure_output(loss_figure())

    assert f'<div id="{output.div_id}" class="plotly-graph-div"' in output.html
    assert re.search(rf'Plotly\.newPlot\(\s*"{output.div_id}"', output.html)
    assert "<script src" not in output.html  # neither plotly.js nor MathJax
    assert "https://" not in output.html
    assert "<html" not in output.html


def test_div_id_comes_from_the_content() -> None:
    first = display.figure_output(loss_figure()).div_id
    other = go.Figure(go.Scatter(x=[0, 1, 2], y=[3.5, 1.25, 0.75]))
    other.update_layout(title_text="Loss per step")

    assert first.startswith("llmcourse-fig-")
    assert len(first) == len("llmcourse-fig-") + 12
    assert display.figure_output(other).div_id != first


def test_same_figure_shown_again_gets_a_new_id() -> None:
    ids = [display.figure_output(loss_figure()).div_id for _ in range(3)]

    assert ids[1:] == [f"{ids[0]}-2", f"{ids[0]}-3"]


def test_div_id_is_the_same_in_a_new_process() -> None:
    env = os.environ | {"PYTHONHASHSEED": "123"}
    env.pop(PROFILE_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", FIGURE_SCRIPT], capture_output=True, text=True, env=env, check=True
    )

    assert result.stdout.strip() == display.figure_output(loss_figure()).div_id


def test_layout_defaults_labels_title_every_axis_and_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROFILE_ENV, "smoke")
    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(go.Heatmap(z=[[1, 2], [3, 4]]), row=1, col=1)
    fig.add_trace(go.Heatmap(z=[[4, 3], [2, 1]]), row=1, col=2)
    fig.add_annotation(text="head 0", x=0, y=0, showarrow=False)

    returned = display.layout_defaults(fig, title="Attention", x_title="key", y_title="query")

    assert returned is fig
    assert fig.layout.title.text == "Attention"
    assert [fig.layout.xaxis.title.text, fig.layout.xaxis2.title.text] == ["key", "key"]
    assert [fig.layout.yaxis.title.text, fig.layout.yaxis2.title.text] == ["query", "query"]
    texts = [note.text for note in fig.layout.annotations]
    assert texts == ["head 0", "profile: smoke"]


def test_profile_label_is_replaced_not_repeated() -> None:
    fig = loss_figure()
    display.layout_defaults(fig, title="Loss", x_title="step", y_title="loss")
    display.layout_defaults(fig, title="Loss", x_title="step", y_title="loss", profile="gpt2")

    labels = [note for note in fig.layout.annotations if note.name == display.PROFILE_LABEL_NAME]
    assert [label.text for label in labels] == ["profile: gpt2"]


def test_layout_defaults_without_axes_leaves_axis_titles_alone() -> None:
    fig = go.Figure(go.Pie(values=[1, 2], labels=["a", "b"]))
    display.layout_defaults(fig, title="Share", x_title=None, y_title=None)

    assert fig.layout.xaxis.title.text is None
    assert fig.layout.title.text == "Share"


def test_layout_defaults_rejects_an_empty_title() -> None:
    with pytest.raises(ValueError, match="non-empty title"):
        display.layout_defaults(loss_figure(), title="  ", x_title="step", y_title="loss")


def test_show_labels_the_profile_without_changing_the_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROFILE_ENV, "cpu")
    fig = loss_figure()
    output = display.figure_output(fig)

    assert fig.layout.annotations == ()
    notes = output.figure_json["layout"]["annotations"]
    assert [note["text"] for note in notes] == ["profile: cpu"]
    assert "profile: cpu" in output.html


def test_show_outside_jupyter_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    display.show(loss_figure())

    assert capsys.readouterr().out == "<plotly figure: Loss per step>\n"
